"""The agent's start-up in memory: a fake Ironic under StubTreq, the
API's port on a MemoryReactor, time on its Clock.

lookup -> serve -> heartbeat; a fatal lookup error; stopping during
start-up; stopping a serving agent.  Nothing is left behind: no port
listening, nothing scheduled, no request in flight.
"""

from __future__ import annotations

from typing import Any

from treq.testing import StubTreq
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import capturedLogs
from twisted.trial.unittest import SynchronousTestCase

from ipa_twisted import errors
from ipa_twisted.agent import AgentService
from ipa_twisted.config import load_config
from ipa_twisted.hardware.generic import GenericHardwareManager
from ipa_twisted.hardware.manager import HardwareManagers
from ipa_twisted.hardware.netif import NetworkInterface
from ipa_twisted.registration import Registrar
from ipa_twisted.testing import (
    FakeHardwareManager,
    FakeIronic,
    FakeProcessRunner,
    HangingHTTP,
)

TOKEN = "x" * 43
MAC = "52:54:00:12:34:56"


class Reactor(MemoryReactorClock):
    """Ports that know whether they were closed; threads run at once."""

    def __init__(self) -> None:
        super().__init__()
        self.ports: list[Any] = []

    def listenTCP(self, port: int, factory: Any, backlog: int = 50,
                  interface: str = "") -> Any:
        listening = super().listenTCP(port, factory, backlog, interface)
        listening.stopped = False

        def stop() -> None:
            listening.stopped = True

        listening.stopListening = stop
        self.ports.append(listening)
        return listening

    def listening(self) -> list[Any]:
        return [p for p in self.ports if not p.stopped]


class Recording:
    """The client of the fake Ironic, noting for each request whether the
    API was listening when it went out."""

    def __init__(self, stub: Any, reactor: Reactor) -> None:
        self.stub = stub
        self.reactor = reactor
        self.sent: list[tuple[str, bool]] = []

    def request(self, method: str, url: str, **kw: Any) -> Any:
        path = url.split("6385", 1)[1].split("?")[0]
        self.sent.append((f"{method} {path}", bool(self.reactor.listening())))
        return self.stub.request(method, url, **kw)


class StartUpTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.reactor = Reactor()
        self.ironic = FakeIronic()
        self.stub = StubTreq(self.ironic.app.resource())
        self.http: Any = Recording(self.stub, self.reactor)

    def agent(self, manager: Any = None, **cli: Any) -> AgentService:
        cli.setdefault("api_url", "http://ironic.example:6385")
        cli.setdefault("advertise_host", "192.0.2.10")
        cli.setdefault("listen_host", "127.0.0.1")
        cli.setdefault("interface_wait_timeout", "0")
        cli.setdefault("run_dir", self.mktemp())
        manager = manager or FakeHardwareManager()

        def registrar(context: Any, outbound: Any) -> Registrar:
            return Registrar(context, outbound, interfaces=lambda: [
                NetworkInterface(name="eth0", mac_address=MAC)])

        agent = AgentService(load_config(cli, cmdline=""), self.reactor,
                             http=self.http,
                             hardware=HardwareManagers([manager]),
                             exit_on_fatal=False, registrar=registrar)
        agent.context.process = FakeProcessRunner()
        agent.context.thread_runner = _now
        return agent

    def settle(self, seconds: float = 0.0) -> None:
        """Let the fake Ironic answer, then time pass."""
        for _ in range(20):
            self.stub.flush()
        self.reactor.advance(seconds)
        for _ in range(20):
            self.stub.flush()

    def assertNothingLeft(self, agent: AgentService) -> None:
        self.assertEqual(self.reactor.listening(), [])
        self.assertEqual(self.reactor.getDelayedCalls(), [])
        self.assertFalse(agent.running)

    def test_lookup_then_serve_then_heartbeat(self) -> None:
        agent = self.agent(enable_auto_tls="false")
        agent.startService()
        self.settle()
        self.successResultOf(agent.when_ready())
        # in order: version, lookup, then the API listens, then a beat
        self.assertEqual(self.http.sent, [
            ("GET /", False),
            ("GET /v1/lookup", False),
            (f"POST /v1/heartbeat/{self.ironic.node['uuid']}", True),
        ])
        self.assertEqual(len(self.reactor.listening()), 1)
        (port, _, _, host), = self.reactor.tcpServers
        self.assertEqual((host, port), ("127.0.0.1", 9999))
        (_, _, _, _, beat), = self.ironic.of("/v1/heartbeat")
        self.assertEqual(beat["callback_url"], "http://192.0.2.10:9999")
        self.assertEqual(beat["agent_token"], TOKEN)
        self.assertEqual(agent.token, TOKEN)
        self.assertEqual(agent.context.node, self.ironic.node)
        # then every 300 s x U(0.3, 0.6)
        self.settle(180)
        self.assertEqual(len(self.ironic.of("/v1/heartbeat")), 2)
        # stopping: no port, nothing scheduled
        self.successResultOf(agent.stopService())
        self.assertNothingLeft(agent)

    def test_lookup_does_not_wait_for_the_inventory(self) -> None:
        # the lookup sends MAC addresses only: it must not wait for lshw,
        # lscpu, lsblk and the BMC probe (seconds under emulation)
        class NICsFirst(FakeHardwareManager):
            asked = 0

            def list_network_interfaces(self) -> list[NetworkInterface]:
                return [NetworkInterface(name="eth1",
                                         mac_address="52:54:00:aa:bb:cc")]

            def list_hardware_info(self) -> Any:
                self.asked += 1
                return Deferred()  # still probing

        manager = NICsFirst()
        agent = self.agent(manager, enable_auto_tls="false")
        agent.startService()
        self.settle()
        self.successResultOf(agent.when_ready())
        (_, _, args, _, _), = self.ironic.of("/v1/lookup")
        self.assertEqual(args["addresses"], ["52:54:00:aa:bb:cc"])
        self.assertEqual(manager.asked, 0)
        self.successResultOf(agent.stopService())

    def test_lookup_with_the_generic_manager_runs_no_probe(self) -> None:
        # the generic manager's NICs are the kernel's: no lshw (NIC
        # speeds), biosdevname or ethtool before the lookup
        agent = self.agent(GenericHardwareManager(), enable_auto_tls="false")
        runner = agent.context.process
        hanging: list[Deferred[Any]] = []
        for tool in ("lshw", "biosdevname", "ethtool", "lscpu", "lsblk"):
            runner.handlers[tool] = lambda argv: hanging.append(
                Deferred()) or hanging[-1]
        agent.startService()
        self.settle()
        self.successResultOf(agent.when_ready())
        (_, _, args, _, _), = self.ironic.of("/v1/lookup")
        self.assertEqual(args["addresses"], [MAC])
        self.assertEqual(hanging, [])
        self.successResultOf(agent.stopService())

    def test_lookup_asks_a_generic_subclass_that_lists_nics(self) -> None:
        # a manager built on the generic one that lists NICs its own way
        # is asked, not the kernel
        class OwnNICs(GenericHardwareManager):
            def list_network_interfaces(self, session: Any = None
                                        ) -> list[NetworkInterface]:
                return [NetworkInterface(name="bond0",
                                         mac_address="52:54:00:0b:0b:0b")]

        agent = self.agent(OwnNICs(), enable_auto_tls="false")
        agent.startService()
        self.settle()
        self.successResultOf(agent.when_ready())
        (_, _, args, _, _), = self.ironic.of("/v1/lookup")
        self.assertEqual(args["addresses"], ["52:54:00:0b:0b:0b"])
        self.successResultOf(agent.stopService())

    def test_lookup_macs_from_the_inventory_otherwise(self) -> None:
        # a manager that only assembles the inventory still has its NICs
        # looked up
        agent = self.agent(FakeHardwareManager(inventory={
            "interfaces": [{"name": "eth0", "mac_address": "52:54:00:01:02:03"},
                           {"name": "ib0", "mac_address": None}]}),
            enable_auto_tls="false")
        agent.startService()
        self.settle()
        self.successResultOf(agent.when_ready())
        (_, _, args, _, _), = self.ironic.of("/v1/lookup")
        self.assertEqual(args["addresses"], ["52:54:00:01:02:03"])
        self.successResultOf(agent.stopService())

    def test_auto_tls(self) -> None:
        agent = self.agent()
        agent.startService()
        self.settle()
        self.successResultOf(agent.when_ready())
        (_, _, _, _, beat), = self.ironic.of("/v1/heartbeat")
        self.assertEqual(beat["callback_url"], "https://192.0.2.10:9999")
        self.assertIn("BEGIN CERTIFICATE", beat["agent_verify_ca"])
        (port, _, _, _, host), = self.reactor.sslServers
        self.assertEqual((port, host), (9999, "127.0.0.1"))
        self.successResultOf(agent.stopService())

    def test_fatal_lookup_error(self) -> None:
        self.ironic.lookup_answers = [(404, {"error_message": "no node"})]
        agent = self.agent(lookup_timeout="30")
        with capturedLogs() as events:
            agent.startService()
            for _ in range(60):
                self.settle(1)
        failure = self.failureResultOf(agent.when_ready(),
                                       errors.LookupNodeError)
        self.assertIn("Could not look up node info", str(failure.value))
        critical = [e for e in events if e["log_level"].name == "critical"]
        self.assertEqual(len(critical), 1)
        self.assertRegex(critical[0]["log_format"].format(**critical[0]),
                         r"^agent cannot start: .*Could not look up node "
                         r"info after \d+ attempts in 30 s; last error: "
                         r"HTTP 404: no node")
        # never served, never beat, nothing scheduled
        self.assertEqual(self.reactor.ports, [])
        self.assertEqual(self.ironic.of("/v1/heartbeat"), [])
        self.assertEqual(self.reactor.getDelayedCalls(), [])
        self.successResultOf(agent.stopService())

    def test_inspection_without_an_api_url_stays_idle(self) -> None:
        # as IPA: inspection posted once, then no lookup and no heartbeat;
        # the agent neither fails nor exits (the ramdisk's init would
        # start it again, and it would inspect again and again)
        agent = self.agent(
            api_url=None, inspection_dhcp_wait_timeout="0",
            inspection_callback_url="http://ironic.example:6385/v1/"
                                    "continue_inspection")
        agent._exit_on_fatal = True
        with capturedLogs() as events:
            agent.startService()
            for _ in range(30):
                self.settle(10)
        self.successResultOf(agent.when_ready())
        self.assertEqual(self.http.sent,
                         [("POST /v1/continue_inspection", False)])
        self.assertEqual(self.reactor.ports, [])
        self.assertIsNone(agent.heartbeater)
        self.assertNotIn("shutdown", self.reactor.triggers.get("after", {}))
        self.assertEqual(self.reactor.getDelayedCalls(), [])
        said = [e["log_format"].format(**e) for e in events]
        self.assertIn("inspection done and no Ironic API URL: no lookup, no "
                      "API, no heartbeats; idle until the machine is powered "
                      "off", said)
        self.successResultOf(agent.stopService())
        self.assertNothingLeft(agent)

    def test_fatal_error_ends_the_process(self) -> None:
        self.ironic.lookup_answers = [(404, {"error_message": "no node"})]
        agent = self.agent(lookup_timeout="0")
        agent._exit_on_fatal = True
        agent.startService()
        self.settle()
        self.failureResultOf(agent.when_ready(), errors.LookupNodeError)
        # exit status 1 once the reactor has stopped (not run here: the
        # trigger would end this process)
        (bye, _, _), = self.reactor.triggers["after"]["shutdown"]
        self.assertEqual(bye.__name__, "bye")
        self.successResultOf(agent.stopService())

    def test_stop_during_lookup(self) -> None:
        hanging = HangingHTTP()
        self.http = hanging
        agent = self.agent(ironic_api_version="1.99")
        agent.startService()
        self.assertEqual(len(hanging.pending), 1)      # the lookup
        ready = agent.when_ready()
        self.assertNoResult(ready)
        self.successResultOf(agent.stopService())
        self.failureResultOf(ready, CancelledError)
        self.assertEqual(hanging.pending, [])
        self.assertEqual(len(hanging.calls), 1)         # no retry
        self.assertNothingLeft(agent)

    def test_stop_during_version_discovery(self) -> None:
        hanging = HangingHTTP()
        self.http = hanging
        agent = self.agent()
        agent.startService()
        self.assertEqual(hanging.calls, ["http://ironic.example:6385/"])
        self.successResultOf(agent.stopService())
        self.failureResultOf(agent.when_ready(), CancelledError)
        # not taken for "version unknown, go on with the lookup"
        self.assertEqual(hanging.calls, ["http://ironic.example:6385/"])
        self.assertEqual(hanging.pending, [])
        self.assertNothingLeft(agent)

    def test_stop_while_lookup_pauses(self) -> None:
        self.ironic.lookup_answers = [(404, {"error_message": "no node"})]
        agent = self.agent()
        agent.startService()
        self.settle()
        self.assertEqual(len(self.ironic.of("/v1/lookup")), 1)
        self.successResultOf(agent.stopService())
        self.failureResultOf(agent.when_ready(), CancelledError)
        self.assertNothingLeft(agent)
        self.settle(1000)
        self.assertEqual(len(self.ironic.of("/v1/lookup")), 1)

    def test_stop_cancels_a_running_command(self) -> None:
        agent = self.agent(enable_auto_tls="false")
        agent.startService()
        self.settle()
        from ipa_twisted.testing import FakeExtension

        assert agent.runner is not None
        agent.runner._extensions["fake"] = FakeExtension()
        result = agent.runner.execute("fake.slow", {})
        self.successResultOf(agent.stopService())
        self.assertEqual(result.status, "FAILED")
        assert result.error is not None
        self.assertIn("cancelled", result.error["details"])
        self.assertNothingLeft(agent)

    def test_port_taken_is_fatal(self) -> None:
        from twisted.internet.error import CannotListenError

        agent = self.agent(standalone="true", agent_token="t" * 40)

        def taken(*args: Any, **kw: Any) -> Any:
            raise CannotListenError("127.0.0.1", 9999,
                                    OSError("Address already in use"))

        self.reactor.listenTCP = taken  # type: ignore[method-assign]
        with capturedLogs() as events:
            agent.startService()
        failure = self.failureResultOf(agent.when_ready())
        self.assertIn("cannot listen on 127.0.0.1 port 9999",
                      str(failure.value))
        self.assertEqual(self.flushLoggedErrors(), [])
        self.assertEqual(
            [e["log_level"].name for e in events
             if e["log_level"].name in ("error", "critical")], ["critical"])
        self.successResultOf(agent.stopService())

    def test_standalone_serves_without_ironic(self) -> None:
        agent = self.agent(standalone="true", agent_token="t" * 40)
        agent.startService()
        self.successResultOf(agent.when_ready())
        self.assertEqual(len(self.reactor.listening()), 1)
        self.assertEqual(self.http.sent, [])
        self.assertIsNone(agent.heartbeater)
        self.successResultOf(agent.stopService())
        self.assertNothingLeft(agent)

    def test_lockdown_stops_api_and_heartbeats(self) -> None:
        agent = self.agent(enable_auto_tls="false")
        agent.startService()
        self.settle()
        self.successResultOf(agent.stop_heartbeats())
        self.successResultOf(agent.stop_api())
        self.assertEqual(self.reactor.listening(), [])
        self.assertEqual(self.reactor.getDelayedCalls(), [])
        self.assertTrue(agent.running)
        self.successResultOf(agent.stopService())


def _now(f: Any, *args: Any, **kwargs: Any) -> Deferred[Any]:
    from twisted.internet.defer import maybeDeferred

    return maybeDeferred(f, *args, **kwargs)
