"""The CONNECT tunnel for https images through a proxy, in memory: the
request line (IPv6 literals in brackets), the endpoint to the proxy
(IPv6 literals and names, not IPv4 only), and cancellation."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlparse

from twisted.internet.defer import CancelledError
from twisted.internet.endpoints import (
    HostnameEndpoint,
    TCP4ClientEndpoint,
    TCP6ClientEndpoint,
)
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.trial.unittest import SynchronousTestCase

from ipa_twisted.image import proxy


class Creator:
    """Stands for the TLS connection creator (not used before 200)."""


class TunnelTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()

    def connect(self, proxy_url: str, target: tuple[str, int]) -> Any:
        endpoint = proxy._TunnelEndpoint(self.reactor, urlparse(proxy_url),
                                         target, Creator())
        return endpoint.connect(Factory.forProtocol(Protocol))

    def proxy_connection(self) -> StringTransport:
        """Complete the TCP connection to the proxy; its transport."""
        host, port, factory, *_ = self.reactor.tcpClients[-1]
        protocol = factory.buildProtocol(None)
        transport = StringTransport()
        protocol.makeConnection(transport)
        return transport

    def test_ipv6_target_in_brackets(self) -> None:
        d = self.connect("http://u:p@[fd00::2]:3128", ("fd00::1", 8443))
        host, port = self.reactor.tcpClients[-1][:2]
        self.assertEqual((host, port), ("fd00::2", 3128))
        transport = self.proxy_connection()
        head = transport.value().decode()
        self.assertTrue(head.startswith(
            "CONNECT [fd00::1]:8443 HTTP/1.1\r\nHost: [fd00::1]:8443\r\n"),
            head)
        self.assertIn("Proxy-Authorization: Basic dTpw", head)
        self.assertNoResult(d)

    def test_ipv4_and_names_unchanged(self) -> None:
        self.connect("http://10.0.0.2:3128", ("images.example", 443))
        self.assertEqual(self.reactor.tcpClients[-1][:2], ("10.0.0.2", 3128))
        head = self.proxy_connection().value().decode()
        self.assertTrue(head.startswith(
            "CONNECT images.example:443 HTTP/1.1\r\n"
            "Host: images.example:443\r\n"), head)

    def test_endpoints(self) -> None:
        r = self.reactor
        self.assertIsInstance(proxy._endpoint(r, "fd00::2", 3128),
                              TCP6ClientEndpoint)
        self.assertIsInstance(proxy._endpoint(r, "10.0.0.2", 3128),
                              TCP4ClientEndpoint)
        # a name may have AAAA records only: not IPv4 only
        self.assertIsInstance(proxy._endpoint(r, "proxy.example", 3128),
                              HostnameEndpoint)

    def test_cancel_while_connecting_to_the_proxy(self) -> None:
        d = self.connect("http://[fd00::2]:3128", ("fd00::1", 443))
        d.cancel()
        self.failureResultOf(d, CancelledError)
        connector = self.reactor.connectors[-1]
        self.assertTrue(connector.stoppedConnecting)

    def test_cancel_while_waiting_for_the_tunnel(self) -> None:
        d = self.connect("http://10.0.0.2:3128", ("10.0.0.1", 443))
        transport = self.proxy_connection()
        d.cancel()  # the proxy never answered the CONNECT
        self.failureResultOf(d, CancelledError)
        self.assertTrue(transport.disconnecting)
