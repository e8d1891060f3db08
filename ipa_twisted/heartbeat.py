"""When to heartbeat: a pure schedule, and the loop that follows it.

The schedule is a pure function of (outcome, consecutive errors, heartbeat
timeout, random source), so a whole fleet can be simulated
(``benchmarks/heartbeat_fleet.py``).

- After a success: ``heartbeat_timeout x U(0.3, 0.6)``, as
  ironic-python-agent does (jitter keeps a fleet from beating in step).
- After a 409 (the node is locked: Ironic is up and busy with it): 5-10 s,
  every time, as IPA does; this is what lets a deploy go on quickly.
- After the first failure: 5-10 s, as IPA does (one blip costs little).
- After further failures: exponential backoff (x4 per failure) with full
  jitter, capped at ``cap = 0.6 x heartbeat_timeout`` (never later than a
  healthy agent's latest beat): the n-th failure in a row waits
  ``U(5 s, min(cap, cap x 4^(n-3)))``, i.e. up to cap/4, then up to cap.
  The schedule scales with the timeout, and a fleet meets a recovering
  Ironic at ~1.5x its steady load.  IPA keeps retrying every 5-10 s, so a
  fleet whose Ironic is down multiplies its load by ~18 and meets the
  recovering Ironic with all of it.
"""

from __future__ import annotations

import enum
import random
from typing import Callable

from twisted.application.service import Service
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from ipa_twisted import errors
from ipa_twisted.observer import OneShotObserver
from ipa_twisted.retry import is_cancellation

log = Logger()

#: A forced heartbeat is sent once this long has passed since the last one.
FORCED_MIN_GAP = 5.0
FIRST_RETRY = (5.0, 10.0)
RETRY_FLOOR = 5.0
RETRY_GROWTH = 4.0
CAP_FRACTION = 0.6


class Outcome(enum.Enum):
    OK = "ok"
    CONFLICT = "conflict"
    ERROR = "error"


def next_heartbeat_delay(
    outcome: Outcome,
    consecutive_errors: int,
    heartbeat_timeout: float,
    rng: random.Random,
) -> float:
    """Seconds from the end of one heartbeat to the start of the next.

    ``consecutive_errors`` counts the failures in a row including this one
    (0 after a success).
    """
    if outcome is Outcome.OK:
        return heartbeat_timeout * rng.uniform(0.3, 0.6)
    if outcome is Outcome.CONFLICT or consecutive_errors <= 1:
        return rng.uniform(*FIRST_RETRY)
    cap = max(RETRY_FLOOR, CAP_FRACTION * heartbeat_timeout)
    ceiling = min(cap, cap * RETRY_GROWTH ** (consecutive_errors - 3))
    return rng.uniform(RETRY_FLOOR, max(RETRY_FLOOR, ceiling))


def ipa_heartbeat_delay(
    outcome: Outcome,
    consecutive_errors: int,
    heartbeat_timeout: float,
    rng: random.Random,
) -> float:
    """ironic-python-agent 13.0.0's schedule, for comparison only."""
    if outcome is Outcome.OK:
        return heartbeat_timeout * rng.uniform(0.3, 0.6)
    return 5.0 * rng.uniform(1.0, 2.0)


def classify(failure: Failure) -> Outcome:
    if failure.check(errors.HeartbeatConflictError):
        return Outcome.CONFLICT
    return Outcome.ERROR


class Heartbeater(Service):
    """Sends heartbeats on the schedule above; never two at once.

    A service: the first heartbeat goes out as soon as it starts; stopping
    cancels the heartbeat in flight (if any) and fires once it has ended.
    ``send()`` returns a Deferred that fires on success (HTTP 202) and fails
    with a :class:`~ipa_twisted.errors.HeartbeatConflictError` on 409, or any
    other error.
    """

    name = "heartbeater"

    def __init__(
        self,
        clock: IReactorTime,
        send: Callable[[], "Deferred[object]"],
        heartbeat_timeout: float,
        rng: random.Random | None = None,
        schedule: Callable[
            [Outcome, int, float, random.Random], float
        ] = next_heartbeat_delay,
    ) -> None:
        self._clock = clock
        self._send = send
        self.heartbeat_timeout = heartbeat_timeout
        self._rng = rng or random.SystemRandom()
        self._schedule = schedule
        self._timer: IDelayedCall | None = None
        self._in_flight: Deferred[object] | None = None
        self._landed: OneShotObserver[None] | None = None
        self._started_at: float | None = None  # of the last beat sent
        self._force_after_flight = False
        self.consecutive_errors = 0
        self.beats = 0
        self.accepted = 0

    def startService(self) -> None:
        if self.running:
            return
        super().startService()
        self._call_at(self._clock.seconds())

    def stopService(self) -> "Deferred[None]":
        """Stop; cancels the beat in flight, fires once it has ended."""
        super().stopService()
        self._cancel_timer()
        if self._in_flight is None or self._landed is None:
            return succeed(None)
        landed = self._landed.when_fired()
        self._in_flight.cancel()
        return landed

    def force(self) -> None:
        """Beat soon: as soon as 5 s have passed since the previous beat."""
        if not self.running:
            return
        if self._in_flight is not None:
            self._force_after_flight = True  # handled when that beat ends
            return
        self._call_at(self._earliest_forced())

    def _earliest_forced(self) -> float:
        now = self._clock.seconds()
        if self._started_at is None:
            return now
        return max(now, self._started_at + FORCED_MIN_GAP)

    def _cancel_timer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _call_at(self, when: float) -> None:
        """(Re)schedule the next beat at ``when`` unless one is due sooner."""
        now = self._clock.seconds()
        if self._timer is not None and self._timer.active():
            if self._timer.getTime() <= when:
                return
            self._cancel_timer()
        self._timer = self._clock.callLater(max(0.0, when - now), self._beat)

    def _beat(self) -> None:
        self._timer = None
        if not self.running or self._in_flight is not None:
            return
        self._started_at = self._clock.seconds()
        self.beats += 1
        try:
            d = self._send()
        except Exception:
            d = Deferred()
            d.errback(Failure())
        self._in_flight = d
        self._landed = OneShotObserver()
        d.addCallbacks(self._ok, self._failed)
        d.addErrback(lambda f: log.failure("heartbeat scheduling failed", f))
        d.addBoth(self._ended)

    def _ended(self, _: object) -> None:
        self._in_flight = None
        landed, self._landed = self._landed, None
        if landed is not None:
            landed.fire(None)

    def _ok(self, _: object) -> None:
        self._in_flight = None
        self.accepted += 1
        if self.consecutive_errors:
            log.info("heartbeat accepted after {n} failures",
                     n=self.consecutive_errors)
        elif self.accepted == 1:
            log.info("first heartbeat accepted")
        else:
            log.debug("heartbeat accepted")
        self.consecutive_errors = 0
        self._next(Outcome.OK)

    def _failed(self, failure: Failure) -> None:
        self._in_flight = None
        if not self.running and is_cancellation(failure):
            return          # stopped: not a network error
        outcome = classify(failure)
        if outcome is Outcome.ERROR:
            self.consecutive_errors += 1
        delay = self._next(outcome)
        log.warn(
            "heartbeat failed ({outcome}, {n} in a row): {error}; "
            "next try in {delay:.1f} s",
            outcome=outcome.value,
            n=self.consecutive_errors,
            error=failure.getErrorMessage(),
            delay=delay,
        )

    def _next(self, outcome: Outcome) -> float:
        delay = self._schedule(
            outcome, self.consecutive_errors, self.heartbeat_timeout, self._rng
        )
        if not self.running:
            return delay
        when = self._clock.seconds() + delay
        if self._force_after_flight:
            when = min(when, self._earliest_forced())
            self._force_after_flight = False
        self._call_at(when)
        return delay
