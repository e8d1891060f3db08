"""The console script's runner (``ipa_twisted.cli.serve``)."""

from __future__ import annotations

from twisted.application.service import Service
from twisted.internet.testing import MemoryReactor
from twisted.trial.unittest import SynchronousTestCase

from ipa_twisted.cli import serve


class Recorder(Service):
    def __init__(self, events: list[str]) -> None:
        self.events = events

    def privilegedStartService(self) -> None:
        self.events.append("privileged start")
        super().privilegedStartService()

    def startService(self) -> None:
        self.events.append("start")
        super().startService()

    def stopService(self) -> None:
        self.events.append("stop")
        super().stopService()


class ServeTests(SynchronousTestCase):

    def test_logs_then_starts_runs_and_stops_before_shutdown(self) -> None:
        events: list[str] = []
        reactor = MemoryReactor()
        service = Recorder(events)
        serve(service, reactor, lambda: events.append("logging"))
        self.assertEqual(events, ["logging", "privileged start", "start"])
        self.assertTrue(reactor.hasRun)
        self.assertTrue(service.running)
        # twistd's order: the service stops before the reactor shuts down
        self.assertEqual(len(reactor.triggers["before"]["shutdown"]), 1)
        stop, args, kwargs = reactor.triggers["before"]["shutdown"][0]
        stop(*args, **kwargs)
        self.assertEqual(events[-1], "stop")
        self.assertFalse(service.running)
