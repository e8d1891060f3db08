"""The agent's outbound HTTP: one set-up for every client.

Ironic, the inspector, image, checksum and config-drive servers are all
reached through :func:`outbound`: a treq client over a Twisted ``Agent``
with

- the TLS policy of the configuration (:func:`ipa_twisted.tls.client_policy`:
  ``tls_min_version`` and ciphers, CA file, client certificate,
  ``insecure``), which Ironic's lookup may make stricter
  (:meth:`Outbound.apply_tls` then drops the idle connections);
- a connection pool that does not log every connection it opens;
- bodies asked for as stored (:class:`~ipa_twisted.httpfetch.IdentityAgent`);
- URLs whose host is an IPv6 literal (``http://[fd00::1]:6385/``) working:
  treq hands every URL to hyperlink's ``to_uri()``, which IDNA-encodes the
  host and so refuses ``fd00::1`` (hyperlink issues 68 and 188).
  :class:`HTTPClient` gives treq those URLs with everything but the host
  encoded as ``to_uri()`` would.

:func:`client_for` wraps any other ``IAgent`` (a proxy's) the same way.
"""

from __future__ import annotations

import ipaddress
from typing import Any

import attrs
from hyperlink import DecodedURL, EncodedURL
from treq.client import HTTPClient as _TreqClient
from twisted.internet.endpoints import (
    HostnameEndpoint,
    TCP4ClientEndpoint,
    TCP6ClientEndpoint,
    wrapClientTLS,
)
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.web.client import Agent, HTTPConnectionPool, URI
from twisted.web.client import _HTTP11ClientFactory
from twisted.web.error import SchemeNotSupported
from twisted.web.iweb import IAgent, IAgentEndpointFactory, IPolicyForHTTPS
from zope.interface import implementer

from ipa_twisted import tls
from ipa_twisted.httpfetch import IdentityAgent

#: idle connections kept per server (Ironic: heartbeats; images: ranges)
PERSISTENT_PER_HOST = 4


class _QuietClientFactory(_HTTP11ClientFactory):
    noisy = False


class QuietPool(HTTPConnectionPool):
    """A connection pool that does not log every connection it opens."""

    _factory = _QuietClientFactory


def _is_ipv6_literal(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).version == 6
    except ValueError:
        return False


class _LiteralHostURL(EncodedURL):
    """A URL whose host is an IPv6 literal: ``to_uri()`` encodes the rest
    and leaves the host as it is."""

    def to_uri(self) -> EncodedURL:
        host = self.host
        rest = EncodedURL.to_uri(self.replace(host="ip-literal.invalid"))
        return rest.replace(host=host)


def request_url(url: Any) -> Any:
    """``url`` as treq should be given it (see the module docstring)."""
    if isinstance(url, bytes):
        url = url.decode("ascii")
    if isinstance(url, DecodedURL):
        url = url.encoded_url
    if isinstance(url, str):
        url = EncodedURL.from_text(url)
    if isinstance(url, EncodedURL) and _is_ipv6_literal(url.host):
        return _LiteralHostURL.from_text(url.to_text())
    return url


class HTTPClient(_TreqClient):
    """treq's client, able to request ``http://[v6 literal]/`` URLs."""

    def request(self, method: str, url: Any,  # type: ignore[override]
                **kwargs: Any) -> Any:
        return super().request(method, request_url(url), **kwargs)


def client_for(agent: IAgent) -> HTTPClient:
    """A treq client over ``agent``, asking for bodies as stored."""
    return HTTPClient(IdentityAgent(agent))


@attrs.define
class Outbound:
    """The client, and what it is made of."""

    client: HTTPClient
    policy: tls.ClientPolicy
    pool: QuietPool

    def apply_tls(self, min_version: Any = None, ciphers: Any = None
                  ) -> bool:
        """Take Ironic's lookup settings (see ``ClientPolicy.apply``);
        when they change anything, the idle connections (made under the
        old settings) are closed.  True when anything changed."""
        if not self.policy.apply(min_version, ciphers):
            return False
        self.pool.closeCachedConnections()
        return True


@implementer(IAgentEndpointFactory)
@attrs.frozen
class Endpoints:
    """Where the agent's ``Agent`` connects: as Twisted's own endpoints
    (TCP, TLS for https with ``policy``), but an IP address (Ironic's
    usual ``api_url``) is connected to directly.  A host name goes through
    the reactor's resolver, ``getaddrinfo`` in a thread; for an address
    that is a thread and the IDNA codec kept for the rest of the agent's
    life (~0.2 MiB), for nothing to resolve."""

    reactor: Any
    policy: IPolicyForHTTPS

    def endpointForURI(self, uri: URI) -> IStreamClientEndpoint:
        try:
            host = uri.host.decode("ascii")
        except UnicodeDecodeError:
            raise ValueError(f"the host of {uri.toBytes()!r} is not "
                             f"ASCII") from None
        endpoint: IStreamClientEndpoint
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            endpoint = HostnameEndpoint(self.reactor, host, uri.port)
        else:
            if address.version == 6:
                endpoint = TCP6ClientEndpoint(self.reactor, host, uri.port)
            else:
                endpoint = TCP4ClientEndpoint(self.reactor, host, uri.port)
        if uri.scheme == b"http":
            return endpoint
        if uri.scheme == b"https":
            return wrapClientTLS(
                self.policy.creatorForNetloc(uri.host, uri.port), endpoint)
        raise SchemeNotSupported(f"Unsupported scheme: {uri.scheme!r}")


def outbound(reactor: Any, config: Any, persistent: bool = True
             ) -> Outbound:
    """The outbound client for ``config`` (``insecure``, ``cafile``,
    ``certfile``, ``keyfile``, ``tls_min_version``, ``tls_cipher_suites``).
    ``persistent=False`` for one-shot programs (no idle connections
    kept)."""
    policy = tls.client_policy(config.insecure, config.cafile,
                               config.certfile, config.keyfile,
                               config.tls_min_version,
                               config.tls_cipher_suites)
    pool = QuietPool(reactor, persistent=persistent)
    pool.maxPersistentPerHost = PERSISTENT_PER_HOST
    client = client_for(Agent.usingEndpointFactory(
        reactor, Endpoints(reactor, policy), pool=pool))
    return Outbound(client, policy, pool)
