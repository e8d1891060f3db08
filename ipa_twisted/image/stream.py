"""Stream one HTTP(S) body into a consumer, with a stall watchdog.

The consumer (a :class:`~ipa_twisted.image.sink.DeviceSink`) gets the HTTP
transport as its producer and pauses it when it is full; time spent paused
that way does not count as a stall.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

from twisted.internet import defer
from twisted.internet.interfaces import IPushProducer, IReactorTime
from twisted.internet.protocol import Protocol
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone
from twisted.web.http import PotentialDataLoss
from twisted.web.iweb import IResponse

from ipa_twisted import errors

log = Logger()


class Stalled(Exception):
    pass


class _Body(Protocol):
    def __init__(self, consumer: Any, expected: int | None) -> None:
        self.consumer = consumer
        self.expected = expected
        self.received = 0
        self.done: defer.Deferred[int] = defer.Deferred()
        self.last_data = 0.0

    def makeConnection(self, transport: Any) -> None:
        super().makeConnection(transport)
        self.consumer.registerProducer(transport, True)

    def dataReceived(self, data: bytes) -> None:
        self.received += len(data)
        self.consumer.write(data)

    def connectionLost(self, reason: Failure = Failure(ResponseDone())) -> None:
        self.consumer.unregisterProducer()
        if self.done.called:
            return
        if reason.check(ResponseDone):
            self.done.callback(self.received)
        elif reason.check(PotentialDataLoss) and self.expected is None:
            # No Content-Length and the server closed: that is the end.
            self.done.callback(self.received)
        else:
            self.done.errback(reason)


def _describe(failure: Failure) -> str:
    reasons = getattr(failure.value, "reasons", None)
    if reasons:
        return "; ".join(r.getErrorMessage() for r in reasons)
    return failure.getErrorMessage() or repr(failure.value)


async def stream_body(
    http: Any,
    clock: IReactorTime,
    url: str,
    consumer: Any,
    image_id: str,
    stall_timeout: float,
    headers: Mapping[str, str] | None = None,
    on_response: Callable[[IResponse], None] | None = None,
) -> int:
    """GET ``url`` and feed its body to ``consumer``; the byte count.

    Errors are ``ImageDownloadFatalError`` (4xx: no retry can help) or
    ``ImageDownloadError`` (connection trouble, 5xx, a stall).
    """
    try:
        d = http.request("GET", url, headers=dict(headers or {}),
                         unbuffered=True)
        d.addTimeout(stall_timeout, clock)
        response: IResponse = await d
    except defer.TimeoutError:
        raise errors.ImageDownloadError(
            image_id, f"no answer from {url} within {stall_timeout} s"
        ) from None
    except Exception as e:
        raise errors.ImageDownloadError(
            image_id, f"cannot reach {url}: {_describe(Failure(e))}"
        ) from None
    if 400 <= response.code < 500:
        raise errors.ImageDownloadFatalError(
            image_id, f"{url} answered HTTP {response.code} {_phrase(response)}"
        )
    if response.code != 200:
        raise errors.ImageDownloadError(
            image_id, f"{url} answered HTTP {response.code} {_phrase(response)}"
        )
    length = response.length if isinstance(response.length, int) else None
    if on_response is not None:
        on_response(response)
    body = _Body(consumer, length)
    last = [0, clock.seconds()]

    def watchdog() -> None:
        now = clock.seconds()
        if body.received != last[0] or getattr(consumer, "paused", False):
            last[0], last[1] = body.received, now
            return
        if now - last[1] >= stall_timeout and not body.done.called:
            log.warn("download of {url} stalled: nothing for {t} s",
                     url=url, t=stall_timeout)
            transport: IPushProducer | None = body.transport  # type: ignore
            if transport is not None:
                transport.stopProducing()
            body.done.errback(Stalled(
                f"no data for {stall_timeout} s after {body.received} bytes"
            ))

    check = LoopingCall(watchdog)
    check.clock = clock
    check.start(min(1.0, stall_timeout / 4), now=False)
    response.deliverBody(body)
    try:
        received = await body.done
    except Stalled as e:
        raise errors.ImageDownloadError(image_id, f"{url}: {e}") from None
    except Exception as e:
        raise errors.ImageDownloadError(
            image_id,
            f"connection to {url} broke after {body.received} bytes: "
            f"{_describe(Failure(e))}",
        ) from None
    finally:
        if check.running:
            check.stop()
    if length is not None and received != length:
        raise errors.ImageDownloadError(
            image_id, f"{url}: got {received} of {length} bytes"
        )
    return received


def _phrase(response: IResponse) -> str:
    phrase = getattr(response, "phrase", b"")
    if isinstance(phrase, bytes):
        return phrase.decode("latin-1")
    return str(phrase)
