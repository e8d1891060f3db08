"""An https image through a CONNECT proxy on the IPv6 loopback (real
sockets, real TLS): the agent must reach an IPv6 proxy at all (it used
IPv4-only endpoints) and bracket an IPv6 target in its CONNECT line.
No root needed."""

from __future__ import annotations

import hashlib
import os
import socket
from typing import Any

from twisted.internet import reactor
from twisted.internet.endpoints import HostnameEndpoint, connectProtocol
from twisted.internet.protocol import Factory, Protocol
from twisted.web.server import Site

from tests.integration import harness as h
from tests.integration.base import unavailable
from tests.unit.test_image_pipeline import RAW, _PipelineBase


def ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


class _Pipe(Protocol):
    def __init__(self, peer: Any) -> None:
        self.peer = peer

    def dataReceived(self, data: bytes) -> None:
        self.peer.transport.write(data)

    def connectionLost(self, reason: Any = None) -> None:
        if self.peer.transport is not None:
            self.peer.transport.loseConnection()


class ConnectProxy(Protocol):
    """A CONNECT proxy that reads RFC 3986 authorities (``[v6]:port``,
    ``v4:port``) and refuses an unbracketed IPv6 literal."""

    seen: list[str] = []

    def connectionMade(self) -> None:
        self.buf = b""
        self.pipe: _Pipe | None = None

    def dataReceived(self, data: bytes) -> None:
        if self.pipe is not None:
            self.pipe.transport.write(data)
            return
        self.buf += data
        if b"\r\n\r\n" not in self.buf:
            return
        head, _, rest = self.buf.partition(b"\r\n\r\n")
        ConnectProxy.seen.append(head.decode())
        target = head.split(b"\r\n")[0].split(b" ")[1].decode()
        if target.startswith("["):
            host, _, port = target[1:].partition("]:")
        elif target.count(":") == 1:
            host, _, port = target.partition(":")
        else:
            self.transport.write(b"HTTP/1.1 400 Bad Request\r\n\r\n")
            self.transport.loseConnection()
            return
        self.pipe = _Pipe(self)
        d = connectProtocol(HostnameEndpoint(reactor, host, int(port)),
                            self.pipe)

        def ready(_: Any) -> None:
            self.transport.write(b"HTTP/1.1 200 Connection established"
                                 b"\r\n\r\n")
            if rest:
                self.pipe.transport.write(rest)

        d.addCallback(ready)

    def connectionLost(self, reason: Any = None) -> None:
        if self.pipe is not None and self.pipe.transport is not None:
            self.pipe.transport.loseConnection()


class IPv6ProxyTests(_PipelineBase):
    def setUp(self) -> None:
        if not ipv6_loopback():
            unavailable(h.Unavailable("no IPv6 loopback here"))
        super().setUp()

    async def through_proxy(self, image_host: str) -> tuple[Any, str]:
        from ipa_twisted import tls

        cert = tls.save_certificate(
            tls.generate_certificate(image_host, "images"),
            os.path.abspath(self.mktemp()))
        options = tls.server_options(cert.cert_pem, cert.key_pem)
        https = reactor.listenSSL(0, Site(self.server), options,
                                  interface=image_host)
        self.addCleanup(https.stopListening)
        ConnectProxy.seen = []
        proxy_port = reactor.listenTCP(0, Factory.forProtocol(ConnectProxy),
                                       interface="::1")
        self.addCleanup(proxy_port.stopListening)
        self.context.tls_policy = tls.client_policy(cafile=cert.cert_path)
        self.server.files["disk.img"] = RAW
        authority = (f"[{image_host}]" if ":" in image_host
                     else image_host) + f":{https.getHost().port}"
        result = await self.write({
            "id": "img", "urls": [f"https://{authority}/disk.img"],
            "disk_format": "raw",
            "proxies": {"https":
                        f"http://u:p@[::1]:{proxy_port.getHost().port}"}})
        self.assertEqual(result.digest, hashlib.sha256(RAW).hexdigest())
        self.assertEqual(self.disk_bytes(len(RAW)), RAW)
        connect, = ConnectProxy.seen
        return result, connect

    async def test_https_through_an_ipv6_proxy(self) -> None:
        _, connect = await self.through_proxy("127.0.0.1")
        self.assertTrue(connect.startswith("CONNECT 127.0.0.1:"), connect)
        self.assertIn("Proxy-Authorization: Basic dTpw", connect)

    async def test_ipv6_image_through_an_ipv6_proxy(self) -> None:
        _, connect = await self.through_proxy("::1")
        self.assertTrue(connect.startswith("CONNECT [::1]:"), connect)
