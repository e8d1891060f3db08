"""The API service's life: listen, report, stop listening, close."""

from __future__ import annotations

from typing import Any, cast

from twisted.internet.defer import CancelledError, Deferred, fail, succeed
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IListeningPort
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from ipa_twisted.api.service import APIService
from ipa_twisted.api.site import AgentSite


@implementer(IListeningPort)
class FakePort:
    def __init__(self) -> None:
        self.listening = True

    def startListening(self) -> None:
        pass

    def stopListening(self) -> Deferred[None]:
        self.listening = False
        return succeed(None)

    def getHost(self) -> Any:
        return None


class FakeEndpoint:
    def __init__(self, result: Deferred[Any]) -> None:
        self.result = result
        self.factories: list[Any] = []

    def listen(self, factory: Any) -> Deferred[Any]:
        self.factories.append(factory)
        return self.result


class FakeSite:
    def __init__(self) -> None:
        self.closed = 0

    def close_connections(self) -> Deferred[None]:
        self.closed += 1
        return succeed(None)


def service(result: Deferred[Any]) -> tuple[APIService, FakeEndpoint,
                                             FakeSite]:
    endpoint = FakeEndpoint(result)
    site = FakeSite()
    api = APIService(endpoint, cast(AgentSite, site), "127.0.0.1", 9999)
    return api, endpoint, site


class APIServiceTests(SynchronousTestCase):

    def test_listens_while_running_then_closes(self) -> None:
        port = FakePort()
        api, endpoint, site = service(succeed(port))
        api.startService()
        self.assertEqual(endpoint.factories, [site])
        self.assertIs(self.successResultOf(api.when_listening()), port)
        self.assertIs(api.port, port)
        self.assertEqual(api.url, "http://127.0.0.1:9999")
        self.assertTrue(api.running)
        self.assertIsNone(self.successResultOf(api.stopService()))
        self.assertFalse(port.listening)
        self.assertEqual(site.closed, 1)
        self.assertFalse(api.running)

    def test_privileged_start_listens_once(self) -> None:
        api, endpoint, site = service(succeed(FakePort()))
        api.privilegedStartService()
        api.startService()
        self.assertEqual(endpoint.factories, [site])

    def test_cannot_listen_is_told_and_stopping_still_works(self) -> None:
        api, endpoint, site = service(fail(CannotListenError(
            "127.0.0.1", 9999, OSError("in use"))))
        api.startService()
        self.failureResultOf(api.when_listening(), CannotListenError)
        self.assertIsNone(api.port)
        self.assertIsNone(self.successResultOf(api.stopService()))
        self.assertEqual(site.closed, 1)
        self.assertFalse(api.running)

    def test_stop_before_listening_cancels(self) -> None:
        pending: Deferred[Any] = Deferred()
        api, endpoint, site = service(pending)
        api.startService()
        listening = api.when_listening()
        self.assertNoResult(listening)
        self.assertIsNone(self.successResultOf(api.stopService()))
        self.failureResultOf(listening, CancelledError)
        self.assertEqual(site.closed, 1)
        self.assertFalse(api.running)

    def test_stop_without_start_closes(self) -> None:
        api, endpoint, site = service(succeed(FakePort()))
        self.assertIsNone(self.successResultOf(api.stopService()))
        self.assertEqual(endpoint.factories, [])
        self.assertEqual(site.closed, 1)
