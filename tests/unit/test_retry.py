"""The retry loop: delays, attempts, deadline, and cancellation."""

from __future__ import annotations

import random
from typing import Any

from twisted.internet.defer import CancelledError, Deferred, fail, succeed
from twisted.internet.error import ConnectingCancelledError, ConnectionLost
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.client import ResponseFailed, ResponseNeverReceived

from ipa_twisted.retry import (
    GaveUp,
    backoff,
    constant,
    is_cancellation,
    retry,
)


class Flaky(Exception):
    pass


class PolicyTests(SynchronousTestCase):
    def test_backoff(self) -> None:
        delay = backoff(1.0, 10.0)
        self.assertEqual([delay(n) for n in range(1, 7)],
                         [1, 2, 4, 8, 10, 10])
        self.assertEqual(backoff(0.5, 60, factor=3)(3), 4.5)
        self.assertEqual(backoff(1.0, 10.0)(10 ** 6), 10)

    def test_jitter_stays_in_its_range(self) -> None:
        delay = backoff(1.0, 10.0, rng=random.Random(3))
        for n in range(1, 50):
            self.assertTrue(1.0 <= delay(n) <= min(2 ** (n - 1), 10))

    def test_constant(self) -> None:
        self.assertEqual(constant(3)(1), constant(3)(9))

    def test_is_cancellation(self) -> None:
        self.assertTrue(is_cancellation(CancelledError()))
        self.assertTrue(is_cancellation(Failure(CancelledError())))
        self.assertTrue(is_cancellation(ConnectingCancelledError(None)))
        self.assertTrue(is_cancellation(
            ResponseNeverReceived([Failure(CancelledError())])))
        self.assertTrue(is_cancellation(ResponseFailed(
            [Failure(ConnectionLost()),
             Failure(ResponseFailed([Failure(CancelledError())]))])))
        self.assertFalse(is_cancellation(
            ResponseNeverReceived([Failure(ConnectionLost())])))
        self.assertFalse(is_cancellation(ValueError("x")))


class RetryTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.calls = 0
        self.retries: list[tuple[int, str, float]] = []

    def attempt(self, *outcomes: Any) -> Any:
        results = list(outcomes)

        def call() -> Deferred[Any]:
            self.calls += 1
            outcome = results.pop(0) if len(results) > 1 else results[0]
            if isinstance(outcome, Deferred):
                return outcome
            if isinstance(outcome, BaseException):
                return fail(outcome)
            return succeed(outcome)

        return call

    def retrying(self, call: Any, **kw: Any) -> Deferred[Any]:
        kw.setdefault("on_retry", lambda n, e, p: self.retries.append(
            (n, str(e), p)))
        return Deferred.fromCoroutine(retry(self.clock, call,
                                            kw.pop("delay", backoff(1, 60)),
                                            **kw))

    def test_succeeds_after_failures_with_the_policy_pauses(self) -> None:
        d = self.retrying(self.attempt(Flaky("a"), Flaky("b"), "ok"))
        self.assertEqual(self.calls, 1)
        self.clock.advance(1)
        self.assertEqual(self.calls, 2)
        self.clock.advance(1.9)
        self.assertNoResult(d)
        self.clock.advance(0.1)
        self.assertEqual(self.successResultOf(d), "ok")
        self.assertEqual(self.retries, [(1, "a", 1), (2, "b", 2)])

    def test_attempts(self) -> None:
        d = self.retrying(self.attempt(Flaky("no")), attempts=3)
        self.clock.pump([1, 2])
        failure = self.failureResultOf(d, GaveUp)
        self.assertEqual((failure.value.attempts, self.calls), (3, 3))
        self.assertIsInstance(failure.value.last, Flaky)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_no_pause_past_the_deadline(self) -> None:
        d = self.retrying(self.attempt(Flaky("no")), timeout=10)
        self.clock.pump([1, 2, 4])     # 1 + 2 + 4 = 7 s; the next is 8 s
        failure = self.failureResultOf(d, GaveUp)
        self.assertEqual(failure.value.attempts, 4)
        self.assertEqual(failure.value.elapsed, 7)

    def test_not_retryable_goes_through(self) -> None:
        d = self.retrying(self.attempt(ValueError("bad")),
                     retryable=lambda e: isinstance(e, Flaky))
        self.failureResultOf(d, ValueError)
        self.assertEqual((self.calls, self.retries), (1, []))

    def test_cancelled_attempt_is_not_retried(self) -> None:
        def cancel(d: Deferred[Any]) -> None:
            d.errback(ResponseNeverReceived([Failure(CancelledError())]))

        hanging: Deferred[Any] = Deferred(cancel)
        d = self.retrying(self.attempt(hanging))
        d.cancel()
        self.failureResultOf(d, CancelledError)
        self.assertEqual((self.calls, self.retries), (1, []))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_cancellation_from_inside_is_not_retried_either(self) -> None:
        d = self.retrying(self.attempt(ConnectingCancelledError(None)))
        self.failureResultOf(d, CancelledError)
        self.assertEqual((self.calls, self.retries), (1, []))

    def test_cancelled_pause(self) -> None:
        d = self.retrying(self.attempt(Flaky("x")))
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        d.cancel()
        self.failureResultOf(d, CancelledError)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.clock.advance(100)
        self.assertEqual(self.calls, 1)


class GetBytesTests(SynchronousTestCase):
    """A request that times out and one that is cancelled both end in
    twisted.web with a wrapped CancelledError: get_bytes tells them apart
    (the first is retried by its callers, the second never)."""

    def test_timeout_is_a_timeout(self) -> None:
        from twisted.internet.defer import TimeoutError

        from ipa_twisted.httpfetch import get_bytes
        from ipa_twisted.testing import HangingHTTP

        clock, http = Clock(), HangingHTTP()
        d = get_bytes(http, clock, "http://a:1/", limit=10, timeout=5)
        clock.advance(5)
        self.failureResultOf(d, TimeoutError)
        self.assertEqual(http.pending, [])

    def test_cancel_is_a_cancellation(self) -> None:
        from ipa_twisted.httpfetch import get_bytes
        from ipa_twisted.testing import HangingHTTP

        clock, http = Clock(), HangingHTTP()
        d = get_bytes(http, clock, "http://a:1/", limit=10, timeout=5)
        d.cancel()
        self.failureResultOf(d, CancelledError)
        self.assertEqual((http.pending, clock.getDelayedCalls()), ([], []))
