"""Cancelling leaves nothing behind (#13): a tool run, a command (the agent
stopped while it runs), a lookup (the agent stopped while Ironic does not
answer).  Each must stop within a second; then processes, threads and
sockets are counted against what there was before.

Real reactor, real processes (sleep), real sockets on 127.0.0.1; the
agent runs in this process with a fake hardware manager (it never looks
at a disk).  No root needed.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from ipa_twisted.agent import AgentService
from ipa_twisted.commands.base import Extension, async_command
from ipa_twisted.config import load_config
from ipa_twisted.hardware.manager import HardwareManagers
from ipa_twisted.hardware.netif import NetworkInterface
from ipa_twisted.process import ProcessRunner
from ipa_twisted.registration import Registrar
from ipa_twisted.testing import FakeHardwareManager

TOKEN = "c" * 40
#: how long a cancellation may take
PROMPT = 1.0


def sockets() -> int:
    """Sockets open in this process."""
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}").startswith("socket:"):
                count += 1
        except OSError:
            pass
    return count


def running(marker: str) -> list[int]:
    """Live (not zombie) processes whose command line holds ``marker``."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/cmdline", "rb") as f:
                cmdline = f.read()
            with open(f"/proc/{name}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if marker.encode() in cmdline and state != "Z":
            found.append(int(name))
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def threads() -> tuple[int, int]:
    """(threads outside the reactor's pool, busy workers of the pool).
    The pool's idle workers stay until the reactor stops: they are not
    left behind by anyone (host names, IP literals too, are resolved in
    that pool)."""
    pool = reactor.getThreadPool()
    own = set(pool.threads)
    others = [t for t in threading.enumerate() if t not in own]
    return len(others), len(pool.working)


class Leftovers:
    """What there is before; what is left after."""

    def __init__(self) -> None:
        self.threads = threads()[0]
        self.sockets = sockets()

    def left(self) -> dict[str, int]:
        others, busy = threads()
        return {"threads": others - self.threads, "busy pool threads": busy,
                "sockets": sockets() - self.sockets}


NOTHING = {"threads": 0, "busy pool threads": 0, "sockets": 0}


class Silent(Protocol):
    """An Ironic that accepts connections and never answers."""

    open = 0

    def connectionMade(self) -> None:
        Silent.open += 1

    def connectionLost(self, reason: Any = None) -> None:
        Silent.open -= 1


class Sleeper(Extension):
    """A command that runs a tool for a long time."""

    name = "sleeper"

    def __init__(self, agent: Any, marker: str) -> None:
        super().__init__(agent)
        self.marker = marker

    @async_command("nap")
    async def nap(self) -> None:
        await self.agent.process.run(
            ["sh", "-c", f"sleep 30 & sleep 31; : {self.marker}"],
            timeout=60)


class CancellationTests(TestCase):
    timeout = 60

    async def until(self, condition: Any, limit: float, what: str) -> float:
        """Wait (polling) until ``condition()``; seconds it took."""
        t0 = time.monotonic()
        while not condition():
            if time.monotonic() - t0 > limit:
                self.fail(f"{what}: not within {limit} s")
            await deferLater(reactor, 0.01)
        return time.monotonic() - t0

    def marker(self) -> str:
        return f"ipa-twisted-cancel-{os.getpid()}-{id(self)}"

    def agent(self, **cli: Any) -> AgentService:
        config = load_config({"listen_host": "127.0.0.1",
                              "listen_port": str(free_port()),
                              "run_dir": self.mktemp(), **cli}, cmdline="")

        def registrar(context: Any, outbound: Any) -> Registrar:
            return Registrar(context, outbound, interfaces=lambda: [
                NetworkInterface(name="eth0",
                                 mac_address="52:54:00:12:34:56")])

        agent = AgentService(config, reactor, exit_on_fatal=False,
                             hardware=HardwareManagers(
                                 [FakeHardwareManager()]),
                             registrar=registrar)
        return agent

    async def test_tool_run(self) -> None:
        before = Leftovers()
        marker = self.marker()
        runner = ProcessRunner(reactor, reactor)
        self.addCleanup(runner.stop)
        d = runner.run(["sh", "-c", f"sleep 30 & sleep 31; : {marker}"],
                       timeout=60)
        await self.until(lambda: len(running(marker)) == 1, 10, "started")
        await deferLater(reactor, 0.1)     # sh has forked its sleeps
        t0 = time.monotonic()
        d.cancel()
        with self.assertRaises(CancelledError):
            await d
        await runner.stop()
        self.assertLess(time.monotonic() - t0, PROMPT)
        await self.until(lambda: not running(marker), PROMPT, "processes")
        self.assertEqual(before.left(), NOTHING)

    async def test_command(self) -> None:
        import treq
        from twisted.web.client import Agent, HTTPConnectionPool

        agent = self.agent(standalone="true", agent_token=TOKEN)
        before = Leftovers()
        marker = self.marker()
        agent.startService()
        await agent.when_ready()
        assert agent.runner is not None
        agent.runner._extensions["sleeper"] = Sleeper(agent.context, marker)
        http = treq.client.HTTPClient(Agent(
            reactor, pool=HTTPConnectionPool(reactor, persistent=False)))
        response = await http.post(
            f"http://127.0.0.1:{agent.config.listen_port}/v1/commands/"
            f"?agent_token={TOKEN}",
            json={"name": "sleeper.nap", "params": {}})
        self.assertEqual(response.code, 200)
        await response.content()
        await self.until(lambda: len(running(marker)) == 1, 10, "started")
        await deferLater(reactor, 0.1)
        t0 = time.monotonic()
        await agent.stopService()
        self.assertLess(time.monotonic() - t0, PROMPT)
        command, = agent.runner.list()
        self.assertEqual(command.status, "FAILED")
        self.assertIn("cancelled", command.error["details"])  # type: ignore
        await self.until(lambda: not running(marker), PROMPT, "processes")
        await self.until(lambda: before.left()["sockets"] <= 0, PROMPT,
                         "sockets")
        self.assertEqual(before.left(), NOTHING)
        # and the API is closed
        with self.assertRaises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1",
                                      agent.config.listen_port), 1).close()

    async def test_lookup(self) -> None:
        Silent.open = 0
        ironic = reactor.listenTCP(0, Factory.forProtocol(Silent),
                                   interface="127.0.0.1")
        self.addCleanup(ironic.stopListening)
        url = f"http://127.0.0.1:{ironic.getHost().port}"
        agent = self.agent(api_url=url, ironic_api_version="1.68",
                           advertise_host="127.0.0.1",
                           interface_wait_timeout="0")
        before = Leftovers()
        agent.startService()
        outcome: list[Any] = []
        agent.when_ready().addBoth(outcome.append)
        await self.until(lambda: Silent.open == 1, 10, "the lookup request")
        t0 = time.monotonic()
        await agent.stopService()
        self.assertLess(time.monotonic() - t0, PROMPT)
        self.assertTrue(outcome[0].check(CancelledError), outcome)
        await self.until(lambda: Silent.open == 0, PROMPT, "connections")
        await self.until(lambda: before.left()["sockets"] <= 0, PROMPT,
                         "sockets")
        self.assertEqual(before.left(), NOTHING)
        # no second request (a retry) later either
        await deferLater(reactor, 1.5)
        self.assertEqual(Silent.open, 0)
        self.assertEqual(before.left(), NOTHING)


__all__ = ["CancellationTests", "Deferred"]
