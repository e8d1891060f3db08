"""Trying again: one loop for every "retry later" of the agent.

:func:`retry` calls an attempt until it succeeds, pausing between
failures as a delay function says, within a number of attempts and/or an
overall deadline:

- the delay function has the shape of Twisted's ``backoffPolicy()``: the
  number of failures so far (1 after the first) -> seconds
  (:func:`backoff` and :func:`constant` make the usual ones);
- a failure that ``retryable`` refuses ends the loop at once, as it is;
- running out of attempts or time raises :class:`GaveUp`, which holds the
  last error (the caller words the message);
- cancellation is honoured, always: cancelling the Deferred of the loop
  cancels the attempt or the pause in hand, and the loop ends with
  ``CancelledError``.  A cancelled request fails inside twisted.web with a
  ``ResponseNeverReceived`` that wraps the ``CancelledError``
  (:func:`is_cancellation` sees through it): it is never taken for a
  network error, never logged as one, never retried.
"""

from __future__ import annotations

import random
from typing import Awaitable, Callable, TypeVar

from twisted.internet.defer import CancelledError
from twisted.internet.error import ConnectingCancelledError
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater
from twisted.python.failure import Failure

T = TypeVar("T")

#: seconds to wait after the n-th failure in a row (n >= 1)
DelayPolicy = Callable[[int], float]


def is_cancellation(error: BaseException | Failure) -> bool:
    """Is this failure our own cancellation, bare or wrapped (twisted.web's
    ``ResponseNeverReceived``/``ResponseFailed`` hold their causes in
    ``reasons``; a cancelled connection attempt fails with
    ``ConnectingCancelledError``)?"""
    if isinstance(error, Failure):
        error = error.value  # type: ignore[assignment]
    if isinstance(error, (CancelledError, ConnectingCancelledError)):
        return True
    reasons = getattr(error, "reasons", None)
    if isinstance(reasons, (list, tuple)):
        return any(isinstance(r, Failure) and is_cancellation(r)
                   for r in reasons)
    return False


class GaveUp(Exception):
    """No attempt succeeded within the attempts or the time allowed."""

    def __init__(self, attempts: int, elapsed: float,
                 last: BaseException) -> None:
        super().__init__(f"gave up after {attempts} attempts in "
                         f"{elapsed:.0f} s: {last}")
        self.attempts = attempts
        self.elapsed = elapsed
        self.last = last


def constant(seconds: float) -> DelayPolicy:
    """The same pause after every failure."""
    return lambda failures: seconds


def backoff(initial: float, maximum: float, factor: float = 2.0,
            rng: random.Random | None = None) -> DelayPolicy:
    """``initial x factor^(n-1)``, at most ``maximum``; with ``rng``, a
    uniform draw between ``initial`` and that (full jitter)."""

    def delay(failures: int) -> float:
        high = min(initial * factor ** min(failures - 1, 64), maximum)
        if rng is None:
            return high
        return rng.uniform(initial, max(initial, high))

    return delay


def _retry_all(error: BaseException) -> bool:
    return True


async def retry(
    clock: IReactorTime,
    attempt: Callable[[], Awaitable[T]],
    delay: DelayPolicy,
    *,
    attempts: int | None = None,
    timeout: float | None = None,
    retryable: Callable[[BaseException], bool] = _retry_all,
    on_retry: Callable[[int, BaseException, float], None] | None = None,
) -> T:
    """``await attempt()`` until it returns (see the module docstring).

    ``attempts`` bounds the number of calls; ``timeout`` the time from the
    first call: no pause is taken that would end past it.  ``on_retry(n,
    error, pause)`` is called before each pause (to log it).
    """
    started = clock.seconds()
    failures = 0
    while True:
        try:
            return await attempt()
        except Exception as e:
            if is_cancellation(e):
                raise CancelledError() from None
            if not retryable(e):
                raise
            error: BaseException = e
        failures += 1
        elapsed = clock.seconds() - started
        if attempts is not None and failures >= attempts:
            raise GaveUp(failures, elapsed, error)
        pause = max(0.0, delay(failures))
        if timeout is not None and elapsed + pause > timeout:
            raise GaveUp(failures, elapsed, error)
        if on_retry is not None:
            on_retry(failures, error, pause)
        await deferLater(clock, pause)
