"""The burn-in steps in memory: the tools are fakes that answer with the
real outputs captured in tests/fixtures/burnin (with their exit codes);
the clock is a task.Clock.  The real tools run in
tests/integration/test_burnin.py (in the sandbox, on a loop device)."""

from __future__ import annotations

import json
import os
from typing import Any, Callable, Mapping, Sequence

from twisted.internet.defer import (
    CancelledError,
    Deferred,
    ensureDeferred,
    maybeDeferred,
)
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from ipa_twisted import errors
from ipa_twisted.config import load_config
from ipa_twisted.context import RunningAgent
from ipa_twisted.hardware import burnin
from ipa_twisted.hardware.disks import BlockDevice, DeviceGuard
from ipa_twisted.hardware.generic import GenericHardwareManager
from ipa_twisted.process import ProcessResult
from ipa_twisted.testing import FakeProcessRunner
from tests.fixtures import HERE, load

DISK = "/dev/loop1"     # the device of the captured fio runs


def exit_code(name: str) -> int:
    with open(os.path.join(HERE, "burnin", name + ".stdout"),
              encoding="utf-8") as f:
        for line in f:
            if line.startswith("# exit code:"):
                return int(line.split(":")[1])
    raise AssertionError(f"no exit code in {name}")


def captured(name: str) -> Callable[[Sequence[str]], ProcessResult]:
    """A fake tool answering with the capture ``name`` (its output and
    exit code)."""
    out = load("burnin", name + ".stdout").encode()
    err = load("burnin", name + ".stderr").encode()
    code = exit_code(name)
    return lambda argv: ProcessResult(tuple(argv), code, out, err)


class Runner(FakeProcessRunner):
    """Records each call's timeout too."""

    def __init__(self) -> None:
        super().__init__()
        self.timeouts: list[float] = []

    def run(self, argv: Sequence[str], timeout: float = 60.0,
            check: bool = True, stdin: bytes | None = None,
            env: Mapping[str, str] | None = None
            ) -> "Deferred[ProcessResult]":
        self.timeouts.append(timeout)
        return super().run(argv, timeout, check, stdin, env)


class Context(RunningAgent):
    def in_thread(self, func: Callable[..., Any], *args: Any,
                  **kwargs: Any) -> Deferred[Any]:
        return maybeDeferred(func, *args, **kwargs)


class Manager(GenericHardwareManager):
    """The generic manager with a fixed list of disks (as lsblk would
    give them, before the allow-list)."""

    def __init__(self, disks: list[BlockDevice]) -> None:
        super().__init__()
        self.disks = disks

    async def list_block_devices(self, include_partitions: bool = False
                                 ) -> list[BlockDevice]:
        return list(self.disks)


def node(**info: Any) -> dict[str, Any]:
    return {"uuid": "u", "driver_info": info}


class BurninCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.process = Runner()
        self.progress: list[dict[str, Any]] = []
        self.allow = [DISK]
        self.disks = [BlockDevice(name=DISK, model=None, size=32 << 20,
                                  rotational=False)]

    def manager(self) -> Manager:
        context = Context(config=load_config(), reactor=self.clock,
                          process=self.process, guard=DeviceGuard(self.allow))
        context.on_progress_change = lambda p: self.progress.append(
            {"text": p.text(), "status": getattr(p, "agent_status", None),
             **p.snapshot()})
        manager = Manager(self.disks)
        manager.agent = self.context = context
        return manager

    def step(self, name: str, the_node: Any) -> Deferred[Any]:
        return ensureDeferred(getattr(self.manager(), name)(the_node, []))


class StressNgTests(BurninCase):
    def test_cpu_argv_defaults_are_ipas(self) -> None:
        self.assertEqual(burnin.stress_ng_argv({}, "cpu"), (
            ["stress-ng", "--cpu", "0", "--timeout", "86400",
             "--metrics-brief"], 86400))

    def test_memory_argv_from_driver_info(self) -> None:
        self.assertEqual(burnin.stress_ng_argv({
            "agent_burnin_vm_vm": "2", "agent_burnin_vm_vm-bytes": "16M",
            "agent_burnin_vm_timeout": "10m",
            "agent_burnin_vm_outputfile": "/var/log/vm.log"}, "vm"), (
            ["stress-ng", "--vm", "2", "--timeout", "10m", "--vm-bytes",
             "16M", "--metrics-brief", "--log-file", "/var/log/vm.log"],
            600))
        self.assertEqual(burnin.stress_ng_argv({}, "vm")[0], [
            "stress-ng", "--vm", "0", "--timeout", "86400", "--vm-bytes",
            "98%", "--metrics-brief"])

    def test_burnin_cpu_runs_stress_ng(self) -> None:
        self.process.handlers["stress-ng"] = captured("stress-ng-cpu")
        result = self.successResultOf(self.step("burnin_cpu", node(
            agent_burnin_cpu_timeout=2, agent_burnin_cpu_cpu=1)))
        self.assertEqual(self.process.calls, [(
            "stress-ng", "--cpu", "1", "--timeout", "2",
            "--metrics-brief")])
        # the runner's deadline: the run's length and a grace period
        self.assertEqual(self.process.timeouts, [2 + burnin.GRACE])
        self.assertEqual(result, {"tool": "stress-ng", "metrics": {
            "cpu": {"bogo_ops": 2846, "real_time_s": 2.0,
                    "bogo_ops_per_s": 1422.96}}})
        self.assertEqual(self.progress[0]["status"], "start")
        self.assertEqual(self.progress[-1]["status"], "end")
        self.assertEqual(self.progress[-1]["text"],
                         "burnin_cpu passed in 0 s")

    def test_burnin_memory_runs_the_vm_stressor(self) -> None:
        self.process.handlers["stress-ng"] = captured("stress-ng-vm")
        result = self.successResultOf(self.step("burnin_memory", node(**{
            "agent_burnin_vm_timeout": "2", "agent_burnin_vm_vm": 1,
            "agent_burnin_vm_vm-bytes": "16M"})))
        self.assertEqual(self.process.calls, [(
            "stress-ng", "--vm", "1", "--timeout", "2", "--vm-bytes", "16M",
            "--metrics-brief")])
        self.assertEqual(result["metrics"]["vm"]["bogo_ops"], 88078)

    def test_stress_ng_failure_fails_the_step_with_its_words(self) -> None:
        self.process.handlers["stress-ng"] = captured(
            "stress-ng-vm-bad-bytes")
        failure = self.failureResultOf(self.step("burnin_memory", node(**{
            "agent_burnin_vm_timeout": "2"})), burnin.BurninError)
        error = failure.value
        self.assertEqual(error.serialize()["type"], "CommandExecutionError")
        self.assertEqual(error.exit_code, 1)
        self.assertIn("stress-ng (vm) failed: exit code 1", error.details)
        self.assertIn("Cannot determine lots cache size", error.details)
        self.assertEqual(self.progress[-1]["status"], "end")
        self.assertTrue(self.progress[-1]["text"].startswith(
            "burnin_memory FAILED: "), self.progress[-1])

    def test_missing_stress_ng_fails_the_step(self) -> None:
        failure = self.failureResultOf(self.step("burnin_cpu", node()),
                                       burnin.BurninError)
        self.assertIn("stress-ng (cpu) failed: command not found",
                      str(failure.value))

    def test_bad_values_are_refused_before_any_tool_runs(self) -> None:
        for name, info in (
                ("burnin_cpu", {"agent_burnin_cpu_timeout": "-1"}),
                ("burnin_cpu", {"agent_burnin_cpu_timeout": "1 hour"}),
                ("burnin_cpu", {"agent_burnin_cpu_cpu": "all"}),
                ("burnin_cpu", {"agent_burnin_cpu_cpu": True}),
                ("burnin_memory", {"agent_burnin_vm_vm-bytes": "--help"}),
                ("burnin_memory", {"agent_burnin_vm_outputfile": "-x"}),
                # (a report written over a disk, or a kernel file)
                ("burnin_disk", {"agent_burnin_fio_disk_outputfile":
                                 "/dev/sda"}),
                ("burnin_network", {"agent_burnin_fio_network_outputfile":
                                    "/sys/block/sda/../../x"}),
                ("burnin_cpu", {"agent_burnin_cpu_outputfile": "/tmp"}),
                ("burnin_disk", {"agent_burnin_fio_disk_loops": 0}),
                ("burnin_gpu", {"agent_burnin_gpu_install_dir": "gpu"}),
                ("burnin_gpu", {"agent_burnin_gpu_memory": "lots"})):
            failure = self.failureResultOf(self.step(name, node(**info)),
                                           errors.CleaningError)
            key = next(iter(info))
            self.assertIn(key, str(failure.value))
        self.assertEqual(self.process.calls, [])

    def test_cancelling_the_step_stops_the_tool(self) -> None:
        cancelled: list[Deferred[ProcessResult]] = []

        def hang(argv: Sequence[str]) -> Deferred[ProcessResult]:
            # the process runner's canceller kills the tool's group
            return Deferred(cancelled.append)

        self.process.handlers["stress-ng"] = hang
        d = self.step("burnin_cpu", node())
        self.assertNoResult(d)
        self.assertEqual(cancelled, [])
        d.cancel()
        self.failureResultOf(d, CancelledError)
        self.assertEqual(len(cancelled), 1)
        self.assertEqual(self.progress[-1]["text"], "burnin_cpu cancelled")

    def test_progress_while_running(self) -> None:
        self.process.handlers["stress-ng"] = lambda argv: Deferred()
        d = self.step("burnin_cpu", node(agent_burnin_cpu_timeout="1h"))
        self.clock.advance(90)
        manager_progress = self.progress[-1]
        self.assertEqual(manager_progress["status"], "start")
        self.assertEqual(manager_progress["phase"], "stress-ng (cpu) running")
        self.assertEqual(manager_progress["planned_s"], 3600)
        # what the next heartbeat says
        self.assertEqual(self.context.progress.text(),  # type: ignore
                         "burnin_cpu: stress-ng (cpu) running, 90 s of "
                         "~3600 s")
        d.cancel()
        self.failureResultOf(d, CancelledError)


class FioDiskTests(BurninCase):
    def test_argv_is_ipas_one_job_per_disk(self) -> None:
        argv, runtime = burnin.fio_disk_argv({}, ["/dev/sda", "/dev/sdb"])
        self.assertEqual(argv, [
            "fio", "--rw", "readwrite", "--bs", "4k", "--direct", "1",
            "--ioengine", "libaio", "--iodepth", "32", "--verify", "crc32c",
            "--verify_dump", "1", "--continue_on_error", "verify",
            "--loops", "4", "--runtime", "0", "--time_based",
            "--name", "/dev/sda", "--filename", "/dev/sda",
            "--name", "/dev/sdb", "--filename", "/dev/sdb"])
        self.assertIsNone(runtime)
        argv, runtime = burnin.fio_disk_argv({
            "agent_burnin_fio_disk_loops": "1",
            "agent_burnin_fio_disk_runtime": "2h",
            "agent_burnin_fio_disk_outputfile": "/tmp/fio.json"}, ["/dev/x"])
        self.assertEqual(argv[argv.index("--loops"):], [
            "--loops", "1", "--runtime", "2h", "--time_based",
            "--output-format", "json", "--output", "/tmp/fio.json",
            "--name", "/dev/x", "--filename", "/dev/x"])
        self.assertEqual(runtime, 7200)

    def test_burnin_disk_runs_fio_on_the_allowed_disk(self) -> None:
        self.process.handlers["fio"] = captured("fio-disk")
        result = self.successResultOf(self.step("burnin_disk", node(
            agent_burnin_fio_disk_loops=1)))
        self.assertEqual(self.process.calls[-1][-4:],
                         ("--name", DISK, "--filename", DISK))
        self.assertEqual(result, {"tool": "fio", "devices": {DISK: {
            "err": 0, "io_errors": 0,
            "read": "IOPS=29.0k, BW=113MiB/s",
            "write": "IOPS=20.7k, BW=80.9MiB/s"}}})
        # no runtime: the loops decide; the deadline is at least an hour
        self.assertEqual(self.process.timeouts, [3600 + burnin.GRACE])
        self.assertEqual(self.progress[-1]["text"],
                         "burnin_disk passed in 0 s")

    def test_runtime_sets_the_deadline(self) -> None:
        self.process.handlers["fio"] = captured("fio-disk")
        self.successResultOf(self.step("burnin_disk", node(
            agent_burnin_fio_disk_runtime="2h")))
        self.assertEqual(self.process.timeouts, [7200 + burnin.GRACE])

    def test_a_disk_the_allow_list_refuses_is_never_touched(self) -> None:
        """The guard is asked right before fio, whatever the disk list
        says (the list itself is filtered by it already)."""
        self.process.handlers["fio"] = captured("fio-disk")
        self.disks.append(BlockDevice(name="/dev/sda", model=None,
                                      size=1 << 40, rotational=True))
        self.failureResultOf(self.step("burnin_disk", node()),
                             errors.DeviceNotAllowed)
        self.assertEqual(self.process.calls, [])

    def test_skip_block_devices_are_not_burnt_in(self) -> None:
        self.process.handlers["fio"] = captured("fio-disk")
        self.allow.append("/dev/sdz")
        self.disks.append(BlockDevice(name="/dev/sdz", model=None,
                                      size=1 << 30, rotational=True,
                                      serial="KEEP"))
        the_node = node()
        the_node["properties"] = {"skip_block_devices": [{"serial": "KEEP"}]}
        self.successResultOf(self.step("burnin_disk", the_node))
        self.assertNotIn("/dev/sdz", self.process.calls[-1])

    def test_no_disks(self) -> None:
        self.disks.clear()
        self.assertEqual(self.successResultOf(
            self.step("burnin_disk", node())), {})
        self.assertEqual(self.process.calls, [])

    def test_fio_failure_fails_the_step(self) -> None:
        self.process.handlers["fio"] = captured("fio-disk-read-only")
        failure = self.failureResultOf(self.step("burnin_disk", node()),
                                       burnin.BurninError)
        self.assertIn("fio (disk) failed: exit code 1", failure.value.details)
        self.assertIn("Operation not permitted", failure.value.details)

    def test_job_errors_are_read_from_fios_report(self) -> None:
        """A job error fio reports fails the step even if fio's exit
        status does not say so (parsed from the real output)."""
        jobs = burnin.fio_jobs(load("burnin", "fio-disk-read-only.stdout"))
        self.assertEqual(jobs[DISK]["err"], 1)
        self.assertEqual(burnin.fio_jobs(load("burnin", "fio-disk.stdout"))[
            DISK]["err"], 0)

    def test_json_report(self) -> None:
        """With agent_burnin_fio_disk_outputfile fio writes JSON there:
        the step reads its verdict from it."""
        report = self.mktemp()
        with open(report, "w") as f:
            f.write(load("burnin", "fio-disk-json-report.stdout"))
        self.process.handlers["fio"] = captured("fio-disk-json-report")
        result = self.successResultOf(self.step("burnin_disk", node(
            agent_burnin_fio_disk_outputfile=report)))
        job = result["devices"][DISK]
        self.assertEqual((job["err"], job["io_errors"]), (0, 0))
        self.assertTrue(job["read"].startswith("IOPS="), job)
        bad = json.loads(load("burnin", "fio-disk-json-report.stdout"
                              ).split("\n", 1)[1])
        bad["jobs"][0]["error"] = 5
        with open(report, "w") as f:
            json.dump(bad, f)
        failure = self.failureResultOf(self.step("burnin_disk", node(
            agent_burnin_fio_disk_outputfile=report)), burnin.BurninError)
        self.assertIn(f"{DISK}: err=5", failure.value.details)

    def test_smart_status_of_a_device_without_ata_smart(self) -> None:
        """smartctl -ja of a loop device (real): no self-test status, so
        the device is not checked and the step passes (as IPA)."""
        self.process.handlers["fio"] = captured("fio-disk")
        self.process.add("smartctl")
        self.process.handlers["smartctl"] = lambda argv: (
            ProcessResult(tuple(argv), 0, b"", b"") if "-t" in argv
            else captured("smartctl-ja-loop")(argv))
        self.assertIsNone(burnin.smart_self_test_status(
            load("burnin", "smartctl-ja-loop.stdout")))
        self.successResultOf(self.step("burnin_disk", node(
            agent_burnin_fio_disk_smart_test=True)))
        self.assertEqual(self.process.calls[1:], [
            ("smartctl", "-t", "long", DISK), ("smartctl", "-ja", DISK)])

    def test_smart_test_that_cannot_start_fails(self) -> None:
        self.process.handlers["fio"] = captured("fio-disk")
        self.process.handlers["smartctl"] = captured("smartctl-ja-loop")
        failure = self.failureResultOf(self.step("burnin_disk", node(
            agent_burnin_fio_disk_smart_test=True)), burnin.BurninError)
        self.assertIn("could not start a SMART self-test on /dev/loop1",
                      failure.value.details)


class FioNetworkTests(BurninCase):
    def test_static_pairing_writer_then_reader(self) -> None:
        answers = [captured("fio-net-writer"), captured("fio-net-reader")]
        self.process.handlers["fio"] = lambda argv: answers.pop(0)(argv)
        d = self.step("burnin_network", node(
            agent_burnin_fio_network_runtime=2,
            agent_burnin_fio_network_config={"role": "writer",
                                             "partner": "127.0.0.1"}))
        # the writer at once, then the reader gives the other side's
        # writer time to listen
        self.assertEqual(len(self.process.calls), 1)
        self.assertEqual(self.progress[-1]["phase"],
                         "reader waiting for 127.0.0.1")
        self.clock.advance(burnin.READER_SETTLE)
        result = self.successResultOf(d)
        common = ("fio", "--ioengine", "net", "--port", "9000",
                  "--fill_device", "1", "--group_reporting", "--gtod_reduce",
                  "1", "--numjobs", "16")
        self.assertEqual(self.process.calls, [
            common + ("--name", "writer", "--rw", "write", "--runtime", "2",
                      "--time_based", "--listen"),
            common + ("--name", "reader", "--rw", "read", "--hostname",
                      "127.0.0.1")])
        self.assertEqual(result["role"], "writer")
        self.assertEqual(result["first"]["writer"]["err"], 0)
        self.assertEqual(result["second"]["reader"]["read"],
                         "IOPS=536k, BW=16.3Gibit/s")

    def test_the_reader_waits_for_its_writer(self) -> None:
        """fio's exit status 16 (connection refused: the writer is not
        listening yet) makes the reader try again 30 s later."""
        answers = [captured("fio-net-reader-refused"),
                   captured("fio-net-reader"), captured("fio-net-writer")]
        self.process.handlers["fio"] = lambda argv: answers.pop(0)(argv)
        d = self.step("burnin_network", node(
            agent_burnin_fio_network_runtime=2,
            agent_burnin_fio_network_config={"role": "reader",
                                             "partner": "node-2"}))
        self.assertNoResult(d)
        self.assertEqual(len(self.process.calls), 0)
        self.clock.advance(burnin.READER_SETTLE)
        self.assertEqual(len(self.process.calls), 1)
        self.assertEqual(self.progress[-1]["phase"],
                         "reader waiting for node-2")
        self.clock.advance(burnin.READER_RETRY - 0.1)
        self.assertEqual(len(self.process.calls), 1)
        self.clock.advance(0.1)
        result = self.successResultOf(d)
        self.assertEqual(self.process.calls[0], self.process.calls[1])
        self.assertEqual(result["first"]["reader"],
                         burnin.fio_jobs(load("burnin",
                                              "fio-net-reader.stdout"))
                         ["reader"])

    def test_the_reader_gives_up_at_the_pairing_timeout(self) -> None:
        self.process.handlers["fio"] = captured("fio-net-reader-refused")
        d = self.step("burnin_network", node(
            agent_burnin_fio_network_pairing_timeout=60,
            agent_burnin_fio_network_config={"role": "reader",
                                             "partner": "node-2"}))
        self.clock.advance(burnin.READER_SETTLE)
        self.clock.advance(30)
        self.clock.advance(30)
        self.assertNoResult(d)
        self.clock.advance(30)
        failure = self.failureResultOf(d, burnin.BurninError)
        self.assertEqual(failure.value.exit_code, 16)
        self.assertIn("Connection refused", failure.value.details)
        self.assertEqual(len(self.process.calls), 4)

    def test_the_reader_connects_the_streams_that_were_refused(self
                                                                 ) -> None:
        """Some of the writer's ports listened, others not yet (real
        captures: 6 of 16 connected, then the other 10, the 6 served
        ports refused): the reader runs again at once for the rest, and
        stops once every stream has connected; the writer ends."""
        answers = [captured("fio-net-reader-partial"),
                   captured("fio-net-reader-rest"),
                   captured("fio-net-writer-two-readers")]
        self.process.handlers["fio"] = lambda argv: answers.pop(0)(argv)
        d = self.step("burnin_network", node(
            agent_burnin_fio_network_runtime=2,
            agent_burnin_fio_network_config={"role": "reader",
                                             "partner": "node-2"}))
        self.clock.advance(burnin.READER_SETTLE)
        self.assertEqual(len(self.process.calls), 1)
        self.assertEqual(self.progress[-1]["phase"],
                         "reader connecting 10 more streams to node-2")
        self.clock.advance(burnin.READER_REST_RETRY)
        result = self.successResultOf(d)
        self.assertEqual(len(self.process.calls), 3)
        self.assertEqual(self.process.calls[0], self.process.calls[1])
        reader = result["first"]["reader"]
        self.assertEqual((reader["err"], reader["runs"]), (0, 2))
        self.assertRegex(reader["read"],
                         r"^6 streams: IOPS=\S+, BW=\S+; "
                         r"10 streams: IOPS=\S+, BW=\S+$")
        self.assertEqual(result["second"]["writer"]["err"], 0)

    def test_the_reader_counts_the_streams_in_its_json_report(self
                                                               ) -> None:
        """With an output file fio says what failed only in its report:
        read from it; each run its own file."""
        report = self.mktemp()
        with open(report + ".reader", "w", encoding="utf-8") as f:
            f.write(load("burnin",
                         "fio-net-reader-partial-json-report.stdout"))
        answers = [captured("fio-net-reader-partial-json-report"),
                   captured("fio-net-reader"), captured("fio-net-writer")]
        self.process.handlers["fio"] = lambda argv: answers.pop(0)(argv)
        d = self.step("burnin_network", node(
            agent_burnin_fio_network_outputfile=report,
            agent_burnin_fio_network_config={"role": "reader",
                                             "partner": "node-2"}))
        self.clock.advance(burnin.READER_SETTLE)
        self.clock.advance(burnin.READER_REST_RETRY)
        result = self.successResultOf(d)
        self.assertEqual(result["first"], {"outputs": [
            report + ".reader", report + ".reader.2"]})
        self.assertEqual(self.process.calls[0][-4:], (
            "--output-format", "json", "--output", report + ".reader"))
        self.assertEqual(self.process.calls[1][-1], report + ".reader.2")
        self.assertEqual(self.process.calls[2][-1], report + ".writer")
        self.assertEqual(result["second"], {"output": report + ".writer"})

    def test_the_reader_gives_up_with_some_streams_connected(self) -> None:
        answers = [captured("fio-net-reader-partial")]
        self.process.handlers["fio"] = lambda argv: (
            answers.pop(0) if answers else
            captured("fio-net-reader-refused"))(argv)
        d = self.step("burnin_network", node(
            agent_burnin_fio_network_pairing_timeout=60,
            agent_burnin_fio_network_config={"role": "reader",
                                             "partner": "node-2"}))
        self.clock.advance(burnin.READER_SETTLE)
        self.clock.advance(burnin.READER_REST_RETRY)
        # nothing more listens: the long wait
        self.assertEqual(self.progress[-1]["phase"],
                         "reader waiting for node-2")
        self.clock.advance(30)
        self.clock.advance(30)
        failure = self.failureResultOf(d, burnin.BurninError)
        self.assertIn("6 of 16 streams connected to node-2 before the "
                      "pairing timeout", failure.value.details)
        self.assertEqual(failure.value.exit_code, 16)

    def test_a_reader_failing_otherwise_is_not_retried(self) -> None:
        """A run that failed for another reason than a port not listening
        (here, the disk burn-in's read-only failure) is not a partial
        connection: it fails at once."""
        self.process.handlers["fio"] = captured("fio-disk-read-only")
        d = self.step("burnin_network", node(
            agent_burnin_fio_network_config={"role": "reader",
                                             "partner": "node-2"}))
        self.clock.advance(burnin.READER_SETTLE)
        self.failureResultOf(d, burnin.BurninError)
        self.assertEqual(len(self.process.calls), 1)

    def test_unconnected_streams(self) -> None:
        def error(name: str) -> burnin.BurninError:
            result = captured(name)(("fio",))
            return burnin.BurninError("x", result.exit_code, result)
        self.assertEqual(burnin.unconnected_streams(
            error("fio-net-reader-refused"), None), 16)
        self.assertEqual(burnin.unconnected_streams(
            error("fio-net-reader-partial"), None), 10)
        self.assertEqual(burnin.unconnected_streams(
            error("fio-net-reader-rest"), None), 6)
        self.assertIsNone(burnin.unconnected_streams(
            error("fio-disk-read-only"), None))
        # an exit status that does not match the failures it printed
        partial = error("fio-net-reader-partial")
        partial.exit_code = 11
        self.assertIsNone(burnin.unconnected_streams(partial, None))
        self.assertIsNone(burnin.unconnected_streams(
            error("fio-net-reader-partial"), self.mktemp()))   # no report

    def test_a_failing_writer_is_not_retried(self) -> None:
        self.process.handlers["fio"] = captured("fio-net-reader-refused")
        self.failureResultOf(self.step("burnin_network", node(
            agent_burnin_fio_network_config={"role": "writer",
                                             "partner": "node-2"})),
            burnin.BurninError)
        self.assertEqual(len(self.process.calls), 1)

    def test_configuration_errors_are_ipas(self) -> None:
        for info, message in (
                ({}, "fio (network): dynamic pairing config is missing "
                 "agent_burnin_fio_network_pairing_backend_url"),
                ({"agent_burnin_fio_network_config": {
                    "role": "boss", "partner": "x"}},
                 "fio (network) found an unknown role: boss"),
                ({"agent_burnin_fio_network_config": {"role": "reader"}},
                 "fio (network) failed to find partner"),
                ({"agent_burnin_fio_network_config": {
                    "role": "reader", "partner": "--listen"}},
                 "fio (network) failed to find partner")):
            failure = self.failureResultOf(
                self.step("burnin_network", node(**info)),
                errors.CleaningError)
            self.assertEqual(failure.value.details, message)
        self.assertEqual(self.process.calls, [])


class FakeGroups:
    """An in-memory stand-in for a tooz coordination backend (its API as
    Pairing uses it: groups, members, a lock; requests with get())."""

    class Answer:
        def __init__(self, value: Any = None) -> None:
            self.value = value

        def get(self) -> Any:
            return self.value

    class Lock:
        def __init__(self) -> None:
            self.holder: bytes | None = None

    def __init__(self) -> None:
        self.groups: dict[bytes, set[bytes]] = {}
        self.lock = FakeGroups.Lock()
        self.events: list[str] = []

    def coordinator(self, url: str, member: bytes) -> Any:
        groups = self

        class Coordinator:
            def start(self, start_heart: bool = False) -> None:
                groups.events.append(f"{member.decode()} start")

            def stop(self) -> None:
                groups.events.append(f"{member.decode()} stop")

            def create_group(self, name: bytes) -> Any:
                groups.groups.setdefault(name, set())
                return FakeGroups.Answer()

            def get_members(self, name: bytes) -> Any:
                return FakeGroups.Answer(set(groups.groups[name]))

            def join_group(self, name: bytes) -> Any:
                groups.groups[name].add(member)
                groups.events.append(f"{member.decode()} joins")
                return FakeGroups.Answer()

            def leave_group(self, name: bytes) -> Any:
                groups.groups[name].discard(member)
                groups.events.append(f"{member.decode()} leaves")
                return FakeGroups.Answer()

            def get_lock(self, name: bytes) -> Any:
                class Lock:
                    def acquire(self, blocking: bool = True) -> bool:
                        if groups.lock.holder not in (None, member):
                            return False
                        groups.lock.holder = member
                        return True

                    def release(self) -> None:
                        groups.lock.holder = None
                return Lock()

        return Coordinator()


class PairingTests(SynchronousTestCase):
    def pairing(self, groups: FakeGroups, member: str, timeout: float,
                sleep: Callable[[float], None]) -> burnin.Pairing:
        return burnin.Pairing("file:///x", "g", timeout, member,
                              groups.coordinator, sleep, lambda: self.now)

    def setUp(self) -> None:
        self.now = 0.0

    def tick(self, seconds: float) -> None:
        self.now += seconds

    def test_the_first_node_writes(self) -> None:
        groups = FakeGroups()

        def sleep(seconds: float) -> None:
            self.tick(seconds)
            groups.groups[b"g"].add(b"node-b")     # the second node joins

        self.assertEqual(self.pairing(groups, "node-a", 900, sleep).find(),
                         ("node-b", "writer"))
        self.assertEqual(groups.groups[b"g"], {b"node-b"})
        self.assertIsNone(groups.lock.holder)
        self.assertEqual(groups.events, [
            "node-a start", "node-a joins", "node-a leaves", "node-a stop"])

    def test_the_second_node_reads_once_the_first_has_left(self) -> None:
        groups = FakeGroups()
        groups.groups[b"g"] = {b"node-a"}
        seen: list[set[bytes]] = []

        def sleep(seconds: float) -> None:
            self.tick(seconds)
            seen.append(set(groups.groups[b"g"]))
            groups.groups[b"g"].discard(b"node-a")  # the first one leaves
            # the lock stays with the second node meanwhile
            seen.append({groups.lock.holder or b""})

        self.assertEqual(self.pairing(groups, "node-b", 900, sleep).find(),
                         ("node-a", "reader"))
        self.assertEqual(seen, [{b"node-a", b"node-b"}, {b"node-b"}])
        self.assertEqual(groups.groups[b"g"], set())
        self.assertIsNone(groups.lock.holder)

    def test_a_pair_forming_holds_the_others_back(self) -> None:
        groups = FakeGroups()
        groups.lock.holder = b"node-x"

        self.assertRaises(errors.CleaningError, self.pairing(
            groups, "node-c", 5, self.tick).find)
        self.assertNotIn("node-c joins", groups.events)
        self.assertEqual(groups.lock.holder, b"node-x")

    def test_alone_until_the_timeout(self) -> None:
        groups = FakeGroups()
        pairing = self.pairing(groups, "node-a", 10, self.tick)
        with self.assertRaises(errors.CleaningError) as caught:
            pairing.find()
        self.assertEqual(caught.exception.details,
                         "fio (network) timed out to find partner")
        self.assertEqual(groups.groups[b"g"], set())
        self.assertEqual(groups.events[-1], "node-a stop")

    def test_without_tooz_the_step_says_so(self) -> None:
        pairing = burnin.Pairing("zookeeper://zk:2181", "g", 10, "node-a")
        try:
            import tooz  # type: ignore[import-not-found]  # noqa: F401
        except ImportError:
            with self.assertRaises(errors.CleaningError) as caught:
                pairing.find()
            self.assertIn("needs the tooz library", str(caught.exception))
        else:
            raise self.skipTest("tooz is installed here")


class GpuBurnTests(BurninCase):
    def test_gpu_burn_not_installed(self) -> None:
        self.process.handlers["env"] = captured("gpu-burn-missing")
        failure = self.failureResultOf(self.step("burnin_gpu", node(
            agent_burnin_gpu_count=2)), burnin.BurninError)
        self.assertEqual(self.process.calls, [
            ("env", "--chdir=/opt/gpu-burn", "./gpu_burn", "-l")])
        self.assertIn("gpu-burn (list) failed: exit code 125",
                      failure.value.details)
        self.assertIn("cannot change directory to '/opt/gpu-burn'",
                      failure.value.details)

    def test_run_without_count_check(self) -> None:
        self.process.handlers["env"] = captured("gpu-burn-missing")
        self.failureResultOf(self.step("burnin_gpu", node(
            agent_burnin_gpu_timeout="1h", agent_burnin_gpu_memory="1024",
            agent_burnin_gpu_install_dir="/srv/gpu-burn")),
            burnin.BurninError)
        self.assertEqual(self.process.calls, [
            ("env", "--chdir=/srv/gpu-burn", "./gpu_burn", "-m", "1024",
             "1h")])
        self.assertEqual(self.process.timeouts, [3600 + burnin.GRACE])
