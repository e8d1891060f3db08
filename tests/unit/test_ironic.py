"""The Ironic client against a fake Ironic, in memory (StubTreq + Clock)."""

from __future__ import annotations

import random
from typing import Any

from treq.testing import StubTreq
from twisted.internet import error as ierror
from twisted.internet.defer import CancelledError, Deferred, ensureDeferred, fail
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from ipa_twisted import errors
from ipa_twisted.ironic import (
    IronicClient,
    conflict_pause,
    error_text,
    lookup_delay,
)
from ipa_twisted.testing import FakeIronic, HangingHTTP

URL = "http://ironic.example:6385"
MACS = ["52:54:00:12:34:56", "52:54:00:aa:bb:cc"]


class MinRandom(random.Random):
    def uniform(self, a: float, b: float) -> float:
        return a


class MaxRandom(random.Random):
    def uniform(self, a: float, b: float) -> float:
        return b


class PureTests(SynchronousTestCase):
    def test_lookup_delay(self) -> None:
        self.assertEqual([lookup_delay(n, 1.0, MaxRandom()) for n in range(1, 9)],
                         [1, 2, 4, 8, 16, 32, 60, 60])
        self.assertEqual(lookup_delay(1, 3.0, MaxRandom()), 3)
        self.assertEqual(lookup_delay(5, 3.0, MinRandom()), 3)

    def test_conflict_pauses(self) -> None:
        self.assertEqual([conflict_pause(n) for n in range(1, 6)],
                         [5, 10, 30, 30, 30])

    def test_error_text(self) -> None:
        self.assertEqual(error_text(
            b'{"error_message": "{\\"faultstring\\": \\"Node x not found\\"}"}'),
            "Node x not found")
        self.assertEqual(error_text(
            b'{"error_message": {"faultstring": "bad"}}'), "bad")
        self.assertEqual(error_text(b"plain text"), "plain text")


class ClientTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.ironic = FakeIronic()
        self.stub = StubTreq(self.ironic.app.resource())
        self.clock = Clock()
        self.client = IronicClient(self.stub, self.clock, [URL],
                                   rng=MaxRandom())

    def run_(self, coro: Any) -> Deferred[Any]:
        d = ensureDeferred(coro)
        self.stub.flush()
        return d

    def test_version_discovery_is_cached(self) -> None:
        v = self.successResultOf(self.run_(self.client.api_version()))
        self.assertEqual(v, (1, 99))
        self.successResultOf(self.run_(self.client.api_version()))
        self.assertEqual(len(self.ironic.of("/")), 1)

    def test_version_failure_falls_back_and_retries_later(self) -> None:
        self.ironic.version_status = 500
        v = self.successResultOf(self.run_(self.client.api_version()))
        self.assertEqual(v, (1, 31))
        self.ironic.version_status = 200
        v = self.successResultOf(self.run_(self.client.api_version()))
        self.assertEqual(v, (1, 99))

    def test_pinned_version_skips_discovery(self) -> None:
        client = IronicClient(self.stub, self.clock, [URL],
                              pinned_version="1.50")
        self.assertEqual(self.successResultOf(self.run_(client.api_version())),
                         (1, 50))
        self.assertEqual(self.ironic.requests, [])

    def test_lookup(self) -> None:
        result = self.successResultOf(self.run_(self.client.lookup(MACS)))
        self.assertEqual(result.node_uuid, self.ironic.node["uuid"])
        self.assertEqual(result.config["heartbeat_timeout"], 300)
        (_, _, args, headers, _), = self.ironic.of("/v1/lookup")
        self.assertEqual(args, {"addresses": [",".join(MACS)]})
        self.assertEqual(headers["x-openstack-ironic-api-version"], "1.62")
        self.assertEqual(headers["accept"], "application/json")

    def test_lookup_with_node_uuid_and_request_id(self) -> None:
        client = IronicClient(self.stub, self.clock, [URL],
                              request_id="req-abc")
        self.successResultOf(self.run_(client.lookup(MACS, node_uuid="u1")))
        (_, _, args, headers, _), = self.ironic.of("/v1/lookup")
        self.assertEqual(args["node_uuid"], ["u1"])
        self.assertEqual(headers["x-openstack-request-id"], "req-abc")

    def test_old_ironic_version_header(self) -> None:
        self.ironic.version = "1.40"
        self.successResultOf(self.run_(self.client.lookup(MACS)))
        (_, _, _, headers, _), = self.ironic.of("/v1/lookup")
        self.assertEqual(headers["x-openstack-ironic-api-version"], "1.40")

    def test_lookup_retries_with_backoff(self) -> None:
        node = self.ironic.node
        self.ironic.lookup_answers = [
            (404, {"error_message": '{"faultstring": "not found"}'}),
            (404, {}), (200, {"node": {}}), (200, "not an object"),
            (200, {"node": node, "config": {"heartbeat_timeout": 60}}),
        ]
        d = self.run_(self.client.lookup(MACS, timeout=600, interval=1))
        for delay in (1, 2, 4, 8):
            self.assertNoResult(d)
            self.clock.advance(delay - 0.01)
            self.stub.flush()
            self.assertNoResult(d)
            self.clock.advance(0.01)
            self.stub.flush()
        result = self.successResultOf(d)
        self.assertEqual(result.config["heartbeat_timeout"], 60)
        self.assertEqual(len(self.ironic.of("/v1/lookup")), 5)

    def test_conflict_adds_pauses(self) -> None:
        self.ironic.lookup_answers = [
            (409, {}), (409, {}),
            (200, {"node": self.ironic.node, "config": {"heartbeat_timeout": 1}}),
        ]
        client = IronicClient(self.stub, self.clock, [URL], rng=MinRandom())
        d = self.run_(client.lookup(MACS, timeout=600, interval=1))
        self.clock.advance(1 + 5 - 0.01)
        self.stub.flush()
        self.assertEqual(len(self.ironic.of("/v1/lookup")), 1)
        self.clock.advance(0.01)
        self.stub.flush()
        self.assertEqual(len(self.ironic.of("/v1/lookup")), 2)
        self.clock.advance(1 + 10)
        self.stub.flush()
        self.successResultOf(d)

    def test_legacy_top_level_heartbeat_timeout(self) -> None:
        self.ironic.lookup_answers = [
            (200, {"node": self.ironic.node, "heartbeat_timeout": 42})]
        result = self.successResultOf(self.run_(self.client.lookup(MACS)))
        self.assertEqual(result.config, {"heartbeat_timeout": 42})

    def test_lookup_gives_up_after_timeout(self) -> None:
        self.ironic.lookup_answers = [(404, {})]
        d = self.run_(self.client.lookup(MACS, timeout=10, interval=1))
        for _ in range(20):
            self.clock.advance(1)
            self.stub.flush()
        failure = self.failureResultOf(d, errors.LookupNodeError)
        self.assertIn("Could not look up node info", str(failure.value))
        self.assertIn("HTTP 404", str(failure.value))

    def test_heartbeat_body_gated_by_version(self) -> None:
        cases = [
            ("1.99", {"callback_url": "https://1.2.3.4:9999",
                      "agent_token": "tok", "agent_version": "X",
                      "agent_verify_ca": "PEM"}, "1.68"),
            ("1.62", {"callback_url": "https://1.2.3.4:9999",
                      "agent_token": "tok", "agent_version": "X"}, "1.62"),
            ("1.40", {"callback_url": "https://1.2.3.4:9999",
                      "agent_version": "X"}, "1.40"),
            ("1.31", {"callback_url": "https://1.2.3.4:9999"}, "1.31"),
        ]
        for version, expected, header in cases:
            ironic = FakeIronic(version)
            stub = StubTreq(ironic.app.resource())
            client = IronicClient(stub, self.clock, [URL])
            d = ensureDeferred(client.heartbeat(
                "uuid-1", "https://1.2.3.4:9999", "tok", "PEM"))
            stub.flush()
            self.successResultOf(d)
            (_, path, _, headers, body), = ironic.of("/v1/heartbeat")
            if "agent_version" in body:
                body["agent_version"] = "X"
            self.assertEqual(path, "/v1/heartbeat/uuid-1")
            self.assertEqual(body, expected)
            self.assertEqual(list(body), list(expected))
            self.assertEqual(headers["x-openstack-ironic-api-version"], header)

    def test_heartbeat_status_fields_need_1_72(self) -> None:
        extra = {"agent_status": "start", "agent_status_message": "50%"}
        for version, header, sent in (("1.99", "1.72", True),
                                      ("1.68", "1.68", False)):
            ironic = FakeIronic(version)
            stub = StubTreq(ironic.app.resource())
            client = IronicClient(stub, self.clock, [URL])
            d = ensureDeferred(client.heartbeat("u", "http://a:1", "t",
                                                extra=extra))
            stub.flush()
            self.successResultOf(d)
            (_, _, _, headers, body), = ironic.of("/v1/heartbeat")
            self.assertEqual(headers["x-openstack-ironic-api-version"],
                             header)
            self.assertEqual("agent_status" in body, sent)
            if sent:
                self.assertEqual(body["agent_status_message"], "50%")

    def test_heartbeat_errors(self) -> None:
        self.ironic.heartbeat_answers = [
            (409, {"error_message": '{"faultstring": "Node locked"}'}),
            (400, {"error_message": '{"faultstring": "Invalid or missing '
                                    'agent token received."}'}),
        ]
        d = self.run_(self.client.heartbeat("u", "http://a:1", "t"))
        f = self.failureResultOf(d, errors.HeartbeatConflictError)
        self.assertIn("Node locked", str(f.value))
        d = self.run_(self.client.heartbeat("u", "http://a:1", "t"))
        f = self.failureResultOf(d, errors.HeartbeatError)
        self.assertIn("HTTP 400: Invalid or missing agent token", str(f.value))


class FailoverTests(SynchronousTestCase):
    def test_next_url_on_connection_error_and_rotation(self) -> None:
        ironic = FakeIronic()
        stub = StubTreq(ironic.app.resource())

        class Flaky:
            calls: list[str] = []

            def request(self, method: str, url: str, **kw: Any) -> Any:
                self.calls.append(url)
                if url.startswith("http://down"):
                    return fail(ierror.ConnectionRefusedError("refused"))
                return stub.request(method, url.replace("http://up:2",
                                                        URL), **kw)

        flaky = Flaky()
        client = IronicClient(flaky, Clock(), ["http://down:1", "http://up:2"])
        d = ensureDeferred(client.api_version())
        stub.flush()
        self.assertEqual(self.successResultOf(d), (1, 99))
        self.assertEqual(client.api_urls, ["http://up:2", "http://down:1"])
        d = ensureDeferred(client.heartbeat("u", "http://a:1", "t"))
        stub.flush()
        self.successResultOf(d)
        self.assertEqual(flaky.calls, ["http://down:1/", "http://up:2/",
                                       "http://up:2/v1/heartbeat/u"])
        self.assertEqual(len(self.flushLoggedErrors()), 0)

    def test_all_down(self) -> None:
        class Down:
            def request(self, method: str, url: str, **kw: Any) -> Any:
                return fail(ierror.ConnectionRefusedError("refused"))

        client = IronicClient(Down(), Clock(), ["http://a:1", "http://b:1"],
                              pinned_version="1.99")
        d = ensureDeferred(client.heartbeat("u", "http://x:1", "t"))
        self.failureResultOf(d, errors.HeartbeatConnectionError)

    def test_timeout(self) -> None:
        class Hang:
            def request(self, method: str, url: str, **kw: Any) -> Any:
                return Deferred()

        clock = Clock()
        client = IronicClient(Hang(), clock, ["http://a:1"],
                              request_timeout=30, pinned_version="1.99")
        d = ensureDeferred(client.heartbeat("u", "http://x:1", "t"))
        clock.advance(29)
        self.assertNoResult(d)
        clock.advance(1)
        f = self.failureResultOf(d, errors.HeartbeatConnectionError)
        self.assertIn("timed out", str(f.value))


class CancellationTests(SynchronousTestCase):
    """#13 item 2: a cancelled lookup stops at once; a timeout is a
    timeout (retried), not a cancellation."""

    def test_cancelled_lookup_stops_at_once(self) -> None:
        http, clock = HangingHTTP(), Clock()
        client = IronicClient(http, clock, ["http://a:1", "http://b:1"],
                              pinned_version="1.99")
        d = ensureDeferred(client.lookup(MACS, timeout=600))
        self.assertEqual(len(http.calls), 1)
        d.cancel()
        self.failureResultOf(d, CancelledError)
        # neither the next URL nor a retry: nothing more, nothing pending
        self.assertEqual(len(http.calls), 1)
        self.assertEqual(clock.getDelayedCalls(), [])
        clock.advance(1000)
        self.assertEqual(len(http.calls), 1)
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_lookup_cancelled_in_its_pause(self) -> None:
        ironic = FakeIronic()
        ironic.lookup_answers = [(404, {"error_message": "no"})] * 5
        stub = StubTreq(ironic.app.resource())
        clock = Clock()
        client = IronicClient(stub, clock, [URL], pinned_version="1.99")
        d = ensureDeferred(client.lookup(MACS, timeout=600))
        stub.flush()
        self.assertEqual(len(ironic.of("/v1/lookup")), 1)
        self.assertEqual(len(clock.getDelayedCalls()), 1)
        d.cancel()
        self.failureResultOf(d, CancelledError)
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_a_request_timeout_is_retried(self) -> None:
        http, clock = HangingHTTP(), Clock()
        client = IronicClient(http, clock, ["http://a:1"],
                              request_timeout=30, pinned_version="1.99",
                              rng=MinRandom())
        d = ensureDeferred(client.lookup(MACS, timeout=600, interval=1.0))
        clock.advance(30)           # the first attempt times out
        self.assertNoResult(d)
        clock.advance(1)            # the pause, then the second attempt
        self.assertEqual(len(http.calls), 2)
        d.cancel()
        self.failureResultOf(d, CancelledError)
