"""erase_devices end to end in memory: the disks are files, the tools are
fakes that act on them (or lie: say they erased and leave the data), the
clock is a task.Clock; the parsed outputs are the real captures of
tests/fixtures/erase.  The real thing runs in tests/integration
(test_erase.py: loop devices in the sandbox, QEMU's NVMe disk)."""

from __future__ import annotations

import errno
import functools
import os
from typing import Any, Callable, Sequence

from twisted.internet.defer import Deferred, ensureDeferred, maybeDeferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from ipa_twisted import errors
from ipa_twisted.config import load_config
from ipa_twisted.context import RunningAgent
from ipa_twisted.hardware import erase, erase_check, eraser, overwrite
from ipa_twisted.hardware.disks import BlockDevice, DeviceGuard
from ipa_twisted.hardware.generic import GenericHardwareManager
from ipa_twisted.process import ProcessResult
from ipa_twisted.testing import FakeProcessRunner
from tests.fixtures import load

MiB = 1024 * 1024
SIZE = 8 * MiB


@functools.lru_cache(maxsize=2)
def noise(size: int) -> bytes:
    """Random bytes, the old data on a disk: made once per size (each
    disk is a file of its own, and nothing compares one disk's old data
    with another's), not 8 MiB from os.urandom for every disk."""
    return os.urandom(size)


class Context(RunningAgent):
    """The agent context, with disk I/O run at once (no thread pool)."""

    def in_thread(self, func: Callable[..., Any], *args: Any,
                  **kwargs: Any) -> Deferred[Any]:
        return maybeDeferred(func, *args, **kwargs)


def result(argv: Sequence[str], out: str = "", code: int = 0,
           err: str = "") -> ProcessResult:
    return ProcessResult(tuple(argv), code, out.encode(), err.encode())


class Disks(SynchronousTestCase):
    """Files as disks, a sysfs tree describing them, fake tools."""

    def setUp(self) -> None:
        self.root = os.path.abspath(self.mktemp())
        self.sys = os.path.join(self.root, "sys")
        os.makedirs(self.sys)
        self.clock = Clock()
        self.process = FakeProcessRunner()
        self.process.add("lsblk", "")
        self.process.add("blockdev", "")
        self.progress: list[dict[str, Any]] = []
        self.disks: list[str] = []

    def disk(self, kname: str, size: int = SIZE, loop: bool = False,
             discard: int = 0, ro: str = "0") -> BlockDevice:
        path = os.path.join(self.root, kname)
        with open(path, "wb") as f:
            f.write(noise(size))
        base = os.path.join(self.sys, kname)
        os.makedirs(os.path.join(base, "queue"))
        for name, value in (("queue/discard_max_bytes", str(discard)),
                            ("ro", ro),
                            ("stat", " ".join(["0"] * 17))):
            with open(os.path.join(base, name), "w") as f:
                f.write(value + "\n")
        if loop:
            os.makedirs(os.path.join(base, "loop"))
        self.disks.append(path)
        return BlockDevice(name=path, model=None, size=size,
                           rotational=False, serial=f"S-{kname}")

    def context(self) -> Context:
        context = Context(config=load_config(), reactor=self.clock,
                          process=self.process,
                          guard=DeviceGuard(self.disks))
        context.on_progress_change = lambda p: self.progress.append(
            {"text": p.text(), "status": p.agent_status, **p.snapshot()})
        return context

    def eraser(self, node: Any = None, express: bool = False
               ) -> eraser.DiskEraser:
        self.metadata: list[str] = []

        async def metadata(path: str) -> None:
            self.metadata.append(path)

        return eraser.DiskEraser(self.context(),
                                 erase.EraseOptions.from_node(node),
                                 metadata, express=express,
                                 sys_block=self.sys)

    def erase(self, devices: list[BlockDevice], node: Any = None,
              express: bool = False) -> dict[str, Any]:
        worker = self.eraser(node, express)
        return self.successResultOf(ensureDeferred(
            worker.erase_all(devices, "erase_devices")))

    # ---- tools that act on the files

    @staticmethod
    def zero(path: str) -> None:
        """Every byte reads as zero (the file emptied and extended again:
        a hole, not 8 MiB written)."""
        size = os.path.getsize(path)
        with open(path, "r+b") as f:
            f.truncate(0)
            f.truncate(size)

    def tool(self, name: str, act: Callable[[Sequence[str]], Any]) -> None:
        self.process.handlers[name] = act


class DiscardTests(Disks):

    def test_loop_device_is_discarded_and_checked(self) -> None:
        dev = self.disk("loop7", loop=True, discard=4294966784)

        def blkdiscard(argv: Sequence[str]) -> ProcessResult:
            if "--secure" in argv:  # the real loop driver's answer
                return result(argv, code=1, err=(
                    f"blkdiscard: {argv[-1]}: BLKSECDISCARD ioctl failed: "
                    f"Operation not supported"))
            self.zero(argv[-1])
            return result(argv)

        self.tool("blkdiscard", blkdiscard)
        reports = self.erase([dev])
        report = reports[dev.name]
        self.assertEqual(report["result"], "erased")
        self.assertEqual(report["method"], erase.DISCARD)
        self.assertEqual(report["serial"], "S-loop7")
        self.assertEqual(report["bytes_covered"], SIZE)
        self.assertIn("loop device", report["why"])
        check = report["verification"]
        self.assertTrue(check["passed"])
        self.assertEqual((check["expect"], check["mode"]),
                         ("zeroes", "markers"))
        self.assertEqual(check["zeroes"], check["samples"])
        self.assertEqual(check["spread"], [0, SIZE - erase_check.SAMPLE])
        self.assertEqual(report["capabilities"]["discard_reads_zeroes"],
                         "loop device: a discard punches holes in its "
                         "backing file")
        self.assertIn(("blkdiscard", "--secure", dev.name),
                      self.process.calls)
        self.assertIn(("blkdiscard", dev.name), self.process.calls)
        # the last word to the heartbeat: the summary, status "end"
        last = self.progress[-1]
        self.assertEqual(last["status"], "end")
        self.assertTrue(last["text"].startswith("erase_devices finished: "))
        self.assertIn(f'"readback":"passed {check["samples"]}x65536 zeroes"',
                      last["text"])

    def test_a_discard_that_changed_nothing_falls_back(self) -> None:
        dev = self.disk("loop7", loop=True, discard=4294966784)
        self.tool("blkdiscard", lambda argv: result(argv))  # lies
        report = self.erase([dev])[dev.name]
        # the overwrite (IPA's shred) is real: it writes the file
        self.assertEqual((report["result"], report["method"]),
                         ("erased", erase.OVERWRITE))
        first = report["attempts"][0]
        self.assertEqual(first["method"], erase.DISCARD)
        self.assertEqual(first["error"], "reported success, but the "
                         "read-back check failed")
        self.assertEqual(first["verification"]["unchanged"],
                         first["verification"]["samples"])
        self.assertEqual(report["bytes_covered"], 2 * SIZE)
        with open(dev.name, "rb") as f:
            self.assertEqual(f.read(), bytes(SIZE))  # last pass: zeroes

    def test_overwrite_without_zeroes(self) -> None:
        dev = self.disk("loop7", loop=True)  # no discard
        with open(dev.name, "rb") as f:
            before = f.read()
        report = self.erase([dev], {"driver_internal_info": {
            "agent_erase_devices_iterations": 2,
            "agent_erase_devices_zeroize": False}})[dev.name]
        self.assertEqual((report["result"], report["method"],
                          report["bytes_covered"]),
                         ("erased", erase.OVERWRITE, 2 * SIZE))
        check = report["verification"]
        self.assertEqual((check["expect"], check["changed_not_zeroes"]),
                         ("changed", check["samples"]))
        with open(dev.name, "rb") as f:
            after = f.read()
        self.assertNotEqual(after, before)
        self.assertNotIn(erase_check.MAGIC, after)

    def test_partly_erased_is_not_erased(self) -> None:
        dev = self.disk("loop7", loop=True, discard=4294966784)

        def half(argv: Sequence[str]) -> ProcessResult:
            with open(argv[-1], "r+b") as f:
                f.write(bytes(SIZE // 2))
            return result(argv)

        self.tool("blkdiscard", half)
        report = self.erase([dev], {"driver_internal_info": {
            "agent_erase_devices_iterations": 0,
            "agent_erase_devices_zeroize": False}})[dev.name]
        self.assertEqual(report["result"], "failed")
        check = report["attempts"][0]["verification"]
        self.assertFalse(check["passed"])
        self.assertGreater(check["unchanged"], 20)
        self.assertGreater(check["zeroes"], 20)


class NvmeTests(Disks):

    def nvme(self, lies: bool = False) -> BlockDevice:
        dev = self.disk("nvme0n1", discard=2147483136)
        ctrl = os.path.join(self.root, "nvme0")
        os.makedirs(os.path.join(ctrl, "nvme0n1"))
        os.symlink(ctrl, os.path.join(self.sys, "nvme0n1", "device"))

        def nvme(argv: Sequence[str]) -> ProcessResult:
            if argv[1] == "id-ctrl":
                return result(argv, load("erase", "nvme-id-ctrl-qemu.json"))
            if argv[1] == "id-ns":
                return result(argv, load("erase", "nvme-id-ns-qemu.json"))
            if argv[1] == "format":
                if not lies:
                    self.zero(argv[2])
                return result(argv, load("erase", "nvme-format-ses1-qemu.txt"))
            raise AssertionError(argv)

        self.tool("nvme", nvme)
        return dev

    def test_format_user_data_erase(self) -> None:
        dev = self.nvme()
        report = self.erase([dev])[dev.name]
        self.assertEqual((report["result"], report["method"]),
                         ("erased", erase.NVME_FORMAT_USER_DATA))
        self.assertIn(("nvme", "format", dev.name, "--ses=1", "--force"),
                      self.process.calls)
        caps = report["capabilities"]
        self.assertEqual(caps["nvme"]["oacs"], 266)
        self.assertEqual(caps["nvme_namespaces_on_controller"], 1)
        self.assertEqual(report["verification"]["expect"], "changed")
        self.assertTrue(report["verification"]["passed"])

    def test_a_format_that_did_nothing_fails_the_step(self) -> None:
        """"An NVMe format that silently did nothing has been seen in the
        field": without the node's consent to fall back, the step fails."""
        dev = self.nvme(lies=True)
        manager = GenericHardwareManager()
        manager.agent = self.eraser().agent

        async def disks(include_partitions: bool = False
                        ) -> list[BlockDevice]:
            return [dev]

        manager.list_block_devices = disks  # type: ignore[method-assign]
        from twisted.logger import globalLogPublisher

        logged: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(logged.append)
        self.addCleanup(globalLogPublisher.removeObserver, logged.append)
        failure = self.failureResultOf(ensureDeferred(
            manager.erase_devices({"driver_internal_info": {}}, [])),
            errors.BlockDeviceEraseError)
        text = str(failure.value)
        # each device named once, its reason without a second class name
        self.assertIn(f"erase_devices failed: {dev.name} was not erased: "
                      "nvme-format-user-data-erase: reported success, but "
                      "the read-back check failed", failure.value.details)
        self.assertEqual(text.count("Error erasing block device"), 1)
        # the whole report (attempts, the check's figures) is in the log
        report = next(e["report"] for e in logged if "report" in e)
        self.assertIn('"verification"', report)
        # the summary goes with the error (and to the heartbeat)
        self.assertIn('"result":"failed"', text)
        self.assertNotIn(("blkdiscard",), [c[:1] for c in self.process.calls])

    def test_with_consent_a_failed_format_falls_back(self) -> None:
        dev = self.nvme(lies=True)

        def blkdiscard(argv: Sequence[str]) -> ProcessResult:
            self.zero(argv[-1])
            return result(argv)

        self.tool("blkdiscard", blkdiscard)
        report = self.erase([dev], {"driver_internal_info": {
            "agent_continue_if_secure_erase_failed": True}})[dev.name]
        self.assertEqual((report["result"], report["method"]),
                         ("erased", erase.DISCARD))
        self.assertEqual([a["method"] for a in report["attempts"]],
                         [erase.NVME_FORMAT_USER_DATA, erase.DISCARD])
        self.assertIn("DLFEAT", report["why"])


class AtaTests(Disks):

    def test_security_erase_as_ipa(self) -> None:
        dev = self.disk("sdb")
        states = ["hdparm-I-security-not-frozen-tinyapps.txt"]

        def hdparm(argv: Sequence[str]) -> ProcessResult:
            if argv[1] == "-I":
                return result(argv, load("erase", states[-1]))
            if "--security-set-pass" in argv:
                states.append("hdparm-I-security-enabled-tinyapps.txt")
            elif "--security-erase" in argv:
                self.zero(argv[-1])
                states.append("hdparm-I-security-not-frozen-tinyapps.txt")
            return result(argv)

        self.tool("hdparm", hdparm)
        self.process.add("smartctl", load(
            "erase", "smartctl-x-hdd-apple-hts541010a9e632-sec1.txt"))
        report = self.erase([dev])[dev.name]
        self.assertEqual((report["result"], report["method"]),
                         ("erased", erase.ATA_SECURITY_ERASE))
        ran = [c for c in self.process.calls if c[0] == "hdparm"
               and c[1] != "-I"]
        self.assertEqual(ran, [
            ("hdparm", "--user-master", "u", "--security-set-pass", "NULL",
             dev.name),
            ("hdparm", "--user-master", "u", "--security-erase", "NULL",
             dev.name)])
        self.assertIn(("smartctl", "-d", "ata", "-i", "-g", "security",
                       dev.name), self.process.calls)

    def test_frozen_drive_fails_without_consent(self) -> None:
        dev = self.disk("sdb")
        self.process.add("hdparm", load(
            "erase", "hdparm-I-security-frozen-tinyapps.txt"))
        report = self.erase([dev])[dev.name]
        self.assertEqual(report["result"], "failed")
        self.assertIn("is frozen and cannot be erased", report["reason"])
        self.assertIn("agent_continue_if_secure_erase_failed",
                      report["reason"])

    def test_security_still_enabled_after_the_erase(self) -> None:
        dev = self.disk("sdb")
        states = ["hdparm-I-security-not-frozen-tinyapps.txt"]

        def hdparm(argv: Sequence[str]) -> ProcessResult:
            if argv[1] == "-I":
                return result(argv, load("erase", states[-1]))
            if "--security-set-pass" in argv:
                states.append("hdparm-I-security-enabled-tinyapps.txt")
            return result(argv)  # the erase "succeeds", changes nothing

        self.tool("hdparm", hdparm)
        report = self.erase([dev])[dev.name]
        self.assertEqual(report["result"], "failed")
        self.assertIn("security still enabled after the erase",
                      report["reason"])


class SkipTests(Disks):

    def test_read_only_fails_unless_the_node_allows_skipping(self) -> None:
        dev = self.disk("sdc", ro="1")
        report = self.erase([dev])[dev.name]
        self.assertEqual(report["result"], "failed")
        self.assertIn("flagged read-only", report["reason"])
        report = self.erase([dev], {"driver_internal_info": {
            "agent_erase_skip_read_only": True}})[dev.name]
        self.assertEqual(report["result"], "skipped")
        self.assertFalse(any(c[0] in ("shred", "hdparm")
                             for c in self.process.calls))

    def test_virtual_media_is_skipped(self) -> None:
        dev = self.disk("sr0")
        label = os.path.join(self.root, "ir-vfd-dev")
        os.symlink(dev.name, label)
        worker = self.eraser()
        worker.virtual_media_label = label
        report = self.successResultOf(ensureDeferred(
            worker.erase_disk(dev)))
        self.assertEqual((report["result"], report["reason"]),
                         ("skipped", "virtual media device"))


class ExpressTests(Disks):

    def test_metadata_only_without_a_fast_erase(self) -> None:
        dev = self.disk("sdd")
        self.process.add("hdparm", load("erase", "hdparm-I-qemu-ahci.txt"))
        report = self.erase([dev], express=True)[dev.name]
        self.assertEqual((report["result"], report["method"]),
                         ("erased", erase.METADATA))
        self.assertEqual(self.metadata, [dev.name])
        self.assertIn("skipped", report["verification"])


class ConcurrencyAndProgressTests(Disks):

    def test_at_most_concurrency_disks_at_once(self) -> None:
        devs = [self.disk(f"loop{i}", loop=True, discard=4294966784)
                for i in range(3)]
        running: dict[str, Deferred[ProcessResult]] = {}

        def blkdiscard(argv: Sequence[str]) -> Any:
            if "--secure" in argv:
                return result(argv, code=1)
            d: Deferred[ProcessResult] = Deferred()
            running[argv[-1]] = d
            return d

        self.tool("blkdiscard", blkdiscard)
        worker = self.eraser({"driver_internal_info": {
            "disk_erasure_concurrency": 2}})
        done = ensureDeferred(worker.erase_all(devs, "erase_devices"))
        self.assertEqual(sorted(running), [devs[0].name, devs[1].name])
        # the discard counter moves: progress shows in the command's status
        with open(os.path.join(self.sys, "loop0", "stat"), "w") as f:
            f.write(" ".join(["0"] * 13 + [str(SIZE // 1024)] + ["0"] * 3))
        self.clock.advance(eraser.POLL)
        snap = self.progress[-1]["devices"][devs[0].name]
        self.assertEqual((snap["phase"], snap["method"], snap["percent"]),
                         ("erasing", erase.DISCARD, 50.0))
        self.assertIn(f"{devs[0].name} erasing (discard) 50%",
                      self.progress[-1]["text"])
        self.assertEqual(self.progress[-1]["status"], "start")
        for path in list(running):
            self.zero(path)
            running.pop(path).callback(result(["blkdiscard", path]))
        self.assertEqual(list(running), [devs[2].name])
        self.zero(devs[2].name)
        running.pop(devs[2].name).callback(result(["blkdiscard"]))
        reports = self.successResultOf(done)
        self.assertEqual({r["result"] for r in reports.values()}, {"erased"})
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_overwrite_progress(self) -> None:
        dev = self.disk("loop3", loop=True)
        worker = self.eraser()
        seen: list[int] = []
        real = worker.agent.in_thread

        def in_thread(func: Any, *args: Any) -> Any:
            # let the clock tick in the middle of the "thread"'s work
            if func.__name__ != "overwrite":
                return real(func, *args)
            guard, path, size, kinds, done, stop = args

            def step(n: int) -> None:
                done(n)
                if n == SIZE:  # one pass of two done
                    self.clock.advance(eraser.POLL)
                    seen.append(self.progress[-1]["devices"][path]
                                ["percent"])

            return real(func, guard, path, size, kinds, step, stop)

        worker.agent.in_thread = in_thread  # type: ignore[method-assign]
        report = self.successResultOf(ensureDeferred(
            worker.erase_all([dev], "erase_devices")))[dev.name]
        self.assertEqual(report["method"], erase.OVERWRITE)
        self.assertEqual(seen, [50.0])


class SanitizeWaitTests(Disks):
    """The wait after a sanitize starts (NVMe and ATA share it): poll the
    status every POLL seconds until the device says it ended.  The status
    texts are built from the fields the parsers read (their parsing of
    real captures is tested in test_erase)."""

    def nvme_log(self, state: int, sprog: int = 0) -> str:
        import json

        return json.dumps({"sprog": sprog, "sstat": state})

    def wait(self, tool: str, outputs: list[str], start: Callable[
            [eraser.DiskEraser, BlockDevice], Any],
             step: float = eraser.POLL) -> tuple[Any, list[Any]]:
        dev = self.disk(f"nvme{len(self.disks)}n1", size=MiB)
        calls: list[Sequence[str]] = []

        def act(argv: Sequence[str]) -> ProcessResult:
            calls.append(argv)
            if len(calls) == 1:  # (the start)
                return result(argv)
            return result(argv, outputs.pop(0))

        self.tool(tool, act)
        d = ensureDeferred(start(self.eraser(), dev))
        while outputs and not d.called:
            self.clock.advance(step)
        return d, calls

    def test_nvme_waits_until_done(self) -> None:
        d, calls = self.wait("nvme", [
            self.nvme_log(erase.SANITIZE_RUNNING, 16384),
            self.nvme_log(erase.SANITIZE_RUNNING, 49152),
            self.nvme_log(erase.SANITIZE_DONE, 65535)],
            lambda w, dev: w._nvme_sanitize(dev, 4))
        self.successResultOf(d)
        self.assertEqual([c[1] for c in calls],
                         ["sanitize"] + ["sanitize-log"] * 3)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_nvme_failure_and_unexpected_state(self) -> None:
        d, _ = self.wait("nvme", [self.nvme_log(erase.SANITIZE_FAILED)],
                         lambda w, dev: w._nvme_sanitize(dev, 2))
        self.assertIn("reports the sanitize failed",
                      str(self.failureResultOf(d, eraser.EraseFailed).value))
        d, _ = self.wait("nvme", [self.nvme_log(erase.SANITIZE_RUNNING),
                                  self.nvme_log(0)],
                         lambda w, dev: w._nvme_sanitize(dev, 2))
        self.assertIn("unexpected sanitize state 0",
                      str(self.failureResultOf(d, eraser.EraseFailed).value))

    def test_ata_running_without_progress_is_still_running(self) -> None:
        # hdparm prints no Progress line at first: not the end of it
        d, calls = self.wait("hdparm", [
            "State: SD2 Sanitize operation In Process\n",
            "State: SD2 Sanitize operation In Process\nProgress: 0x8000\n",
            "State: SD0 Sanitize Idle\n"],
            lambda w, dev: w._ata_sanitize(dev, "--sanitize-block-erase"))
        self.successResultOf(d)
        self.assertEqual(len(calls), 4)

    def test_deadline(self) -> None:
        # (each poll comes a day late: the second is past the deadline)
        outputs = [self.nvme_log(erase.SANITIZE_RUNNING)] * 3
        d, calls = self.wait("nvme", outputs,
                             lambda w, dev: w._nvme_sanitize(dev, 2),
                             step=24 * 3600.0)
        self.assertEqual(len(calls), 2)
        self.assertIn("still running at its deadline",
                      str(self.failureResultOf(d, eraser.EraseFailed).value))


class DroppedWritesTests(Disks):
    """A device that acknowledges every write and keeps none (what a dm
    ``flakey`` target with ``drop_writes`` does): the markers never land,
    so "the marker is gone" proves nothing; the check must compare with
    the bytes as they were instead."""

    def drop_writes(self) -> None:
        def markers(guard: DeviceGuard, path: str, *args: Any) -> None:
            guard.check(path)  # "written"

        def passes(guard: DeviceGuard, path: str, size: int,
                   kinds: Sequence[str], done: Callable[[int], None],
                   stop: Callable[[], bool]) -> None:
            guard.check(path)
            done(size * len(kinds))  # "written"

        self.patch(erase_check, "write_markers", markers)
        self.patch(overwrite, "overwrite", passes)

    def test_baseline_of_markers_that_did_not_land(self) -> None:
        dev = self.disk("dm-2")
        self.drop_writes()
        baseline = erase_check.prepare(DeviceGuard(self.disks), dev.name,
                                       SIZE)
        self.assertIsNone(baseline.token)
        assert baseline.note is not None
        self.assertIn(f"markers written, but {len(baseline.offsets)} of "
                      f"{len(baseline.offsets)} did not read back",
                      baseline.note)
        check = erase_check.check(dev.name, baseline, expect_zeroes=False)
        self.assertEqual((check["mode"], check["passed"], check["unchanged"]),
                         ("digests", False, check["samples"]))

    def test_overwrite_without_zeroes_fails_the_step(self) -> None:
        dev = self.disk("dm-2")
        self.drop_writes()
        report = self.erase([dev], {"driver_internal_info": {
            "agent_erase_devices_iterations": 1,
            "agent_erase_devices_zeroize": False}})[dev.name]
        self.assertEqual(report["result"], "failed")
        self.assertEqual(report["reason"],
                         f"{dev.name} was not erased: overwrite: reported "
                         f"success, but the "
                         f"read-back check failed")
        check = report["attempts"][0]["verification"]
        self.assertEqual((check["expect"], check["unchanged"]),
                         ("changed", check["samples"]))
        self.assertIn("did not read back", check["note"])
        with open(dev.name, "rb") as f:
            self.assertEqual(f.read(), noise(SIZE))

    def test_a_device_that_keeps_its_writes_is_unaffected(self) -> None:
        dev = self.disk("dm-0")
        baseline = erase_check.prepare(DeviceGuard(self.disks), dev.name,
                                       SIZE)
        self.assertIsNotNone(baseline.token)
        self.assertIsNone(baseline.note)


class FailingWriteTests(Disks):

    def test_the_failed_write_says_where(self) -> None:
        dev = self.disk("dm-1")
        real = os.pwritev

        def pwritev(fd: int, buffers: Any, offset: int) -> int:
            if offset >= 3 * MiB:  # a dm error target from MiB 3 on
                raise OSError(errno.EIO, os.strerror(errno.EIO))
            return real(fd, buffers, offset)

        self.patch(os, "pwritev", pwritev)
        with self.assertRaises(OSError) as raised:
            overwrite.overwrite(DeviceGuard(self.disks), dev.name, SIZE,
                                ["random", "zeroes"], lambda n: None,
                                chunk=MiB)
        self.assertEqual(raised.exception.errno, errno.EIO)
        self.assertEqual(str(raised.exception),
                         f"[Errno 5] Input/output error, writing the random "
                         f"pass at byte {3 * MiB} of {dev.name}")


class SampleTests(SynchronousTestCase):

    def test_offsets_cover_the_device(self) -> None:
        size = 10 * 1024 ** 3 + 12345
        offsets = erase_check.sample_offsets(size)
        self.assertEqual(len(offsets), 64)
        self.assertEqual(offsets[0], 0)
        self.assertEqual(offsets[-1], (size - erase_check.SAMPLE)
                         // erase_check.SAMPLE * erase_check.SAMPLE)
        gaps = [b - a for a, b in zip(offsets, offsets[1:])]
        self.assertLess(max(gaps), 2 * size / 62)
        self.assertTrue(all(o % erase_check.SAMPLE == 0 for o in offsets))
        self.assertEqual(erase_check.sample_offsets(1000), [])

    def test_markers_differ_by_offset_and_token(self) -> None:
        a = erase_check.marker(b"t1", 0)
        self.assertNotEqual(a, erase_check.marker(b"t1", 65536))
        self.assertNotEqual(a, erase_check.marker(b"t2", 0))
        self.assertEqual(len(a), erase_check.SAMPLE)
        self.assertTrue(all(a[i:i + 4096].startswith(erase_check.MAGIC)
                            for i in range(0, len(a), 4096)))


class PstoreAndNvramTests(Disks):

    def manager(self) -> GenericHardwareManager:
        manager = GenericHardwareManager()
        manager.agent = self.context()
        return manager

    def test_erase_pstore(self) -> None:
        store = os.path.join(self.root, "pstore")
        os.makedirs(os.path.join(store, "sub"))
        for name in ("dmesg-efi-167", "console-ramoops-0", "sub/x"):
            with open(os.path.join(store, name), "w") as f:
                f.write("last tenant's panic\n")
        mounts = os.path.join(self.root, "mounts")
        with open(mounts, "w") as f:
            f.write("sysfs /sys sysfs rw 0 0\n"
                    f"pstore {store} pstore rw,nosuid,nodev 0 0\n")
        manager = self.manager()
        manager.proc_mounts = mounts
        manager.erase_pstore({}, [])
        self.assertEqual(os.listdir(store), [])
        # nothing mounted: nothing to do
        with open(mounts, "w") as f:
            f.write("sysfs /sys sysfs rw 0 0\n")
        manager.erase_pstore({}, [])

    def test_clean_uefi_nvram_default_patterns(self) -> None:
        self.process.add("efibootmgr", load("uefi",
                                            "efibootmgr-v-after.txt"))
        manager = self.manager()
        self.successResultOf(ensureDeferred(
            manager.clean_uefi_nvram({}, [])))
        # Boot0001 boots HD(...)/File(\EFI\debian\grubx64.efi); UiApp stays
        self.assertEqual(self.process.calls, [
            ("efibootmgr", "-v"), ("efibootmgr", "-b", "0001", "-B")])

    def test_clean_uefi_nvram_patterns(self) -> None:
        self.process.add("efibootmgr", load("uefi",
                                            "efibootmgr-v-after.txt"))
        manager = self.manager()
        self.successResultOf(ensureDeferred(manager.clean_uefi_nvram(
            {}, [], match_patterns=["fvfile"])))
        self.assertEqual(self.process.calls[-1],
                         ("efibootmgr", "-b", "0000", "-B"))
        for bad in ("^HD", [1], ["("]):
            self.failureResultOf(ensureDeferred(manager.clean_uefi_nvram(
                {}, [], match_patterns=bad)),
                errors.InvalidCommandParamsError)
