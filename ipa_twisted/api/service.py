"""The agent API as a service: listening on the agent's endpoint (TCP, or TLS with a static or the generated certificate),
serving :class:`~ipa_twisted.api.site.AgentSite` (bounded bodies, capped
connections).

The open file limit is raised to its hard limit before the site is built
(the connection caps are fitted to it), so before listening.

Not Twisted's ``StreamServerEndpointService``: its module
(``twisted.application.internet``) imports ``ClientService`` and with it
``automat``, half a MiB that an idle agent would hold for nothing.
"""

from __future__ import annotations

from typing import Any, Callable

from twisted.application.service import Service
from twisted.internet import endpoints
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IListeningPort
from twisted.logger import Logger
from twisted.python.failure import Failure

from ipa_twisted import tls
from ipa_twisted.api.app import AgentAPI
from ipa_twisted.api.site import (
    AgentSite,
    connection_caps,
    raise_open_file_limit,
)
from ipa_twisted.commands.base import CommandRunner
from ipa_twisted.config import default_listen_host
from ipa_twisted.observer import OneShotObserver
from ipa_twisted.registration import format_callback_url

log = Logger()


class APIService(Service):
    """Listens on ``endpoint`` while running; :meth:`when_listening` fires
    with the listening port, or fails with why it cannot listen (nothing
    else reports that failure)."""

    name = "api"

    def __init__(self, endpoint: Any, site: AgentSite, host: str,
                 port: int, scheme: str = "http") -> None:
        self.endpoint = endpoint
        self.factory = site
        self.host = host
        self.port_number = port
        self.url = format_callback_url(scheme, host, port)
        self._listening: OneShotObserver[IListeningPort] = OneShotObserver()
        self._waiting: Deferred[Any] | None = None
        #: the listening port, once listening
        self.port: IListeningPort | None = None

    def privilegedStartService(self) -> None:
        # a failure goes to when_listening() (the agent ends with one
        # line), not to the log as a traceback
        Service.privilegedStartService(self)
        self._waiting = self.endpoint.listen(self.factory)
        self._waiting.addBoth(self._listened)

    def startService(self) -> None:
        Service.startService(self)
        if self._waiting is None:
            self.privilegedStartService()

    def _listened(self, result: Any) -> Any:
        self._listening.fire(result)
        if isinstance(result, Failure):
            return None
        self.port = result
        log.info("agent API listening on {url}", url=self.url)
        return result

    def when_listening(self) -> Deferred[IListeningPort]:
        return self._listening.when_fired()

    def stopService(self) -> Deferred[None]:
        """Stop listening (or trying to), then close the connections
        still open."""
        site: AgentSite = self.factory
        waiting = self._waiting
        if waiting is None:
            self.running = False
            return succeed(None).addCallback(
                lambda _: site.close_connections())
        waiting.cancel()

        def stop_listening(port: IListeningPort | None) -> Any:
            if port is not None:
                return port.stopListening()
            return None

        def stopped(passthrough: Any) -> Any:
            self.running = False
            return passthrough

        d = waiting.addCallback(stop_listening)
        d.addBoth(stopped)
        return d.addCallback(lambda _: site.close_connections())


def api_service(context: Any, runner: CommandRunner,
                token: Callable[[], str | None], started_at: float,
                certificate: tls.GeneratedCertificate | None) -> APIService:
    """The API service for ``context.config`` (listen host and port,
    static TLS), the TLS policy of the lookup, and ``certificate`` (the
    generated one, if any)."""
    config = context.config
    reactor = context.reactor
    api = AgentAPI(runner, token, started_at, in_thread=context.in_thread)
    open_files = raise_open_file_limit()
    total, per_peer = connection_caps(
        config.api_max_connections, config.api_max_connections_per_peer,
        open_files)
    site = AgentSite(api, reactor, total, per_peer)
    host = config.listen_host or default_listen_host()
    min_version = tls.stricter(
        context.lookup_config.get("tls_min_version"), config.tls_min_version)
    ciphers = context.lookup_config.get("tls_cipher_suites") \
        or config.tls_cipher_suites
    if config.listen_tls:
        with open(config.tls_cert_file) as f1, \
                open(config.tls_key_file) as f2:
            cert_pem, key_pem = f1.read(), f2.read()
    elif certificate is not None:
        cert_pem, key_pem = certificate.cert_pem, certificate.key_pem
    else:
        cert_pem = key_pem = ""
    if cert_pem:
        options = tls.server_options(cert_pem, key_pem, min_version, ciphers)
        endpoint: Any = endpoints.SSL4ServerEndpoint(
            reactor, config.listen_port, options, interface=host)
        scheme = "https"
    else:
        endpoint = endpoints.TCP4ServerEndpoint(
            reactor, config.listen_port, interface=host)
        scheme = "http"
    return APIService(endpoint, site, host, config.listen_port, scheme)
