"""The burn-in steps for real: a sandboxed standalone agent runs stress-ng
(cpu, vm) and fio (on its loop device, the only disk it may see) through
its API, as Ironic's manual cleaning would; short runs, few bytes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from typing import Any
from unittest import SkipTest

from twisted.internet.defer import CancelledError, ensureDeferred
from twisted.internet.task import deferLater
from twisted.trial.unittest import SynchronousTestCase, TestCase

from tests.integration import agent_api
from tests.integration import harness as h
from tests.integration.base import SandboxTestCase, unavailable

TOKEN = "b" * 40
MiB = 1024 ** 2


class LoopBurninTests(SandboxTestCase):
    disk_size = 64 * MiB

    def setUp(self) -> None:
        super().setUp()
        self.agent = h.Agent(self.cleanups, self.netns, self.workdir,
                             self.device, None,
                             ["--standalone", "--agent-token", TOKEN,
                              "--listen-host", "127.0.0.1"])
        self.agent.wait_for_log("agent API listening", 60)
        steps = agent_api.command(self.netns, TOKEN, "clean.get_clean_steps",
                                  node={}, ports=[])
        self.versions = steps["command_result"]["hardware_manager_version"]
        self.steps = {s["step"]: s for s in steps["command_result"][
            "clean_steps"]["GenericHardwareManager"]}

    def start(self, step: str, info: dict[str, Any]) -> str:
        status, _, body = agent_api.call(
            self.netns, "POST", f"/v1/commands/?agent_token={TOKEN}",
            {"name": "clean.execute_clean_step", "params": {
                "step": {"step": step, "interface": "deploy"},
                "node": {"uuid": "n", "driver_info": info},
                "ports": [], "clean_version": self.versions}})
        self.assertEqual(status, 200, body)
        return str(body["id"])

    def wait(self, command_id: str, timeout: float = 120
             ) -> tuple[dict[str, Any], list[Any]]:
        seen = []
        deadline = time.monotonic() + timeout
        while True:
            _, _, body = agent_api.call(
                self.netns, "GET",
                f"/v1/commands/{command_id}?agent_token={TOKEN}")
            if body["command_status"] != "RUNNING":
                return body, seen
            if body["command_result"]:
                seen.append(body["command_result"]["progress"])
            if time.monotonic() > deadline:
                raise AssertionError(f"still running: {body}")
            time.sleep(0.3)

    def test_burnin_cpu_and_memory(self) -> None:
        for name in ("burnin_cpu", "burnin_memory", "burnin_disk",
                     "burnin_network", "burnin_gpu"):
            self.assertEqual(self.steps[name]["priority"], 0)
            self.assertTrue(self.steps[name]["abortable"])
        t0 = time.monotonic()
        done, seen = self.wait(self.start("burnin_cpu", {
            "agent_burnin_cpu_timeout": 2, "agent_burnin_cpu_cpu": 1}))
        took = time.monotonic() - t0
        self.assertEqual(done["command_status"], "SUCCEEDED", done)
        metrics = done["command_result"]["clean_result"]["metrics"]
        h.say(f"burnin_cpu 2 s: {took:.1f} s; {metrics}; progress seen: "
              f"{seen[-1] if seen else None}")
        self.assertGreater(metrics["cpu"]["bogo_ops"], 0)
        self.assertGreaterEqual(metrics["cpu"]["real_time_s"], 1.9)
        self.assertIn("stress-ng (cpu) running",
                      {p["phase"] for p in seen})

        done, _ = self.wait(self.start("burnin_memory", {
            "agent_burnin_vm_timeout": "2", "agent_burnin_vm_vm": 1,
            "agent_burnin_vm_vm-bytes": "16M"}))
        self.assertEqual(done["command_status"], "SUCCEEDED", done)
        metrics = done["command_result"]["clean_result"]["metrics"]
        h.say(f"burnin_memory 2 s, 16M: {metrics}")
        self.assertGreater(metrics["vm"]["bogo_ops"], 0)
        log = self.agent.read_log()
        self.assertIn("stress-ng --vm 1 --timeout 2 --vm-bytes 16M "
                      "--metrics-brief", log)
        self.assertIn("successful run completed", log)

        # a value stress-ng cannot use: FAILED, in stress-ng's words
        done, _ = self.wait(self.start("burnin_memory", {
            "agent_burnin_vm_timeout": "2", "agent_burnin_vm_vm": 1,
            "agent_burnin_vm_vm-bytes": "99999T"}))
        self.assertEqual(done["command_status"], "FAILED", done)
        error = done["command_error"]
        h.say(f"burnin_memory with 99999T: {error}")
        self.assertEqual(error["type"], "CommandExecutionError")
        self.assertIn("stress-ng (vm) failed", error["details"])

    def test_burnin_disk_on_the_loop_device(self) -> None:
        with open(self.device, "rb") as f:
            before = f.read(MiB)
        t0 = time.monotonic()
        done, _ = self.wait(self.start("burnin_disk", {
            "agent_burnin_fio_disk_loops": 1}))
        took = time.monotonic() - t0
        self.assertEqual(done["command_status"], "SUCCEEDED", done)
        devices = done["command_result"]["clean_result"]["devices"]
        h.say(f"burnin_disk of {self.disk_size // MiB} MiB, 1 loop: "
              f"{took:.1f} s; {devices}")
        # only the allow-listed loop device, nothing of this machine's
        self.assertEqual(list(devices), [self.device])
        self.assertEqual((devices[self.device]["err"],
                          devices[self.device]["io_errors"]), (0, 0))
        self.assertIn("write", devices[self.device])
        with open(self.device, "rb") as f:
            self.assertNotEqual(f.read(MiB), before)   # fio wrote it
        self.assertIn(f"--name {self.device} --filename {self.device}",
                      self.agent.read_log())

    def test_burnin_disk_fails_on_a_read_only_disk(self) -> None:
        subprocess.run(["blockdev", "--setro", self.device], check=True)
        self.addCleanup(subprocess.run, ["blockdev", "--setrw", self.device],
                        check=True)
        done, _ = self.wait(self.start("burnin_disk", {
            "agent_burnin_fio_disk_loops": 1}))
        self.assertEqual(done["command_status"], "FAILED", done)
        error = done["command_error"]
        h.say(f"burnin_disk on a read-only disk: {error['details'][:300]}")
        self.assertEqual(error["type"], "CommandExecutionError")
        self.assertIn("fio (disk) failed", error["details"])
        self.assertTrue(os.path.exists(self.device))


class NetworkBurninTests(SandboxTestCase):
    """Two sandboxed agents in one network namespace, paired statically
    (``agent_burnin_fio_network_config``) over loopback: each writes, then
    reads (the roles swap)."""

    disk_size = 16 * MiB

    def agent(self, name: str, port: int) -> None:
        h.Agent(self.cleanups, self.netns, self.workdir, self.device, None,
                ["--standalone", "--agent-token", TOKEN, "--listen-host",
                 "127.0.0.1", "--listen-port", str(port)], name=name
                ).wait_for_log("agent API listening", 60)

    def start(self, port: int, role: str) -> str:
        steps = agent_api.call(
            self.netns, "POST", f"/v1/commands/?wait=true&agent_token={TOKEN}",
            {"name": "clean.get_clean_steps", "params": {
                "node": {}, "ports": []}}, port=port)[2]
        status, _, body = agent_api.call(
            self.netns, "POST", f"/v1/commands/?agent_token={TOKEN}",
            {"name": "clean.execute_clean_step", "params": {
                "step": {"step": "burnin_network", "interface": "deploy"},
                "node": {"uuid": role, "driver_info": {
                    "agent_burnin_fio_network_runtime": 2,
                    "agent_burnin_fio_network_pairing_timeout": 120,
                    "agent_burnin_fio_network_config": {
                        "role": role, "partner": "127.0.0.1"}}},
                "ports": [], "clean_version": steps["command_result"][
                    "hardware_manager_version"]}}, port=port)
        self.assertEqual(status, 200, body)
        return str(body["id"])

    def wait(self, port: int, command_id: str, timeout: float = 180
             ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            _, _, body = agent_api.call(
                self.netns, "GET",
                f"/v1/commands/{command_id}?agent_token={TOKEN}", port=port)
            if body["command_status"] != "RUNNING":
                return dict(body)
            if time.monotonic() > deadline:
                raise AssertionError(f"still running: {body}")
            time.sleep(0.5)

    def test_two_agents_write_and_read_each_way(self) -> None:
        self.agent("writer", 9999)
        self.agent("reader", 9998)
        t0 = time.monotonic()
        writer = self.start(9999, "writer")
        reader = self.start(9998, "reader")
        done = {role: self.wait(port, command) for role, port, command in (
            ("writer", 9999, writer), ("reader", 9998, reader))}
        took = time.monotonic() - t0
        for role, body in done.items():
            self.assertEqual(body["command_status"], "SUCCEEDED", body)
        first = done["writer"]["command_result"]["clean_result"]
        second = done["reader"]["command_result"]["clean_result"]
        h.say(f"burnin_network 2 s each way on loopback: {took:.1f} s; "
              f"writer-first agent: {first}; reader-first agent: {second}")
        self.assertEqual((first["role"], second["role"]),
                         ("writer", "reader"))
        self.assertEqual(first["first"]["writer"]["err"], 0)
        self.assertEqual(first["second"]["reader"]["err"], 0)
        self.assertEqual(second["first"]["reader"]["err"], 0)
        self.assertEqual(second["second"]["writer"]["err"], 0)
        self.assertIn("BW=", second["first"]["reader"]["read"])


TOOZ_PAIRING = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                            "tooz_pairing.py")


class ToozPairingTests(SynchronousTestCase):
    """Dynamic pairing through a real tooz backend (its ``file://``
    driver, in a scratch directory): two of our nodes pair.  tooz comes
    from IPA's cached virtualenv: the agent does not depend on it (without
    it the step says so).

    Not tested: pairing one of ours with an ironic-python-agent 13.0.0
    node.  IPA's own pairing cannot run on tooz's file driver (it asks for
    ``get_lock("group_lock")`` with a str, which that driver decodes:
    AttributeError), and no other tooz backend (ZooKeeper, etcd, Redis)
    runs here."""

    def setUp(self) -> None:
        try:
            self.ipa = h.ipa_venv()
        except h.Unavailable as e:
            unavailable(e)
        self.url = "file://" + os.path.abspath(self.mktemp())
        os.makedirs(self.url[len("file://"):])
        here = os.path.dirname(os.path.abspath(__file__))
        self.ours_path = [os.path.dirname(os.path.dirname(here))] + [
            p for p in sys.path if p.endswith("site-packages")]

    def node(self, which: str, member: str = "") -> subprocess.Popen[str]:
        argv = [os.path.join(self.ipa, "bin", "python"), TOOZ_PAIRING, which]
        if which == "ours":
            argv += [member, self.url, "burnin", "60", *self.ours_path]
        else:
            argv += [self.url, "burnin", "60"]
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        self.addCleanup(h.stop_process, proc)
        return proc

    def pair(self, first: tuple[str, str], second: tuple[str, str]
             ) -> tuple[dict[str, str], dict[str, str]]:
        a = self.node(*first)
        time.sleep(3)           # the first has joined the group
        b = self.node(*second)
        found = []
        for proc in (a, b):
            out, err = proc.communicate(timeout=90)
            self.assertEqual(proc.returncode, 0, err[-2000:])
            found.append(json.loads(out))
        return found[0], found[1]

    def test_two_of_ours(self) -> None:
        first, second = self.pair(("ours", "node-a"), ("ours", "node-b"))
        self.assertEqual(first, {"partner": "node-b", "role": "writer"})
        self.assertEqual(second, {"partner": "node-a", "role": "reader"})


def stress_ng_pids() -> set[int]:
    """Live (not zombie) processes whose name starts with stress-ng (the
    workers rename themselves: stress-ng-cpu ...)."""
    found = set()
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        comm = stat[stat.index("(") + 1:stat.rindex(")")]
        state = stat.rsplit(")", 1)[1].split()[0]
        if comm.startswith("stress-ng") and state != "Z":
            found.add(int(name))
    return found


class CancelBurninTests(TestCase):
    """Cancelling a running burn-in (the agent stopping, the command
    cancelled) ends stress-ng and the workers it forked, at once: real
    reactor, real process runner, no sandbox needed (no disk)."""

    timeout = 60

    async def test_cancel_stops_stress_ng_and_its_workers(self) -> None:
        from twisted.internet import reactor

        from ipa_twisted.config import load_config
        from ipa_twisted.context import RunningAgent
        from ipa_twisted.hardware import burnin
        from ipa_twisted.hardware.disks import DeviceGuard
        from ipa_twisted.process import ProcessRunner

        if shutil.which("stress-ng") is None:
            raise SkipTest("stress-ng is not installed")
        runner = ProcessRunner(reactor, reactor)
        self.addCleanup(runner.stop)
        agent = RunningAgent(config=load_config(), reactor=reactor,
                             process=runner, guard=DeviceGuard([]))
        before = stress_ng_pids()
        d = ensureDeferred(burnin.stress_ng(agent, {"driver_info": {
            "agent_burnin_cpu_cpu": 2, "agent_burnin_cpu_timeout": 600}},
            "burnin_cpu", "cpu"))
        t0 = time.monotonic()
        while len(stress_ng_pids() - before) < 3:      # parent + 2 workers
            if time.monotonic() - t0 > 20:
                self.fail(f"stress-ng did not start: {stress_ng_pids()}")
            await deferLater(reactor, 0.05)
        started = stress_ng_pids() - before
        t0 = time.monotonic()
        d.cancel()
        with self.assertRaises(CancelledError):
            await d
        while stress_ng_pids() & started:
            if time.monotonic() - t0 > 5:
                self.fail(f"left running: {stress_ng_pids() & started}")
            await deferLater(reactor, 0.05)
        took = time.monotonic() - t0
        h.say(f"burnin_cpu cancelled: {len(started)} stress-ng processes "
              f"gone in {took:.2f} s")
        self.assertEqual(agent.progress.text(),  # type: ignore[union-attr]
                         "burnin_cpu cancelled")
