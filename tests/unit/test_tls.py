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
