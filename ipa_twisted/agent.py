"""The agent: a tree of services.

``AgentService`` is a ``MultiService``; its children, started in order
and stopped in reverse (Twisted's ``stopService``, which waits for each
child's Deferred):

1. ``tools``: stops every external tool still running (process groups);
2. ``start-up``: loads the hardware managers and the extensions, then
   registers (:mod:`ipa_twisted.registration`: inventory, inspection,
   lookup, token, certificate; skipped with ``--standalone``), then adds
   the services below, in order; stopping it cancels start-up;
3. ``commands`` (once the extensions are loaded): cancels the commands
   still running, waits for them;
4. ``api``: the agent API (:mod:`ipa_twisted.api.service`);
5. ``heartbeater``: heartbeats to Ironic (not with ``--standalone``).

Lockdown and rescue stop the last two for good with
:meth:`AgentService.stop_serving` (extensions reach it through the
context), built on :meth:`AgentService.stop_api` and
:meth:`AgentService.stop_heartbeats`.

A fatal error (no lookup within ``lookup_timeout``, no advertise address,
the API port taken) is logged in one line and ends the process with exit
status 1, so that the ramdisk's service manager restarts it.
:meth:`AgentService.when_ready` fires once the agent serves.
"""

from __future__ import annotations

import os
import random
import sys
import time
from typing import TYPE_CHECKING, Any, Callable

from twisted.application.service import MultiService, Service
from twisted.internet.defer import (
    CancelledError,
    Deferred,
    DeferredList,
    ensureDeferred,
    succeed,
)
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure

from ipa_twisted import __version__, errors, tools
from ipa_twisted.commands.base import CommandRunner
from ipa_twisted.commands.rescue import RESCUED_MARKER
from ipa_twisted.config import Config
from ipa_twisted.context import RunningAgent
from ipa_twisted.extensions import load_extensions
from ipa_twisted.hardware.disks import DeviceGuard
from ipa_twisted.hardware.manager import HardwareManagers
from ipa_twisted.heartbeat import Heartbeater
from ipa_twisted.httpclient import Outbound, outbound
from ipa_twisted.lean import drop_generated_sources
from ipa_twisted.observer import OneShotObserver
from ipa_twisted.process import ProcessRunner
from ipa_twisted.registration import (
    FatalError,
    Registrar,
    Registration,
    format_callback_url,
)

if TYPE_CHECKING:
    from ipa_twisted.api.service import APIService

log = Logger()

__all__ = ["AgentService", "FatalError", "format_callback_url"]


def exit_process(reactor: Any, code: int) -> None:
    """Stop the reactor, then end the process with ``code``."""

    def bye() -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)

    reactor.addSystemEventTrigger("after", "shutdown", bye)
    if reactor.running:
        reactor.stop()


class _StopWith(Service):
    """A child whose stopping calls ``stop()`` (and waits for it)."""

    def __init__(self, name: str, stop: Callable[[], Deferred[None]]
                 ) -> None:
        self.name = name
        self._stop = stop

    def stopService(self) -> Deferred[None]:
        super().stopService()
        return self._stop()


class _StartUp(Service):
    """Runs ``start()`` while running; stopping cancels it."""

    name = "start-up"

    def __init__(self, start: Callable[[], Deferred[None]]) -> None:
        self._start = start
        self.done: Deferred[None] | None = None

    def startService(self) -> None:
        super().startService()
        self.done = self._start()

    def stopService(self) -> Deferred[None]:
        super().stopService()
        if self.done is not None and not self.done.called:
            self.done.cancel()
        return succeed(None)


class AgentService(MultiService):
    """The whole agent (see the module docstring)."""

    def __init__(
        self,
        config: Config,
        reactor: Any,
        http: Any = None,
        hardware: HardwareManagers | None = None,
        rng: random.Random | None = None,
        exit_on_fatal: bool = True,
        registrar: Callable[[RunningAgent, Outbound | None], Registrar]
        | None = None,
    ) -> None:
        super().__init__()
        self.reactor = reactor
        self._rng = rng or random.SystemRandom()
        self._exit_on_fatal = exit_on_fatal
        self._outbound: Outbound | None = None
        if http is None:
            self._outbound = outbound(reactor, config)
            http = self._outbound.client
        self.http = http
        self.context = RunningAgent(
            config=config,
            reactor=reactor,
            process=ProcessRunner(reactor, reactor),
            guard=DeviceGuard(config.device_allowlist),
            http=http,
            tls_policy=self._outbound.policy if self._outbound else None,
            force_heartbeat=self.force_heartbeat,
            current_token=lambda: self.token,
            stop_serving=self.stop_serving,
        )
        self._hardware = hardware
        self._make_registrar = registrar or (
            lambda context, out: Registrar(context, out, self._rng))
        self.started_at = time.time()
        #: the token in force (configured, then Ironic's)
        self.token: str | None = config.agent_token
        #: once the extensions are loaded
        self.runner: CommandRunner | None = None
        #: once registered (None in standalone mode)
        self.registration: Registration | None = None
        self._ready: OneShotObserver[None] = OneShotObserver()
        #: why the API stopped for good (rescue, lockdown), or None
        self.stopped_serving: str | None = None
        # stopped last: whatever tool still runs, with what it started
        _StopWith("tools", lambda: self.context.process.stop()
                  ).setServiceParent(self)

    @property
    def config(self) -> Config:
        return self.context.config

    # ------------------------------------------------------------ service

    def startService(self) -> None:
        super().startService()
        _StartUp(self._start_up).setServiceParent(self)

    def _start_up(self) -> Deferred[None]:
        d = ensureDeferred(self._start())
        d.addCallbacks(self._started, self._start_failed)
        return d

    def when_ready(self) -> Deferred[None]:
        """Fires once start-up is over (the agent serves), or fails with
        what stopped it (``CancelledError`` when the agent was stopped
        first)."""
        return self._ready.when_fired()

    def _started(self, _: Any) -> None:
        drop_generated_sources()
        self._ready.fire_if_not_fired(None)

    def _start_failed(self, failure: Failure) -> None:
        cancelled = failure.check(CancelledError) is not None
        if failure.check(FatalError, errors.AgentError):
            log.critical("agent cannot start: {error}",
                         error=str(failure.value))
        elif not cancelled:
            log.failure("agent cannot start", failure)
        # whoever waits for start-up learns that it will not come
        self._ready.fire_if_not_fired(failure)
        if cancelled:
            return
        if self._exit_on_fatal and self.running:
            exit_process(self.reactor, 1)

    def stopService(self) -> Deferred[None]:
        d: Deferred[Any] = super().stopService()
        return d.addCallback(lambda _: None)

    # ---------------------------------------- for lockdown and rescue

    @property
    def api(self) -> APIService | None:
        """The API service, while there is one."""
        return self.namedServices.get("api")  # type: ignore[return-value]

    @property
    def heartbeater(self) -> Heartbeater | None:
        """The heartbeater, while there is one."""
        return self.namedServices.get(  # type: ignore[return-value]
            "heartbeater")

    def stop_heartbeats(self) -> Deferred[None]:
        """Stop heartbeating (fires once the heartbeat in flight ended)."""
        return self._remove("heartbeater")

    def stop_api(self) -> Deferred[None]:
        """Stop serving the API (fires once the port is closed)."""
        return self._remove("api")

    def stop_serving(self, reason: str) -> Deferred[None]:
        """For good, as IPA after ``finalize_rescue`` and ``lockdown``: no
        more heartbeats, the API's port closed and its connections closed
        once what they are sending has gone (the answer to the command
        that asked for this).  The process stays (a service manager would
        only start the agent again)."""
        if self.stopped_serving is not None:
            return succeed(None)
        self.stopped_serving = reason
        log.warn("{reason}: the agent stops serving its API and stops "
                 "heartbeating", reason=reason)
        stopping = [self.stop_heartbeats(), self.stop_api()]
        return DeferredList(stopping, consumeErrors=True).addCallback(
            lambda _: None)

    def _remove(self, name: str) -> Deferred[None]:
        child = self.namedServices.get(name)
        if child is None:
            return succeed(None)
        stopped = self.removeService(child)
        if isinstance(stopped, Deferred):
            return stopped.addCallback(lambda _: None)
        return succeed(None)

    # ------------------------------------------------------------- start

    def warn_missing_tools(self, path: str = tools.SEARCH_PATH) -> list[str]:
        """Say once, at start-up, which tools this ramdisk lacks and what
        will not work without them; return their names."""
        absent = [t for t in tools.missing(tools.AGENT, path)
                  if not t.optional]
        for tool in absent:
            log.warn("tool {tool} not found (Debian package {package}); "
                     "without it: {needed_for}", tool=tool.name,
                     package=tool.package, needed_for=tool.needed_for)
        return [t.name for t in absent]

    async def _prepare(self) -> None:
        """The managers, the extensions, the command runner."""
        config = self.config
        log.info("ipa-twisted {version} starting", version=__version__)
        for line in config.describe():
            log.info("config: {line}", line=line)
        if config.unknown_file_keys:
            log.info("config files name options this agent does not have "
                     "(ignored): {keys}",
                     keys=", ".join(config.unknown_file_keys))
        self.warn_missing_tools()
        if self.context.guard.restricted:
            log.info("device allow-list in force: {devs}",
                     devs=", ".join(config.device_allowlist or []))
        hardware = self._hardware or HardwareManagers.from_entry_points()
        self.context.hardware = hardware
        self.context.extensions = load_extensions(self.context)
        runner = CommandRunner(self.context.extensions,
                               on_async_done=self.force_heartbeat)
        self.runner = runner
        _StopWith("commands", runner.stop).setServiceParent(self)
        self.context.on_progress_change = self._progress_changed
        await hardware.initialize(self.context)
        if config.hardware_initialization_delay:
            await deferLater(self.reactor, config.hardware_initialization_delay)

    async def _start(self) -> None:
        await self._prepare()
        # before the lookup, the certificate and the API allocate: what
        # this frees is theirs to reuse (once more when serving)
        drop_generated_sources()
        if os.path.exists(RESCUED_MARKER):
            # as IPA: once rescued, a restarted agent stays silent (the
            # tenant's network must not see its API)
            self.stopped_serving = "rescued"
            log.warn("{marker} exists: this ramdisk was rescued; no API, "
                     "no lookup, no heartbeat", marker=RESCUED_MARKER)
            return
        registration = None
        if self.config.standalone:
            log.info("standalone mode: no lookup, no heartbeat")
        else:
            registrar = self._make_registrar(self.context, self._outbound)
            registration = await registrar.register(self.token)
            if registration is None:
                return                       # told not to serve
            self.registration = registration
            self.token = registration.token
            self.context.refresh_node = \
                lambda: ensureDeferred(registrar.refresh_node())
        await self._serve(registration)
        if registration is not None:
            log.info("callback URL {url}", url=registration.callback_url)
            Heartbeater(self.reactor, self._send_heartbeat,
                        registration.heartbeat_timeout, self._rng
                        ).setServiceParent(self)

    async def _serve(self, registration: Registration | None) -> None:
        from ipa_twisted.api.service import api_service

        assert self.runner is not None
        api = api_service(
            self.context, self.runner, lambda: self.token, self.started_at,
            registration.certificate if registration else None)
        api.setServiceParent(self)
        try:
            await api.when_listening()
        except CancelledError:
            raise
        except Exception as e:
            raise FatalError(f"cannot listen on {api.host} port "
                             f"{api.port_number}: {e}") from None

    # --------------------------------------------------------- heartbeat

    def _send_heartbeat(self) -> Deferred[object]:
        return ensureDeferred(self._heartbeat())

    async def _heartbeat(self) -> object:
        registration = self.registration
        assert registration is not None
        progress = self.context.progress
        extra = None
        if progress is not None:
            # "start" while long work runs; its object may say "end" when
            # it holds the summary of finished work (an erase report)
            extra = {"agent_status": getattr(progress, "agent_status",
                                             "start"),
                     "agent_status_message": progress.text()}
        certificate = registration.certificate
        await registration.client.heartbeat(
            registration.node_uuid, registration.callback_url, self.token,
            certificate.cert_pem if certificate else None, extra=extra)
        return None

    def _progress_changed(self, progress: Any) -> None:
        """Show long work's progress on the running command."""
        last = self.runner.last() if self.runner is not None else None
        if last is not None and not last.done:
            last.progress = progress.snapshot() if progress is not None \
                else None

    def force_heartbeat(self) -> None:
        heartbeater = self.heartbeater
        if heartbeater is not None:
            heartbeater.force()
