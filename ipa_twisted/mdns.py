"""Finding the Ironic API and the inspector by multicast DNS (zeroconf).

Services are ``baremetal._openstack._tcp.local.`` (the API) and
``baremetal-introspection._openstack._tcp.local.`` (the inspector).  From
the answer: the first address that is not loopback and has a route wins
(else the first valid one, with a warning); the host is that address when
the server name ends in ``.local.``, else the server name; the protocol is
TXT ``protocol``, else http on port 80 and https otherwise; TXT ``path`` is
appended.  Other TXT keys ``ipa_<option>`` are configuration overrides,
applied only for options in the allow-list.

zeroconf blocks: :func:`find_endpoint` asks from a thread, and waits
between attempts on the reactor.
"""

from __future__ import annotations

import ipaddress
from typing import Any, Callable, Mapping, Sequence

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger

from ipa_twisted import errors
from ipa_twisted.hardware.netif import route_source
from ipa_twisted.retry import GaveUp, backoff, retry

log = Logger()

DOMAIN = "_openstack._tcp.local."
API_SERVICE = "baremetal"
INSPECTOR_SERVICE = "baremetal-introspection"


class ServiceLookupFailure(errors.AgentError):
    message = "Cannot find a service by multicast DNS"


@attrs.frozen
class Endpoint:
    url: str
    #: remaining TXT properties (``ipa_*`` overrides among them)
    properties: dict[str, Any]


def _decode(value: Any) -> Any:
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            return value
    return value


def endpoint_from_info(
    service: str,
    addresses: Sequence[str],
    server: str,
    port: int,
    properties: Mapping[Any, Any],
    routable: Callable[[str], bool] = lambda a: route_source(a) is not None,
) -> Endpoint:
    """The endpoint URL for a resolved service (pure but for ``routable``)."""
    chosen = fallback = None
    for addr in addresses:
        try:
            ip = ipaddress.ip_address(addr)
        except ValueError:
            log.debug("mDNS: skipping invalid address {a}", a=addr)
            continue
        if ip.is_loopback:
            log.debug("mDNS: skipping loopback address {a}", a=addr)
            continue
        if routable(addr):
            chosen = addr
            break
        if fallback is None:
            fallback = addr
    if chosen is None:
        if fallback is None:
            raise ServiceLookupFailure(
                f"none of the addresses {list(addresses)} of service "
                f"{service} is usable")
        log.warn("mDNS: none of {all} seems routable; using {a}",
                 all=list(addresses), a=fallback)
        chosen = fallback
    props: dict[str, Any] = {}
    for key, value in properties.items():
        key = _decode(key)
        if isinstance(key, bytes):
            raise ServiceLookupFailure(
                f"service {service} has a TXT key that is not UTF-8: {key!r}")
        props[key] = _decode(value)
    path = props.pop("path", "") or ""
    protocol = props.pop("protocol", None) or ("http" if port == 80
                                               else "https")
    if server.endswith(".local."):
        host = chosen
        if ipaddress.ip_address(host).version == 6:
            host = f"[{host}]"
    else:
        host = server.rstrip(".")
    return Endpoint(f"{protocol}://{host}:{port}{path}", props)


def ask_blocking(service: str, timeout_ms: int = 3000) -> Endpoint | None:
    """Ask once by mDNS (blocking: call it from a thread); None when
    nothing answered within ``timeout_ms``."""
    import zeroconf

    zc = zeroconf.Zeroconf(interfaces=zeroconf.InterfaceChoice.All,
                           ip_version=zeroconf.IPVersion.All)
    try:
        info = zc.get_service_info(DOMAIN, f"{service}.{DOMAIN}",
                                   timeout=timeout_ms)
        if info is None:
            return None
        return endpoint_from_info(service, info.parsed_addresses(),
                                  info.server or "", info.port or 0,
                                  info.properties)
    finally:
        zc.close()


class _NoAnswer(Exception):
    pass


def find_endpoint(
    reactor: Any, service: str, attempts: int = 3,
    ask: Callable[[str], "Deferred[Endpoint | None]"] | None = None,
) -> "Deferred[Endpoint]":
    """Ask up to ``attempts`` times (each in a thread, up to 3 s), 0.1 s
    after the first miss, then twice as long each time.  Cancelling
    stops at once (a question in flight ends by itself within its 3 s
    and closes its sockets)."""
    if ask is None:
        def ask(service: str) -> "Deferred[Endpoint | None]":
            return deferToThreadPool(reactor, reactor.getThreadPool(),
                                     ask_blocking, service)

    async def once() -> Endpoint:
        assert ask is not None
        endpoint = await ask(service)
        if endpoint is None:
            raise _NoAnswer()
        return endpoint

    async def find() -> Endpoint:
        try:
            return await retry(reactor, once, backoff(0.1, 10.0),
                               attempts=attempts,
                               retryable=lambda e: isinstance(e, _NoAnswer))
        except GaveUp:
            raise ServiceLookupFailure(
                f"no answer for {service}.{DOMAIN} after {attempts} "
                f"attempts") from None

    return Deferred.fromCoroutine(find())


def apply_overrides(config: Any, properties: Mapping[str, Any]) -> Any:
    """``config`` with the allowed ``ipa_*`` TXT overrides applied."""
    from ipa_twisted.config import OPTIONS_BY_NAME

    values = {}
    for name, raw in overrides(properties,
                               config.mdns_allowed_overrides).items():
        option = OPTIONS_BY_NAME.get(name)
        if option is None:
            log.warn("mDNS: no option {name} here; ignored", name=name)
            continue
        try:
            values[name] = option.parse(raw)
        except ValueError as e:
            log.warn("mDNS: bad value for {name}: {e}", name=name, e=e)
            continue
        log.info("mDNS: {name} set to {value}", name=name, value=raw)
    return config.replace(**values) if values else config


def overrides(properties: Mapping[str, Any], allowed: Sequence[str]
              ) -> dict[str, str]:
    """``ipa_<option>`` TXT keys whose option is allowed: ``{option: raw}``.

    Others are skipped with a warning (an mDNS answer is not authenticated).
    """
    found: dict[str, str] = {}
    for key, value in properties.items():
        if not key.startswith("ipa_"):
            log.warn("mDNS: ignoring unknown TXT key {key}", key=key)
            continue
        option = key[len("ipa_"):]
        if option not in allowed:
            log.warn("mDNS: not allowed to override {option} (allowed: "
                     "{allowed})", option=option, allowed=", ".join(allowed))
            continue
        found[option] = str(value)
    return found
