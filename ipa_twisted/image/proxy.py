"""HTTP(S) proxies for image downloads (``image_info`` ``proxies`` and
``no_proxy``, as the conductor sends them from the node's driver_info).

http:// URLs go through the proxy as absolute-URI requests (Twisted's
``ProxyAgent``); https:// URLs go through a ``CONNECT`` tunnel, then TLS to
the image server itself (verified as without a proxy).  Credentials in the
proxy URL become a ``Proxy-Authorization`` header.
"""

from __future__ import annotations

import base64
import ipaddress
from typing import Any, Mapping
from urllib.parse import unquote, urlparse

from twisted.internet import defer
from twisted.internet.endpoints import (
    HostnameEndpoint,
    TCP4ClientEndpoint,
    TCP6ClientEndpoint,
)
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.web.client import Agent, ProxyAgent
from twisted.web.iweb import IAgentEndpointFactory
from zope.interface import implementer

from ipa_twisted import errors
from ipa_twisted.httpclient import HTTPClient, client_for


def bypass(host: str, no_proxy: str | None) -> bool:
    """Does ``no_proxy`` (comma list: host suffixes, IPs, CIDRs, ``*``)
    exempt ``host``?"""
    if not no_proxy:
        return False
    host = host.lower().strip("[]")
    for entry in (e.strip().lower() for e in no_proxy.split(",")):
        if not entry:
            continue
        if entry == "*":
            return True
        try:
            if ipaddress.ip_address(host) in ipaddress.ip_network(
                    entry, strict=False):
                return True
            continue
        except ValueError:
            pass
        entry = entry.lstrip(".")
        if host == entry or host.endswith("." + entry):
            return True
    return False


def proxy_for(url: str, proxies: Mapping[str, str] | None,
              no_proxy: str | None) -> str | None:
    if not proxies:
        return None
    parsed = urlparse(url)
    proxy = proxies.get(parsed.scheme)
    if not proxy or bypass(parsed.hostname or "", no_proxy):
        return None
    return proxy


def _endpoint(reactor: Any, host: str, port: int) -> IStreamClientEndpoint:
    """TCP to ``host``: an IPv4 or IPv6 literal, or a name (whatever
    address families it has)."""
    try:
        version = ipaddress.ip_address(host).version
    except ValueError:
        return HostnameEndpoint(reactor, host, port)
    if version == 6:
        return TCP6ClientEndpoint(reactor, host, port)
    return TCP4ClientEndpoint(reactor, host, port)


def _authority(host: str, port: int) -> str:
    """``host:port`` as a request target (IPv6 literals in brackets)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _auth(proxy: Any) -> str | None:
    if proxy.username is None:
        return None
    raw = f"{unquote(proxy.username)}:{unquote(proxy.password or '')}"
    return "Basic " + base64.b64encode(raw.encode()).decode("ascii")


class _Tunnel(Protocol):
    """Asks the proxy for a tunnel, then becomes the real connection."""

    def __init__(self, target: tuple[str, int], auth: str | None,
                 creator: Any, factory: Any,
                 ready: defer.Deferred[Any]) -> None:
        self._target = target
        self._auth = auth
        self._creator = creator
        self._factory = factory
        self._ready = ready
        self._buf = b""
        self._inner: Any = None

    def connectionMade(self) -> None:
        target = _authority(*self._target)
        lines = [f"CONNECT {target} HTTP/1.1", f"Host: {target}"]
        if self._auth:
            lines.append(f"Proxy-Authorization: {self._auth}")
        assert self.transport is not None
        self.transport.write(("\r\n".join(lines) + "\r\n\r\n").encode())

    def dataReceived(self, data: bytes) -> None:
        if self._inner is not None:
            self._inner.dataReceived(data)
            return
        self._buf += data
        if b"\r\n\r\n" not in self._buf:
            if len(self._buf) > 65536:
                self._fail("the proxy's answer is too long")
            return
        head, _, rest = self._buf.partition(b"\r\n\r\n")
        first = head.split(b"\r\n", 1)[0]
        status = first.split()
        if len(status) < 2 or status[1] != b"200":
            self._fail(f"the proxy refused the tunnel: "
                       f"{first.decode('latin-1')}")
            return
        transport: Any = self.transport
        transport.startTLS(self._creator)
        inner = self._factory.buildProtocol(transport.getPeer())
        assert inner is not None
        self._inner = inner
        inner.makeConnection(transport)
        self._ready.callback(inner)
        if rest:
            inner.dataReceived(rest)

    def _fail(self, why: str) -> None:
        assert self.transport is not None
        self.transport.loseConnection()
        if not self._ready.called:
            self._ready.errback(errors.ImageDownloadError("(proxy)", why))

    def connectionLost(self, reason: Any = None) -> None:
        if self._inner is not None:
            self._inner.connectionLost(reason)
        elif not self._ready.called:
            self._ready.errback(reason)


@implementer(IStreamClientEndpoint)
class _TunnelEndpoint:
    def __init__(self, reactor: Any, proxy: Any, target: tuple[str, int],
                 creator: Any) -> None:
        self._proxy = _endpoint(reactor, proxy.hostname, proxy.port or 3128)
        self._auth = _auth(proxy)
        self._target = target
        self._creator = creator

    def connect(self, factory: Any) -> defer.Deferred[Any]:
        tunnel: list[_Tunnel] = []
        cancelled: list[bool] = []

        def cancel(_: defer.Deferred[Any]) -> None:
            # stop connecting to the proxy, or drop the connection that
            # waits for its answer (``ready`` then fails with
            # CancelledError, whatever the endpoint says)
            cancelled.append(True)
            connecting.cancel()
            for protocol in tunnel:
                transport: Any = protocol.transport
                if transport is not None:
                    transport.abortConnection()

        ready: defer.Deferred[Any] = defer.Deferred(cancel)

        class _F(Factory):
            def buildProtocol(inner_self, addr: Any) -> Protocol:
                protocol = _Tunnel(self._target, self._auth, self._creator,
                                   factory, ready)
                tunnel.append(protocol)
                return protocol

        def failed(failure: Any) -> None:
            if not ready.called and not cancelled:
                ready.errback(failure)

        connecting = self._proxy.connect(_F())
        connecting.addErrback(failed)
        return ready


@implementer(IAgentEndpointFactory)
class _TunnelEndpoints:
    def __init__(self, reactor: Any, proxy: Any, policy: Any) -> None:
        self._reactor = reactor
        self._proxy = proxy
        self._policy = policy

    def endpointForURI(self, uri: Any) -> IStreamClientEndpoint:
        host = uri.host.decode("ascii")
        creator = self._policy.creatorForNetloc(uri.host, uri.port)
        return _TunnelEndpoint(self._reactor, self._proxy, (host, uri.port),
                               creator)


def client_through(reactor: Any, proxy_url: str, scheme: str, policy: Any,
                   pool: Any = None) -> tuple[HTTPClient, dict[str, str]]:
    """A treq client that goes through ``proxy_url``, and the headers to
    add to each request (proxy credentials for plain http)."""
    proxy = urlparse(proxy_url)
    if not proxy.hostname:
        raise errors.InvalidCommandParamsError(
            f"bad proxy URL {proxy_url!r}")
    if scheme == "https":
        agent = Agent.usingEndpointFactory(
            reactor, _TunnelEndpoints(reactor, proxy, policy), pool=pool)
        return client_for(agent), {}
    endpoint = _endpoint(reactor, proxy.hostname, proxy.port or 3128)
    auth = _auth(proxy)
    return client_for(ProxyAgent(endpoint, reactor, pool=pool)), (
        {"Proxy-Authorization": auth} if auth else {})
