"""The outbound HTTP client: its set-up, and IPv6 literal hosts."""

from __future__ import annotations

from typing import Any

from treq.client import HTTPClient as TreqClient
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import (
    IHostnameResolver,
    IReactorPluggableNameResolver,
)
from twisted.internet.ssl import CertificateOptions
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.client import URI
from twisted.web.error import SchemeNotSupported
from twisted.web.iweb import IAgent, IPolicyForHTTPS
from zope.interface import implementer

from ipa_twisted.config import load_config
from ipa_twisted.httpclient import Endpoints, HTTPClient, outbound


@implementer(IAgent)
class RecordingAgent:
    def __init__(self) -> None:
        self.uris: list[bytes] = []

    def request(self, method: bytes, uri: bytes, headers: Any = None,
                bodyProducer: Any = None) -> Deferred[Any]:
        self.uris.append(uri)
        return Deferred()


class IPv6LiteralTests(SynchronousTestCase):
    def sent(self, client_class: type, url: str, **kw: Any) -> bytes:
        agent = RecordingAgent()
        client_class(agent).request("GET", url, **kw)
        uri, = agent.uris
        return uri

    def test_treq_alone_cannot(self) -> None:
        # what the module works around (if treq learns it, drop ours)
        self.assertRaises(Exception, self.sent, TreqClient,
                          "http://[fd00::1]:6385/")

    def test_ipv6_literal(self) -> None:
        self.assertEqual(
            self.sent(HTTPClient, "http://[fd00::1]:6385/v1/lookup",
                      params={"addresses": "52:54:00:12:34:56,a b"}),
            b"http://[fd00::1]:6385/v1/lookup"
            b"?addresses=52%3A54%3A00%3A12%3A34%3A56%2Ca+b")

    def test_the_rest_is_encoded_as_treq_does(self) -> None:
        for v6, v4 in (("http://[::1]/caf\u00e9?q=\u00e9 x#f",
                        "http://192.0.2.1/caf\u00e9?q=\u00e9 x#f"),
                       ("https://[2001:db8::5]:8443/a%2Fb",
                        "https://192.0.2.1:8443/a%2Fb")):
            host = v6.split("/")[2].encode()
            self.assertEqual(
                self.sent(HTTPClient, v6),
                self.sent(TreqClient, v4).replace(
                    v4.split("/")[2].encode(), host))
        self.assertEqual(self.sent(HTTPClient, "http://[::1]/caf\u00e9"),
                         b"http://[::1]/caf%C3%A9")

    def test_names_and_ipv4_untouched(self) -> None:
        for url in ("http://ironic.example:6385/v1/", "http://10.0.0.1/x",
                    "http://b\u00fccher.example/"):
            self.assertEqual(self.sent(HTTPClient, url),
                             self.sent(TreqClient, url))


class OutboundTests(SynchronousTestCase):
    def test_set_up_from_the_config(self) -> None:
        out = outbound(MemoryReactorClock(),
                       load_config({"tls_min_version": "1.3"}))
        self.assertIsInstance(out.client, HTTPClient)
        self.assertEqual(out.policy.min_version, "1.3")
        self.assertEqual(out.pool.maxPersistentPerHost, 4)
        self.assertFalse(out.pool._factory.noisy)

    def test_stricter_tls_drops_idle_connections(self) -> None:
        out = outbound(MemoryReactorClock(), load_config({}))
        closed: list[bool] = []
        self.patch(out.pool, "closeCachedConnections",
                   lambda: closed.append(True))
        self.assertFalse(out.apply_tls("1.2", None))
        self.assertEqual(closed, [])
        self.assertTrue(out.apply_tls("1.3", None))
        self.assertEqual((out.policy.min_version, closed), ("1.3", [True]))


@implementer(IHostnameResolver)
class RecordingResolver:
    def __init__(self) -> None:
        self.names: list[str] = []

    def resolveHostName(self, receiver: Any, hostName: str,
                        portNumber: int = 0, addressTypes: Any = None,
                        transportSemantics: str = "TCP") -> Any:
        self.names.append(hostName)
        receiver.resolutionBegan(None)
        receiver.addressResolved(IPv4Address("TCP", "192.0.2.50",
                                             portNumber))
        receiver.resolutionComplete()
        return receiver


@implementer(IReactorPluggableNameResolver)
class ResolvingReactor(MemoryReactorClock):
    def __init__(self) -> None:
        super().__init__()
        self.nameResolver = RecordingResolver()

    def installNameResolver(self, resolver: Any) -> Any:
        old, self.nameResolver = self.nameResolver, resolver
        return old


@implementer(IPolicyForHTTPS)
class RecordingPolicy:
    def __init__(self) -> None:
        self.netlocs: list[tuple[bytes, int]] = []

    def creatorForNetloc(self, hostname: bytes, port: int) -> Any:
        self.netlocs.append((hostname, port))
        return CertificateOptions()


class ConnectTests(SynchronousTestCase):
    """An IP address is connected to without the resolver (its thread,
    the IDNA codec); a name is resolved as before."""

    def connected(self, url: str
                  ) -> tuple[list[str], list[tuple[str, int]], bool]:
        reactor = ResolvingReactor()
        policy = RecordingPolicy()
        out = outbound(reactor, load_config({}))
        out.client._agent._agent._endpointFactory = Endpoints(  # type: ignore
            reactor, policy)
        out.client.get(url)
        reactor.advance(0)
        return (reactor.nameResolver.names,
                [(host, port) for host, port, _, _, _ in reactor.tcpClients],
                bool(policy.netlocs))

    def test_the_agents_endpoints(self) -> None:
        out = outbound(ResolvingReactor(), load_config({}))
        factory = out.client._agent._agent._endpointFactory  # type: ignore
        self.assertIsInstance(factory, Endpoints)
        self.assertIs(factory.policy, out.policy)

    def test_addresses_directly(self) -> None:
        self.assertEqual(self.connected("http://127.0.0.1:6385/v1/"),
                         ([], [("127.0.0.1", 6385)], False))
        self.assertEqual(self.connected("https://[fd00::5]:6385/v1/"),
                         ([], [("fd00::5", 6385)], True))
        self.assertEqual(self.connected("https://192.0.2.9/image"),
                         ([], [("192.0.2.9", 443)], True))

    def test_names_through_the_resolver(self) -> None:
        self.assertEqual(self.connected("http://ironic.example:6385/v1/"),
                         (["ironic.example"], [("192.0.2.50", 6385)], False))
        self.assertEqual(self.connected("https://images.example/x"),
                         (["images.example"], [("192.0.2.50", 443)], True))

    def test_other_schemes(self) -> None:
        endpoints = Endpoints(ResolvingReactor(), RecordingPolicy())
        self.assertRaises(SchemeNotSupported, endpoints.endpointForURI,
                          URI.fromBytes(b"ftp://192.0.2.1/x"))
