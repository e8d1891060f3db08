"""The HTTP site that serves the agent API: bounded bodies, bounded
connections, JSON answers from the HTTP layer too, and the request log.

What twisted.web does by itself, and what this site changes:

- Twisted buffers a whole request body (and parses form bodies into
  ``request.args``) before the resource sees the request.  Here, once the
  headers are in and before any of the body is read, the API's
  :meth:`~ipa_twisted.api.app.AgentAPI.body_policy` says how large the
  body may be and whether it is kept: a ``/commands`` route without the
  token is answered 401 at once, a ``Content-Length`` over the limit 413
  at once, a chunked body 413 as soon as it passes the limit.  Bodies are
  never parsed as forms; ``request.args`` holds the query only, parsed by
  :mod:`ipa_twisted.api.query` (the parser that the log mask uses too).
- Twisted answers malformed HTTP with an empty ``400 Bad Request`` and
  failed rendering with an HTML page; here those answers are JSON faults.
- Connections are capped in total and per peer address; a connection over
  a cap is answered 503 (total) or 429 (per peer) and closed.

An early answer is written straight to the transport with
``Connection: close``; the connection then stops taking requests, reads
and drops whatever the client still sends for a short while (so that
closing does not reset the connection before the client has read the
answer), and closes.

One log line per request after its answer::

    <client> - <METHOD> <path>[?<query>] - <status> (<ms>ms)

with the value of ``agent_token`` masked (ironic-python-agent logs it).
"""

from __future__ import annotations

import resource
from collections import Counter
from http import HTTPStatus
from io import BytesIO
from tempfile import TemporaryFile
from typing import IO, TYPE_CHECKING, Any

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import (
    IAddress,
    INegotiated,
    IReactorTime,
    ITCPTransport,
)
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http import HTTPChannel
from twisted.web.server import Request, Site

from ipa_twisted import errors
from ipa_twisted.api import query
from ipa_twisted.api.app import BodyPolicy, fault_body

if TYPE_CHECKING:
    from ipa_twisted.api.app import AgentAPI

log = Logger(namespace="ipa_twisted.api")

#: Bodies up to this size are kept in memory, larger ones in a temporary
#: file (what Twisted does).
IN_MEMORY_BODY = 100_000
#: How long a connection that got an early answer keeps draining what the
#: client still sends before it is closed.
LINGER = 2.0
DEFAULT_MAX_CONNECTIONS = 100
DEFAULT_MAX_CONNECTIONS_PER_PEER = 20
#: File descriptors kept free for everything but the API's connections
#: (disks, pipes to tools, the Ironic client, logs).
RESERVED_FDS = 128

#: How long closing connections may take to send what they hold.
CLOSE_GRACE = 5.0


def _cancel_then(call: Any) -> Any:
    def cancel(result: Any) -> Any:
        if call.active():
            call.cancel()
        return result
    return cancel


# Kept for callers that import it from here.
mask_query = query.mask_query


def client_address(request: Request) -> str:
    forwarded = request.getHeader(b"x-forwarded-for")
    if forwarded:
        return forwarded.decode("latin-1").split(",")[0].strip()
    real = request.getHeader(b"x-real-ip")
    if real:
        return real.decode("latin-1").strip()
    addr: Any = request.getClientAddress()
    return str(getattr(addr, "host", "unknown"))


def raise_open_file_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard one; the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (OSError, ValueError) as e:
            log.warn("cannot raise the open file limit from {soft} to "
                     "{hard}: {e}", soft=soft, hard=hard, e=e)
    return soft


def connection_caps(max_connections: int, per_peer: int,
                    open_files: int) -> tuple[int, int]:
    """The caps in force: the configured ones, lowered if the open file
    limit cannot hold that many connections beside ``RESERVED_FDS``."""
    room = max(open_files - RESERVED_FDS, open_files // 2, 1)
    total = min(max_connections, room)
    return total, min(per_peer, total)


def _peer_host(addr: IAddress | None) -> str:
    if isinstance(addr, (IPv4Address, IPv6Address)):
        return addr.host
    return str(addr)


def _answer(code: int, text: str, extra: bytes = b"") -> bytes:
    body = fault_body(code, text)
    reason = HTTPStatus(code).phrase.encode("ascii")
    return (b"HTTP/1.1 %d %s\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\nConnection: close\r\n%s\r\n"
            % (code, reason, len(body), extra)) + body


class AgentRequest(Request):
    """A request whose body is bounded and never parsed as a form."""

    _ipa_started: float | None = None
    _ipa_policy = BodyPolicy(0, keep=False)
    _ipa_received = 0
    channel: AgentChannel

    def gotLength(self, length: int | None) -> None:
        content: IO[bytes]
        if not self._ipa_policy.keep:
            content = BytesIO()
        elif length is not None and length < IN_MEMORY_BODY:
            content = BytesIO()
        else:
            content = TemporaryFile()
        self.content = content

    def handleContentChunk(self, data: bytes) -> None:
        if self.channel.rejected:
            return
        self._ipa_received += len(data)
        if self._ipa_received > self._ipa_policy.limit:
            self.channel.reject(
                413, f"413 Payload Too Large: request body larger than "
                     f"{self._ipa_policy.limit} bytes", self)
            return
        if self._ipa_policy.keep and self.content is not None:
            self.content.write(data)

    def requestReceived(self, command: bytes, path: bytes,
                        version: bytes) -> None:
        # Twisted's, without the parsing of form bodies into args.
        if self.channel.rejected:
            return
        if self.content is None:           # no body: gotLength not called
            self.content = BytesIO()
        self.content.seek(0, 0)
        self.method, self.uri = command, path
        self.clientproto = version
        self.path = query.split_uri(path)[0]
        self.args = query.args(path)
        self.process()

    def process(self) -> None:
        site: AgentSite = self.channel.site
        self._ipa_started = site.reactor.seconds()
        if self.path == b"*" and self.method != b"OPTIONS":
            # Twisted answers an empty 405 (OPTIONS * is answered 200).
            self.site = site
            self.setHeader(b"Allow", b"OPTIONS")
            self._fault(405, "405 Method Not Allowed: only OPTIONS applies "
                             "to *")
            return
        super().process()

    def _fault(self, code: int, text: str) -> None:
        body = fault_body(code, text)
        self.setResponseCode(code)
        self.setHeader(b"Content-Type", b"application/json")
        self.setHeader(b"Content-Length", b"%d" % len(body))
        self.write(body)
        self.finish()

    def processingFailed(self, reason: Failure) -> Failure:
        # Twisted answers an HTML page.
        if self.finished:
            return reason
        log.failure("unexpected error answering {method} {path}", reason,
                    method=self.method.decode("latin-1"),
                    path=self.path.decode("latin-1"))
        self._fault(500, "500 Internal Server Error")
        return reason


class AgentChannel(HTTPChannel):
    """HTTP/1.1 with early, JSON answers (see the module's docstring)."""

    site: AgentSite
    transport: Any
    rejected = False
    _peer = ""
    _counted = False
    _linger_call: Any = None

    def connectionMade(self) -> None:
        super().connectionMade()
        self._peer = _peer_host(self.transport.getPeer())
        self.site.connection_opened(self._peer)
        self.site.channels.add(self)
        self._counted = True

    # -------------------------------------------------------- early answers

    def reject(self, code: int, text: str,
               request: Request | None = None) -> None:
        """Answer ``code`` with a JSON fault, take no more requests, drain
        and close."""
        if self.rejected:
            return
        self.rejected = True
        self.site.log_early_answer(self._peer, request, code)
        self.transport.write(_answer(code, text))
        self._linger()

    def _linger(self) -> None:
        self.setTimeout(None)
        self._networkProducer.resumeProducing()      # keep draining
        if ITCPTransport.providedBy(self.transport) and \
                not INegotiated.providedBy(self.transport):
            # plain TCP: FIN after the answer (under TLS that would
            # truncate the TLS stream; the client closes after the answer)
            self.transport.loseWriteConnection()
        self._linger_call = self.callLater(LINGER, self._end_linger)

    def _end_linger(self) -> None:
        self._linger_call = None
        self.transport.abortConnection()

    def _respondToBadRequestAndDisconnect(self) -> None:
        # Twisted's empty "400 Bad Request" for malformed HTTP.
        self.reject(400, "400 Bad Request: malformed HTTP request (request "
                         "line, headers or body framing)")

    def lineLengthExceeded(self, line: bytes) -> None:
        # Twisted closes without an answer.
        self.reject(431, "431 Request Header Fields Too Large: a request "
                         "line or header is longer than "
                         f"{self.MAX_LENGTH} bytes")

    # ------------------------------------------------------------- parsing

    def dataReceived(self, data: bytes) -> None:
        if self.rejected:
            return                                  # drained, dropped
        super().dataReceived(data)

    def lineReceived(self, line: bytes) -> None:
        if self.rejected:
            return
        super().lineReceived(line)

    def rawDataReceived(self, data: bytes) -> None:
        if self.rejected:
            return
        super().rawDataReceived(data)

    def allHeadersReceived(self) -> None:
        request = self.requests[-1]
        request.method, request.uri = self._command, self._path
        if self.length != 0:                         # a body follows
            try:
                policy = self.site.api.body_policy(self._command, self._path)
            except errors.AgentError as e:
                self.reject(e.code, str(e), request)
                return
            if self.length is not None and self.length > policy.limit:
                self.reject(413, f"413 Payload Too Large: request body "
                                 f"larger than {policy.limit} bytes",
                            request)
                return
            request._ipa_policy = policy
        super().allHeadersReceived()

    def allContentReceived(self) -> None:
        if self.rejected:
            return
        super().allContentReceived()

    def connectionLost(self, reason: Failure) -> None:  # type: ignore[override]
        if self._linger_call is not None and self._linger_call.active():
            self._linger_call.cancel()
        self._linger_call = None
        if self._counted:
            self._counted = False
            self.site.connection_closed(self._peer)
        self.site.channel_closed(self)
        super().connectionLost(reason)


class _Refusal(Protocol):
    """Answers a connection over a cap and closes it."""

    def __init__(self, code: int, text: str) -> None:
        self._answer = _answer(code, text, b"Retry-After: 1\r\n")

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.write(self._answer)
        self.transport.loseConnection()


class AgentSite(Site):
    protocol = AgentChannel  # type: ignore[assignment]
    requestFactory = AgentRequest
    noisy = False

    def __init__(self, api: AgentAPI, reactor: IReactorTime,
                 max_connections: int = DEFAULT_MAX_CONNECTIONS,
                 max_connections_per_peer: int =
                 DEFAULT_MAX_CONNECTIONS_PER_PEER) -> None:
        super().__init__(api.resource(), reactor=reactor)
        self.api = api
        self.displayTracebacks = False
        self.max_connections = max_connections
        self.max_connections_per_peer = max_connections_per_peer
        self.open_connections = 0
        self.per_peer: Counter[str] = Counter()
        self._refused = 0
        self._refusal_logged_at: float | None = None
        #: the open connections (closed for good by close_connections)
        self.channels: set[AgentChannel] = set()
        self._closing: list[Deferred[None]] = []

    def channel_closed(self, channel: AgentChannel) -> None:
        self.channels.discard(channel)
        if not self.channels:
            waiters, self._closing = self._closing, []
            for d in waiters:
                d.callback(None)

    def close_connections(self, grace: float = CLOSE_GRACE
                          ) -> Deferred[None]:
        """Close every open connection once what it is sending has gone
        (the answer that asked for this among it), aborting those still
        open after ``grace`` seconds; fires when none is left."""
        done: Deferred[None] = Deferred()
        if not self.channels:
            done.callback(None)
            return done
        self._closing.append(done)
        channels = list(self.channels)
        for channel in channels:
            channel.transport.loseConnection()

        def abort() -> None:
            for channel in list(self.channels):
                log.warn("API connection from {peer} still open {t} s "
                         "after closing: aborted", peer=channel._peer,
                         t=grace)
                channel.transport.abortConnection()

        call = self.reactor.callLater(grace, abort)
        return done.addBoth(_cancel_then(call))

    def startFactory(self) -> None:
        super().startFactory()
        log.info("API connections capped at {total} in all, {per_peer} per "
                 "address", total=self.max_connections,
                 per_peer=self.max_connections_per_peer)

    def buildProtocol(self, addr: IAddress | None) -> Any:
        peer = _peer_host(addr)
        if self.open_connections >= self.max_connections:
            return self._refuse(peer, 503, "503 Service Unavailable: too "
                                "many connections to the agent")
        if self.per_peer[peer] >= self.max_connections_per_peer:
            return self._refuse(peer, 429, "429 Too Many Requests: too many "
                                "connections from this address")
        return super().buildProtocol(addr)

    def _refuse(self, peer: str, code: int, text: str) -> Protocol:
        self._refused += 1
        now = self.reactor.seconds()
        if self._refusal_logged_at is None or \
                now - self._refusal_logged_at >= 10:
            log.warn("refusing connections ({code}): {open} open, {peers} "
                     "from {peer}; {n} refused since the last warning",
                     code=code, open=self.open_connections,
                     peers=self.per_peer[peer], peer=peer, n=self._refused)
            self._refusal_logged_at = now
            self._refused = 0
        return _Refusal(code, text)

    def connection_opened(self, peer: str) -> None:
        self.open_connections += 1
        self.per_peer[peer] += 1

    def connection_closed(self, peer: str) -> None:
        self.open_connections -= 1
        self.per_peer[peer] -= 1
        if self.per_peer[peer] <= 0:
            del self.per_peer[peer]

    # ----------------------------------------------------------------- log

    def log_early_answer(self, peer: str, request: Request | None,
                         code: int) -> None:
        if request is not None and getattr(request, "uri", None):
            what = (f"{request.method.decode('latin-1')} "
                    f"{query.mask_uri(request.uri)}")
        else:
            what = "(malformed request)"
        log.info("{client} - {what} - {code} (early answer)",
                 client=peer, what=what, code=code)

    def log(self, request: Request) -> None:  # type: ignore[override]
        shown = query.mask_uri(request.uri)
        started = getattr(request, "_ipa_started", None)
        if started is None:
            elapsed = "?"
        else:
            elapsed = f"{(self.reactor.seconds() - started) * 1000:.1f}"
        log.info(
            "{client} - {method} {uri} - {code} ({ms}ms)",
            client=client_address(request),
            method=request.method.decode("latin-1"),
            uri=shown,
            code=request.code,
            ms=elapsed,
        )
