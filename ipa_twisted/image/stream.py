"""Stream one HTTP(S) body into a consumer: resumable, with a watchdog.

``stream_body(..., offset=N)`` asks for the rest of a file with
``Range: bytes=N-``.  A 206 whose range starts at N continues where the
last attempt stopped; a server that ignores ranges (200) sends the whole
file again, and the first N bytes are skipped (they were already used and
hashed).  The consumer (a pipeline target) gets the HTTP transport as its
producer and pauses it when it is full.

The watchdog wants something to move every ``stall_timeout`` seconds: the
body's bytes, or, while the consumer holds the download paused, the
consumer's own ``progress`` (what its disk threads got done).  A network
that sends nothing is a network error (the caller may retry); a disk that
completes nothing is :class:`~ipa_twisted.image.sink.DiskStalled`, a local
error.  Cancelling the call (the command is cancelled, the agent stops)
closes the connection and raises ``CancelledError``: a cancellation is
never taken for a network error.

The body's socket is read :data:`READ_SIZE` bytes at a time (Twisted reads
64 KiB: 16 reads, 16 trips up the HTTP stack and 16 copies per MiB).  Once
the consumer offers a place for the bytes themselves (``direct_target()``:
a raw image's sink, whose buffers are page-aligned), a plain TCP body
(not TLS) of known length is received straight there: the connection's
``doRead`` becomes ``recv_into`` the sink's buffer, past the HTTP parser
(no copy, no allocation, no Python per chunk but this), and the
connection is closed after the last byte (the parser never saw the body:
it cannot be reused).
"""

from __future__ import annotations

import errno
import re
from typing import Any, Callable, Mapping

import attrs
from twisted.internet import defer, main
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone
from twisted.web.http import PotentialDataLoss
from twisted.web.iweb import IResponse

from ipa_twisted import errors
from ipa_twisted.httpfetch import (BodyTooLarge, describe, discard_body,
                                   read_body, stop_transport)
from ipa_twisted.image.sink import DiskStalled, SinkError
from ipa_twisted.looping import every

log = Logger()

#: Bytes asked of the image connection's socket per read.
READ_SIZE = 1024 * 1024

_CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+|\*)$")


class Stalled(Exception):
    pass


@attrs.frozen
class StreamResult:
    received: int          # bytes handed to the consumer by this request
    total: int | None      # size of the whole file, when known
    resumed: bool          # the server honoured the Range request
    direct_reads: int = 0  # socket reads straight into the consumer


class _Skip:
    """Discards the first ``n`` bytes, then passes the rest on."""

    def __init__(self, consumer: Any, n: int) -> None:
        self.consumer = consumer
        self.left = n

    def write(self, data: bytes) -> None:
        if self.left:
            if len(data) <= self.left:
                self.left -= len(data)
                return
            data = data[self.left:]
            self.left = 0
        self.consumer.write(data)

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        self.consumer.registerProducer(producer, streaming)

    def unregisterProducer(self) -> None:
        self.consumer.unregisterProducer()

    @property
    def paused(self) -> bool:
        return bool(getattr(self.consumer, "paused", False))


def widen_reads(transport: Any, size: int) -> bool:
    """Have the TCP connection under ``transport`` (a response's transport
    proxy, a TLS wrapper...) read ``size`` bytes per ``recv``."""
    for _ in range(4):
        if transport is None:
            return False
        if hasattr(transport, "socket") and hasattr(transport, "bufferSize"):
            transport.bufferSize = size
            return True
        transport = (getattr(transport, "_producer", None)
                     or getattr(transport, "transport", None))
    return False


def plain_tcp(transport: Any) -> Any:
    """The TCP connection under a response's transport, when the body
    comes over it as it is (no TLS); else None."""
    from twisted.internet import tcp

    connection = getattr(transport, "_producer", None)
    if (isinstance(connection, tcp.Connection)
            and not getattr(connection, "TLS", False)
            and hasattr(connection, "socket")):
        return connection
    return None


class _Body(Protocol):
    def __init__(self, consumer: Any, expected: int | None,
                 read_size: int = READ_SIZE) -> None:
        self.consumer = consumer
        self.expected = expected
        self.read_size = read_size
        self.received = 0
        # cancelled: close the connection (CancelledError follows)
        self.done: defer.Deferred[int] = defer.Deferred(
            lambda _: stop_transport(self.transport))
        #: what the consumer raised (never a network error: not retried)
        self.consumer_error: BaseException | None = None
        #: reading straight into the consumer: (connection, target)
        self.direct: tuple[Any, Any] | None = None
        self.direct_reads = 0

    def makeConnection(self, transport: Any) -> None:
        super().makeConnection(transport)
        widen_reads(transport, self.read_size)
        self.consumer.registerProducer(transport, True)

    def dataReceived(self, data: bytes) -> None:
        self.received += len(data)
        try:
            self.consumer.write(data)
        except BaseException as e:
            self._refused(e)
            return
        if self.direct is None and self.expected is not None:
            self._go_direct()

    def _refused(self, e: BaseException) -> None:
        # the consumer refused (bad format, device error): stop now
        self.consumer_error = e
        if not self.done.called:
            self.done.errback(Failure(e))
        stop_transport(self.transport)

    def _go_direct(self) -> None:
        offer = getattr(self.consumer, "direct_target", None)
        target = offer() if offer is not None else None
        if target is None or self.done.called:
            return
        assert self.expected is not None
        connection = plain_tcp(self.transport)
        if connection is None or self.received >= self.expected:
            return
        self.direct = (connection, target)
        connection.doRead = self._read_direct

    def _read_direct(self) -> Any:
        """The connection's doRead, once the body goes straight to the
        consumer's buffers."""
        assert self.direct is not None and self.expected is not None
        connection, target = self.direct
        if self.done.called:
            return main.CONNECTION_DONE
        try:
            # (as much as the buffer has room for: one recv_into takes
            # what the socket holds)
            view = target.reserve(self.expected - self.received)
        except BaseException as e:
            self._refused(e)
            return None
        if view is None:
            return None  # (no room: the consumer paused the connection)
        try:
            n = connection.socket.recv_into(view)
        except OSError as e:
            if e.errno in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EINTR):
                return None
            return main.CONNECTION_LOST
        finally:
            view.release()
        if not n:
            return main.CONNECTION_DONE
        self.received += n
        self.direct_reads += 1
        try:
            target.commit(n)
        except BaseException as e:
            self._refused(e)
            return None
        if self.received >= self.expected:
            # all of it: the HTTP parser is still waiting for the body,
            # so this connection cannot serve another request
            if not self.done.called:
                self.done.callback(self.received)
            return main.CONNECTION_DONE
        return None

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


def _progress(consumer: Any) -> int:
    return int(getattr(consumer, "progress", 0) or 0)


def _phrase(response: IResponse) -> str:
    phrase = getattr(response, "phrase", b"")
    if isinstance(phrase, bytes):
        return phrase.decode("latin-1")
    return str(phrase)


def _header(response: IResponse, name: bytes) -> str | None:
    values = response.headers.getRawHeaders(name)
    return values[0].decode("latin-1") if values else None


async def _get(http: Any, clock: IReactorTime, url: str,
               headers: dict[str, str], timeout: float, image_id: str
               ) -> IResponse:
    """The response to ``GET url`` (its body not read yet), within
    ``timeout`` seconds; a failure is an ``ImageDownloadError`` (a
    cancellation stays one)."""
    try:
        d = http.request("GET", url, headers=headers, unbuffered=True)
        d.addTimeout(timeout, clock)
        response: IResponse = await d
    except defer.TimeoutError:
        raise errors.ImageDownloadError(
            image_id, f"no answer from {url} within {timeout} s") from None
    except defer.CancelledError:
        raise
    except Exception as e:
        raise errors.ImageDownloadError(
            image_id, f"cannot reach {url}: {describe(e)}"
        ) from None
    return response


async def stream_body(
    http: Any,
    clock: IReactorTime,
    url: str,
    consumer: Any,
    image_id: str,
    stall_timeout: float,
    headers: Mapping[str, str] | None = None,
    offset: int = 0,
    on_response: Callable[[IResponse, int | None], None] | None = None,
) -> StreamResult:
    """GET ``url`` (from ``offset``) and feed its body to ``consumer``.

    Errors are ``ImageDownloadFatalError`` (4xx: no retry can help) or
    ``ImageDownloadError`` (connection trouble, 5xx, a stall); an error
    raised by the consumer is passed through.
    """
    request_headers = dict(headers or {})
    if offset:
        request_headers["Range"] = f"bytes={offset}-"
    response = await _get(http, clock, url, request_headers, stall_timeout,
                          image_id)
    length = response.length if isinstance(response.length, int) else None
    total = length
    resumed = False
    target = consumer
    if offset and response.code == 206:
        m = _CONTENT_RANGE.match(_header(response, b"content-range") or "")
        if not m or int(m.group(1)) != offset:
            discard_body(response)  # (read none of it: close)
            raise errors.ImageDownloadError(
                image_id, f"{url} answered a range that does not start at "
                f"byte {offset}: {_header(response, b'content-range')}")
        total = int(m.group(3)) if m.group(3) != "*" else None
        resumed = True
        log.info("resuming {url} at byte {offset}", url=url, offset=offset)
    elif response.code == 200:
        if offset:
            log.info("{url} ignores ranges: skipping the first {n} bytes "
                     "of a full copy", url=url, n=offset)
            target = _Skip(consumer, offset)
    elif 400 <= response.code < 500:
        discard_body(response)  # (read none of it: close)
        raise errors.ImageDownloadFatalError(
            image_id, f"{url} answered HTTP {response.code} {_phrase(response)}"
        )
    else:
        discard_body(response)  # (read none of it: close)
        raise errors.ImageDownloadError(
            image_id, f"{url} answered HTTP {response.code} {_phrase(response)}"
        )
    if on_response is not None:
        try:
            on_response(response, total)
        except BaseException:
            discard_body(response)  # (refused: close the connection)
            raise
    body = _Body(target, length)
    # (bytes received, the consumer's progress, when either last moved)
    last: list[Any] = [0, _progress(consumer), clock.seconds()]

    def stop_with(error: BaseException | Failure) -> None:
        stop_transport(body.transport)
        if not body.done.called:
            body.done.errback(error)

    def watchdog() -> None:
        error = getattr(consumer, "error", None)
        if error is not None and not body.done.called:
            # the device failed: stop downloading at once (a paused
            # download would otherwise wait forever)
            stop_with(error)
            return
        now = clock.seconds()
        moved = (body.received, _progress(consumer))
        if moved != (last[0], last[1]):
            last[0], last[1], last[2] = moved[0], moved[1], now
            return
        if now - last[2] < stall_timeout or body.done.called:
            return
        if getattr(consumer, "paused", False):
            # waiting for the disk, and the disk does nothing
            path = getattr(consumer, "path", None) or "the device"
            log.error("writing {path}: nothing completed for {t} s",
                      path=path, t=stall_timeout)
            stop_with(DiskStalled(path, stall_timeout))
            return
        log.warn("download of {url} stalled: nothing for {t} s",
                 url=url, t=stall_timeout)
        stop_with(Stalled(
            f"no data for {stall_timeout} s after {body.received} bytes"))

    def watchdog_failed(failure: Failure) -> None:
        # unwatched, a stall would go unnoticed: stop here, with that error
        broken.append(failure.value)
        stop_with(failure)

    broken: list[BaseException | None] = []
    check = every(clock, min(1.0, stall_timeout / 4), watchdog,
                  what=f"the stall watchdog of {url}",
                  on_failure=watchdog_failed)
    response.deliverBody(body)
    try:
        received = await body.done
    except Stalled as e:
        raise errors.ImageDownloadError(image_id, f"{url}: {e}") from None
    except (errors.AgentError, SinkError, defer.CancelledError):
        raise  # the image's, the device's, or nobody's fault: no retry
    except Exception as e:
        if (getattr(consumer, "error", None) is e
                or e is body.consumer_error or e in broken):
            raise  # the device's or the image's error (or ours), not the
            # network's
        local = getattr(consumer, "error", None)
        if local is not None:
            # the device failed and stopped the connection: its error
            raise local from None
        raise errors.ImageDownloadError(
            image_id,
            f"connection to {url} broke after {body.received} bytes: "
            f"{describe(e)}",
        ) from None
    finally:
        check.stop()
    if length is not None and received != length:
        raise errors.ImageDownloadError(
            image_id, f"{url}: got {received} of {length} bytes"
        )
    skipped = offset if (offset and not resumed) else 0
    return StreamResult(received - skipped, total, resumed,
                        body.direct_reads)


async def fetch_range(http: Any, clock: IReactorTime, url: str, start: int,
                      length: int, timeout: float, image_id: str = "",
                      headers: Mapping[str, str] | None = None
                      ) -> bytes | None:
    """Bytes [start, start + length) of ``url``, or None when the server
    does not do ranges (it answered 200: that body is not read).

    The status is checked before any of the body is read, and the body is
    capped at ``length``: a server that ignores ``Range`` costs nothing.
    """
    request_headers = dict(headers or {})
    request_headers["Range"] = f"bytes={start}-{start + length - 1}"
    response = await _get(http, clock, url, request_headers, timeout,
                          image_id)
    if response.code != 206:
        discard_body(response)
        if response.code == 200:
            return None
        raise errors.ImageDownloadError(
            image_id, f"{url} answered HTTP {response.code} "
            f"{_phrase(response)} to a range request")
    m = _CONTENT_RANGE.match(_header(response, b"content-range") or "")
    if not m or int(m.group(1)) != start:
        discard_body(response)
        raise errors.ImageDownloadError(
            image_id, f"{url} answered a range that does not start at "
            f"byte {start}: {_header(response, b'content-range')}")
    try:
        body: bytes = await read_body(response, clock, length, timeout)
    except BodyTooLarge:
        raise errors.ImageDownloadError(
            image_id, f"{url} sent more than the {length} bytes asked for"
        ) from None
    except defer.TimeoutError:
        raise errors.ImageDownloadError(
            image_id, f"{url}: the range was not read within {timeout} s"
        ) from None
    except defer.CancelledError:
        raise
    except Exception as e:
        raise errors.ImageDownloadError(
            image_id, f"{url}: {describe(e)}") from None
    return body  # (shorter where the file ends first)
