"""The agent's HTTP site in memory: bodies bounded before they are read,
the token checked before a body is accepted, JSON answers from the HTTP
layer, connection caps, the request log (StringTransport, task.Clock)."""

from __future__ import annotations

import json
import resource
from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.address import IPv4Address
from twisted.internet.interfaces import INegotiated, ITCPTransport
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import LogEvent, formatEvent, globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.http import parse_qs
from twisted.web.resource import Resource
from zope.interface import implementer

from ipa_twisted.api import app as app_mod
from ipa_twisted.api import query, site as site_mod
from ipa_twisted.api.app import AgentAPI
from ipa_twisted.api.site import AgentSite, connection_caps
from ipa_twisted.commands.base import CommandRunner
from ipa_twisted.testing import FakeExtension

TOKEN = "k" * 43
MiB = 1024 * 1024


@implementer(ITCPTransport)
class TCPStringTransport(StringTransport):
    """A StringTransport that half-closes as TCP does."""

    write_closed = False

    def loseWriteConnection(self) -> None:
        self.write_closed = True

    def setTcpNoDelay(self, enabled: bool) -> None:
        pass


class Response:
    def __init__(self, raw: bytes) -> None:
        head, _, self.body = raw.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        self.code = int(lines[0].split()[1])
        self.headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            self.headers[name.strip().lower()] = value.strip()
        if self.headers.get("transfer-encoding") == "chunked":
            body, rest = b"", self.body
            while rest:
                size, _, rest = rest.partition(b"\r\n")
                n = int(size, 16)
                if n == 0:
                    break
                body, rest = body + rest[:n], rest[n + 2:]
            self.body = body

    def json(self) -> Any:
        return json.loads(self.body)


class SiteTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.ext = FakeExtension()
        self.runner = CommandRunner({"fake": self.ext})
        self.api = AgentAPI(self.runner, lambda: TOKEN, started_at=1.0,
                            version="9.9")
        self.site = AgentSite(self.api, self.clock)
        self.events: list[LogEvent] = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def connect(self, host: str = "10.0.0.7") -> tuple[Any, StringTransport]:
        addr = IPv4Address("TCP", host, 40000)
        protocol = self.site.buildProtocol(addr)
        transport = TCPStringTransport(peerAddress=addr)
        protocol.makeConnection(transport)
        return protocol, transport

    def exchange(self, *pieces: bytes) -> tuple[Response | None,
                                                StringTransport, Any]:
        protocol, transport = self.connect()
        for piece in pieces:
            protocol.dataReceived(piece)
        raw = transport.value()
        self.addCleanup(protocol.connectionLost, Failure(Exception("end")))
        return (Response(raw) if raw else None), transport, protocol

    def log_text(self) -> str:
        return "\n".join(formatEvent(e) for e in self.events)

    def assert_fault(self, response: Response | None, code: int,
                     starts: str) -> None:
        assert response is not None
        self.assertEqual(response.code, code)
        self.assertEqual(response.headers["content-type"], "application/json")
        body = response.json()
        self.assertEqual(body["faultcode"], "Client" if code < 500
                         else "Server")
        self.assertTrue(body["faultstring"].startswith(starts),
                        body["faultstring"])

    # ------------------------------------------------- bodies and the token

    def test_body_without_token_is_refused_before_it_is_read(self) -> None:
        head = (b"POST /v1/commands/ HTTP/1.1\r\nHost: a\r\n"
                b"Content-Type: application/x-www-form-urlencoded\r\n"
                b"Expect: 100-continue\r\n"
                b"Content-Length: %d\r\n\r\n" % (200 * MiB))
        response, transport, protocol = self.exchange(head)
        self.assert_fault(response, 401, "401 Unauthorized: Token invalid.")
        self.assertEqual(response.headers["connection"], "close")  # type: ignore[union-attr]
        self.assertNotIn(b"100 Continue", transport.value())
        # what the client still sends is dropped, never stored
        protocol.dataReceived(b"a=1&" * 100_000)
        self.assertIsNone(protocol.requests[-1].content)
        self.assertEqual(len(self.runner.list()), 0)

    def test_wrong_token_and_chunked_body_is_refused_at_once(self) -> None:
        response, _, _ = self.exchange(
            b"POST /v1/commands/?agent_token=nope HTTP/1.1\r\nHost: a\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n")
        self.assert_fault(response, 401, "401 Unauthorized")

    def test_content_length_over_the_limit_is_413_at_once(self) -> None:
        response, _, _ = self.exchange(
            b"POST /v1/commands/?agent_token=%s HTTP/1.1\r\nHost: a\r\n"
            b"Content-Length: %d\r\n\r\n"
            % (TOKEN.encode(), app_mod.MAX_BODY + 1))
        self.assert_fault(response, 413, "413 Payload Too Large")
        self.assertIn(str(app_mod.MAX_BODY), response.json()["faultstring"])  # type: ignore[union-attr]

    def test_chunked_body_over_the_limit_is_413_as_it_arrives(self) -> None:
        self.patch(app_mod, "MAX_BODY", 1000)
        protocol, transport = self.connect()
        protocol.dataReceived(
            b"POST /v1/commands/?agent_token=%s HTTP/1.1\r\nHost: a\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n" % TOKEN.encode())
        protocol.dataReceived(b"200\r\n" + b"x" * 0x200 + b"\r\n")
        self.assertEqual(transport.value(), b"")
        protocol.dataReceived(b"200\r\n" + b"x" * 0x200 + b"\r\n")
        self.assert_fault(Response(transport.value()), 413,
                          "413 Payload Too Large: request body larger than "
                          "1000 bytes")
        kept = protocol.requests[-1].content.tell()
        self.assertLessEqual(kept, 1000)
        protocol.dataReceived(b"200\r\n" + b"x" * 0x200 + b"\r\n0\r\n\r\n")
        self.assertEqual(protocol.requests[-1].content.tell(), kept)
        self.assertEqual(len(self.runner.list()), 0)

    def test_bodies_of_routes_that_take_none_are_small_and_dropped(self
                                                                   ) -> None:
        response, _, protocol = self.exchange(
            b"GET /v1/status HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\n"
            b"hello")
        assert response is not None
        self.assertEqual((response.code, response.json()["version"]),
                         (200, "9.9"))
        response, _, _ = self.exchange(
            b"POST /v1/status HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n"
            b"\r\n" % (app_mod.MAX_IGNORED_BODY + 1))
        self.assert_fault(response, 413, "413 Payload Too Large")

    def test_a_command_within_the_limit_runs(self) -> None:
        body = json.dumps({"name": "fake.echo",
                           "params": {"value": "x" * 200_000}}).encode()
        response, _, _ = self.exchange(
            b"POST /v1/commands/?agent_token=%s HTTP/1.1\r\nHost: a\r\n"
            b"Content-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n" % (TOKEN.encode(), len(body)), body)
        assert response is not None
        self.assertEqual(response.code, 200)
        self.assertEqual(response.json()["command_result"],
                         {"result": "x" * 200_000})

    def test_form_bodies_are_never_parsed(self) -> None:
        # a token in a form field does not authenticate
        form = f"agent_token={TOKEN}".encode()
        response, _, _ = self.exchange(
            b"POST /v1/commands/ HTTP/1.1\r\nHost: a\r\n"
            b"Content-Type: application/x-www-form-urlencoded\r\n"
            b"Content-Length: %d\r\n\r\n" % len(form), form)
        self.assert_fault(response, 401, "401 Unauthorized")
        # with the token, a form or multipart body is just not JSON
        for ctype, body in (
                (b"application/x-www-form-urlencoded", b"name=fake.echo"),
                (b"multipart/form-data; boundary=zz",
                 b"--zz\r\nContent-Disposition: form-data; name=\"name\""
                 b"\r\n\r\nfake.echo\r\n--zz--\r\n"),
                (b"multipart/form-data", b"--broken")):
            response, _, protocol = self.exchange(
                b"POST /v1/commands/?agent_token=%s HTTP/1.1\r\nHost: a\r\n"
                b"Content-Type: %s\r\nContent-Length: %d\r\n\r\n"
                % (TOKEN.encode(), ctype, len(body)), body)
            self.assert_fault(response, 400,
                              "400 Bad Request: Failed to decode JSON")
            self.assertEqual(protocol.requests, [])  # request finished

    def test_query_with_semicolons_authenticates_and_is_masked(self) -> None:
        response, _, _ = self.exchange(
            b"GET /v1/commands/?x=1;agent_token=%s HTTP/1.1\r\nHost: a\r\n"
            b"\r\n" % TOKEN.encode())
        assert response is not None
        self.assertEqual(response.code, 200)
        log = self.log_text()
        self.assertIn("GET /v1/commands/?x=1;agent_token=*** - 200", log)
        self.assertNotIn(TOKEN, log)

    def test_early_answers_are_logged_masked(self) -> None:
        self.exchange(b"POST /v1/commands/?agent_token=nope;wait=1 HTTP/1.1"
                      b"\r\nHost: a\r\nContent-Length: 9\r\n\r\n")
        self.assertIn("10.0.0.7 - POST /v1/commands/?agent_token=***;wait=1 "
                      "- 401 (early answer)", self.log_text())
        self.assertNotIn("nope", self.log_text())

    # ------------------------------------------------ JSON from HTTP layer

    def test_malformed_http_gets_json_400(self) -> None:
        cases = [
            b"GET /v1/status HTTP/2.0\r\nHost: a\r\n\r\n",
            b"GET /v1/status\r\n\r\n",
            b"GET /v1/status HTTP/1.1\r\nContent-Length: 1\r\n"
            b"Content-Length: 1\r\n\r\nab",
            b"GET /v1/status HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
            b"GET /v1/status HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n",
            b"GET /v1/status HTTP/1.1\r\n"
            + b"".join(b"X-%d: y\r\n" % i for i in range(1000)) + b"\r\n",
            b"GET /v1/status HTTP/1.1\r\nBad Header\r\n\r\n",
            b"POST /v1/status HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"zz\r\n",
        ]
        for raw in cases:
            response, _, _ = self.exchange(raw)
            self.assert_fault(response, 400, "400 Bad Request: malformed")
            self.assertEqual(response.headers["connection"], "close")  # type: ignore[union-attr]
        self.assertIn("(malformed request) - 400 (early answer)",
                      self.log_text())

    def test_overlong_line_gets_json_431(self) -> None:
        response, _, _ = self.exchange(
            b"GET /" + b"a" * 20_000 + b" HTTP/1.1\r\n\r\n")
        self.assert_fault(response, 431, "431 Request Header Fields Too "
                                         "Large")

    def test_urls_klein_cannot_route_get_json_400(self) -> None:
        response, _, _ = self.exchange(
            b"GET /v1/%ff%fe HTTP/1.1\r\nHost: a\r\n\r\n")
        self.assert_fault(response, 400, "400 Bad Request: the path is not "
                                         "UTF-8")
        response, _, _ = self.exchange(
            b"GET /v1/status HTTP/1.1\r\nHost: " + b"h" * 8000 + b"\r\n\r\n")
        self.assert_fault(response, 400, "400 Bad Request: invalid Host")
        response, _, _ = self.exchange(
            b"GET /v1/status HTTP/1.1\r\nHost: \xff\xfe\r\n\r\n")
        self.assert_fault(response, 400, "400 Bad Request: invalid Host")
        response, _, _ = self.exchange(
            b"GET /v1/status HTTP/1.1\r\nHost: [::1]:9999\r\n\r\n")
        self.assertEqual(response.code, 200)  # type: ignore[union-attr]

    def test_star_path(self) -> None:
        response, _, _ = self.exchange(b"GET * HTTP/1.1\r\nHost: a\r\n\r\n")
        self.assert_fault(response, 405, "405 Method Not Allowed")
        response, _, _ = self.exchange(b"OPTIONS * HTTP/1.1\r\nHost: a\r\n"
                                       b"\r\n")
        self.assertEqual((response.code, response.body), (200, b""))  # type: ignore[union-attr]

    def test_failed_rendering_is_json_500(self) -> None:
        class Broken(Resource):
            isLeaf = True

            def render(self, request: Any) -> bytes:
                raise RuntimeError("bug")

        self.site.resource = Broken()
        response, _, _ = self.exchange(b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n")
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assert_fault(response, 500, "500 Internal Server Error")

    def test_early_answer_lingers_then_closes(self) -> None:
        response, transport, protocol = self.exchange(
            b"GET /v1/status HTTP/2.0\r\n\r\n")
        assert isinstance(transport, TCPStringTransport)
        self.assertTrue(transport.write_closed)      # FIN after the answer
        self.assertFalse(transport.disconnected)
        protocol.dataReceived(b"more junk the client still sends")
        self.clock.advance(site_mod.LINGER)
        self.assertTrue(transport.disconnected)
        self.assertEqual(len(transport.value()),
                         len(Response(transport.value()).body)
                         + transport.value().index(b"\r\n\r\n") + 4)

    def test_no_half_close_under_tls(self) -> None:
        @implementer(INegotiated)
        class TLSStringTransport(TCPStringTransport):
            negotiatedProtocol = None

        addr = IPv4Address("TCP", "10.0.0.9", 40000)
        protocol = self.site.buildProtocol(addr)
        transport = TLSStringTransport(peerAddress=addr)
        protocol.makeConnection(transport)
        protocol.dataReceived(b"GET /v1/status HTTP/2.0\r\n\r\n")
        self.assertEqual(Response(transport.value()).code, 400)
        self.assertFalse(transport.write_closed)
        self.clock.advance(site_mod.LINGER)
        self.assertTrue(transport.disconnected)

    # -------------------------------------------------------- connections

    def test_connections_are_capped_per_peer_and_in_total(self) -> None:
        self.site = AgentSite(self.api, self.clock, max_connections=4,
                              max_connections_per_peer=3)
        first = [self.connect("10.0.0.1") for _ in range(3)]
        _, refused = self.connect("10.0.0.1")
        self.assert_fault(Response(refused.value()), 429,
                          "429 Too Many Requests")
        self.assertTrue(refused.disconnecting)
        self.connect("10.0.0.2")
        _, refused = self.connect("10.0.0.3")
        self.assert_fault(Response(refused.value()), 503,
                          "503 Service Unavailable")
        self.assertEqual(self.site.open_connections, 4)
        # a closed connection frees its slot
        protocol, _ = first[0]
        protocol.connectionLost(Failure(Exception("gone")))
        self.assertEqual(self.site.open_connections, 3)
        protocol, transport = self.connect("10.0.0.3")
        protocol.dataReceived(b"GET /v1/status HTTP/1.1\r\nHost: a\r\n\r\n")
        self.assertEqual(Response(transport.value()).code, 200)
        self.assertIn("refusing connections (429)", self.log_text())

    def test_caps_fit_the_open_file_limit(self) -> None:
        self.assertEqual(connection_caps(100, 20, 1 << 20), (100, 20))
        self.assertEqual(connection_caps(100, 20, 256), (100, 20))
        self.assertEqual(connection_caps(100, 20, 160), (80, 20))
        self.assertEqual(connection_caps(100, 200, 64), (32, 32))

    def test_open_file_limit_is_raised_to_the_hard_limit(self) -> None:
        calls: list[tuple[int, int]] = []
        self.patch(site_mod.resource, "getrlimit", lambda which: (256, 4096))
        self.patch(site_mod.resource, "setrlimit",
                   lambda which, limits: calls.append(limits))
        self.assertEqual(site_mod.raise_open_file_limit(), 4096)
        self.assertEqual(calls, [(4096, 4096)])

        def refuse(which: int, limits: tuple[int, int]) -> None:
            raise ValueError("not allowed")

        self.patch(site_mod.resource, "setrlimit", refuse)
        self.assertEqual(site_mod.raise_open_file_limit(), 256)
        self.assertIs(site_mod.resource, resource)


class QueryTests(SynchronousTestCase):
    @given(st.lists(st.sampled_from(
        ["a", "=", "&", ";", "+", "%", "%3d", "%26", "%ff", "agent_token",
         "b", "", "x=1"]), max_size=12).map("".join))
    def test_args_are_twisteds(self, text: str) -> None:
        raw = text.encode()
        self.assertEqual(query.args(b"/p?" + raw), parse_qs(raw, 1))

    @given(st.lists(st.sampled_from(
        ["a=1", "agent_token=SECRET", "agent%5Ftoken=SECRET", "x", "",
         "agent_token", "agent+token=SECRET"]), max_size=6),
           st.lists(st.sampled_from(["&", ";"]), min_size=6, max_size=6))
    def test_mask_hides_every_value_that_authenticates(
            self, items: list[str], seps: list[str]) -> None:
        text = "".join(item + sep for item, sep in zip(items, seps))
        shown = query.mask_query(text)
        # Twisted's own parser, reading the masked query, finds no token
        for value in parse_qs(shown.encode(), 1).get(b"agent_token", []):
            self.assertEqual(value, b"***")
        # and nothing else was changed
        self.assertEqual(shown.count("SECRET") + shown.count("***"),
                         text.count("SECRET"))

    def test_mask_examples(self) -> None:
        self.assertEqual(query.mask_query("x=1;agent_token=T&wait=true"),
                         "x=1;agent_token=***&wait=true")
        self.assertEqual(query.mask_query("agent%5Ftoken=T"),
                         "agent%5Ftoken=***")
        self.assertEqual(query.mask_uri(b"/v1/commands/?agent_token=T"),
                         "/v1/commands/?agent_token=***")
        self.assertEqual(query.mask_uri(b"/v1/status"), "/v1/status")


class CloseConnectionsTests(SynchronousTestCase):
    """When the API stops (the agent stops, or lockdown), its open
    connections close too."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.site = AgentSite(AgentAPI(CommandRunner({}), lambda: TOKEN,
                                       started_at=1.0), self.clock)

    connect = SiteTests.connect

    def test_open_connections_are_closed(self) -> None:
        (p1, t1), (p2, t2) = self.connect(), self.connect("10.0.0.8")
        self.assertEqual(self.site.open_connections, 2)
        closed = self.site.close_connections()
        self.assertTrue(t1.disconnecting and t2.disconnecting)
        self.assertNoResult(closed)
        p1.connectionLost(Failure(Exception("closed")))
        self.assertNoResult(closed)
        p2.connectionLost(Failure(Exception("closed")))
        self.successResultOf(closed)
        self.assertEqual((self.site.open_connections, self.site.channels),
                         (0, set()))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_a_connection_that_does_not_close_is_aborted(self) -> None:
        from ipa_twisted.api.site import LINGER

        protocol, transport = self.connect()
        aborted: list[bool] = []
        transport.abortConnection = lambda: (  # type: ignore[method-assign]
            aborted.append(True),
            protocol.connectionLost(Failure(Exception("aborted"))))
        closed = self.site.close_connections()
        self.clock.advance(LINGER)
        self.assertEqual(aborted, [True])
        self.successResultOf(closed)

    def test_nothing_open(self) -> None:
        self.successResultOf(self.site.close_connections())
