"""rescue.finalize_rescue, system.lockdown and flow.start_flow.

The first two are driven through the agent's real HTTP site (AgentSite on
a string transport) and its real ``stop_serving``: the answer must be
whole in the POST that asked, and only then the port, the connections and
the heartbeats stop.  Tools are faked; the password file and the marker
go to a temporary directory.
"""

from __future__ import annotations

import json
import os
from typing import Any, Sequence

from twisted.application.service import Service
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from ipa_twisted.agent import AgentService
from ipa_twisted.api.app import AgentAPI
from ipa_twisted.api.site import AgentSite
from ipa_twisted.commands.base import CommandRunner
from ipa_twisted.commands.flow import FlowExtension
from ipa_twisted.commands.rescue import RescueExtension
from ipa_twisted.commands.system import SystemExtension
from ipa_twisted.config import load_config
from ipa_twisted.hardware import netif
from ipa_twisted.process import ProcessResult
from ipa_twisted.testing import FakeExtension, FakeProcessRunner
from tests.unit.test_api_site import TCPStringTransport, Response
from tests.unit.test_extensions import Reactor

TOKEN = "r" * 43
HASH = ("$6$Vx0yDzKQmBN0uQ3n$8y8h0pNq5GkQvB0D3o9T2yF6ZP9g6XrYV2u1oQ0mC"
        "9xzq3Yl6uQd1pRk1f7Qe6iKq0bB3cD4eF5gH6iJ7kL8m.")


class StdinRecorder(FakeProcessRunner):
    """Records what each tool was given on its standard input."""

    def __init__(self) -> None:
        super().__init__()
        self.stdins: list[tuple[tuple[str, ...], bytes | None]] = []

    def run(self, argv: Sequence[str], timeout: float = 60.0,
            check: bool = True, stdin: bytes | None = None,
            env: Any = None) -> Deferred[ProcessResult]:
        self.stdins.append((tuple(argv), stdin))
        return super().run(argv, timeout, check, stdin, env)


class FakeAPIService(Service):
    """The agent's "api" child: its port (a flag here) and its real site,
    whose connections it closes when it stops, as the real one does."""

    name = "api"

    def __init__(self, site: AgentSite) -> None:
        self.site = site
        self.listening = True

    def stopService(self) -> Deferred[None]:
        super().stopService()
        self.listening = False
        return self.site.close_connections()


class FakeHeartbeater(Service):
    name = "heartbeater"


class ServingAgentCase(SynchronousTestCase):
    """An AgentService as it is once serving: its site, port, heartbeats
    (fakes where a socket or Ironic would be) and the real extensions."""

    def setUp(self) -> None:
        self.reactor = Reactor()
        self.agent = AgentService(load_config({"standalone": True,
                                               "agent_token": TOKEN}),
                                  self.reactor, http=object(),
                                  exit_on_fatal=False)
        self.process = FakeProcessRunner()
        self.context = self.agent.context
        self.context.process = self.process
        self.context.disk_threads = self.reactor  # runs "threads" at once
        self.rescue = RescueExtension(self.context)
        tmp = self.mktemp()
        os.makedirs(tmp)
        self.rescue.password_file = os.path.join(tmp, "ipa-rescue-config",
                                                 "ipa-rescue-password")
        self.rescue.marker = os.path.join(tmp, ".rescued")
        self.rescue.user = "no-such-user-ipa-twisted"
        self.context.extensions = {
            "rescue": self.rescue, "system": SystemExtension(self.context),
            "flow": FlowExtension(self.context),
            "fake": FakeExtension(self.context)}
        self.runner = CommandRunner(self.context.extensions)
        self.agent.runner = self.runner
        api = AgentAPI(self.runner, lambda: TOKEN, started_at=1.0)
        self.site = AgentSite(api, self.reactor)
        self.port = FakeAPIService(self.site)
        self.heartbeater = FakeHeartbeater()
        # as once serving (start-up itself is not under test here): the
        # agent runs, with its API and heartbeater among its children
        for child in (self.port, self.heartbeater):
            child.setServiceParent(self.agent)
            child.running = 1
        self.agent.running = 1

    def connect(self) -> tuple[Any, TCPStringTransport]:
        addr = IPv4Address("TCP", "10.0.0.7", 40000)
        protocol = self.site.buildProtocol(addr)
        transport = TCPStringTransport(peerAddress=addr)
        protocol.makeConnection(transport)
        self.addCleanup(lambda: protocol.connectionLost(
            Failure(Exception("end"))) if not transport.disconnected
            else None)
        return protocol, transport

    def post(self, protocol: Any, name: str, **params: Any) -> None:
        body = json.dumps({"name": name, "params": params}).encode()
        protocol.dataReceived(
            b"POST /v1/commands/?agent_token=%s HTTP/1.1\r\nHost: a\r\n"
            b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n"
            % (TOKEN.encode(), len(body)) + body)

    def assert_serving(self, transport: TCPStringTransport) -> None:
        self.assertTrue(self.port.listening)
        self.assertTrue(self.heartbeater.running)
        self.assertFalse(transport.disconnecting)
        self.assertIsNone(self.agent.stopped_serving)

    def assert_stopped(self, transport: TCPStringTransport,
                       reason: str) -> None:
        self.assertFalse(self.port.listening)
        self.assertIsNone(self.agent.api)
        self.assertFalse(self.heartbeater.running)
        self.assertTrue(transport.disconnecting)
        self.assertEqual(self.agent.stopped_serving, reason)


class FinalizeRescueTests(ServingAgentCase):
    def test_hashed_password_answered_then_the_agent_goes_quiet(self
                                                                ) -> None:
        protocol, transport = self.connect()
        other, idle = self.connect()     # a keep-alive connection of Ironic
        self.post(protocol, "rescue.finalize_rescue", rescue_password=HASH,
                  hashed=True)
        response = Response(transport.value())
        self.assertEqual(response.code, 200)
        body = response.json()
        self.assertEqual((body["command_name"], body["command_status"],
                          body["command_error"]),
                         ("finalize_rescue", "SUCCEEDED", None))
        # the answer is whole before anything stops
        self.assert_serving(transport)
        with open(self.rescue.password_file) as f:
            self.assertEqual(f.read(), HASH)
        self.assertEqual(os.stat(self.rescue.password_file).st_mode & 0o777,
                         0o600)
        self.assertTrue(os.path.exists(self.rescue.marker))
        self.assertEqual(self.process.calls, [])   # a hash: no openssl
        self.reactor.advance(0)
        self.assert_stopped(transport, "rescue finalized")
        self.assertTrue(idle.disconnecting)
        # the hash never reaches the command list
        self.assertNotIn(HASH, json.dumps(self.runner.list()[-1].params))

    def test_plain_password_is_hashed_on_stdin(self) -> None:
        runner = self.context.process = StdinRecorder()
        runner.add("openssl", HASH + "\n")
        protocol, transport = self.connect()
        self.post(protocol, "rescue.finalize_rescue",
                  rescue_password="s3cret pass")
        self.assertEqual(Response(transport.value()).json()[
            "command_status"], "SUCCEEDED")
        self.assertEqual(runner.stdins, [(("openssl", "passwd", "-6",
                                           "-stdin"), b"s3cret pass\n")])
        with open(self.rescue.password_file) as f:
            self.assertEqual(f.read(), HASH)

    def test_rescue_user_gets_the_hash_through_chpasswd(self) -> None:
        self.rescue.user = "root"   # a user every machine has (faked tool)
        runner = self.context.process = StdinRecorder()
        runner.add("chpasswd")
        protocol, transport = self.connect()
        self.post(protocol, "rescue.finalize_rescue", rescue_password=HASH,
                  hashed=True)
        self.assertEqual(Response(transport.value()).json()[
            "command_status"], "SUCCEEDED")
        self.assertEqual(runner.stdins, [(("chpasswd", "-e"),
                                          f"root:{HASH}\n".encode())])

    def test_hostile_passwords_are_refused_before_anything(self) -> None:
        for params in ({"rescue_password": HASH + "\nroot:" + HASH,
                        "hashed": True},
                       {"rescue_password": "a:b", "hashed": True},
                       {"rescue_password": "", "hashed": True},
                       {"rescue_password": "x", "hashed": "yes"},
                       {"rescue_password": 12}):
            protocol, transport = self.connect()
            self.post(protocol, "rescue.finalize_rescue", **params)
            response = Response(transport.value())
            self.assertEqual(response.code, 400, params)
            self.reactor.advance(0)
            self.assert_serving(transport)
        self.assertFalse(os.path.exists(self.rescue.password_file))
        self.assertFalse(os.path.exists(self.rescue.marker))

    def test_a_failed_write_fails_and_keeps_serving(self) -> None:
        self.rescue.password_file = "/proc/no/such/dir/password"
        protocol, transport = self.connect()
        self.post(protocol, "rescue.finalize_rescue", rescue_password=HASH,
                  hashed=True)
        body = Response(transport.value()).json()
        self.assertEqual(body["command_status"], "FAILED")
        self.assertEqual(body["command_error"]["type"], "RescueError")
        self.reactor.advance(0)
        self.assert_serving(transport)

    def test_a_rescued_agent_started_again_stays_silent(self) -> None:
        marker = self.mktemp()
        with open(marker, "w"):
            pass
        self.patch(__import__("ipa_twisted.agent").agent, "RESCUED_MARKER",
                   marker)
        from ipa_twisted.hardware.manager import HardwareManagers
        from ipa_twisted.testing import FakeHardwareManager

        agent = AgentService(load_config({"standalone": True,
                                          "agent_token": TOKEN}), Reactor(),
                             http=object(), exit_on_fatal=False,
                             hardware=HardwareManagers([
                                 FakeHardwareManager()]))
        agent.startService()
        self.successResultOf(agent.when_ready())
        self.assertIsNone(agent.api)
        self.assertEqual(agent.stopped_serving, "rescued")
        self.successResultOf(agent.stopService())


class LockdownTests(ServingAgentCase):
    def test_answered_then_api_heartbeats_and_interfaces_stop(self) -> None:
        self.patch(netif, "list_interfaces", lambda: [
            netif.NetworkInterface("eth0", "52:54:00:00:00:01"),
            netif.NetworkInterface("eth1", "52:54:00:00:00:02"),
        ])
        self.process.add("ip")
        protocol, transport = self.connect()
        self.post(protocol, "system.lockdown")
        body = Response(transport.value()).json()
        self.assertEqual((body["command_name"], body["command_status"]),
                         ("lockdown", "SUCCEEDED"))
        self.assert_serving(transport)
        self.assertEqual(self.process.calls, [])
        self.reactor.advance(0)
        # interfaces go down only once the connections are closed
        self.assertEqual(self.process.calls, [])
        protocol.connectionLost(Failure(Exception("closed")))
        self.assert_stopped(transport, "locked down")
        self.assertEqual(self.process.calls, [
            ("ip", "link", "set", "eth0", "down"),
            ("ip", "link", "set", "eth1", "down")])

    def test_a_connection_that_will_not_close_is_aborted(self) -> None:
        self.patch(netif, "list_interfaces", lambda: [])
        protocol, transport = self.connect()
        self.post(protocol, "system.lockdown")
        self.reactor.advance(0)
        self.assertFalse(transport.disconnected)
        self.reactor.advance(5)
        self.assertTrue(transport.disconnected)   # aborted

    def test_stopping_twice_is_harmless(self) -> None:
        self.successResultOf(self.agent.stop_serving("one"))
        self.successResultOf(self.agent.stop_serving("two"))
        self.assertEqual(self.agent.stopped_serving, "one")


class FlowTests(ServingAgentCase):
    def run_flow(self, flow: Any) -> Any:
        result = self.runner.execute("flow.start_flow", {"flow": flow})
        return self.successResultOf(result.wait())

    def test_commands_run_in_order(self) -> None:
        fake = self.context.extensions["fake"]
        calls: list[Any] = []
        fake.echo = lambda value="ok": calls.append(("echo", value))
        done = self.run_flow([{"fake.echo": {"value": 1}},
                              {"fake.validated": {"size": 2}},
                              {"fake.echo": {"value": 3}}])
        self.assertEqual(done.status, "SUCCEEDED", done.error)
        self.assertEqual(calls, [("echo", 1), ("echo", 3)])
        self.assertEqual(len(self.runner.list()), 1)  # nested: not listed

    def test_first_failure_ends_the_flow(self) -> None:
        fake = self.context.extensions["fake"]
        ran: list[int] = []
        original = fake.echo
        fake.echo = lambda value="ok": ran.append(value) or original(value)
        done = self.run_flow([{"fake.echo": {"value": 1}},
                              {"fake.boom": {}},
                              {"fake.echo": {"value": 3}}])
        self.assertEqual(done.status, "FAILED")
        self.assertEqual(done.error["type"], "CommandExecutionError")
        self.assertIn("fake.boom was failed: ValueError: bad thing",
                      done.error["details"])
        self.assertEqual(ran, [1])

    def test_async_command_failure_and_bad_params_fail_the_flow(self
                                                                ) -> None:
        done = self.run_flow([{"fake.validated": {"size": 0}}])
        self.assertEqual(done.status, "FAILED")
        self.assertIn("size must be >= 1", done.error["details"])
        done = self.run_flow([{"fake.echo": {"nope": 1}}])
        self.assertEqual(done.status, "FAILED")
        self.assertIn("unexpected keyword argument 'nope'",
                      done.error["details"])

    def test_unknown_commands_are_refused_before_anything_runs(self
                                                               ) -> None:
        from ipa_twisted import errors

        fake = self.context.extensions["fake"]
        ran: list[Any] = []
        fake.echo = lambda value="ok": ran.append(value)
        for flow, kind in (
                ([{"fake.echo": {}}, {"nothere.x": {}}],
                 errors.RequestedObjectNotFoundError),
                ([{"fake.echo": {}}, {"fake.nothere": {}}],
                 errors.InvalidCommandError),
                ([{"flow.start_flow": {"flow": []}}],
                 errors.InvalidCommandParamsError),
                ("not a list", errors.InvalidCommandParamsError),
                ([["fake.echo"]], errors.InvalidCommandParamsError)):
            with self.assertRaises(kind):
                self.runner.execute("flow.start_flow", {"flow": flow})
        self.assertEqual(ran, [])
        self.assertEqual(self.runner.list(), [])
