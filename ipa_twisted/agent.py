"""The agent service: start-up sequence, lookup, API, heartbeats.

Start-up, in order (each step logs what it did):

1. load the hardware managers and the extensions;
2. wait for a network interface with a MAC, collect the inventory;
3. find the Ironic API version, look the node up (random exponential
   backoff, up to ``lookup_timeout``);
4. apply the lookup answer (node, token, heartbeat timeout, TLS policy...);
5. find the advertise address; with Ironic >= 1.68, generate the TLS
   certificate;
6. serve the API, then heartbeat.

``--standalone`` skips 2-5 and 6's heartbeats.  A fatal error (no lookup
within ``lookup_timeout``, no advertise address, the API port taken) is
logged in one line and ends the process with exit status 1, so that the
ramdisk's service manager restarts it.
"""

from __future__ import annotations

import ipaddress
import os
import random
import socket
import sys
import time
from typing import Any
from urllib.parse import urlparse

from twisted.application.service import MultiService
from twisted.internet import endpoints
from twisted.internet.defer import (
    CancelledError,
    Deferred,
    DeferredList,
    ensureDeferred,
    maybeDeferred,
    succeed,
)
from twisted.internet.interfaces import IListeningPort
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import HTTPConnectionPool, _HTTP11ClientFactory

from ipa_twisted import __version__, errors, mdns, tls, tools
from ipa_twisted.api.app import AgentAPI
from ipa_twisted.api.site import (AgentSite, connection_caps,
                                  raise_open_file_limit)
from ipa_twisted.commands.base import CommandRunner
from ipa_twisted.commands.rescue import RESCUED_MARKER
from ipa_twisted.config import (
    TOKEN_MIN_LENGTH,
    Config,
    default_listen_host,
)
from ipa_twisted.context import AgentContext
from ipa_twisted.extensions import load_extensions
from ipa_twisted.hardware import netif
from ipa_twisted.hardware.disks import DeviceGuard
from ipa_twisted.hardware.manager import HardwareManagers
from ipa_twisted.inspection import inspector as inspection
from ipa_twisted.heartbeat import Heartbeater
from ipa_twisted.ironic import (
    AGENT_VERIFY_CA_VERSION,
    IronicClient,
    LookupResult,
    version_text,
)
from ipa_twisted.process import ProcessRunner

log = Logger()

MASKED_TOKEN = "******"


_PENDING = object()


class _QuietClientFactory(_HTTP11ClientFactory):
    noisy = False


class QuietPool(HTTPConnectionPool):
    """A connection pool that does not log every connection it opens."""

    _factory = _QuietClientFactory


class FatalError(Exception):
    """Start-up cannot go on; the text is the one line to log."""


def format_callback_url(protocol: str, host: str, port: int) -> str:
    try:
        if ipaddress.ip_address(host).version == 6:
            host = f"[{host}]"
    except ValueError:
        pass
    return f"{protocol}://{host}:{port}"


def exit_process(reactor: Any, code: int) -> None:
    """Stop the reactor, then end the process with ``code``."""

    def bye() -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)

    reactor.addSystemEventTrigger("after", "shutdown", bye)
    if reactor.running:
        reactor.stop()


class AgentService(MultiService):
    """The whole agent as one service (see the module docstring)."""

    def __init__(
        self,
        config: Config,
        reactor: Any,
        http: Any = None,
        hardware: HardwareManagers | None = None,
        rng: random.Random | None = None,
        exit_on_fatal: bool = True,
    ) -> None:
        super().__init__()
        self.config = config
        self.reactor = reactor
        self._rng = rng or random.SystemRandom()
        self._exit_on_fatal = exit_on_fatal
        if http is None:
            from treq.client import HTTPClient
            from twisted.web.client import Agent

            pool = QuietPool(reactor, persistent=True)
            pool.maxPersistentPerHost = 4
            policy = tls.client_policy(config.insecure, config.cafile,
                                       config.certfile, config.keyfile,
                                       config.tls_min_version,
                                       config.tls_cipher_suites)
            http = HTTPClient(Agent(reactor, contextFactory=policy,
                                         pool=pool))
            self._tls_policy: tls.ClientPolicy | None = policy
            self._pool: QuietPool | None = pool
        else:
            self._tls_policy = None
            self._pool = None
        self.http = http
        self.context = AgentContext(
            config=config,
            reactor=reactor,
            process=ProcessRunner(reactor, reactor),
            guard=DeviceGuard(config.device_allowlist),
            http=http,
            tls_policy=self._tls_policy,
            force_heartbeat=self.force_heartbeat,
            current_token=lambda: self.token,
            stop_serving=self.stop_serving,
        )
        self._hardware = hardware
        self.runner: CommandRunner | None = None
        self.token: str | None = config.agent_token
        self.started_at = time.time()
        self.node_uuid: str | None = None
        self.callback_url: str | None = None
        self.certificate: tls.GeneratedCertificate | None = None
        self.client: IronicClient | None = None
        self.heartbeater: Heartbeater | None = None
        self.port: IListeningPort | None = None
        self.site: AgentSite | None = None
        #: why the API stopped for good (rescue, lockdown), or None
        self.stopped_serving: str | None = None
        self.inventory: dict[str, Any] | None = None
        self.macs: list[str] = []
        #: how start-up ended: None (serving), a Failure, or not yet
        self._outcome: Failure | None | object = _PENDING
        self._ready_waiters: list[Deferred[None]] = []
        self._startup: Deferred[None] | None = None

    # ------------------------------------------------------------ service

    def startService(self) -> None:
        super().startService()
        self._startup = ensureDeferred(self._start())
        self._startup.addCallbacks(self._started, self._start_failed)

    def when_ready(self) -> Deferred[None]:
        """Fires once start-up is over (the agent serves), or fails with
        what stopped it (``CancelledError`` when the agent was stopped
        first)."""
        d: Deferred[None] = Deferred()
        if self._outcome is _PENDING:
            self._ready_waiters.append(d)
        elif isinstance(self._outcome, Failure):
            d.errback(self._outcome)
        else:
            d.callback(None)
        return d

    def _ended_start_up(self, outcome: Failure | None) -> None:
        if self._outcome is not _PENDING:
            return
        self._outcome = outcome
        waiters, self._ready_waiters = self._ready_waiters, []
        for d in waiters:
            if outcome is None:
                d.callback(None)
            else:
                d.errback(outcome)

    def _started(self, _: Any) -> None:
        self._ended_start_up(None)

    def _start_failed(self, failure: Failure) -> None:
        cancelled = failure.check(CancelledError) is not None
        if failure.check(FatalError, errors.AgentError):
            log.critical("agent cannot start: {error}",
                         error=str(failure.value))
        elif not cancelled:
            log.failure("agent cannot start", failure)
        # whoever waits for start-up learns that it will not come
        self._ended_start_up(failure)
        if cancelled:
            return
        if self._exit_on_fatal and self.running:
            exit_process(self.reactor, 1)

    def stopService(self) -> Deferred[None]:
        super().stopService()
        waits: list[Deferred[Any]] = []
        if self._startup is not None and not self._startup.called:
            self._startup.cancel()
        if self.heartbeater is not None:
            waits.append(self.heartbeater.stop())
        if self.port is not None:
            stopping = self.port.stopListening()
            if stopping is not None:
                waits.append(stopping)
        if self.runner is not None:
            waits.append(self.runner.stop())
        # and whatever tool still runs (start-up probes...), with what it
        # started
        waits.append(self.context.process.stop())
        return DeferredList(waits, consumeErrors=True).addCallback(
            lambda _: None)

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

    async def _start(self) -> None:
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
                     devs=", ".join(config.device_allowlist))
        hardware = self._hardware or HardwareManagers.from_entry_points()
        self.context.hardware = hardware
        self.context.extensions = load_extensions(self.context)
        self.runner = CommandRunner(self.context.extensions,
                                    on_async_done=self.force_heartbeat)
        self.context.on_progress_change = self._progress_changed
        await hardware.initialize(self.context)
        if config.hardware_initialization_delay:
            await deferLater(self.reactor, config.hardware_initialization_delay)

        if os.path.exists(RESCUED_MARKER):
            # as IPA: once rescued, a restarted agent stays silent (the
            # tenant's network must not see its API)
            self.stopped_serving = "rescued"
            log.warn("{marker} exists: this ramdisk was rescued; no API, "
                     "no lookup, no heartbeat", marker=RESCUED_MARKER)
            return
        if config.standalone:
            log.info("standalone mode: no lookup, no heartbeat")
            await self._serve(None)
            return
        await self._wait_for_interfaces()
        api_urls = await self._api_urls()
        self.inventory = await hardware.dispatch("list_hardware_info")
        self.macs = [i["mac_address"] for i in self.inventory["interfaces"]
                     if i.get("mac_address")]

        node_uuid = None
        if inspection.is_enabled(self.context.config):
            t0 = self.reactor.seconds()
            result = await inspection.inspect(self.context, api_urls)
            log.info("inspection took {t:.2f} s",
                     t=self.reactor.seconds() - t0)
            node_uuid = result.node_uuid if result is not None else None
        if not api_urls:
            raise FatalError("no Ironic API URL (ipa-api-url / --api-url, or "
                             "found by mDNS) and not --standalone: nothing "
                             "more to do")

        self.client = IronicClient(
            self.http, self.reactor, api_urls,
            request_timeout=config.http_request_timeout,
            pinned_version=config.ironic_api_version,
            request_id=config.global_request_id, rng=self._rng,
        )
        version = await self.client.api_version()
        t0 = self.reactor.seconds()
        lookup = await self.client.lookup(
            self.macs, node_uuid, config.lookup_timeout,
            config.lookup_interval)
        log.info("lookup took {t:.2f} s", t=self.reactor.seconds() - t0)
        if not self._apply_lookup(lookup):
            return
        self.context.refresh_node = \
            lambda: ensureDeferred(self._refresh_node())

        host = await self._advertise_host()
        protocol = config.advertise_protocol
        if not config.listen_tls and config.enable_auto_tls \
                and version >= AGENT_VERIFY_CA_VERSION:
            self.certificate = await self._generate_certificate(host)
            protocol = "https"
        elif config.enable_auto_tls and not config.listen_tls:
            log.info("Ironic API {v} is older than 1.68: no automatic TLS",
                     v=version_text(version))
        self.callback_url = format_callback_url(protocol, host,
                                                config.advertise_port)
        await self._serve(self.certificate)
        log.info("callback URL {url}", url=self.callback_url)
        self.heartbeater = Heartbeater(
            self.reactor, self._send_heartbeat,
            float(lookup.config["heartbeat_timeout"]), self._rng)
        self.heartbeater.start()

    async def _api_urls(self) -> list[str] | None:
        """The API URLs: configured, or found by mDNS (``mdns``: failure is
        fatal; ``use_mdns`` with no URL: failure is a warning)."""
        config = self.config
        explicit = config.api_url == ["mdns"]
        if config.api_url and not explicit:
            return list(config.api_url)
        if not explicit and not config.use_mdns:
            return None
        try:
            endpoint = await mdns.find_endpoint(
                self.reactor, mdns.API_SERVICE, config.mdns_lookup_attempts)
        except Exception as e:
            if explicit:
                raise FatalError(f"ipa-api-url=mdns: cannot find the Ironic "
                                 f"API by mDNS: {e}") from None
            log.warn("cannot find the Ironic API by mDNS: {e}", e=e)
            return None
        log.info("mDNS: Ironic API at {url}", url=endpoint.url)
        self._apply_overrides(endpoint.properties)
        return [endpoint.url.rstrip("/")]

    def _apply_overrides(self, properties: dict[str, Any]) -> None:
        self.config = mdns.apply_overrides(self.config, properties)
        self.context.config = self.config

    async def _wait_for_interfaces(self) -> None:
        deadline = self.reactor.seconds() + self.config.interface_wait_timeout
        while True:
            found = [i for i in netif.list_interfaces() if i.mac_address]
            if found:
                return
            if self.reactor.seconds() >= deadline:
                log.warn("no network interface with a MAC address after "
                         "{t} s; looking up anyway",
                         t=self.config.interface_wait_timeout)
                return
            await deferLater(self.reactor, 5.0)

    def _apply_lookup(self, lookup: LookupResult) -> bool:
        """Apply a lookup answer; False when the agent must not serve."""
        self.node_uuid = lookup.node_uuid
        self.context.cache_node(lookup.node)
        cfg = lookup.config
        self.context.lookup_config.update(
            {k: v for k, v in cfg.items() if k != "agent_token"})
        token = cfg.get("agent_token")
        if isinstance(token, str) and len(token) >= TOKEN_MIN_LENGTH:
            self.token = token
            log.info("agent token received from Ironic")
        elif token == MASKED_TOKEN:
            if self.token is None:
                log.critical(
                    "Ironic has already handed out the agent token for "
                    "node {uuid} and this agent does not have it: refusing "
                    "to serve commands (power-cycle the node to get a new "
                    "token)", uuid=self.node_uuid)
                return False
            log.info("Ironic's token was pre-shared; keeping ours")
        elif token is not None:
            log.warn("ignoring an invalid agent token from lookup")
        if cfg.get("tls_min_version"):
            log.info("Ironic asks for TLS >= {v}", v=cfg["tls_min_version"])
        if self._tls_policy is not None and self._tls_policy.apply(
                cfg.get("tls_min_version"), cfg.get("tls_cipher_suites")):
            log.info("outbound TLS now >= {v} (Ironic's lookup); idle "
                     "connections are closed", v=self._tls_policy.min_version)
            if self._pool is not None:
                self._pool.closeCachedConnections()
        if self.heartbeater is not None:
            self.heartbeater.heartbeat_timeout = float(cfg["heartbeat_timeout"])
        return True

    async def _refresh_node(self) -> None:
        if self.client is None:
            return
        result = await self.client.lookup(
            self.macs, self.node_uuid, self.config.lookup_timeout,
            self.config.lookup_interval)
        self.context.cache_node(result.node)

    async def _advertise_host(self) -> str:
        config = self.config
        if config.advertise_host:
            return str(config.advertise_host)
        assert self.client is not None
        for attempt in range(1, config.ip_lookup_attempts + 1):
            if config.network_interface:
                found = netif.ipv4_address(config.network_interface)
            else:
                found = await self._routable_address()
            if found:
                log.info("advertise address {ip}", ip=found)
                return found
            if attempt < config.ip_lookup_attempts:
                await deferLater(self.reactor, config.ip_lookup_sleep)
        raise errors.LookupAgentIPError(
            "Could not find an address to advertise: set ipa-advertise-host "
            "or ipa-network-interface")

    async def _routable_address(self) -> str | None:
        assert self.client is not None
        for url in self.client.api_urls:
            host = urlparse(url).hostname
            if not host:
                continue
            try:
                ipaddress.ip_address(host)
                addresses = [host]
            except ValueError:
                try:
                    infos = await self.context.in_thread(
                        socket.getaddrinfo, host, None, 0, socket.SOCK_STREAM)
                except OSError:
                    continue
                addresses = [str(info[4][0]) for info in infos]
            for ip in addresses:
                source = netif.route_source(ip)
                if source:
                    return source
        return None

    async def _generate_certificate(self, host: str
                                    ) -> tls.GeneratedCertificate:
        try:
            ipaddress.ip_address(host)
        except ValueError:
            raise FatalError(
                f"automatic TLS needs an IP address to advertise, not "
                f"{host!r}") from None
        config = self.config
        cert = await self.context.in_thread(
            tls.generate_certificate, host, socket.gethostname(),
            config.tls_certificate_curve, config.auto_tls_allowed_clock_skew,
            config.auto_tls_validity_days)
        try:
            cert = tls.save_certificate(cert, config.run_dir)
        except OSError as e:
            log.warn("cannot save the TLS certificate in {d}: {e}",
                     d=config.run_dir, e=e)
        log.info("generated a TLS certificate for {ip}", ip=host)
        return cert

    async def _serve(self, cert: tls.GeneratedCertificate | None) -> None:
        config = self.config
        assert self.runner is not None
        api = AgentAPI(self.runner, lambda: self.token, self.started_at)
        open_files = raise_open_file_limit()
        total, per_peer = connection_caps(
            config.api_max_connections, config.api_max_connections_per_peer,
            open_files)
        site = self.site = AgentSite(api, self.reactor, total, per_peer)
        host = config.listen_host or default_listen_host()
        min_version = tls.stricter(
            self.context.lookup_config.get("tls_min_version"),
            config.tls_min_version)
        ciphers = self.context.lookup_config.get("tls_cipher_suites") \
            or config.tls_cipher_suites
        if config.listen_tls:
            with open(config.tls_cert_file) as f1, \
                    open(config.tls_key_file) as f2:
                cert_pem, key_pem = f1.read(), f2.read()
        elif cert is not None:
            cert_pem, key_pem = cert.cert_pem, cert.key_pem
        else:
            cert_pem = key_pem = ""
        if cert_pem:
            options = tls.server_options(cert_pem, key_pem, min_version,
                                         ciphers)
            endpoint: Any = endpoints.SSL4ServerEndpoint(
                self.reactor, config.listen_port, options, interface=host)
            scheme = "https"
        else:
            endpoint = endpoints.TCP4ServerEndpoint(
                self.reactor, config.listen_port, interface=host)
            scheme = "http"
        try:
            self.port = await endpoint.listen(site)
        except Exception as e:
            raise FatalError(
                f"cannot listen on {host} port {config.listen_port}: {e}"
            ) from None
        log.info("agent API listening on {url}",
                 url=format_callback_url(scheme, host, config.listen_port))

    def stop_serving(self, reason: str) -> Deferred[None]:
        """For good, as IPA after ``finalize_rescue`` and ``lockdown``:
        no more heartbeats, the API's port closed and its connections
        closed once what they are sending has gone (the answer to the
        command that asked for this).  The process stays (a service
        manager would only start the agent again)."""
        if self.stopped_serving is not None:
            return succeed(None)
        self.stopped_serving = reason
        log.warn("{reason}: the agent stops serving its API and stops "
                 "heartbeating", reason=reason)
        waits: list[Deferred[Any]] = []
        if self.heartbeater is not None:
            waits.append(self.heartbeater.stop())
        if self.port is not None:
            port, self.port = self.port, None
            waits.append(maybeDeferred(port.stopListening))
        if self.site is not None:
            waits.append(self.site.close_connections())
        return DeferredList(waits, consumeErrors=True).addCallback(
            lambda _: None)

    # --------------------------------------------------------- heartbeat

    def _send_heartbeat(self) -> Deferred[object]:
        return ensureDeferred(self._heartbeat())

    async def _heartbeat(self) -> object:
        assert self.client is not None and self.node_uuid is not None
        assert self.callback_url is not None
        progress = self.context.progress
        extra = None
        if progress is not None:
            # "start" while long work runs; its object may say "end" when
            # it holds the summary of finished work (an erase report)
            extra = {"agent_status": getattr(progress, "agent_status",
                                             "start"),
                     "agent_status_message": progress.text()}
        await self.client.heartbeat(
            self.node_uuid, self.callback_url, self.token,
            self.certificate.cert_pem if self.certificate else None,
            extra=extra)
        return None

    def _progress_changed(self, progress: Any) -> None:
        """Show long work's progress on the running command."""
        last = self.runner.last() if self.runner is not None else None
        if last is not None and not last.done:
            last.progress = progress.snapshot() if progress is not None \
                else None

    def force_heartbeat(self) -> None:
        if self.heartbeater is not None:
            self.heartbeater.force()
