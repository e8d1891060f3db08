"""The heartbeat schedule (pure) and the Heartbeater loop (Clock)."""

from __future__ import annotations

import random
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.logger import capturedLogs
from twisted.trial.unittest import SynchronousTestCase

from ipa_twisted import errors
from ipa_twisted.heartbeat import (
    Heartbeater,
    Outcome,
    ipa_heartbeat_delay,
    next_heartbeat_delay,
)


class MinRandom(random.Random):
    def uniform(self, a: float, b: float) -> float:
        return a


class MaxRandom(random.Random):
    def uniform(self, a: float, b: float) -> float:
        return b


class ScheduleTests(SynchronousTestCase):
    def test_success_interval(self) -> None:
        self.assertEqual(next_heartbeat_delay(Outcome.OK, 0, 300, MinRandom()), 90)
        self.assertEqual(next_heartbeat_delay(Outcome.OK, 0, 300, MaxRandom()), 180)
        rng = random.Random(4)
        for _ in range(1000):
            d = next_heartbeat_delay(Outcome.OK, 0, 300, rng)
            self.assertTrue(90 <= d <= 180)

    def test_first_error_and_conflicts_like_ipa(self) -> None:
        for outcome, n in ((Outcome.ERROR, 1), (Outcome.CONFLICT, 0),
                           (Outcome.CONFLICT, 7)):
            self.assertEqual(next_heartbeat_delay(outcome, n, 300, MinRandom()), 5)
            self.assertEqual(next_heartbeat_delay(outcome, n, 300, MaxRandom()), 10)

    def test_backoff_grows_then_caps(self) -> None:
        highs = [next_heartbeat_delay(Outcome.ERROR, n, 300, MaxRandom())
                 for n in range(2, 7)]
        self.assertEqual(highs, [45, 180, 180, 180, 180])
        lows = [next_heartbeat_delay(Outcome.ERROR, n, 300, MinRandom())
                for n in range(2, 7)]
        self.assertEqual(lows, [5, 5, 5, 5, 5])

    def test_cap_follows_timeout(self) -> None:
        self.assertEqual(
            next_heartbeat_delay(Outcome.ERROR, 50, 60, MaxRandom()), 36)
        # A tiny timeout never goes below the 5 s floor.
        self.assertEqual(
            next_heartbeat_delay(Outcome.ERROR, 50, 2, MaxRandom()), 5)

    def test_ipa_schedule(self) -> None:
        self.assertEqual(ipa_heartbeat_delay(Outcome.ERROR, 9, 300, MaxRandom()), 10)


class Sender:
    def __init__(self) -> None:
        self.calls: list[Deferred[Any]] = []

    def __call__(self) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        self.calls.append(d)
        return d


class HeartbeaterTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.send = Sender()
        self.hb = Heartbeater(self.clock, self.send, 100.0, MinRandom())

    def test_first_beat_at_once_then_interval(self) -> None:
        self.hb.startService()
        self.assertEqual(len(self.send.calls), 0)
        self.clock.advance(0)
        self.assertEqual(len(self.send.calls), 1)
        self.send.calls[0].callback(None)
        self.clock.advance(29.9)
        self.assertEqual(len(self.send.calls), 1)
        self.clock.advance(0.1)  # 100 x 0.3
        self.assertEqual(len(self.send.calls), 2)

    def test_never_two_at_once(self) -> None:
        self.hb.startService()
        self.clock.advance(0)
        self.hb.force()
        self.clock.advance(1000)
        self.assertEqual(len(self.send.calls), 1)

    def test_errors_back_off_and_success_resets(self) -> None:
        self.hb = Heartbeater(self.clock, self.send, 100.0, MaxRandom())
        self.hb.startService()
        self.clock.advance(0)
        times = []
        for i in range(4):
            self.send.calls[-1].errback(errors.HeartbeatConnectionError("down"))
            before = len(self.send.calls)
            start = self.clock.seconds()
            while len(self.send.calls) == before:
                self.clock.advance(0.5)
            times.append(self.clock.seconds() - start)
        # Max random: 10 s (first, as IPA), then up to cap/4 = 15 s, then
        # up to the cap, 0.6 x 100 s.
        self.assertEqual(times, [10.0, 15.0, 60.0, 60.0])
        self.assertEqual(self.hb.consecutive_errors, 4)
        self.send.calls[-1].callback(None)
        self.assertEqual(self.hb.consecutive_errors, 0)
        self.assertEqual(len(self.flushLoggedErrors()), 0)

    def test_conflict_does_not_count_as_error(self) -> None:
        self.hb.startService()
        self.clock.advance(0)
        self.send.calls[-1].errback(errors.HeartbeatConflictError("locked"))
        self.assertEqual(self.hb.consecutive_errors, 0)
        self.clock.advance(5)
        self.assertEqual(len(self.send.calls), 2)

    def test_force_waits_five_seconds_since_last(self) -> None:
        self.hb.startService()
        self.clock.advance(0)
        self.send.calls[0].callback(None)
        self.clock.advance(2)
        self.hb.force()
        self.clock.advance(2.9)
        self.assertEqual(len(self.send.calls), 1)
        self.clock.advance(0.1)
        self.assertEqual(len(self.send.calls), 2)

    def test_force_during_flight_beats_after_it(self) -> None:
        self.hb.startService()
        self.clock.advance(0)
        self.clock.advance(1)
        self.hb.force()
        self.send.calls[0].callback(None)   # ended at t=1
        self.clock.advance(3.9)
        self.assertEqual(len(self.send.calls), 1)
        self.clock.advance(0.1)             # t=5: 5 s after the start of #1
        self.assertEqual(len(self.send.calls), 2)

    def test_force_long_after_last_is_immediate(self) -> None:
        self.hb.startService()
        self.clock.advance(0)
        self.send.calls[0].callback(None)
        self.clock.advance(20)
        self.hb.force()
        self.clock.advance(0)
        self.assertEqual(len(self.send.calls), 2)

    def test_stop_cancels_the_beat_in_flight(self) -> None:
        ended: list[Any] = []

        def hang() -> Deferred[Any]:
            d: Deferred[Any] = Deferred(lambda d: ended.append(d))
            self.send.calls.append(d)
            return d

        hb = Heartbeater(self.clock, hang, 100.0, MinRandom())
        hb.startService()
        self.clock.advance(0)
        with capturedLogs() as events:
            stopped = hb.stopService()
        self.assertFalse(hb.running)
        self.assertEqual(ended, [self.send.calls[0]])   # cancelled
        self.successResultOf(stopped)
        self.assertEqual(events, [])                     # nothing logged
        self.clock.advance(1000)
        self.assertEqual(len(self.send.calls), 1)
        self.assertEqual(hb.consecutive_errors, 0)   # not a network error

    def test_stop_without_a_beat_in_flight(self) -> None:
        self.hb.startService()
        self.clock.advance(0)
        self.send.calls[0].callback(None)
        self.successResultOf(self.hb.stopService())
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_send_raising_synchronously_is_an_error(self) -> None:
        def broken() -> Deferred[Any]:
            raise RuntimeError("bug")

        hb = Heartbeater(self.clock, broken, 100.0, MinRandom())
        hb.startService()
        self.clock.advance(0)
        self.assertEqual(hb.consecutive_errors, 1)

    def test_timeout_can_change(self) -> None:
        hb = Heartbeater(self.clock, lambda: succeed(None), 100.0, MinRandom())
        hb.startService()
        self.clock.advance(0)
        hb.heartbeat_timeout = 10.0
        self.clock.advance(30)   # the beat scheduled with the old timeout
        self.assertEqual(hb.beats, 2)
        self.clock.advance(3)    # 10 x 0.3
        self.assertEqual(hb.beats, 3)
