"""TLS: the auto-generated certificate, the server context, client policies.

Auto-TLS follows ironic-python-agent: an EC key (curve from
``tls_certificate_curve``), a self-signed certificate whose subject and
issuer are ``CN=<hostname>``, whose critical SubjectAlternativeName is the
advertised IP address, signed with SHA-512, back-dated by
``auto_tls_allowed_clock_skew``.  The PEM text is sent to Ironic in every
heartbeat as ``agent_verify_ca``; Ironic verifies our API with it.

(IPA's certificates live 30 days although its wrapper means 90; ours live
``auto_tls_validity_days``, 90 by default.)
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from typing import Any

import attrs
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from twisted.internet import ssl
from twisted.web.iweb import IPolicyForHTTPS
from zope.interface import implementer

CURVES: dict[str, ec.EllipticCurve] = {
    "p256": ec.SECP256R1(),
    "p384": ec.SECP384R1(),
    "p521": ec.SECP521R1(),
}

#: TLS 1.2 ciphers when none are configured (those of IPA).
DEFAULT_TLS12_CIPHERS = (
    "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-ECDSA-AES128-GCM-SHA256:"
    "ECDHE-RSA-AES256-GCM-SHA384:ECDHE-RSA-AES128-GCM-SHA256"
)


@attrs.frozen
class GeneratedCertificate:
    cert_pem: str
    key_pem: str
    cert_path: str | None = None
    key_path: str | None = None


def generate_certificate(
    ip: str,
    common_name: str,
    curve: str = "p384",
    clock_skew: int = 3600,
    valid_days: int = 90,
    now: datetime.datetime | None = None,
) -> GeneratedCertificate:
    """A new key and self-signed certificate for ``ip`` (PEM texts)."""
    key = ec.generate_private_key(CURVES[curve])
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = now or datetime.datetime.now(tz=datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(seconds=clock_skew))
        .not_valid_after(now + datetime.timedelta(days=valid_days))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address(ip))]
            ),
            critical=True,
        )
        .sign(key, hashes.SHA512())
    )
    cert_pem = cert.public_bytes(serialization.Encoding.PEM).decode("ascii")
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode("ascii")
    return GeneratedCertificate(cert_pem, key_pem)


def save_certificate(cert: GeneratedCertificate, directory: str
                     ) -> GeneratedCertificate:
    """Write ``agent.crt`` and ``agent.key`` (mode 0600) into ``directory``."""
    os.makedirs(directory, mode=0o700, exist_ok=True)
    cert_path = os.path.join(directory, "agent.crt")
    key_path = os.path.join(directory, "agent.key")
    for path, text in ((cert_path, cert.cert_pem), (key_path, cert.key_pem)):
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(text)
    return attrs.evolve(cert, cert_path=cert_path, key_path=key_path)


def _tls_version(text: str) -> ssl.TLSVersion:
    return {"1.2": ssl.TLSVersion.TLSv1_2,
            "1.3": ssl.TLSVersion.TLSv1_3}[text]


def server_options(
    cert_pem: str,
    key_pem: str,
    min_version: str = "1.2",
    ciphers: str | None = None,
) -> ssl.CertificateOptions:
    """The server side of our API: TLS >= ``min_version``, no client certs."""
    private = ssl.PrivateCertificate.loadPEM(key_pem + "\n" + cert_pem)
    return ssl.CertificateOptions(
        privateKey=private.privateKey.original,
        certificate=private.original,
        raiseMinimumTo=_tls_version(min_version),
        acceptableCiphers=ssl.AcceptableCiphers.fromOpenSSLCipherString(
            ciphers or DEFAULT_TLS12_CIPHERS
        ),
    )


def stricter(first: str | None, second: str | None) -> str:
    """The higher of two minimum TLS versions ("1.2"/"1.3"; None: 1.2)."""
    versions = [v for v in (first, second) if v in ("1.2", "1.3")]
    return max(versions, default="1.2")


@implementer(IPolicyForHTTPS)
class ClientPolicy:
    """Client TLS for every outbound connection (Ironic, the inspector,
    image, checksum and config-drive servers, proxies): TLS >=
    ``min_version`` whatever else is configured, the configured TLS 1.2
    ciphers, certificates verified against ``trust`` (None: the system's
    CAs; ``verify=False``: not at all), an optional client certificate.

    Ironic's lookup may make it stricter at run time (:meth:`apply`); new
    connections follow at once.
    """

    def __init__(self, min_version: str = "1.2", ciphers: str | None = None,
                 trust: Any = None, client_cert: Any = None,
                 verify: bool = True) -> None:
        self.min_version = stricter(min_version, None)
        self.ciphers = ciphers or None
        self._trust = trust
        self._client_cert = client_cert
        self._verify = verify

    def apply(self, min_version: Any = None, ciphers: Any = None) -> bool:
        """Take Ironic's lookup settings: a minimum version only raises
        ours, a cipher string replaces ours.  True when anything changed."""
        before = (self.min_version, self.ciphers)
        if isinstance(min_version, str) and min_version:
            self.min_version = stricter(self.min_version, min_version)
        if isinstance(ciphers, str) and ciphers:
            self.ciphers = ciphers
        return (self.min_version, self.ciphers) != before

    def _options(self) -> dict[str, Any]:
        options: dict[str, Any] = {
            "raiseMinimumTo": _tls_version(self.min_version)}
        if self.ciphers:
            options["acceptableCiphers"] = \
                ssl.AcceptableCiphers.fromOpenSSLCipherString(self.ciphers)
        return options

    def creatorForNetloc(self, hostname: bytes, port: int) -> Any:
        if not self._verify:
            return ssl.CertificateOptions(verify=False, **self._options())
        return ssl.optionsForClientTLS(
            hostname.decode("ascii"),
            trustRoot=self._trust,
            clientCertificate=self._client_cert,
            extraCertificateOptions=self._options(),
        )


def client_policy(
    insecure: bool = False,
    cafile: str | None = None,
    certfile: str | None = None,
    keyfile: str | None = None,
    min_version: str = "1.2",
    ciphers: str | None = None,
) -> ClientPolicy:
    """The TLS policy for outbound connections (Ironic, images)."""
    if insecure:
        return ClientPolicy(min_version, ciphers, verify=False)
    trust: Any = None
    if cafile:
        with open(cafile, "rb") as f:
            pems = f.read()
        certs = [
            ssl.Certificate.loadPEM(b"-----BEGIN CERTIFICATE-----" + part)
            for part in pems.split(b"-----BEGIN CERTIFICATE-----")[1:]
        ]
        trust = ssl.trustRootFromCertificates(certs)
    client_cert = None
    if certfile and keyfile:
        with open(certfile, "rb") as f1, open(keyfile, "rb") as f2:
            client_cert = ssl.PrivateCertificate.loadPEM(
                f2.read() + b"\n" + f1.read()
            )
    return ClientPolicy(min_version, ciphers, trust, client_cert)
