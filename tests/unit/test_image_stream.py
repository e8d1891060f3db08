"""HTTP body -> DeviceSink, with the real reactor on loopback and temp files.

(The sink's threads and the HTTP client need the real reactor; nothing here
touches a block device.)
"""

from __future__ import annotations

import hashlib
import os
from typing import Any

from treq.client import HTTPClient
from twisted.internet import reactor
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site

from ipa_twisted import errors
from ipa_twisted.image.sink import Device, DeviceSink, SinkError
from ipa_twisted.image.stream import stream_body

DATA = os.urandom(3 * 1024 * 1024 + 12345)


class Producer:
    def __init__(self) -> None:
        self.events: list[str] = []

    def pauseProducing(self) -> None:
        self.events.append("pause")

    def resumeProducing(self) -> None:
        self.events.append("resume")

    def stopProducing(self) -> None:
        self.events.append("stop")


class SinkTests(TestCase):
    async def _write(self, path: str, chunks: list[bytes],
                     **kw: Any) -> tuple[DeviceSink, Producer, Any]:
        sink = DeviceSink(reactor, Device.open(path), "sha256",
                          buffer_size=65536, depth=2, **kw)
        producer = Producer()
        sink.registerProducer(producer, True)
        for chunk in chunks:
            sink.write(chunk)
            if sink.paused:
                # let the workers drain, as the transport would
                while sink.paused:
                    await deferLater(reactor, 0.001)
        result = await sink.finish()
        await sink.finalize()
        return sink, producer, result

    async def test_writes_and_hashes_with_backpressure(self) -> None:
        path = self.mktemp()
        open(path, "wb").close()
        chunks = [DATA[i:i + 100000] for i in range(0, len(DATA), 100000)]
        sink, producer, (written, digest) = await self._write(path, chunks)
        self.assertEqual(written, len(DATA))
        self.assertEqual(digest, hashlib.sha256(DATA).hexdigest())
        with open(path, "rb") as f:
            self.assertEqual(f.read(), DATA)
        self.assertIn("pause", producer.events)
        self.assertEqual(producer.events.count("pause"),
                         producer.events.count("resume"))

    async def test_one_big_chunk_overruns_into_backlog(self) -> None:
        path = self.mktemp()
        open(path, "wb").close()
        sink, _, (written, digest) = await self._write(path, [DATA])
        self.assertEqual((written, digest),
                         (len(DATA), hashlib.sha256(DATA).hexdigest()))

    async def test_write_error_fails_finish(self) -> None:
        # /dev/full answers every write with ENOSPC.
        sink = DeviceSink(reactor, Device.open("/dev/full"), "sha256",
                          buffer_size=65536)
        sink.registerProducer(Producer(), True)
        sink.write(b"y" * 200000)
        with self.assertRaises(SinkError) as cm:
            await sink.finish()
        self.assertIn("No space left on device", str(cm.exception))
        await sink.abort()
        self.flushLoggedErrors()

    async def test_abort_closes(self) -> None:
        path = self.mktemp()
        open(path, "wb").close()
        sink = DeviceSink(reactor, Device.open(path), None,
                          buffer_size=65536)
        sink.write(b"z" * 70000)
        await sink.abort()
        self.assertIsNone(sink.device.plain)
        for thread in sink.threads:  # (each said it was leaving)
            thread.join(1)
            self.assertFalse(thread.is_alive())


class Images(Resource):
    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.stall_after: int | None = None
        self.pending: list[Any] = []

    def render_GET(self, request: Any) -> Any:
        path = request.path.decode()
        if path == "/missing":
            request.setResponseCode(404)
            return b"no"
        if path == "/broken":
            request.setResponseCode(503)
            return b"later"
        if path in ("/endless-404", "/endless-503"):
            # an error page that never ends
            request.setResponseCode(int(path[-3:]))
            self.lost = request.notifyFinish()
            request.write(b"x" * 65536)
            self.pending.append(request)
            return NOT_DONE_YET
        if path == "/stall":
            request.setHeader(b"content-length", str(len(DATA)).encode())
            request.write(DATA[:1000])
            self.pending.append(request)
            return NOT_DONE_YET
        if path == "/short":
            request.setHeader(b"content-length", str(len(DATA)).encode())
            request.write(DATA[:5000])
            request.transport.loseConnection()
            return NOT_DONE_YET
        request.setHeader(b"content-length", str(len(DATA)).encode())
        return DATA


class StreamTests(TestCase):
    def setUp(self) -> None:
        self.images = Images()
        self.port = reactor.listenTCP(0, Site(self.images),
                                      interface="127.0.0.1")
        self.addCleanup(self.port.stopListening)
        self.pool = HTTPConnectionPool(reactor, persistent=False)
        self.addCleanup(self.pool.closeCachedConnections)
        self.http = HTTPClient(Agent(reactor, pool=self.pool))
        self.url = f"http://127.0.0.1:{self.port.getHost().port}"

    def tearDown(self) -> Deferred[None]:
        for request in self.images.pending:
            request.transport.loseConnection()
        return deferLater(reactor, 0.01)

    async def stream(self, path: str, timeout: float = 10.0) -> tuple[int, str]:
        target = self.mktemp()
        open(target, "wb").close()
        sink = DeviceSink(reactor, Device.open(target), "sha256")
        try:
            result = await stream_body(self.http, reactor, self.url + path,
                                       sink, "img", timeout)
        except BaseException:
            await sink.abort()
            raise
        written, digest = await sink.finish()
        await sink.finalize()
        self.assertEqual(result.received, written)
        return written, str(digest)

    async def gated(self, path: str) -> tuple[Any, Any, bytes]:
        """Through the pipeline's gate (a raw image: the body may go
        straight into the sink's buffers): (stream result, gate, disk)."""
        from ipa_twisted.image.pipeline import FormatGate

        target = self.mktemp()
        with open(target, "wb") as f:
            f.truncate(len(DATA) + 4096)
        gate = FormatGate(reactor, Device.open(target), "sha256", None,
                          ("raw",))
        result = await stream_body(self.http, reactor, self.url + path,
                                   gate, "img", 10.0)
        written, digest = await gate.finish()
        await gate.finalize()
        self.assertEqual((written, digest),
                         (len(DATA), hashlib.sha256(DATA).hexdigest()))
        with open(target, "rb") as f:
            return result, gate, f.read(len(DATA))

    async def test_raw_body_goes_straight_to_the_buffers(self) -> None:
        result, gate, disk = await self.gated("/disk.img")
        self.assertEqual(disk, DATA)
        self.assertGreater(result.direct_reads, 0)
        self.assertEqual(result.received, len(DATA))
        self.assertEqual(gate.received, len(DATA))

    async def test_ok(self) -> None:
        written, digest = await self.stream("/disk.img")
        self.assertEqual((written, digest),
                         (len(DATA), hashlib.sha256(DATA).hexdigest()))

    async def test_4xx_is_fatal(self) -> None:
        with self.assertRaises(errors.ImageDownloadFatalError) as cm:
            await self.stream("/missing")
        self.assertIn("answered HTTP 404", str(cm.exception))

    async def test_an_error_body_is_not_read_to_its_end(self) -> None:
        for path, error in (("/endless-404", errors.ImageDownloadFatalError),
                            ("/endless-503", errors.ImageDownloadError)):
            with self.assertRaises(error):
                await self.stream(path)
            # the agent closed the connection: the server sees it lost
            lost = self.images.lost
            give_up = reactor.callLater(5, lost.cancel)
            with self.assertRaises(Exception) as cm:
                await lost
            self.assertNotIsInstance(cm.exception, CancelledError)
            give_up.cancel()

    async def test_5xx_is_retryable(self) -> None:
        with self.assertRaises(errors.ImageDownloadError) as cm:
            await self.stream("/broken")
        self.assertNotIsInstance(cm.exception, errors.ImageDownloadFatalError)
        self.assertTrue(cm.exception.retryable)

    async def test_short_body(self) -> None:
        with self.assertRaises(errors.ImageDownloadError) as cm:
            await self.stream("/short")
        self.assertIn("broke after 5000 bytes", str(cm.exception))

    async def test_unreachable(self) -> None:
        self.url = "http://127.0.0.1:1"
        with self.assertRaises(errors.ImageDownloadError) as cm:
            await self.stream("/x")
        self.assertIn("cannot reach", str(cm.exception))


