"""One result, many waiters: the observer and those who use it."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import AlreadyCalledError, CancelledError, Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from ipa_twisted.hardware.lldp import LLDPCollector
from ipa_twisted.observer import OneShotObserver


class ObserverTests(SynchronousTestCase):
    def test_every_waiter_gets_the_result_before_and_after(self) -> None:
        once: OneShotObserver[int] = OneShotObserver()
        early = [once.when_fired(), once.when_fired()]
        for d in early:
            self.assertNoResult(d)
        once.fire(7)
        self.assertTrue(once.fired)
        for d in early + [once.when_fired()]:
            self.assertEqual(self.successResultOf(d), 7)

    def test_a_failure_reaches_every_waiter(self) -> None:
        once: OneShotObserver[int] = OneShotObserver()
        early = once.when_fired()
        d: Deferred[int] = Deferred()
        d.addBoth(once.fire)
        d.errback(OSError("socket closed"))
        self.assertEqual(str(self.failureResultOf(early, OSError).value),
                         "socket closed")
        self.failureResultOf(once.when_fired(), OSError)
        # the Deferred it came from was consumed: nothing unhandled
        self.assertIsNone(self.successResultOf(d))

    def test_cancelling_a_waiter_forgets_it_only(self) -> None:
        once: OneShotObserver[str] = OneShotObserver()
        gone, stays = once.when_fired(), once.when_fired()
        gone.cancel()
        self.failureResultOf(gone, CancelledError)
        self.assertNoResult(stays)
        once.fire("x")
        self.assertEqual(self.successResultOf(stays), "x")

    def test_fires_once(self) -> None:
        once: OneShotObserver[int] = OneShotObserver()
        once.fire(1)
        self.assertRaises(AlreadyCalledError, once.fire, 2)
        once.fire_if_not_fired(3)
        self.assertEqual(self.successResultOf(once.when_fired()), 1)

    def test_observe_leaves_the_owner_its_result(self) -> None:
        once: OneShotObserver[Any] = OneShotObserver()
        owned: Deferred[dict[str, Any]] = Deferred()
        once.observe(owned)
        waiter = once.when_fired()
        owned.errback(OSError("gone"))
        self.failureResultOf(waiter, OSError)
        self.failureResultOf(owned, OSError)    # the owner still has it


class LLDPWaitTests(SynchronousTestCase):
    """Several parts wait for the LLDP listener (inspection, the
    inventory): none takes the results from the others."""

    def test_every_waiter_gets_the_results(self) -> None:
        collector = LLDPCollector(Clock(), timeout=30)
        first, second = collector.when_done(), collector.when_done()
        collector.results["eth0"] = [[1, "04"]]
        collector.stop()
        self.assertTrue(collector.finished)
        for d in (first, second, collector.when_done()):
            self.assertEqual(self.successResultOf(d), {"eth0": [[1, "04"]]})

    def test_cancelled_wait_leaves_the_listener_alone(self) -> None:
        collector = LLDPCollector(Clock(), timeout=30)
        waiter, other = collector.when_done(), collector.when_done()
        waiter.cancel()
        self.failureResultOf(waiter, CancelledError)
        self.assertFalse(collector.finished)
        collector.stop()
        self.assertEqual(self.successResultOf(other), {})
