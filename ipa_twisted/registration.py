"""Registration: from a booted machine to a node that Ironic knows, in one
step that returns what the API and the heartbeater need.

In order (each step logs what it did):

1. wait for a network interface with a MAC (up to
   ``interface_wait_timeout``), find Ironic (configured, or by mDNS) and
   collect the inventory;
2. inspection, when configured (it never stops registration; its answer
   may name the node);
3. find the Ironic API version, look the node up (random exponential
   backoff, up to ``lookup_timeout``);
4. take the lookup's answer: the node, the agent token, the run-time
   configuration (md5, TLS policy...);
5. find the address to advertise; with Ironic >= 1.68 and auto-TLS,
   generate the certificate; the callback URL.

:meth:`Registrar.register` returns a :class:`Registration`, or None when
the agent must not serve: Ironic handed the token out already and this
agent does not have it, or inspection was all there was to do (no Ironic
API URL: the agent stays idle, as IPA does, rather than exit and be
started again to inspect again).  A fatal problem raises :class:`FatalError` or an
:class:`~ipa_twisted.errors.AgentError` (one line for the log).
"""

from __future__ import annotations

import ipaddress
import random
import socket
from typing import TYPE_CHECKING, Any, Callable, Sequence
from urllib.parse import urlparse

import attrs
from twisted.internet.defer import CancelledError
from twisted.internet.task import deferLater
from twisted.logger import Logger

from ipa_twisted import errors, tls
from ipa_twisted.config import TOKEN_MIN_LENGTH
from ipa_twisted.hardware import netif
from ipa_twisted.hardware.generic import GenericHardwareManager
from ipa_twisted.hardware.manager import HardwareManager
from ipa_twisted.inspection import inspection_enabled
from ipa_twisted.ironic import (
    AGENT_VERIFY_CA_VERSION,
    IronicClient,
    LookupResult,
    version_text,
)
from ipa_twisted.retry import GaveUp, constant, retry

if TYPE_CHECKING:
    from ipa_twisted.context import RunningAgent
    from ipa_twisted.httpclient import Outbound

log = Logger()

#: what Ironic sends instead of a token it has handed out already
MASKED_TOKEN = "******"
#: how often to look for a network interface at start
INTERFACE_POLL = 5.0


class FatalError(Exception):
    """Start-up cannot go on; the text is the one line to log."""


class _NoAddress(Exception):
    pass


def _implements(manager: Any, method: str) -> bool:
    """Does ``manager`` have ``method`` of its own (not the base class's
    "incompatible")?"""
    return getattr(type(manager), method, None) is not getattr(
        HardwareManager, method)


def format_callback_url(protocol: str, host: str, port: int) -> str:
    try:
        if ipaddress.ip_address(host).version == 6:
            host = f"[{host}]"
    except ValueError:
        pass
    return f"{protocol}://{host}:{port}"


@attrs.frozen
class Registration:
    """What registration learnt and made."""

    client: IronicClient
    #: the node as the lookup gave it
    node: dict[str, Any]
    #: the MAC addresses the node was looked up with
    macs: tuple[str, ...]
    #: the token in force (Ironic's, or the pre-shared one)
    token: str | None
    heartbeat_timeout: float
    callback_url: str
    certificate: tls.GeneratedCertificate | None

    @property
    def node_uuid(self) -> str:
        return str(self.node["uuid"])


def accept_lookup(context: RunningAgent, outbound: Outbound | None,
                  token: str | None, lookup: LookupResult
                  ) -> tuple[bool, str | None]:
    """Take a lookup answer: the node, the run-time configuration, the
    TLS policy.  ``(serve, token in force)``; ``serve`` is False when the
    agent must not serve (the token was handed out to someone else)."""
    context.cache_node(lookup.node)
    cfg = lookup.config
    context.lookup_config.update(
        {k: v for k, v in cfg.items() if k != "agent_token"})
    given = cfg.get("agent_token")
    if isinstance(given, str) and len(given) >= TOKEN_MIN_LENGTH:
        token = given
        log.info("agent token received from Ironic")
    elif given == MASKED_TOKEN:
        if token is None:
            log.critical(
                "Ironic has already handed out the agent token for node "
                "{uuid} and this agent does not have it: refusing to serve "
                "commands (power-cycle the node to get a new token)",
                uuid=lookup.node_uuid)
            return False, None
        log.info("Ironic's token was pre-shared; keeping ours")
    elif given is not None:
        log.warn("ignoring an invalid agent token from lookup")
    if cfg.get("tls_min_version"):
        log.info("Ironic asks for TLS >= {v}", v=cfg["tls_min_version"])
    if outbound is not None and outbound.apply_tls(
            cfg.get("tls_min_version"), cfg.get("tls_cipher_suites")):
        log.info("outbound TLS now >= {v} (Ironic's lookup); idle "
                 "connections are closed", v=outbound.policy.min_version)
    return True, token


@attrs.define
class Registrar:
    """Registers the agent (see the module docstring).

    ``interfaces``, ``route_source`` and ``ipv4_address`` read the
    machine's network (injected for tests).
    """

    context: RunningAgent
    outbound: Outbound | None = None
    rng: random.Random = attrs.field(factory=random.SystemRandom)
    interfaces: Callable[[], list[netif.NetworkInterface]] = netif.list_interfaces
    route_source: Callable[[str], str | None] = netif.route_source
    ipv4_address: Callable[[str], str | None] = netif.ipv4_address
    #: set once the node is known (lookup)
    client: IronicClient | None = None
    macs: tuple[str, ...] = ()

    @property
    def config(self) -> Any:
        return self.context.config

    @property
    def reactor(self) -> Any:
        return self.context.reactor

    async def register(self, token: str | None) -> Registration | None:
        config = self.config
        await self._wait_for_interfaces()
        api_urls = await self._api_urls()
        self.macs = await self._lookup_macs()

        node_uuid = None
        if inspection_enabled(self.context.config):
            # imported only by an agent that inspects (the collectors)
            from ipa_twisted.inspection import inspector as inspection

            t0 = self.reactor.seconds()
            result = await inspection.inspect(self.context, api_urls)
            log.info("inspection took {t:.2f} s",
                     t=self.reactor.seconds() - t0)
            node_uuid = result.node_uuid if result is not None else None
            config = self.config  # inspection's mDNS may have changed it
        if not api_urls and inspection.is_enabled(config):
            # as IPA: inspection was the job.  Ending the process would
            # only have the ramdisk start the agent again, and inspect
            # again; without a lookup there is no token, so no API either
            log.info("inspection done and no Ironic API URL: no lookup, no "
                     "API, no heartbeats; idle until the machine is powered "
                     "off")
            return None
        if not api_urls:
            raise FatalError("no Ironic API URL (ipa-api-url / --api-url, or "
                             "found by mDNS) and not --standalone: nothing "
                             "more to do")

        client = IronicClient(
            self.context.http, self.reactor, api_urls,
            request_timeout=config.http_request_timeout,
            pinned_version=config.ironic_api_version,
            request_id=config.global_request_id, rng=self.rng,
        )
        version = await client.api_version()
        t0 = self.reactor.seconds()
        lookup = await client.lookup(self.macs, node_uuid,
                                     config.lookup_timeout,
                                     config.lookup_interval)
        log.info("lookup took {t:.2f} s", t=self.reactor.seconds() - t0)
        serve, token = accept_lookup(self.context, self.outbound, token,
                                     lookup)
        if not serve:
            return None
        self.client = client

        host = await self._advertise_host(client)
        protocol = config.advertise_protocol
        certificate = None
        if not config.listen_tls and config.enable_auto_tls \
                and version >= AGENT_VERIFY_CA_VERSION:
            certificate = await self._generate_certificate(host)
            protocol = "https"
        elif config.enable_auto_tls and not config.listen_tls:
            log.info("Ironic API {v} is older than 1.68: no automatic TLS",
                     v=version_text(version))
        return Registration(
            client=client, node=dict(lookup.node), macs=self.macs,
            token=token,
            heartbeat_timeout=float(lookup.config["heartbeat_timeout"]),
            callback_url=format_callback_url(protocol, host,
                                             config.advertise_port),
            certificate=certificate)

    async def refresh_node(self) -> None:
        """Look the node up again (for its latest properties)."""
        if self.client is None:
            return
        node = self.context.node or {}
        result = await self.client.lookup(
            self.macs, node.get("uuid"), self.config.lookup_timeout,
            self.config.lookup_interval)
        self.context.cache_node(result.node)

    # ------------------------------------------------------------- steps

    async def _lookup_macs(self) -> tuple[str, ...]:
        """The MAC addresses the lookup sends.  The lookup needs nothing
        else, so it does not wait for the inventory (lshw, lscpu, lsblk,
        the BMC probe: seconds under emulation): the NICs the kernel
        lists, when the generic manager's own code would list them (not a
        subclass that lists NICs its way); what a manager of higher
        priority lists (its NICs, else its inventory's) otherwise."""
        hardware = self.context.hardware
        for manager in hardware.managers:
            nics_of = _implements(manager, "list_network_interfaces")
            if not (nics_of or _implements(manager, "list_hardware_info")):
                continue
            if all(getattr(type(manager), m, None) is getattr(
                    GenericHardwareManager, m) for m in (
                    "list_network_interfaces", "list_hardware_info")):
                # the generic manager's own: the kernel's NICs
                nics: Any = self.interfaces()
            elif nics_of:
                nics = await hardware.dispatch("list_network_interfaces")
            else:
                nics = (await hardware.dispatch("list_hardware_info")
                        )["interfaces"]
            break
        else:
            raise errors.HardwareManagerMethodNotFound(
                "list_network_interfaces")
        macs = (nic.get("mac_address") if isinstance(nic, dict)
                else getattr(nic, "mac_address", None) for nic in nics)
        return tuple(mac for mac in macs if mac)

    async def _wait_for_interfaces(self) -> None:
        timeout = self.config.interface_wait_timeout
        deadline = self.reactor.seconds() + timeout
        while not [i for i in self.interfaces() if i.mac_address]:
            if self.reactor.seconds() >= deadline:
                log.warn("no network interface with a MAC address after "
                         "{t} s; looking up anyway", t=timeout)
                return
            await deferLater(self.reactor, INTERFACE_POLL)

    async def _api_urls(self) -> list[str] | None:
        """The API URLs: configured, or found by mDNS (``mdns``: failure is
        fatal; ``use_mdns`` with no URL: failure is a warning)."""
        config = self.config
        explicit = config.api_url == ["mdns"]
        if config.api_url and not explicit:
            return list(config.api_url)
        if not explicit and not config.use_mdns:
            return None
        from ipa_twisted import mdns  # only an agent that uses mDNS

        try:
            endpoint = await mdns.find_endpoint(
                self.reactor, mdns.API_SERVICE, config.mdns_lookup_attempts)
        except CancelledError:
            raise
        except Exception as e:
            if explicit:
                raise FatalError(f"ipa-api-url=mdns: cannot find the Ironic "
                                 f"API by mDNS: {e}") from None
            log.warn("cannot find the Ironic API by mDNS: {e}", e=e)
            return None
        log.info("mDNS: Ironic API at {url}", url=endpoint.url)
        self.context.config = mdns.apply_overrides(config,
                                                   endpoint.properties)
        return [endpoint.url.rstrip("/")]

    async def _advertise_host(self, client: IronicClient) -> str:
        config = self.config
        if config.advertise_host:
            return str(config.advertise_host)

        async def find() -> str:
            if config.network_interface:
                found = self.ipv4_address(config.network_interface)
            else:
                found = await self._routable_address(client.api_urls)
            if not found:
                raise _NoAddress()
            return found

        try:
            found = await retry(self.reactor, find,
                                constant(config.ip_lookup_sleep),
                                attempts=config.ip_lookup_attempts,
                                retryable=lambda e: isinstance(e, _NoAddress))
        except GaveUp:
            raise errors.LookupAgentIPError(
                "Could not find an address to advertise: set "
                "ipa-advertise-host or ipa-network-interface") from None
        log.info("advertise address {ip}", ip=found)
        return found

    async def _routable_address(self, api_urls: Sequence[str]) -> str | None:
        for url in api_urls:
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
                source = self.route_source(ip)
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
        # in the agent's process: in a child, the interpreter's start and
        # cryptography's import cost seconds under emulation before the
        # first heartbeat, for ~1 MiB of idle memory
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
