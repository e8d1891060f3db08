"""The agent API in memory: routes, tokens, errors, waiting (StubTreq)."""

from __future__ import annotations

import json
import re
from typing import Any

from treq.testing import StubTreq
from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase

from ipa_twisted import errors
from ipa_twisted.api.app import AgentAPI
from ipa_twisted.commands.base import CommandRunner, Extension, async_command
from ipa_twisted.testing import FakeExtension

TOKEN = "t" * 43
BASE = "http://agent.example:9999"


class APITests(SynchronousTestCase):
    def setUp(self) -> None:
        self.ext = FakeExtension()
        self.heartbeats: list[bool] = []
        self.runner = CommandRunner(
            {"fake": self.ext}, on_async_done=lambda: self.heartbeats.append(True)
        )
        self.token: str | None = TOKEN
        api = AgentAPI(self.runner, lambda: self.token, started_at=123.5,
                       version="9.9")
        self.stub = StubTreq(api.app.resource())

    def request(self, method: str, path: str, body: Any = None,
                token: str | None = TOKEN, raw: bytes | None = None,
                **params: str) -> tuple[int, Any, Any]:
        if token is not None:
            params["agent_token"] = token
        data = raw if raw is not None else (
            json.dumps(body).encode() if body is not None else None)
        response = self.successResultOf(self.stub.request(
            method, BASE + path, params=params, data=data))
        content = self.successResultOf(self.stub.content(response))
        return response.code, response.headers, json.loads(content)

    def post(self, name: str, params: Any = None, **kw: Any
             ) -> tuple[int, Any]:
        code, _, body = self.request(
            "POST", "/v1/commands/", {"name": name, "params": params or {}},
            **kw)
        return code, body

    # ------------------------------------------------------- documents

    def test_root_document(self) -> None:
        code, headers, body = self.request("GET", "/", token=None)
        self.assertEqual(code, 200)
        self.assertEqual(headers.getRawHeaders("content-type"),
                         ["application/json"])
        self.assertEqual(body["name"], "OpenStack Ironic Python Agent API")
        self.assertEqual(body["default_version"]["id"], "v1")
        self.assertEqual(body["versions"][0]["links"][0],
                         {"href": BASE + "/v1", "rel": "self"})

    def test_v1_document(self) -> None:
        code, _, body = self.request("GET", "/v1/", token=None)
        self.assertEqual(code, 200)
        self.assertEqual(body["commands"], [
            {"href": BASE + "/v1/commands", "rel": "self"},
            {"href": BASE + "/commands", "rel": "bookmark"},
        ])
        self.assertEqual(body["media_types"][0]["type"],
                         "application/vnd.openstack.ironic-python-agent.v1+json")

    def test_status_without_token_both_prefixes(self) -> None:
        for path in ("/v1/status", "/status"):
            code, _, body = self.request("GET", path, token=None)
            self.assertEqual((code, body),
                             (200, {"started_at": 123.5, "version": "9.9"}))

    def test_unknown_route_and_method_are_json(self) -> None:
        code, _, body = self.request("GET", "/v1/nothing", token=None)
        self.assertEqual(code, 404)
        self.assertEqual(body["faultcode"], "Client")
        self.assertTrue(body["faultstring"].startswith("404 Not Found"))
        code, _, body = self.request("DELETE", "/v1/commands/")
        self.assertEqual(code, 405)
        self.assertTrue(body["faultstring"].startswith("405 Method Not Allowed"))

    # ----------------------------------------------------------- tokens

    def test_commands_need_the_exact_token(self) -> None:
        for token in (None, "wrong", TOKEN + "x", TOKEN[:-1]):
            for method, path in (("GET", "/v1/commands/"),
                                 ("POST", "/v1/commands/"),
                                 ("GET", "/v1/commands/abc"),
                                 ("GET", "/commands/")):
                code, _, body = self.request(method, path, token=token,
                                             raw=b"not json")
                self.assertEqual(code, 401, (token, method, path))
                self.assertEqual(body, {"faultcode": "Client",
                                        "faultstring":
                                            "401 Unauthorized: Token invalid."})

    def test_no_token_known_refuses_everything(self) -> None:
        self.token = None
        code, _, _ = self.request("GET", "/v1/commands/", token="")
        self.assertEqual(code, 401)

    # --------------------------------------------------------- commands

    def test_sync_command(self) -> None:
        code, body = self.post("fake.echo", {"value": "hi"})
        self.assertEqual(code, 200)
        self.assertEqual(list(body), ["id", "command_name", "command_status",
                                      "command_error", "command_result"])
        self.assertEqual(body["command_name"], "echo")
        self.assertEqual(body["command_status"], "SUCCEEDED")
        self.assertEqual(body["command_result"], {"result": "hi"})
        self.assertEqual(self.heartbeats, [])

    def test_async_command_runs_in_background(self) -> None:
        code, body = self.post("fake.slow")
        self.assertEqual((code, body["command_status"]), (200, "RUNNING"))
        code, listed = self.post("fake.echo")
        self.assertEqual(code, 409)
        self.assertEqual(listed, {"faultcode": "Client",
                                  "faultstring":
                                      "Agent is busy: executing command slow"})
        self.ext.pending[0].callback("finished")
        code, _, one = self.request("GET", f"/v1/commands/{body['id']}")
        self.assertEqual(one["command_status"], "SUCCEEDED")
        self.assertEqual(one["command_result"], {"result": "slow: finished"})
        self.assertEqual(self.heartbeats, [True])
        code, _, all_ = self.request("GET", "/v1/commands/")
        self.assertEqual([c["command_name"] for c in all_["commands"]],
                         ["slow"])

    def test_progress_shows_while_running(self) -> None:
        _, body = self.post("fake.slow")
        self.runner.get(body["id"]).progress = {"bytes": 5, "percent": 50.0}
        _, _, one = self.request("GET", f"/v1/commands/{body['id']}")
        self.assertEqual(one["command_result"],
                         {"progress": {"bytes": 5, "percent": 50.0}})
        self.ext.pending[0].callback({"done": True})
        _, _, one = self.request("GET", f"/v1/commands/{body['id']}")
        self.assertEqual(one["command_result"], {"done": True})

    def test_wait_true_blocks_until_done(self) -> None:
        d = self.stub.request("POST", BASE + "/v1/commands/", params={
            "agent_token": TOKEN, "wait": "TRUE"},
            data=json.dumps({"name": "fake.slow", "params": {}}).encode())
        self.assertNoResult(d)
        self.ext.pending[0].callback({"x": 1})
        self.stub.flush()
        response = self.successResultOf(d)
        body = json.loads(self.successResultOf(self.stub.content(response)))
        self.assertEqual((body["command_status"], body["command_result"]),
                         ("SUCCEEDED", {"x": 1}))

    def test_get_wait(self) -> None:
        _, body = self.post("fake.slow")
        d = self.stub.request("GET", BASE + f"/v1/commands/{body['id']}",
                              params={"agent_token": TOKEN, "wait": "true"})
        self.assertNoResult(d)
        self.ext.pending[0].errback(RuntimeError("disk on fire"))
        self.stub.flush()
        response = self.successResultOf(d)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        one = json.loads(self.successResultOf(self.stub.content(response)))
        self.assertEqual(one["command_status"], "FAILED")
        self.assertEqual(one["command_error"], {
            "type": "CommandExecutionError", "code": 500,
            "message": "Command execution failed", "details": "disk on fire"})

    def test_sync_plain_exception_is_serializable(self) -> None:
        code, body = self.post("fake.boom")
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)
        self.assertEqual(code, 200)
        self.assertEqual(body["command_status"], "FAILED")
        self.assertEqual(body["command_error"]["type"], "ValueError")
        self.assertEqual(body["command_error"]["details"], "bad thing")
        code, _, listed = self.request("GET", "/v1/commands/")
        self.assertEqual(code, 200)
        self.assertEqual(listed["commands"][0]["command_error"]["type"],
                         "ValueError")

    def test_unknown_argument_is_a_stored_typeerror(self) -> None:
        """Ironic's _raise_if_typeerror: an argument this agent does not
        know is answered 200 with a FAILED result typed TypeError, kept in
        the list (Ironic then retries without the argument)."""
        for name, params in (("fake.echo", {"nope": 1}),
                             ("fake.validated", {"size": 2, "extra": 1})):
            code, body = self.post(name, params)
            self.assertEqual(code, 200, body)
            self.assertEqual(body["command_status"], "FAILED")
            self.assertIsNone(body["command_result"])
            error = body["command_error"]
            self.assertEqual(error["type"], "TypeError")
            self.assertIn("unexpected keyword argument", error["details"])
            self.assertIn(name.split(".")[1] + "()", error["details"])
        _, _, listed = self.request("GET", "/v1/commands/")
        self.assertEqual([(c["command_name"], c["command_status"],
                           c["command_error"]["type"])
                          for c in listed["commands"]],
                         [("echo", "FAILED", "TypeError"),
                          ("validated", "FAILED", "TypeError")])
        self.assertEqual(self.heartbeats, [])
        # the agent is not busy afterwards
        code, body = self.post("fake.echo", {"value": 3})
        self.assertEqual((code, body["command_result"]), (200, 3))

    def test_validator_failure_is_400(self) -> None:
        code, body = self.post("fake.validated", {"size": 0})
        self.assertEqual(code, 400)
        self.assertEqual(body["faultstring"],
                         "Invalid command parameters: size must be >= 1")
        code, body = self.post("fake.validated", {"size": 2})
        self.assertEqual((code, body["command_result"]), (200, 4))

    def test_bad_names(self) -> None:
        code, body = self.post("nodot")
        self.assertEqual(code, 400)
        self.assertEqual(body["faultstring"], "Invalid command: Command name "
                         "must be of the form <extension>.<name>")
        code, body = self.post("a.b.c")
        self.assertEqual(code, 400)
        code, body = self.post("nope.echo")
        self.assertEqual((code, body["faultstring"]),
                         (404, "Not found: Extension with id nope not found."))
        code, body = self.post("fake.nope")
        self.assertEqual((code, body["faultstring"]),
                         (400, "Invalid command: Unknown command: nope"))

    def test_bad_bodies(self) -> None:
        for raw in (b"{", b"[]", b'{"name": "fake.echo"}',
                    b'{"name": 1, "params": {}}',
                    b'{"name": "fake.echo", "params": []}', b"\xff"):
            code, _, body = self.request("POST", "/v1/commands/", raw=raw)
            self.assertEqual(code, 400, raw)
            self.assertTrue(body["faultstring"].startswith("400 Bad Request"),
                            body)

    def test_deeply_nested_json_is_400(self) -> None:
        for depth in (70, 1000, 100_000):
            raw = (b'{"name": "fake.echo", "params": {"value": '
                   + b"[" * depth + b"]" * depth + b"}}")
            code, _, body = self.request("POST", "/v1/commands/", raw=raw)
            self.assertEqual(code, 400, depth)
            self.assertEqual(body["faultstring"],
                             "400 Bad Request: Failed to decode JSON object: "
                             "nested deeper than 64 levels")
        raw = (b'{"name": "fake.echo", "params": {"value": '
               + b"[" * 60 + b"]" * 60 + b"}}")
        code, _, body = self.request("POST", "/v1/commands/", raw=raw)
        self.assertEqual(code, 200)
        self.assertEqual(self.runner.list()[-1].command_name, "echo")

    def test_token_in_a_form_body_does_not_authenticate(self) -> None:
        # (twisted.web parses form bodies into request.args; the API only
        # reads the query)
        response = self.successResultOf(self.stub.request(
            "POST", BASE + "/v1/commands/",
            data={"agent_token": TOKEN, "name": "fake.echo"}))
        self.assertEqual(response.code, 401)
        response = self.successResultOf(self.stub.request(
            "GET", BASE + "/v1/commands/", data={"agent_token": TOKEN}))
        self.assertEqual(response.code, 401)

    def test_query_token_with_semicolon_separator(self) -> None:
        response = self.successResultOf(self.stub.request(
            "GET", BASE + f"/v1/commands/?x=1;agent_token={TOKEN}"))
        self.assertEqual(response.code, 200)

    def test_method_not_allowed_says_what_is(self) -> None:
        code, headers, _ = self.request("DELETE", "/v1/status", token=None)
        self.assertEqual(code, 405)
        self.assertEqual(
            sorted(headers.getRawHeaders("allow")[0].split(", ")),
            ["GET", "HEAD"])

    def test_other_methods_on_unslashed_paths_are_405(self) -> None:
        for path, allowed in (("/v1/commands", ["GET", "HEAD", "POST"]),
                              ("/v1", ["GET", "HEAD"])):
            code, headers, body = self.request("TRACE", path)
            self.assertEqual(code, 405, path)
            self.assertEqual(
                sorted(headers.getRawHeaders("allow")[0].split(", ")),
                allowed)
            self.assertTrue(body["faultstring"].startswith("405 "))
        code, _, _ = self.request("TRACE", "/v1/nothing")
        self.assertEqual(code, 404)

    def test_validator_that_trips_is_400(self) -> None:
        class Tripping(Extension):
            name = "trip"

            def _check(self, value: Any = 0) -> None:
                if value < 1:          # TypeError for a string
                    raise errors.InvalidCommandParamsError("too small")

            @async_command("run", _check)
            def run(self, value: Any = 0) -> None:
                pass

        runner = CommandRunner({"trip": Tripping(None)})
        stub = StubTreq(AgentAPI(runner, lambda: TOKEN, 1.0).resource())
        response = self.successResultOf(stub.request(
            "POST", BASE + "/v1/commands/", params={"agent_token": TOKEN},
            data=json.dumps({"name": "trip.run",
                             "params": {"value": "x"}}).encode()))
        body = json.loads(self.successResultOf(stub.content(response)))
        self.assertEqual(response.code, 400)
        self.assertEqual(body["faultstring"], "Invalid command parameters: "
                         "run: TypeError: '<' not supported between "
                         "instances of 'str' and 'int'")
        self.assertEqual(runner.list(), [])

    def test_unknown_command_id(self) -> None:
        code, _, body = self.request("GET", "/v1/commands/nope")
        self.assertEqual(code, 404)
        self.assertEqual(body["faultstring"],
                         "Not found: Command Result with id nope not found.")

    def test_unserializable_result_fails_cleanly(self) -> None:
        code, body = self.post("fake.unserializable")
        self.assertEqual(code, 200)
        self.assertEqual(body["command_status"], "FAILED")
        code, _, listed = self.request("GET", "/v1/commands/")
        self.assertEqual(code, 200)

    def test_order_is_kept(self) -> None:
        for value in ("a", "b", "c"):
            self.post("fake.echo", {"value": value})
        _, _, listed = self.request("GET", "/v1/commands/")
        self.assertEqual([c["command_result"]["result"]
                          for c in listed["commands"]], ["a", "b", "c"])

    def test_client_going_away_does_not_cancel_the_command(self) -> None:
        _, body = self.post("fake.slow")
        result = self.runner.get(body["id"])
        waiter = result.wait()
        waiter.cancel()
        self.failureResultOf(waiter)
        self.assertFalse(result.done)
        self.ext.pending[0].callback("ok")
        self.assertEqual(result.status, "SUCCEEDED")

    def test_version_mismatch_status(self) -> None:
        _, body = self.post("fake.slow")
        self.ext.pending[0].errback(errors.VersionMismatch({"a": "1"},
                                                           {"a": "2"}))
        _, _, one = self.request("GET", f"/v1/commands/{body['id']}")
        self.assertEqual(one["command_status"], "CLEAN_VERSION_MISMATCH")
        self.assertEqual(one["command_error"]["code"], 409)
        self.assertEqual(one["command_error"]["details"],
                         "Current versions: {'a': '1'}, versions used by "
                         "ironic: {'a': '2'}")


class DeferredResultTests(SynchronousTestCase):
    def test_wait_on_done_result_fires_at_once(self) -> None:
        runner = CommandRunner({"fake": FakeExtension()})
        result = runner.execute("fake.echo", {})
        d: Deferred[Any] = result.wait()
        self.assertIs(self.successResultOf(d), result)


class OpenAPITests(SynchronousTestCase):
    def setUp(self) -> None:
        self.api = AgentAPI(CommandRunner({"fake": FakeExtension()}),
                            lambda: TOKEN, started_at=1.0, version="9.9")
        self.stub = StubTreq(self.api.resource())

    def get(self, path: str) -> tuple[int, Any]:
        response = self.successResultOf(self.stub.get(BASE + path))
        return response.code, json.loads(
            self.successResultOf(self.stub.content(response)))

    def test_served_and_valid(self) -> None:
        from openapi_spec_validator import validate

        code, doc = self.get("/v1/openapi.json")
        self.assertEqual(code, 200)
        self.assertEqual(doc["info"]["version"], "9.9")
        validate(doc)

    def test_every_route_is_documented_and_every_path_answers(self) -> None:
        _, doc = self.get("/v1/openapi.json")
        documented = {(path, method.upper())
                      for path, ops in doc["paths"].items() for method in ops}
        routed = set()
        for rule in self.api.app.url_map.iter_rules():
            path = re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule.rule)
            for method in rule.methods or ():
                if method not in ("HEAD", "OPTIONS"):
                    routed.add((path, method))
        self.assertEqual(routed - documented, set())
        # the rest are the slash redirects, as documented
        for path, method in sorted(documented - routed):
            responses = doc["paths"][path][method.lower()]["responses"]
            self.assertIn("308", responses, path)
            response = self.successResultOf(self.stub.request(
                method, BASE + path, params={"agent_token": TOKEN},
                allow_redirects=False))
            self.assertEqual(response.code, 308, (method, path))
            self.assertEqual(response.headers.getRawHeaders("location"),
                             [f"{BASE}{path}/?agent_token={TOKEN}"])


class LargeBodyTests(SynchronousTestCase):
    """A large command body (a config drive in its params) is decoded in
    a thread, not on the reactor (64 MiB: ~0.2 s of json.loads; an array
    of numbers that big, seconds); small ones stay inline."""

    def setUp(self) -> None:
        self.threads: list[Deferred[Any]] = []
        self.ran: list[Any] = []

        def in_thread(f: Any, *args: Any) -> Deferred[Any]:
            d: Deferred[Any] = Deferred()
            self.threads.append(d)
            self.ran.append((f, args))
            return d

        self.runner = CommandRunner({"fake": FakeExtension()})
        api = AgentAPI(self.runner, lambda: TOKEN, started_at=1.0,
                       in_thread=in_thread)
        self.stub = StubTreq(api.app.resource())

    def post(self, body: bytes) -> Deferred[Any]:
        return self.stub.request("POST", BASE + "/v1/commands/",
                                 params={"agent_token": TOKEN}, data=body)

    def test_large_body_is_decoded_in_a_thread(self) -> None:
        from ipa_twisted.api.app import INLINE_BODY

        value = "A" * (INLINE_BODY + 1)
        answer = self.post(json.dumps(
            {"name": "fake.echo", "params": {"value": value}}).encode())
        self.assertNoResult(answer)          # waits for the thread
        self.assertEqual(self.runner.list(), [])
        (decode, (content,)), = self.ran
        self.threads[0].callback(decode(content))   # "the thread" runs it
        self.stub.flush()
        response = self.successResultOf(answer)
        self.assertEqual(response.code, 200)
        self.assertEqual(self.runner.list()[-1].result, {"result": value})

    def test_a_bad_large_body_is_400(self) -> None:
        from ipa_twisted.api.app import INLINE_BODY

        answer = self.post(b"[" + b"0," * (INLINE_BODY // 2) + b"x]")
        (decode, (content,)), = self.ran
        d: Deferred[Any] = Deferred()
        d.addCallback(lambda _: decode(content))
        d.chainDeferred(self.threads[0])
        d.callback(None)
        self.stub.flush()
        response = self.successResultOf(answer)
        self.assertEqual(response.code, 400)

    def test_small_body_is_decoded_inline(self) -> None:
        response = self.successResultOf(self.post(json.dumps(
            {"name": "fake.echo", "params": {"value": "x"}}).encode()))
        self.assertEqual(response.code, 200)
        self.assertEqual(self.ran, [])
