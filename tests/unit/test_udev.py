"""Waiting for disks: udev events on the reactor end a wait at once;
without udev a wait is a sleep (ipa_twisted/hardware/udev.py and its users:
get_os_install_device, configdrive.wait_for_partitions)."""

from __future__ import annotations

import os
from types import SimpleNamespace
from typing import Any

from twisted.internet.defer import CancelledError, Deferred, ensureDeferred
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from ipa_twisted import errors
from ipa_twisted.config import load_config
from ipa_twisted.context import RunningAgent
from ipa_twisted.hardware import udev
from ipa_twisted.hardware.disks import BlockDevice, DeviceGuard
from ipa_twisted.hardware.generic import GenericHardwareManager
from ipa_twisted.image import configdrive
from ipa_twisted.testing import FakeProcessRunner


class FakeDevice:
    def __init__(self, action: str, node: str = "/dev/vdb") -> None:
        self.action = action
        self.device_node = node


class FakeMonitor:
    """What MonitorWatch uses of a pyudev.Monitor: a descriptor and
    poll(timeout=0)."""

    def __init__(self) -> None:
        self.queue: list[FakeDevice] = []
        self.read, self.write = os.pipe()

    def fileno(self) -> int:
        return self.read

    def poll(self, timeout: float = 0) -> FakeDevice | None:
        return self.queue.pop(0) if self.queue else None

    def close(self) -> None:
        os.close(self.read)
        os.close(self.write)


class MonitorWatchTests(SynchronousTestCase):

    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.monitor = FakeMonitor()
        self.addCleanup(self.monitor.close)
        self.watch = udev.MonitorWatch(self.reactor, self.monitor)

    def test_reads_on_the_reactor(self) -> None:
        self.assertIn(self.watch, self.reactor.getReaders())
        self.watch.close()
        self.assertNotIn(self.watch, self.reactor.getReaders())

    def test_an_event_ends_the_wait_at_once(self) -> None:
        d = self.watch.next(120)
        self.assertNoResult(d)
        self.monitor.queue.append(FakeDevice("add"))
        self.watch.doRead()
        self.assertIs(self.successResultOf(d), True)
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_an_event_before_the_wait_is_kept(self) -> None:
        self.monitor.queue.append(FakeDevice("add"))
        self.watch.doRead()
        self.assertIs(self.successResultOf(self.watch.next(120)), True)
        # handed over once
        d = self.watch.next(5)
        self.assertNoResult(d)
        self.reactor.advance(5)
        self.assertIs(self.successResultOf(d), False)

    def test_removals_do_not_wake(self) -> None:
        d = self.watch.next(10)
        self.monitor.queue.append(FakeDevice("remove"))
        self.watch.doRead()
        self.assertNoResult(d)
        self.reactor.advance(10)
        self.assertIs(self.successResultOf(d), False)

    def test_cancel(self) -> None:
        d = self.watch.next(10)
        d.cancel()
        self.failureResultOf(d, CancelledError)
        self.assertEqual(self.reactor.getDelayedCalls(), [])
        # a new wait works after a cancelled one
        d = self.watch.next(1)
        self.reactor.advance(1)
        self.assertIs(self.successResultOf(d), False)


class ChoiceTests(SynchronousTestCase):

    def test_polling_without_udev(self) -> None:
        reactor = MemoryReactorClock()
        events = udev.device_events(reactor, control=self.mktemp())
        self.assertIsInstance(events, udev.Polling)

    def test_polling_on_a_clock(self) -> None:
        control = self.mktemp()
        open(control, "w").close()
        self.assertIsInstance(udev.device_events(Clock(), control=control),
                              udev.Polling)

    def test_udev_when_it_runs(self) -> None:
        control = self.mktemp()
        open(control, "w").close()
        self.assertIsInstance(
            udev.device_events(MemoryReactorClock(), control=control),
            udev.Udev)

    def test_no_monitor_falls_back_to_polling(self) -> None:
        def refuse(subsystem: str) -> Any:
            raise OSError("netlink: permission denied")

        watch = udev.Udev(Clock(), refuse).watch()
        self.assertFalse(watch.event_driven)

    def test_polling_sleeps_the_whole_timeout(self) -> None:
        clock = Clock()
        d = udev.Polling(clock).watch().next(3)
        clock.advance(2.9)
        self.assertNoResult(d)
        clock.advance(0.1)
        self.assertIs(self.successResultOf(d), True)


class FakeEvents:
    """Device events the test fires by hand."""

    event_driven = True

    def __init__(self) -> None:
        self.waits: list[tuple[float, Deferred[bool]]] = []
        self.closed = 0

    def watch(self, subsystem: str = "block") -> "FakeEvents":
        return self

    def next(self, timeout: float) -> Deferred[bool]:
        d: Deferred[bool] = Deferred()
        self.waits.append((timeout, d))
        return d

    def close(self) -> None:
        self.closed += 1


def disk(name: str, serial: str) -> BlockDevice:
    return BlockDevice(name=name, model="m", size=10 << 30, rotational=False,
                       serial=serial, all_serials=(serial,))


class RootDiskWaitTests(SynchronousTestCase):

    def setUp(self) -> None:
        self.clock = Clock()
        self.context = RunningAgent(
            config=load_config({"disk_wait_attempts": "2",
                                "disk_wait_delay": "120"}),
            reactor=self.clock, process=FakeProcessRunner(),
            guard=DeviceGuard(None))
        self.context.node = {"uuid": "n", "properties": {
            "root_device": {"serial": "LATE"}}}
        self.manager = GenericHardwareManager()
        self.manager.agent = self.context
        self.disks: list[BlockDevice] = [disk("/dev/vda", "FIRST")]
        self.listed = 0

        async def list_block_devices(**kw: Any) -> list[BlockDevice]:
            self.listed += 1
            return list(self.disks)

        self.patch(self.manager, "list_block_devices", list_block_devices)

    def test_a_udev_event_ends_the_wait(self) -> None:
        events = FakeEvents()
        self.context.device_watcher = events
        d = ensureDeferred(self.manager.get_os_install_device())
        self.assertNoResult(d)
        self.assertEqual(self.listed, 1)
        [(timeout, wait)] = events.waits
        self.assertEqual(timeout, 120)
        # the disk arrives; udev says so; no time passes
        self.disks.append(disk("/dev/vdb", "LATE"))
        wait.callback(True)
        self.assertEqual(self.successResultOf(d), "/dev/vdb")
        self.assertEqual(self.listed, 2)
        self.assertEqual(events.closed, 1)

    def test_events_for_other_disks_look_again_and_wait_on(self) -> None:
        events = FakeEvents()
        self.context.device_watcher = events
        d = ensureDeferred(self.manager.get_os_install_device())
        self.clock.advance(30)
        events.waits[0][1].callback(True)  # some other disk changed
        self.assertNoResult(d)
        self.assertEqual(self.listed, 2)
        # the next wait is for what is left of the deadline
        self.assertEqual(events.waits[1][0], 90)
        self.clock.advance(90)
        events.waits[1][1].callback(False)
        self.failureResultOf(d, errors.DeviceNotFound)
        self.assertEqual(events.closed, 1)

    def test_without_udev_it_polls(self) -> None:
        self.context.device_watcher = udev.Polling(self.clock)
        d = ensureDeferred(self.manager.get_os_install_device())
        self.disks.append(disk("/dev/vdb", "LATE"))
        self.clock.advance(119)
        self.assertNoResult(d)
        self.clock.advance(1)
        self.assertEqual(self.successResultOf(d), "/dev/vdb")
        self.assertEqual(self.listed, 2)

    def test_without_a_disk_it_gives_up_after_the_attempts(self) -> None:
        self.context.device_watcher = udev.Polling(self.clock)
        d = ensureDeferred(self.manager.get_os_install_device())
        self.clock.advance(120)
        self.failureResultOf(d, errors.DeviceNotFound)
        self.assertEqual(self.listed, 2)


class PartitionWaitTests(SynchronousTestCase):

    def setUp(self) -> None:
        self.clock = Clock()
        process = FakeProcessRunner()
        process.add("partprobe")
        self.context: Any = SimpleNamespace(reactor=self.clock,
                                            process=process)
        self.part = os.path.abspath(self.mktemp())

    def test_a_udev_event_ends_the_wait(self) -> None:
        events = FakeEvents()
        self.context.device_events = lambda: events
        d = ensureDeferred(configdrive.wait_for_partitions(
            self.context, "/dev/vdz", [self.part]))
        self.assertNoResult(d)
        [(timeout, wait)] = events.waits
        open(self.part, "w").close()  # udev made the node
        wait.callback(True)
        self.successResultOf(d)
        self.assertEqual(events.closed, 1)
        self.assertEqual(self.clock.seconds(), 0)

    def test_without_udev_it_polls(self) -> None:
        # what the agent's device_events() gives on a clock: polling
        self.context.device_events = lambda: udev.device_events(self.clock)
        d = ensureDeferred(configdrive.wait_for_partitions(
            self.context, "/dev/vdz", [self.part]))
        open(self.part, "w").close()
        self.assertNoResult(d)
        self.clock.advance(0.5)
        self.successResultOf(d)
