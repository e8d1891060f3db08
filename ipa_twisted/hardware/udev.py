"""Waiting for block devices: udev events on the reactor, or polling.

Where udev runs (the ramdisk starts ``systemd-udevd``), a pyudev netlink
monitor is read by the reactor: a wait ends as soon as udev has finished
with a new or changed block device (a disk attached late, the partitions
a new table makes).  Where it does not, a wait is a plain sleep and the
caller looks again, as before.

Use: ``watch = device_events(reactor).watch()`` *before* looking (events
that arrive between the look and the wait are kept), then ``await
watch.next(timeout)`` after each look that found nothing, and
``watch.close()`` at the end.
"""

from __future__ import annotations

import importlib.util
import os
from typing import Any, Callable, Protocol

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import (IReactorFDSet, IReactorTime,
                                         IReadDescriptor)
from twisted.logger import Logger
from zope.interface import implementer

log = Logger()

#: systemd-udevd's control socket: there while udev runs
UDEV_CONTROL = "/run/udev/control"
ACTIONS = frozenset({"add", "change", "move", "online"})


class Watch(Protocol):
    #: True: woken by udev events; False: each wait is a sleep
    event_driven: bool

    def next(self, timeout: float) -> "Deferred[bool]":
        """Fires True after an event (or, polling, after ``timeout``),
        False when ``timeout`` passed without one."""

    def close(self) -> None: ...


class DeviceEvents(Protocol):
    def watch(self, subsystem: str = "block") -> Watch: ...


class _Sleep:
    event_driven = False

    def __init__(self, clock: IReactorTime) -> None:
        self.clock = clock

    def next(self, timeout: float) -> "Deferred[bool]":
        d: Deferred[bool] = Deferred(lambda d: call.cancel())
        call = self.clock.callLater(timeout, d.callback, True)
        return d

    def close(self) -> None:
        pass


class Polling:
    """No udev: a wait is a sleep of its whole timeout."""

    def __init__(self, clock: IReactorTime) -> None:
        self.clock = clock

    def watch(self, subsystem: str = "block") -> Watch:
        return _Sleep(self.clock)


@implementer(IReadDescriptor)
class MonitorWatch:
    """One netlink monitor of ``subsystem``, read by the reactor.

    ``monitor`` is a started ``pyudev.Monitor`` (or anything with
    ``fileno()`` and ``poll(timeout)`` giving devices with ``action``)."""

    event_driven = True

    def __init__(self, reactor: Any, monitor: Any) -> None:
        self.reactor = reactor
        self.monitor = monitor
        self.pending = 0  # events not yet handed to a waiter
        self.waiter: Deferred[bool] | None = None
        self.timer: Any = None
        self.closed = False
        reactor.addReader(self)

    # IReadDescriptor
    def fileno(self) -> int:
        return int(self.monitor.fileno())

    def logPrefix(self) -> str:
        return "udev"

    def doRead(self) -> None:
        while True:
            device = self.monitor.poll(timeout=0)
            if device is None:
                break
            if getattr(device, "action", None) in ACTIONS:
                log.debug("udev: {action} {node}", action=device.action,
                          node=getattr(device, "device_node", None))
                self.pending += 1
        if self.pending and self.waiter is not None:
            self._fire(True)

    def connectionLost(self, reason: Any) -> None:
        self.close()

    def next(self, timeout: float) -> "Deferred[bool]":
        if self.waiter is not None:
            raise RuntimeError("one wait at a time")
        d: Deferred[bool] = Deferred(lambda _: self._cancel())
        self.waiter = d
        if self.pending:
            self._fire(True)
        else:
            self.timer = self.reactor.callLater(timeout, self._fire, False)
        return d

    def _fire(self, result: bool) -> None:
        d, self.waiter = self.waiter, None
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
        self.timer = None
        if result:
            self.pending = 0
        if d is not None:
            d.callback(result)

    def _cancel(self) -> None:
        self.waiter = None
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
        self.timer = None

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.reactor.removeReader(self)
        self._cancel()


class Udev:
    """udev events through pyudev netlink monitors."""

    def __init__(self, reactor: Any,
                 monitor_factory: Callable[[str], Any] | None = None) -> None:
        self.reactor = reactor
        self.monitor_factory = monitor_factory or _pyudev_monitor

    def watch(self, subsystem: str = "block") -> Watch:
        try:
            monitor = self.monitor_factory(subsystem)
        except (OSError, ImportError) as e:
            log.warn("no udev monitor ({e}): polling", e=e)
            return _Sleep(self.reactor)
        return MonitorWatch(self.reactor, monitor)


def _pyudev_monitor(subsystem: str) -> Any:
    import pyudev

    monitor = pyudev.Monitor.from_netlink(pyudev.Context(), source="udev")
    monitor.filter_by(subsystem)
    monitor.start()
    return monitor


def udev_running(control: str = UDEV_CONTROL) -> bool:
    return os.path.exists(control)


def device_events(reactor: Any, control: str = UDEV_CONTROL
                  ) -> DeviceEvents:
    """udev events when udev runs and the reactor can watch a socket;
    polling otherwise (a clock, a machine without udev)."""
    if IReactorFDSet.providedBy(reactor) and udev_running(control):
        # found, not imported: a watch imports it (pyudev and libudev
        # are memory that an idle agent need not hold)
        if importlib.util.find_spec("pyudev") is None:
            log.warn("udev runs but pyudev is missing: polling for disks")
        else:
            return Udev(reactor)
    return Polling(reactor)
