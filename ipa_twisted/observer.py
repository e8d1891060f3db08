"""One result, any number of waiters.

A Deferred has one chain of callbacks: whoever awaits it takes its result
(the next one awaiting it gets ``None``), and cancelling one wait cancels
the work itself.  When several parties wait for one outcome (a command's
end, a probe run once for many parts of the inventory, the agent being
ready, LLDP frames), each gets its own Deferred from a
:class:`OneShotObserver` (the model is Tahoe-LAFS's ``OneShotObserverList``):

- :meth:`~OneShotObserver.when_fired` hands out a new Deferred, fired at
  once when the result is already there;
- cancelling that Deferred only forgets that waiter (``CancelledError``
  for it), never the work nor the other waiters;
- a failure reaches every waiter; the observer itself keeps it, so that it
  is never reported as unhandled when nobody waits.

Waiters are fired synchronously, in the order they asked.
"""

from __future__ import annotations

from typing import Any, Generic, TypeVar

from twisted.internet.defer import AlreadyCalledError, Deferred
from twisted.python.failure import Failure

T = TypeVar("T")

_UNSET: Any = object()


class OneShotObserver(Generic[T]):
    """One result (a value or a :class:`Failure`), handed to every waiter."""

    def __init__(self) -> None:
        self._result: T | Failure = _UNSET
        self._waiters: list[Deferred[T]] = []

    @property
    def fired(self) -> bool:
        return self._result is not _UNSET

    def when_fired(self) -> Deferred[T]:
        """A new Deferred for the result; cancelling it forgets this
        waiter only."""
        if self.fired:
            d: Deferred[T] = Deferred()
            self._give(d)
            return d

        def forget(d: Deferred[T]) -> None:
            if d in self._waiters:
                self._waiters.remove(d)

        d = Deferred(forget)
        self._waiters.append(d)
        return d

    def fire(self, result: T | Failure) -> None:
        """Hand ``result`` to every waiter, now and later; only once."""
        if self.fired:
            raise AlreadyCalledError("this observer has already fired")
        self._result = result
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            self._give(d)

    def fire_if_not_fired(self, result: T | Failure) -> None:
        if not self.fired:
            self.fire(result)

    def observe(self, d: Deferred[Any]) -> None:
        """Fire with ``d``'s outcome, leaving ``d``'s own result alone
        (its owner may still await it)."""

        def passthrough(result: Any) -> Any:
            self.fire_if_not_fired(result)
            return result

        d.addBoth(passthrough)

    def _give(self, d: Deferred[T]) -> None:
        result = self._result
        if isinstance(result, Failure):
            d.errback(result)
        else:
            d.callback(result)
