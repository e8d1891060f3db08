"""Downloads that must stop (issue #13 items 2, 3, 4 and 6 for images):
a cancelled download is not retried and closes its connection; the
overall deadline cancels the download in flight; a disk that completes
no write fails the command; a device that cannot be opened fails before
any request; blocking work (opening the device, inflating qcow2
clusters, disk I/O) stays off the reactor thread.

The HTTP side is real (loopback, the pipeline tests' server); time is a
Clock where a deadline or a watchdog is tested (:class:`SplitReactor`),
and the disk is a file whose writes the test can block or fail.
"""

from __future__ import annotations

import errno
import hashlib
import os
import threading
from typing import Any, Callable

from twisted.internet import reactor
from twisted.internet.defer import CancelledError, Deferred, ensureDeferred
from twisted.internet.task import Clock, deferLater
from twisted.logger import globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from ipa_twisted import errors
from ipa_twisted.config import load_config
from ipa_twisted.image import qcow2
from tests import hostile_images as hi
from tests.unit.test_image_pipeline import RAW, MiB, _PipelineBase


class SplitReactor:
    """The real reactor for sockets and threads, a Clock for time."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock

    def callLater(self, *args: Any, **kwargs: Any) -> Any:
        return self.clock.callLater(*args, **kwargs)

    def seconds(self) -> float:
        return self.clock.seconds()

    def getDelayedCalls(self) -> Any:
        return self.clock.getDelayedCalls()

    def __getattr__(self, name: str) -> Any:
        return getattr(reactor, name)


class _Base(_PipelineBase):
    def setUp(self) -> None:
        super().setUp()
        self.logged: list[str] = []

        def observe(event: dict[str, Any]) -> None:
            from twisted.logger import formatEvent

            self.logged.append(formatEvent(event))

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)

    def use_clock(self, **options: str) -> Clock:
        """Time from a Clock from now on; ``options`` for the config."""
        clock = Clock()
        self.context.reactor = SplitReactor(clock)
        self.context.config = load_config({
            "image_download_connection_retries": "3",
            "image_download_connection_retry_interval": "0",
            "image_download_connection_timeout": "60", **options})
        return clock

    async def until(self, condition: Callable[[], Any],
                    clock: Clock | None = None, step: float = 0.0,
                    turns: int = 500) -> None:
        """Let the real reactor run (and ``clock`` advance ``step`` s a
        turn) until ``condition()``; fail after ``turns`` turns."""
        for _ in range(turns):
            if condition():
                return
            await deferLater(reactor, 0.01)
            if clock is not None and step:
                clock.advance(step)
        self.fail("the condition was never met")

    def started(self, coroutine: Any) -> tuple[Deferred[Any], list[Any]]:
        """The coroutine as a Deferred, and the box its outcome (a value,
        or a Failure) lands in."""
        d = ensureDeferred(coroutine)
        box: list[Any] = []
        d.addBoth(box.append)
        return d, box

    async def outcome(self, box: list[Any], clock: Clock | None = None,
                      step: float = 0.0) -> Any:
        """What the Deferred of ``box`` fired with (a Failure for an
        error)."""
        await self.until(lambda: box, clock, step)
        return box[0]

    def stall_seen(self) -> bool:
        """The writer has logged that the disk completes nothing."""
        return any("nothing completed for" in line for line in self.logged)

    def retried(self) -> bool:
        return any("trying again" in line for line in self.logged)

    def on_disk_fds(self, action: Callable[[], Any]) -> None:
        """``os.write``/``os.pwrite`` to the disk file run ``action()``
        first (which may block or raise)."""
        disk = self.disk
        real_write, real_pwrite = os.write, os.pwrite

        def is_disk(fd: int) -> bool:
            try:
                return os.readlink(f"/proc/self/fd/{fd}") == disk
            except OSError:
                return False

        def write(fd: int, data: Any) -> int:
            if is_disk(fd):
                action()
            return real_write(fd, data)

        def pwrite(fd: int, data: Any, offset: int) -> int:
            if is_disk(fd):
                action()
            return real_pwrite(fd, data, offset)

        self.patch(os, "write", write)
        self.patch(os, "pwrite", pwrite)

    def block_disk_writes(self) -> None:
        release = threading.Event()
        self.addCleanup(release.set)
        self.on_disk_fds(release.wait)


class CancelTests(_Base):
    async def test_a_cancelled_download_is_not_retried(self) -> None:
        """Cancelled (the command is cancelled, the agent stops): the
        connection is closed, CancelledError comes out, no second
        request, no "trying again"."""
        info = self.serve("disk.img", RAW, stall_at=MiB)
        d, box = self.started(self.write(info))
        await self.until(lambda: self.server.hanging)
        await deferLater(reactor, 0.05)  # (the first MiB goes through)
        d.cancel()
        result = await self.outcome(box)
        self.assertIsInstance(result, Failure)
        self.assertIsInstance(result.value, CancelledError)
        await self.until(lambda: self.server.lost)
        self.assertEqual(self.server.lost, ["disk.img"])
        self.assertEqual(len(self.server.requests), 1)
        self.assertFalse(self.retried(), self.logged)

    async def test_cancelled_during_the_pause_between_attempts(self
                                                               ) -> None:
        clock = self.use_clock(
            image_download_connection_retry_interval="30")
        d, box = self.started(self.write(self.serve("disk.img", RAW,
                                                    fail=5)))
        await self.until(lambda: self.retried())
        d.cancel()
        result = await self.outcome(box)
        self.assertIsInstance(result.value, CancelledError)
        clock.advance(60)
        await deferLater(reactor, 0.05)
        self.assertEqual(len(self.server.requests), 1)


    async def test_cancelled_while_the_device_opens(self) -> None:
        """The open goes on in its thread; its descriptors are closed
        when it returns, not leaked."""
        from ipa_twisted.image.sink import Device

        real_open = Device.open
        entered, release = threading.Event(), threading.Event()
        opened = threading.Event()
        self.addCleanup(release.set)

        def slow_open(path: str, direct: bool = True) -> Device:
            entered.set()
            release.wait(10)
            try:
                return real_open(path, direct)
            finally:
                opened.set()

        self.patch(Device, "open", staticmethod(slow_open))
        d, box = self.started(self.write(self.serve("disk.img", RAW)))
        await self.until(entered.is_set)
        d.cancel()
        result = await self.outcome(box)
        self.assertIsInstance(result.value, CancelledError)
        release.set()
        await self.until(opened.is_set)
        await deferLater(reactor, 0.05)
        await self.until(lambda: not self.disk_fds())
        self.assertEqual(self.server.requests, [])

    def disk_fds(self) -> list[str]:
        found = []
        for fd in os.listdir("/proc/self/fd"):
            try:
                if os.readlink(f"/proc/self/fd/{fd}") == self.disk:
                    found.append(fd)
            except OSError:
                pass
        return found


class DeadlineTests(_Base):
    async def test_the_deadline_cancels_the_download_in_flight(self) -> None:
        clock = self.use_clock(image_download_max_duration="10")
        info = self.serve("disk.img", RAW, stall_at=MiB)
        d, box = self.started(self.write(info))
        await self.until(lambda: self.server.hanging)
        await deferLater(reactor, 0.05)
        clock.advance(9)
        await deferLater(reactor, 0.05)
        self.assertEqual(box, [])
        clock.advance(1.5)  # past the deadline (not the stall timeout)
        result = await self.outcome(box)
        self.assertIsInstance(result, Failure)
        self.assertIsInstance(result.value, errors.ImageDownloadTimeoutError)
        self.assertIn("image_download_max_duration (10 s)",
                      str(result.value))
        await self.until(lambda: self.server.lost)
        self.assertEqual(len(self.server.requests), 1)


class StalledDiskTests(_Base):
    async def stalled(self, data: bytes) -> Failure:
        clock = self.use_clock(image_download_connection_timeout="5")
        self.block_disk_writes()
        _, box = self.started(self.write(self.serve("disk.img", data)))
        # a quarter of a second a turn until the stall is seen; then only
        # the writer's grace for its stuck threads is left (they are in a
        # write that never returns): 2.5 s a turn
        await self.until(self.stall_seen, clock, 0.25)
        result = await self.outcome(box, clock, 2.5)
        self.assertIsInstance(result, Failure)
        self.assertIsInstance(result.value, errors.ImageWriteError)
        self.assertIn("the disk has not completed a write for 5 s",
                      str(result.value))
        self.assertEqual(len(self.server.requests), 1)
        self.assertFalse(self.retried())
        self.flushLoggedErrors()
        return result

    async def test_disk_blocking_while_the_download_waits(self) -> None:
        """More than the sink's buffers: the download is paused for the
        disk, which never completes a write."""
        await self.stalled(RAW * 5)

    async def test_disk_blocking_after_the_download(self) -> None:
        """All of it fits the buffers: the download ends, the writes
        never do."""
        await self.stalled(RAW)


class LocalErrorTests(_Base):
    async def test_a_device_that_cannot_be_opened_fails_before_any_request(
            self) -> None:
        disk = self.disk
        real_open = os.open

        def open_(path: Any, flags: int, *args: Any, **kw: Any) -> int:
            if path == disk and flags & (os.O_WRONLY | os.O_RDWR):
                raise OSError(errno.EIO, os.strerror(errno.EIO), path)
            return real_open(path, flags, *args, **kw)

        self.patch(os, "open", open_)
        with self.assertRaises(errors.ImageWriteError) as caught:
            await self.write(self.serve("disk.img", RAW))
        self.assertIn(f"cannot open {disk}: Input/output error",
                      str(caught.exception))
        self.assertEqual(self.server.requests, [])

    async def test_a_write_error_is_not_retried(self) -> None:
        def fail() -> None:
            raise OSError(errno.EIO, os.strerror(errno.EIO))

        self.on_disk_fds(fail)
        with self.assertRaises(errors.ImageWriteError) as caught:
            await self.write(self.serve("disk.img", RAW * 5))
        self.assertIn("Input/output error", str(caught.exception))
        self.assertEqual(len(self.server.requests), 1)
        self.assertFalse(self.retried())
        self.flushLoggedErrors()


class OffTheReactorTests(_Base):
    def threads_of(self, module: Any, name: str) -> list[threading.Thread]:
        """Record the thread of every call to ``module.name``."""
        real = getattr(module, name)
        seen: list[threading.Thread] = []

        def recording(*args: Any, **kwargs: Any) -> Any:
            seen.append(threading.current_thread())
            return real(*args, **kwargs)

        self.patch(module, name, recording)
        return seen

    async def test_the_device_is_opened_in_a_disk_thread(self) -> None:
        disk = self.disk
        real_open = os.open
        seen: list[threading.Thread] = []

        def open_(path: Any, flags: int, *args: Any, **kw: Any) -> int:
            if path == disk and flags & os.O_DIRECT:
                seen.append(threading.current_thread())
            return real_open(path, flags, *args, **kw)

        self.patch(os, "open", open_)
        await self.write(self.serve("disk.img", RAW))
        self.assertTrue(seen)
        self.assertNotIn(threading.main_thread(), seen)

    async def test_qcow2_clusters_are_inflated_off_the_reactor(self) -> None:
        cb = 16
        cluster = 1 << cb
        content = [os.urandom(cluster // 2) * 2 for _ in range(3)]
        packed = [hi.deflate_raw(c) for c in content]
        places: dict[int, bytes] = {cluster: hi.table({0: 2 * cluster}, 1)}
        entries, at = {}, 3 * cluster
        for i, blob in enumerate(packed):
            entries[i] = hi.compressed_entry(at, len(blob), cb)
            places[at] = blob
            at += -(-len(blob) // 512) * 512
        places[2 * cluster] = hi.table(entries, cluster // 8)
        image = hi.image(hi.header(cluster_bits=cb, size=3 * cluster,
                                   l1_size=1, l1_offset=cluster), places)
        real = qcow2._inflater
        threads: list[threading.Thread] = []

        def recording(compression: int) -> Any:
            inflate = real(compression)

            def run(data: bytes, size: int) -> bytes:
                threads.append(threading.current_thread())
                return inflate(data, size)

            return run

        self.patch(qcow2, "_inflater", recording)
        result = await self.write(self.serve("disk.qcow2", image,
                                             claimed="qcow2"))
        self.assertEqual(result.digest, hashlib.sha256(image).hexdigest())
        self.assertEqual(self.disk_bytes(3 * cluster), b"".join(content))
        self.assertEqual(len(threads), 3)
        self.assertNotIn(threading.main_thread(), threads)

    async def test_disk_work_has_a_pool_of_its_own(self) -> None:
        """Not the reactor's pool, which name resolution uses."""
        thread = await self.context.in_thread(threading.current_thread)
        self.assertNotEqual(thread, threading.main_thread())
        self.assertNotIn(thread, reactor.getThreadPool().threads)
        self.assertIn("disk", thread.name)


class StalledDiskCommandTests(_Base):
    async def test_the_command_fails_with_the_reason(self) -> None:
        """Through standby.prepare_image: a disk whose writes never return
        fails the command (it stayed RUNNING for ever, heartbeats looking
        fine), and the wipe after it gives up too."""
        from ipa_twisted.commands.base import CommandRunner
        from ipa_twisted.commands.standby import StandbyExtension
        from ipa_twisted.hardware.manager import HardwareManagers
        from ipa_twisted.testing import FakeHardwareManager

        clock = self.use_clock(image_download_connection_timeout="5")
        self.block_disk_writes()
        self.context.hardware = HardwareManagers(
            [FakeHardwareManager(root_device=self.disk)])
        await self.context.hardware.initialize(self.context)
        self.context.extensions = {
            "standby": StandbyExtension(self.context)}
        runner = CommandRunner(self.context.extensions)
        info = self.serve("disk.img", RAW * 5)
        info.update(os_hash_algo="sha256",
                    os_hash_value=hashlib.sha256(RAW * 5).hexdigest())
        result = runner.execute("standby.prepare_image",
                                {"image_info": info})
        self.assertEqual(result.status, "RUNNING")
        # half a second a turn while the download runs and stalls; from
        # there on only the writer's grace for its stuck threads and the
        # wipe's 60 s timeout are awaited (their threads are stuck in a
        # write that never returns): 5 s a turn
        await self.until(self.stall_seen, clock, 0.5)
        await self.until(lambda: result.status != "RUNNING", clock, 5.0)
        self.assertEqual(result.status, "FAILED")
        self.assertEqual(result.error["type"], "ImageWriteError")
        self.assertIn("the disk has not completed a write for 5 s",
                      result.error["details"])
        self.assertTrue(any("did not answer within 60" in line
                            for line in self.logged), self.logged)
        self.flushLoggedErrors()


class DiskPoolTests(SynchronousTestCase):
    def test_stopping_does_not_wait_for_a_stuck_thread(self) -> None:
        """A thread stuck in a write to a dead disk must not keep the
        agent from exiting (the pool is stopped at reactor shutdown)."""
        import time

        from ipa_twisted.hardware.blockio import DiskThreadPool

        pool = DiskThreadPool(0, 2, name="disk-test")
        pool.start()
        stuck, release = threading.Event(), threading.Event()
        self.addCleanup(release.set)

        def dead_disk() -> None:
            stuck.set()
            release.wait(30)

        pool.callInThread(dead_disk)
        self.assertTrue(stuck.wait(5))
        started = time.monotonic()
        pool.stop()
        self.assertLess(time.monotonic() - started, 1.0)
        self.assertTrue(all(t.daemon for t in pool.threads))
