"""The auto-TLS certificate and the server context."""

from __future__ import annotations

import datetime
import ipaddress
import os
import stat

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from OpenSSL import SSL
from twisted.trial.unittest import SynchronousTestCase

from ipa_twisted import tls


class CertificateTests(SynchronousTestCase):
    def test_fields(self) -> None:
        now = datetime.datetime(2026, 11, 26, tzinfo=datetime.timezone.utc)
        cert = tls.generate_certificate("192.0.2.7", "node-1", "p256",
                                        clock_skew=3600, valid_days=90,
                                        now=now)
        x = x509.load_pem_x509_certificate(cert.cert_pem.encode())
        self.assertEqual(x.subject, x.issuer)
        self.assertEqual(
            x.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value,
            "node-1")
        san = x.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        self.assertTrue(san.critical)
        self.assertEqual(san.value.get_values_for_type(x509.IPAddress),
                         [ipaddress.ip_address("192.0.2.7")])
        self.assertIsInstance(x.signature_hash_algorithm, hashes.SHA512)
        self.assertEqual(x.not_valid_before_utc,
                         now - datetime.timedelta(hours=1))
        self.assertEqual(x.not_valid_after_utc,
                         now + datetime.timedelta(days=90))
        key = x.public_key()
        assert isinstance(key, ec.EllipticCurvePublicKey)
        self.assertEqual(key.curve.name, "secp256r1")
        self.assertIn("BEGIN PRIVATE KEY", cert.key_pem)

    def test_ipv6_and_default_curve(self) -> None:
        cert = tls.generate_certificate("2001:db8::5", "n")
        x = x509.load_pem_x509_certificate(cert.cert_pem.encode())
        key = x.public_key()
        assert isinstance(key, ec.EllipticCurvePublicKey)
        self.assertEqual(key.curve.name, "secp384r1")

    def test_saved_private(self) -> None:
        directory = self.mktemp()
        cert = tls.save_certificate(tls.generate_certificate("10.0.0.1", "n"),
                                    directory)
        assert cert.key_path is not None
        self.assertEqual(stat.S_IMODE(os.stat(cert.key_path).st_mode), 0o600)
        with open(cert.cert_path or "") as f:
            self.assertEqual(f.read(), cert.cert_pem)

    def test_server_minimum_version(self) -> None:
        cert = tls.generate_certificate("10.0.0.1", "n")
        strict = tls.server_options(cert.cert_pem, cert.key_pem, "1.3")
        default = tls.server_options(cert.cert_pem, cert.key_pem)
        self.assertEqual(handshake(strict, SSL.TLS1_3_VERSION), "TLSv1.3")
        self.assertIsNone(handshake(strict, SSL.TLS1_2_VERSION))
        self.assertEqual(handshake(default, SSL.TLS1_2_VERSION), "TLSv1.2")
        self.assertEqual(handshake(default, SSL.TLS1_3_VERSION), "TLSv1.3")


def handshake(options: object, client_max: int) -> str | None:
    """A TLS handshake in memory; the version agreed, or None."""
    server = SSL.Connection(options.getContext(), None)  # type: ignore
    server.set_accept_state()
    cctx = SSL.Context(SSL.TLS_METHOD)
    cctx.set_max_proto_version(client_max)
    client = SSL.Connection(cctx, None)
    client.set_connect_state()
    for _ in range(20):
        for conn in (client, server):
            try:
                conn.do_handshake()
            except SSL.WantReadError:
                pass
            except SSL.Error:
                return None
        for src, dst in ((client, server), (server, client)):
            try:
                dst.bio_write(src.bio_read(65536))
            except SSL.WantReadError:
                pass
        try:
            client.do_handshake()
            server.do_handshake()
            version: str = client.get_protocol_version_name()
            return version
        except (SSL.WantReadError, SSL.Error):
            continue
    return None


def client_handshake(policy: object, server_max: int,
                     cert: tls.GeneratedCertificate,
                     host: bytes = b"127.0.0.1") -> tuple[str | None, str]:
    """Our client (``policy``, through Twisted's TLS protocol as the agent
    uses it) against an in-memory server that speaks at most
    ``server_max``: (version agreed or None, what went wrong)."""
    from twisted.internet import ssl
    from twisted.internet.protocol import Factory, Protocol
    from twisted.internet.testing import StringTransport
    from twisted.protocols.tls import TLSMemoryBIOFactory

    private = ssl.PrivateCertificate.loadPEM(cert.key_pem + "\n"
                                             + cert.cert_pem)
    sctx = SSL.Context(SSL.TLS_METHOD)
    sctx.use_certificate(private.original)
    sctx.use_privatekey(private.privateKey.original)
    sctx.set_max_proto_version(server_max)
    server = SSL.Connection(sctx, None)
    server.set_accept_state()
    creator = policy.creatorForNetloc(host, 443)  # type: ignore
    factory = TLSMemoryBIOFactory(creator, True, Factory.forProtocol(Protocol))
    client = factory.buildProtocol(None)
    transport = StringTransport()
    client.makeConnection(transport)
    errors = []
    for _ in range(20):
        data = transport.value()
        transport.clear()
        if data:
            server.bio_write(data)
        try:
            server.do_handshake()
        except SSL.WantReadError:
            pass
        except SSL.Error as e:
            errors.append(f"server: {e}")
        try:
            out = server.bio_read(65536)
        except SSL.WantReadError:
            out = b""
        if out:
            client.dataReceived(out)
        reason = getattr(client, "_reason", None)
        if reason is not None:
            errors.append(f"client: {reason.value}")
        if errors:
            return None, "; ".join(errors)
        if not data and not out:
            break
    tls_connection = client._tlsConnection  # type: ignore[attr-defined]
    if tls_connection is None or client._handshakeDone is False:
        return None, "no handshake"
    return tls_connection.get_protocol_version_name(), ""


class ClientPolicyTests(SynchronousTestCase):
    """Outbound TLS honours tls_min_version however verification is set
    up (it used to apply only with a CA file or a client certificate)."""

    def setUp(self) -> None:
        self.cert = tls.generate_certificate("127.0.0.1", "server")
        self.cafile = self.mktemp()
        with open(self.cafile, "w") as f:
            f.write(self.cert.cert_pem)

    def assertVersionRefused(self, policy: object) -> None:
        version, error = client_handshake(policy, SSL.TLS1_2_VERSION,
                                          self.cert)
        self.assertIsNone(version)
        # refused for the version, not for the certificate
        self.assertRegex(error, r"(?i)protocol|version")
        self.assertNotIn("certificate verify failed", error)

    def test_minimum_13_refuses_a_12_server_with_a_ca_file(self) -> None:
        self.assertVersionRefused(tls.client_policy(cafile=self.cafile,
                                                    min_version="1.3"))
        version, _ = client_handshake(
            tls.client_policy(cafile=self.cafile, min_version="1.2"),
            SSL.TLS1_2_VERSION, self.cert)
        self.assertEqual(version, "TLSv1.2")

    def test_minimum_13_refuses_a_12_server_without_a_ca_file(self) -> None:
        self.assertVersionRefused(tls.client_policy(min_version="1.3"))
        self.assertVersionRefused(tls.client_policy(insecure=True,
                                                    min_version="1.3"))
        version, _ = client_handshake(
            tls.client_policy(insecure=True, min_version="1.2"),
            SSL.TLS1_2_VERSION, self.cert)
        self.assertEqual(version, "TLSv1.2")

    def test_lookup_raises_the_minimum_never_lowers_it(self) -> None:
        policy = tls.client_policy(cafile=self.cafile)
        self.assertTrue(policy.apply("1.3", None))
        self.assertVersionRefused(policy)
        self.assertFalse(policy.apply("1.2", None))
        self.assertEqual(policy.min_version, "1.3")
        version, _ = client_handshake(policy, SSL.TLS1_3_VERSION, self.cert)
        self.assertEqual(version, "TLSv1.3")

    def test_configured_ciphers_apply_to_tls12(self) -> None:
        # the server's key is EC: an RSA-only cipher list cannot agree
        policy = tls.client_policy(cafile=self.cafile,
                                   ciphers="ECDHE-RSA-AES128-GCM-SHA256")
        version, error = client_handshake(policy, SSL.TLS1_2_VERSION,
                                          self.cert)
        self.assertIsNone(version)
        self.assertIn("handshake failure", error)
        self.assertTrue(policy.apply(None, "ECDHE-ECDSA-AES128-GCM-SHA256"))
        version, _ = client_handshake(policy, SSL.TLS1_2_VERSION, self.cert)
        self.assertEqual(version, "TLSv1.2")
