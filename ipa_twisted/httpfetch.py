"""Small HTTP documents, bounded: a deadline and a size cap on every body.

Checksum files, config-drive URLs, Ironic's and the inspector's answers are
documents the agent reads whole.  :func:`get_bytes` fetches one with one
deadline for the whole exchange (connection, headers and body) and a cap on
the body: past the cap or the deadline the request is cancelled and its
connection closed, and the caller gets :class:`BodyTooLarge` or
``defer.TimeoutError`` (cancelling the Deferred itself gives
``CancelledError``).  :func:`read_body` is the body half, for callers that
must look at the status first.

:class:`IdentityAgent` makes every request ask for the body as it is
stored (``Accept-Encoding: identity``): treq would otherwise ask for gzip
and inflate it silently, so that a ``Content-Length`` would no longer say
how much is coming.  A server that encodes anyway is refused.
"""

from __future__ import annotations

from typing import Any, Mapping

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone, ResponseFailed
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgent, IBodyProducer, IResponse
from zope.interface import implementer

from ipa_twisted.retry import is_cancellation

KiB = 1024
MiB = 1024 * KiB


class BodyTooLarge(ResponseFailed):
    """The body went past its cap (a failed response: the connection is
    closed)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.message = f"the answer is larger than {limit} bytes"
        super().__init__([Failure(ValueError(self.message))])

    def __str__(self) -> str:
        return self.message


class EncodedBody(ResponseFailed):
    """The server applied a content coding although none was accepted."""

    def __init__(self, coding: str) -> None:
        self.message = (f"the server sent a {coding}-encoded body although "
                        f"the agent asked for identity")
        super().__init__([Failure(ValueError(self.message))])

    def __str__(self) -> str:
        return self.message


def stop_transport(transport: Any) -> None:
    """Stop a response body's transport (closing its connection), if it
    has one."""
    if transport is not None:
        transport.stopProducing()


class _Collect(Protocol):
    def __init__(self, limit: int, done: "defer.Deferred[bytes]") -> None:
        self.limit = limit
        self.done = done
        self.size = 0
        self.chunks: list[bytes] = []

    def fail(self, error: Exception) -> None:
        """Give up on this body: drop what came, close the connection."""
        self.chunks = []
        if not self.done.called:
            self.done.errback(Failure(error))
        stop_transport(self.transport)

    def dataReceived(self, data: bytes) -> None:
        if self.done.called:
            return
        self.size += len(data)
        if self.size > self.limit:
            self.fail(BodyTooLarge(self.limit))
            return
        self.chunks.append(data)

    def connectionLost(self, reason: Failure = Failure(ResponseDone())
                       ) -> None:
        if self.done.called:
            return
        # No Content-Length and the server closed: that is the end (as
        # treq.content says).
        if reason.check(ResponseDone, PotentialDataLoss):
            body, self.chunks = b"".join(self.chunks), []
            self.done.callback(body)
        else:
            self.done.errback(reason)


def read_body(response: IResponse, clock: IReactorTime, limit: int,
              timeout: float | None = None) -> "defer.Deferred[bytes]":
    """The body of ``response``, at most ``limit`` bytes (else
    :class:`BodyTooLarge`), within ``timeout`` seconds (else
    ``defer.TimeoutError``).  Cancelling the Deferred, the deadline and
    the cap all close the connection."""

    def cancel(d: "defer.Deferred[bytes]") -> None:
        protocol.chunks = []
        stop_transport(protocol.transport)

    done: defer.Deferred[bytes] = defer.Deferred(cancel)
    protocol = _Collect(limit, done)
    response.deliverBody(protocol)
    if isinstance(response.length, int) and response.length > limit:
        # it says so at once: read none of it
        protocol.fail(BodyTooLarge(limit))
    if timeout is not None and not done.called:
        done.addTimeout(timeout, clock)
    return done


def discard_body(response: IResponse) -> None:
    """Read nothing of ``response``'s body: close its connection."""
    protocol = Protocol()
    response.deliverBody(protocol)
    stop_transport(protocol.transport)


async def _get(http: Any, clock: IReactorTime, url: str, limit: int,
               method: str, headers: Mapping[str, str] | None,
               kwargs: Mapping[str, Any]) -> tuple[IResponse, bytes]:
    response: IResponse = await http.request(
        method, url, headers=dict(headers or {}), unbuffered=True,
        **kwargs)
    body = await read_body(response, clock, limit)
    return response, body


def get_bytes(http: Any, clock: IReactorTime, url: str, *, limit: int,
              timeout: float, method: str = "GET",
              headers: Mapping[str, str] | None = None,
              **kwargs: Any) -> "defer.Deferred[tuple[IResponse, bytes]]":
    """``(response, body)`` of one request, whatever its status: the whole
    exchange within ``timeout`` seconds (``defer.TimeoutError``), the body
    at most ``limit`` bytes (:class:`BodyTooLarge`).  ``http`` is a treq
    client; ``kwargs`` go to its ``request`` (``data``, ``params``...).

    Cancelling the Deferred fails it with ``CancelledError`` (twisted.web
    would say ``ResponseNeverReceived``, like a broken connection)."""
    d = defer.Deferred.fromCoroutine(
        _get(http, clock, url, limit, method, headers, kwargs))
    expired = []

    def expire() -> None:
        expired.append(True)
        d.cancel()

    deadline = clock.callLater(timeout, expire)

    def ended(result: Any) -> Any:
        if deadline.active():
            deadline.cancel()
        if isinstance(result, Failure) and is_cancellation(result):
            if expired:
                return Failure(defer.TimeoutError(
                    f"no complete answer from {url} within {timeout} s"))
            return Failure(defer.CancelledError())
        return result

    d.addBoth(ended)
    return d


def describe(e: BaseException) -> str:
    """A short reason for a failed :func:`get_bytes`."""
    if isinstance(e, (BodyTooLarge, EncodedBody)):
        return str(e)
    if isinstance(e, defer.TimeoutError):
        return "timed out"
    reasons = getattr(e, "reasons", None)
    if reasons:
        return "; ".join(r.getErrorMessage() for r in reasons)
    return str(e) or type(e).__name__


@implementer(IAgent)
class IdentityAgent:
    """An ``IAgent`` that asks for bodies as stored (``Accept-Encoding:
    identity``) and fails a response that is encoded anyway (with
    :class:`EncodedBody`, a ``ResponseFailed``): nothing above it (treq's
    gzip decoder) then inflates anything."""

    def __init__(self, agent: IAgent) -> None:
        self._agent = agent

    def request(self, method: bytes, uri: bytes,
                headers: Headers | None = None,
                bodyProducer: IBodyProducer | None = None
                ) -> "defer.Deferred[IResponse]":
        headers = headers.copy() if headers is not None else Headers()
        headers.setRawHeaders(b"accept-encoding", [b"identity"])
        d: defer.Deferred[IResponse] = self._agent.request(
            method, uri, headers, bodyProducer)
        d.addCallback(self._check)
        return d

    @staticmethod
    def _check(response: IResponse) -> IResponse:
        values = b",".join(
            response.headers.getRawHeaders(b"content-encoding") or [])
        codings = [v.strip().lower() for v in values.split(b",")
                   if v.strip()]
        codings = [c for c in codings if c != b"identity"]
        if codings:
            discard_body(response)
            raise EncodedBody(b", ".join(codings).decode("latin-1"))
        return response


__all__ = ["BodyTooLarge", "EncodedBody", "IdentityAgent", "describe",
           "stop_transport",
           "discard_body", "get_bytes", "read_body"]
