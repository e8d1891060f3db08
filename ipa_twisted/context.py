"""The running agent, as extensions, hardware managers and inspection
collectors see it: what they are handed under the name ``agent`` (and
``context`` by collectors).

One object, built by the agent service (or by the ``ipa-inventory`` and
``ironic-collect-introspection-data`` programs): the configuration, the
reactor, the process runner, the HTTP client, the device guard, the loaded
managers and extensions, the node that Ironic told us about, and what
long work reports.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Mapping, Protocol, cast

import attrs
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.threads import deferToThreadPool

from ipa_twisted.config import Config
from ipa_twisted.hardware.disks import DeviceGuard
from ipa_twisted.process import IProcessRunner

if TYPE_CHECKING:
    from ipa_twisted.hardware.lldp import LLDPCollector
    from ipa_twisted.hardware.udev import DeviceEvents
    from ipa_twisted.hardware.manager import HardwareManagers
    from ipa_twisted.tls import ClientPolicy


class HTTPClient(Protocol):
    """What the agent asks of an HTTP client (treq's ``HTTPClient``, ours
    in :mod:`ipa_twisted.httpclient`, treq's ``StubTreq`` in tests)."""

    def request(self, method: str, url: Any, **kwargs: Any
                ) -> "Deferred[Any]": ...


class Progress(Protocol):
    """Long work's progress (an image written, disks erased); it may also
    have an ``agent_status`` ("start", or "end" for a final summary)."""

    def snapshot(self) -> dict[str, Any]: ...

    def text(self) -> str: ...


@attrs.define
class RunningAgent:
    config: Config
    #: the reactor (a clock to most; the agent's real reactor provides
    #: every reactor interface: threads, TCP, processes, descriptors)
    reactor: IReactorTime
    process: IProcessRunner
    guard: DeviceGuard
    #: the HTTP client for Ironic, the inspector, images and checksums
    http: HTTPClient | Any = None
    #: the TLS policy of ``http`` (for proxied connections)
    tls_policy: ClientPolicy | None = None
    _hardware: HardwareManagers | None = None
    #: the extensions by name, once loaded (their commands are looked up
    #: by name: ``get_extension`` answers Any)
    extensions: Mapping[str, Any] = attrs.field(factory=dict)
    #: The node as the last lookup (or command) gave it.
    node: dict[str, Any] | None = None
    #: Values from the lookup's ``config`` that change behaviour at run time
    #: (md5 checksums allowed, permitted image formats, ...).
    lookup_config: dict[str, Any] = attrs.field(factory=dict)
    #: Ask for a heartbeat soon (no-op in standalone mode).
    force_heartbeat: Callable[[], None] = lambda: None
    #: Re-run lookup to refresh ``node`` (None when there is no Ironic).
    refresh_node: Callable[[], "Deferred[Any]"] | None = None
    #: The background LLDP listener, once started.
    lldp: LLDPCollector | None = None
    #: Progress of the long work in hand (shown in the running command's
    #: result and, with Ironic >= 1.72, in heartbeats).
    progress: Progress | None = None
    on_progress_change: Callable[[Progress | None], None] = \
        lambda progress: None
    #: The agent token in force (configured, or handed out by Ironic).
    current_token: Callable[[], str | None] = lambda: None
    #: How :meth:`in_thread` runs blocking work (None: a thread of the
    #: disk pool; tests run it at once).
    thread_runner: Callable[..., "Deferred[Any]"] | None = None
    #: The thread pool of in_thread (made on first use).
    disk_threads: Any = None
    #: udev's device events (or polling where udev does not run): made on
    #: first use, shared by every wait for a disk or partition (tests set
    #: a fake)
    device_watcher: DeviceEvents | None = None
    #: Stop serving the API and heartbeating, for good (rescue, lockdown;
    #: the argument says why); fires once the API's connections are closed.
    stop_serving: Callable[[str], "Deferred[None]"] = \
        lambda reason: succeed(None)

    @property
    def hardware(self) -> HardwareManagers:
        """The hardware managers (once loaded: the agent loads them first
        thing)."""
        if self._hardware is None:
            raise RuntimeError("the hardware managers are not loaded yet")
        return self._hardware

    @hardware.setter
    def hardware(self, managers: HardwareManagers) -> None:
        self._hardware = managers

    def device_events(self) -> DeviceEvents:
        """udev events on the reactor where udev runs, else polling."""
        if self.device_watcher is None:
            from ipa_twisted.hardware import udev

            self.device_watcher = udev.device_events(self.reactor)
        return self.device_watcher

    def report_progress(self, progress: Progress | None) -> None:
        self.progress = progress
        self.on_progress_change(progress)

    def start_lldp(self) -> LLDPCollector:
        """Start listening for LLDP on every interface (once); returns the
        collector.  Nothing waits for it."""
        if self.lldp is None:
            from ipa_twisted.hardware.lldp import (
                LLDPCollector,
                interface_names,
            )

            self.lldp = LLDPCollector(self.reactor, self.config.lldp_timeout)
            self.lldp.start(interface_names())
        return self.lldp

    def secret_values(self) -> list[str]:
        """Every secret the agent holds: the values of the options marked
        secret, and the token in force (for scrubbing them from output)."""
        from ipa_twisted.config import OPTIONS

        found = [getattr(self.config, o.name) for o in OPTIONS if o.secret]
        found.append(self.current_token())
        return [v for v in found if isinstance(v, str) and v]

    def get_extension(self, name: str) -> Any:
        return self.extensions[name]

    def cache_node(self, node: Mapping[str, Any] | None) -> None:
        if node:
            self.node = dict(node)

    @property
    def md5_enabled(self) -> bool:
        value = self.lookup_config.get("agent_md5_checksum_enable")
        if value is None:
            return bool(self.config.md5_enabled)
        return bool(value)

    def in_thread(self, func: Callable[..., Any], *args: Any,
                  **kwargs: Any) -> "Deferred[Any]":
        """Run blocking disk I/O in a thread of the agent's disk pool
        (not the reactor's pool, which name resolution uses)."""
        if self.thread_runner is not None:
            return self.thread_runner(func, *args, **kwargs)
        if self.disk_threads is None:
            from ipa_twisted.hardware.blockio import start_disk_pool

            self.disk_threads = start_disk_pool(self.reactor)
        return deferToThreadPool(cast(Any, self.reactor), self.disk_threads,
                                 func, *args, **kwargs)
