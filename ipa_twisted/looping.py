"""Periodic calls whose failures are never dropped.

``LoopingCall.start()`` returns a Deferred that fails when the call
raises, and the loop stops there.  Nobody looked at it: a failing
watchdog or progress report just stopped, and the error surfaced (as
"Unhandled error in Deferred") only when that Deferred was garbage
collected, if ever.  :func:`every` logs the failure at once, with what the
loop was for, and hands it to ``on_failure`` where the owner must react
(a download whose watchdog died must not go on unwatched).
"""

from __future__ import annotations

from typing import Any, Callable

from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

log = Logger()


class Loop(LoopingCall):
    """A looping call whose ``stop()`` may be called once it has stopped
    (by its own failure, say): owners stop their loops in a ``finally``,
    and an ``AssertionError`` there would hide what they were doing."""

    def stop(self) -> None:
        if self.running:
            super().stop()


def every(clock: IReactorTime, interval: float, f: Callable[[], Any],
          what: str, on_failure: Callable[[Failure], None] | None = None,
          now: bool = False) -> Loop:
    """Call ``f`` every ``interval`` seconds on ``clock`` (stop it with
    the returned loop's ``stop()``)."""
    loop = Loop(f)
    loop.clock = clock

    def failed(failure: Failure) -> None:
        log.failure("{what} failed and stopped", failure, what=what)
        if on_failure is not None:
            on_failure(failure)

    loop.start(interval, now=now).addErrback(failed)
    return loop
