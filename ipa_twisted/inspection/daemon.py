"""The introspection daemon's schedule: a fixed grid, jittered, no drift.

Posts are due at ``t0 + k x period`` (k = 1, 2, ...), each shifted by a
random ``U(-0.1, +0.1) x period``: a fleet does not post in step, and the
k-th post stays near ``t0 + k x period`` however long the earlier ones
took.  (ironic-python-agent multiplies each sleep by U(0.7, 1.2) of the
previous one, so its posts drift ever more frequent.)  After failures the
daemon skips slots, 2^n of them after n failures in a row, at most 4 (the
grid stays the same); after a success it posts at every slot again.
"""

from __future__ import annotations

import math
import random
from typing import Awaitable, Callable

from twisted.internet.defer import (
    CancelledError,
    Deferred,
    ensureDeferred,
    succeed,
)
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater
from twisted.logger import Logger

from ipa_twisted.observer import OneShotObserver

log = Logger()

JITTER = 0.1
MAX_SKIP = 4


def slot_step(consecutive_errors: int) -> int:
    """How many slots ahead the next post goes."""
    if consecutive_errors <= 0:
        return 1
    return int(min(2 ** consecutive_errors, MAX_SKIP))


def next_post(t0: float, period: float, last_slot: int,
              consecutive_errors: int, now: float, rng: random.Random
              ) -> tuple[int, float]:
    """(slot, time) of the next post: ``slot_step`` slots after
    ``last_slot``, moved on to the first slot whose earliest time is still
    ahead of ``now``."""
    slot = last_slot + slot_step(consecutive_errors)
    earliest_ok = math.floor((now - t0) / period + JITTER) + 1
    slot = max(slot, earliest_ok)
    return slot, t0 + slot * period + rng.uniform(-JITTER, JITTER) * period


class IntrospectionDaemon:
    """Calls ``post()`` (True: accepted) on the schedule above until
    stopped."""

    def __init__(self, clock: IReactorTime,
                 post: Callable[[], Awaitable[bool]], period: float,
                 rng: random.Random | None = None) -> None:
        self._clock = clock
        self._post = post
        self.period = period
        self._rng = rng or random.SystemRandom()
        self.errors = 0
        self.posts: list[tuple[float, bool]] = []
        self._task: Deferred[None] | None = None
        self._stopping = False
        self._ended: OneShotObserver[None] = OneShotObserver()

    def start(self) -> Deferred[None]:
        """Fires when the daemon stops."""
        self._task = ensureDeferred(self._run())
        self._ended.observe(self._task)
        return self._task

    def stop(self) -> Deferred[None]:
        """Stop (a post in flight is abandoned); fires once stopped."""
        self._stopping = True
        if self._task is None:
            return succeed(None)
        ended = self._ended.when_fired()
        self._task.cancel()
        return ended.addBoth(lambda _: None)

    async def _run(self) -> None:
        t0 = self._clock.seconds()
        slot = 0
        try:
            while not self._stopping:
                ok = await self._post_once()
                if self._stopping:
                    break
                self.errors = 0 if ok else self.errors + 1
                slot, when = next_post(t0, self.period, slot, self.errors,
                                       self._clock.seconds(), self._rng)
                delay = max(0.0, when - self._clock.seconds())
                log.info("next introspection post in {d:.1f} s (slot {s})",
                         d=delay, s=slot)
                await deferLater(self._clock, delay)
        except CancelledError:
            pass
        log.info("introspection daemon stopped after {n} posts",
                 n=len(self.posts))

    async def _post_once(self) -> bool:
        started = self._clock.seconds()
        try:
            ok = bool(await self._post())
        except CancelledError:
            raise
        except Exception as e:
            log.error("introspection post failed: {e}", e=e)
            ok = False
        self.posts.append((started, ok))
        return ok


