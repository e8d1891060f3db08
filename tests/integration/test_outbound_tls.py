"""Outbound TLS over real sockets: a server on loopback that speaks TLS 1.2
at most, and the agent's own HTTP clients (the one for Ironic and image
downloads, and the inspection command's) with ``tls_min_version = 1.3``,
with and without a CA file; then Ironic's lookup raising the minimum."""

from __future__ import annotations

from typing import Any

from twisted.internet import reactor, ssl
from twisted.internet.defer import ensureDeferred
from twisted.trial.unittest import TestCase
from twisted.web.resource import Resource
from twisted.web.server import Site

from ipa_twisted import tls
from ipa_twisted.agent import AgentService
from ipa_twisted.registration import accept_lookup
from ipa_twisted.config import load_config
from ipa_twisted.inspection.cli import build_context
from ipa_twisted.ironic import LookupResult


class Hello(Resource):
    isLeaf = True

    def render_GET(self, request: Any) -> bytes:
        return b"hello"


class OutboundTLSTests(TestCase):
    def setUp(self) -> None:
        cert = tls.generate_certificate("127.0.0.1", "tls12-only")
        private = ssl.PrivateCertificate.loadPEM(cert.key_pem + "\n"
                                                 + cert.cert_pem)
        options = ssl.CertificateOptions(
            privateKey=private.privateKey.original,
            certificate=private.original,
            lowerMaximumSecurityTo=ssl.TLSVersion.TLSv1_2)
        self.port = reactor.listenSSL(0, Site(Hello()), options,
                                      interface="127.0.0.1")
        self.addCleanup(self.port.stopListening)
        self.url = f"https://127.0.0.1:{self.port.getHost().port}/"
        self.cafile = self.mktemp()
        with open(self.cafile, "w") as f:
            f.write(cert.cert_pem)

    def agent_http(self, **cli: Any) -> Any:
        agent = AgentService(load_config(cli), reactor)
        assert agent._outbound is not None
        self.addCleanup(agent._outbound.pool.closeCachedConnections)
        return agent

    async def refused(self, http: Any) -> str:
        try:
            response = await http.get(self.url, timeout=10)
        except Exception as e:
            text = repr(e) + " ".join(
                repr(r.value) for r in getattr(e, "reasons", []))
        else:
            self.fail(f"a TLS 1.2 server answered {response.code}")
        self.assertRegex(text, r"unsupported protocol|protocol version")
        self.assertNotIn("certificate verify failed", text)
        return text

    async def body(self, http: Any) -> bytes:
        response = await http.get(self.url, timeout=10)
        content: bytes = await response.content()
        return content

    def test_minimum_13_with_a_ca_file(self) -> Any:
        async def check() -> None:
            await self.refused(self.agent_http(
                cafile=self.cafile, tls_min_version="1.3").http)
            # the same server, the same CA: TLS 1.2 allowed, it answers
            self.assertEqual(await self.body(self.agent_http(
                cafile=self.cafile).http), b"hello")
        return ensureDeferred(check())

    def test_minimum_13_without_a_ca_file(self) -> Any:
        async def check() -> None:
            # system CAs (the certificate is not among them: a 1.2
            # handshake would fail on it, a 1.3-only one fails before)
            await self.refused(self.agent_http(tls_min_version="1.3").http)
            await self.refused(self.agent_http(
                tls_min_version="1.3", insecure=True).http)
            self.assertEqual(await self.body(self.agent_http(
                insecure=True).http), b"hello")
        return ensureDeferred(check())

    def test_inspection_client(self) -> Any:
        async def check() -> None:
            context = build_context(reactor, load_config(
                {"cafile": self.cafile, "tls_min_version": "1.3"}))
            await self.refused(context.http)
        return ensureDeferred(check())

    def test_lookup_raises_the_minimum(self) -> Any:
        async def check() -> None:
            agent = self.agent_http(cafile=self.cafile)
            self.assertEqual(await self.body(agent.http), b"hello")
            accept_lookup(agent.context, agent._outbound, None,
                          LookupResult({"uuid": "n"}, {
                              "heartbeat_timeout": 60,
                              "tls_min_version": "1.3"}))
            await self.refused(agent.http)
        return ensureDeferred(check())
