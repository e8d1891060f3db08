"""What extensions and hardware managers may use of the running agent.

One object, built by the agent service and handed to every extension and
(through ``initialize``) to every hardware manager: the configuration, the
reactor, the process runner, the HTTP client for images, the device guard,
the loaded managers and extensions, and the node that Ironic told us about.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import attrs
from twisted.internet.defer import Deferred, succeed
from twisted.internet.threads import deferToThreadPool

from ipa_twisted.config import Config
from ipa_twisted.hardware.disks import DeviceGuard
from ipa_twisted.process import IProcessRunner


@attrs.define
class AgentContext:
    config: Config
    reactor: Any
    process: IProcessRunner
    guard: DeviceGuard
    #: treq-like client for image and checksum downloads.
    http: Any = None
    #: the TLS policy of ``http`` (for proxied connections)
    tls_policy: Any = None
    hardware: Any = None  # HardwareManagers, once loaded
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
    lldp: Any = None
    #: Progress of the long work in hand (shown in the running command's
    #: result and, with Ironic >= 1.72, in heartbeats).
    progress: Any = None
    on_progress_change: Callable[[Any], None] = lambda progress: None
    #: The agent token in force (configured, or handed out by Ironic).
    current_token: Callable[[], str | None] = lambda: None
    #: Stop serving the API and heartbeating, for good (rescue, lockdown;
    #: the argument says why); fires once the API's connections are closed.
    stop_serving: Callable[[str], "Deferred[None]"] = \
        lambda reason: succeed(None)

    def report_progress(self, progress: Any) -> None:
        self.progress = progress
        self.on_progress_change(progress)

    def start_lldp(self) -> Any:
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
        """Run blocking disk I/O in the reactor's thread pool."""
        return deferToThreadPool(self.reactor, self.reactor.getThreadPool(),
                                 func, *args, **kwargs)
