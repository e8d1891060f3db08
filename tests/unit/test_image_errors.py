"""Errors in the image path that used to be dropped: a hashing thread
left behind when the device cannot be opened, a watchdog or progress loop
that failed and stopped silently (on a Clock, with a fake HTTP response)."""

from __future__ import annotations

import threading
from typing import Any

from twisted.internet.defer import Deferred, ensureDeferred, succeed
from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.client import ResponseDone
from twisted.web.http_headers import Headers

from ipa_twisted import errors
from ipa_twisted.image.sink import Device, SinkError
from ipa_twisted.image.progress import Progress
from ipa_twisted.image.stream import stream_body
from ipa_twisted.looping import every


def hash_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "hash"]


class Qcow2TargetTests(SynchronousTestCase):
    def test_no_thread_left_when_the_device_cannot_be_opened(self) -> None:
        # the device is opened before any target (and its threads) exists
        before = threading.enumerate()
        missing = self.mktemp() + "/no/such/disk"
        with self.assertRaises(FileNotFoundError):
            Device.open(missing)
        self.assertEqual(threading.enumerate(), before)


class FakeTransport:
    """The HTTP body's transport, as the consumer's producer."""

    def __init__(self) -> None:
        self.events: list[str] = []

    def pauseProducing(self) -> None:
        self.events.append("pause")

    def resumeProducing(self) -> None:
        self.events.append("resume")

    def stopProducing(self) -> None:
        self.events.append("stop")


class FakeResponse:
    def __init__(self, length: int) -> None:
        self.code = 200
        self.phrase = b"OK"
        self.length = length
        self.headers = Headers()
        self.body: Any = None

    def deliverBody(self, protocol: Any) -> None:
        self.body = protocol


class FakeHTTP:
    def __init__(self, response: FakeResponse) -> None:
        self.response = response

    def request(self, method: str, url: str, **kw: Any) -> Deferred[Any]:
        return succeed(self.response)


class Consumer:
    def __init__(self) -> None:
        self.data = b""
        self.producer: Any = None
        self.error: BaseException | None = None
        self.paused = False

    def write(self, data: bytes) -> None:
        self.data += data

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        self.producer = producer

    def unregisterProducer(self) -> None:
        self.producer = None


class StreamWatchdogTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.response = FakeResponse(10000)
        self.transport = FakeTransport()

    def stream(self, consumer: Any, stall_timeout: float = 0.5
               ) -> Deferred[Any]:
        d = ensureDeferred(stream_body(
            FakeHTTP(self.response), self.clock, "http://images/disk.img",
            consumer, "img", stall_timeout))
        self.response.body.makeConnection(self.transport)
        self.response.body.dataReceived(b"x" * 1000)
        return d

    def test_stall_is_cut(self) -> None:
        d = self.stream(Consumer())
        # checked every 0.125 s; the first check sees the 1000 bytes
        self.clock.pump([0.125] * 4)
        self.assertNoResult(d)
        self.clock.advance(0.125)  # 0.5 s without a byte since
        f = self.failureResultOf(d, errors.ImageDownloadError)
        self.assertIn("no data for 0.5 s after 1000 bytes", str(f.value))
        self.assertEqual(self.transport.events, ["stop"])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_paused_for_a_working_disk_is_not_a_stall(self) -> None:
        consumer = Consumer()
        consumer.progress = 0  # type: ignore[attr-defined]
        d = self.stream(consumer)
        consumer.paused = True
        for _ in range(40):
            consumer.progress += 1  # type: ignore[attr-defined]
            self.clock.advance(0.125)
        self.assertNoResult(d)
        consumer.paused = False
        self.response.body.dataReceived(b"x" * 9000)
        self.response.body.connectionLost(Failure(ResponseDone()))
        self.assertEqual(self.successResultOf(d).received, 10000)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_paused_for_a_disk_that_does_nothing_fails(self) -> None:
        """The download waits for the disk, and the disk completes
        nothing: a local error (not retried), not a healthy pause."""
        consumer = Consumer()
        consumer.progress = 0  # type: ignore[attr-defined]
        consumer.path = "/dev/sdz"  # type: ignore[attr-defined]
        d = self.stream(consumer)
        consumer.paused = True
        self.clock.pump([0.125] * 4)
        self.assertNoResult(d)
        self.clock.pump([0.125] * 2)
        f = self.failureResultOf(d, SinkError)
        self.assertNotIsInstance(f.value, errors.ImageDownloadError)
        self.assertEqual(str(f.value), "writing /dev/sdz: the disk has not "
                         "completed a write for 0 s")
        self.assertEqual(self.transport.events, ["stop"])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_a_failing_watchdog_fails_the_download(self) -> None:
        class Broken(Consumer):
            @property
            def paused(self) -> bool:
                raise RuntimeError("watchdog bug")

            @paused.setter
            def paused(self, value: bool) -> None:
                pass

        d = self.stream(Broken())
        # nothing moves for 0.5 s: the watchdog asks "paused?"
        self.clock.pump([0.125] * 6)
        # not left downloading unwatched (a stall would hang it for ever)
        f = self.failureResultOf(d, RuntimeError)
        self.assertEqual(str(f.value), "watchdog bug")
        self.assertEqual(self.transport.events, ["stop"])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)


class ProgressTests(SynchronousTestCase):
    def test_a_failing_report_says_what_stopped(self) -> None:
        clock = Clock()
        progress = Progress(clock, "img", "/dev/sda", total=100,
                            interval=5.0)

        def broken() -> dict[str, Any]:
            raise ValueError("bad numbers")

        self.patch(progress, "snapshot", broken)
        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        clock.advance(5.0)
        # said with what stopped (not an anonymous "Unhandled error in
        # Deferred" when the loop's Deferred is collected)
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)
        said = [e for e in events if "log_failure" in e]
        self.assertEqual([e.get("what") for e in said],
                         ["progress report of img"])
        progress.stop()


class EveryTests(SynchronousTestCase):
    def test_failure_logged_and_handed_over(self) -> None:
        clock = Clock()
        calls: list[int] = []
        seen: list[Failure] = []

        def tick() -> None:
            calls.append(1)
            if len(calls) == 2:
                raise KeyError("tick")

        loop = every(clock, 1.0, tick, what="ticker", on_failure=seen.append)
        clock.pump([1.0] * 5)
        self.assertEqual(len(calls), 2)
        self.assertFalse(loop.running)
        self.assertEqual([f.type for f in seen], [KeyError])
        self.assertEqual(len(self.flushLoggedErrors(KeyError)), 1)

    def test_stopping_a_loop_its_failure_stopped_is_harmless(self) -> None:
        # owners stop their loops in a finally: the loop's own failure
        # must not turn that into an AssertionError hiding their result
        clock = Clock()

        def tick() -> None:
            raise KeyError("tick")

        loop = every(clock, 1.0, tick, what="ticker")
        clock.advance(1.0)
        self.assertFalse(loop.running)
        loop.stop()
        self.assertEqual(len(self.flushLoggedErrors(KeyError)), 1)

