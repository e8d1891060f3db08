"""erase_devices for real: a sandboxed standalone agent erases a loop device
(discard, then the overwrite IPA runs shred for), and the test reads the
whole device back; QEMU's emulated NVMe and SATA disks, and device-mapper
targets (linear, error, flakey dropping writes), are erased by the agent
inside the test machine."""

from __future__ import annotations

import hashlib
import json
import os
import time
from typing import Any

from tests.integration import agent_api
from tests.integration import harness as h
from tests.integration import uefi_vm
from tests.integration.base import SandboxTestCase

TOKEN = "r" * 40
MiB = 1024 ** 2


def fill(device: str, size: int) -> None:
    """Incompressible data over the whole device (what a tenant left)."""
    block = os.urandom(4 * MiB)
    with open(device, "r+b") as f:
        for i in range(size // len(block)):
            f.write(i.to_bytes(8, "little") + block[8:])
        f.flush()
        os.fsync(f.fileno())


def all_zero(device: str, size: int) -> bool:
    zero = bytes(8 * MiB)
    with open(device, "rb") as f:
        left = size
        while left:
            chunk = f.read(min(left, len(zero)))
            if not chunk:
                return False
            if chunk != zero[:len(chunk)]:
                return False
            left -= len(chunk)
    return True


class LoopEraseTests(SandboxTestCase):
    disk_size = 512 * MiB

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

    def start(self, step: str, info: dict[str, Any]) -> str:
        status, _, body = agent_api.call(
            self.netns, "POST", f"/v1/commands/?agent_token={TOKEN}",
            {"name": "clean.execute_clean_step", "params": {
                "step": {"step": step, "interface": "deploy"},
                "node": {"uuid": "n", "driver_internal_info": info},
                "ports": [], "clean_version": self.versions}})
        self.assertEqual(status, 200, body)
        return str(body["id"])

    def wait(self, command_id: str, timeout: float = 300
             ) -> tuple[dict[str, Any], list[Any]]:
        """The finished command, and every progress seen while it ran."""
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

    def test_discard_then_overwrite(self) -> None:
        fill(self.device, self.disk_size)
        t0 = time.monotonic()
        done, _ = self.wait(self.start("erase_devices", {}))
        took = time.monotonic() - t0
        self.assertEqual(done["command_status"], "SUCCEEDED", done)
        report = done["command_result"]["clean_result"][self.device]
        h.say(f"erase_devices (discard) of {self.disk_size // MiB} MiB: "
              f"{took:.2f} s; report: {json.dumps(report)[:600]}")
        self.assertEqual((report["result"], report["method"]),
                         ("erased", "discard"))
        check = report["verification"]
        self.assertTrue(check["passed"])
        self.assertEqual((check["mode"], check["expect"]),
                         ("markers", "zeroes"))
        self.assertEqual(check["zeroes"], check["samples"])
        self.assertGreaterEqual(check["samples"], 60)
        self.assertEqual(report["bytes_covered"], self.disk_size)
        self.assertEqual(report["size"], self.disk_size)
        for key in ("started_at", "finished_at", "capabilities", "why"):
            self.assertIn(key, report)
        self.assertTrue(all_zero(self.device, self.disk_size))

        # the overwrite (IPA runs shred): a disk with no hardware erase
        fill(self.device, self.disk_size)
        done, seen = self.wait(self.start("erase_devices", {
            "agent_enable_discard_erase": False,
            "agent_erase_devices_iterations": 1,
            "agent_erase_devices_zeroize": True}))
        self.assertEqual(done["command_status"], "SUCCEEDED", done)
        report = done["command_result"]["clean_result"][self.device]
        self.assertEqual((report["result"], report["method"]),
                         ("erased", "overwrite"))
        self.assertEqual(report["bytes_covered"], 2 * self.disk_size)
        self.assertTrue(report["verification"]["passed"])
        self.assertTrue(all_zero(self.device, self.disk_size))
        phases = {d["phase"] for p in seen for d in p["devices"].values()}
        h.say(f"overwrite: {report['seconds']} s; progress phases seen: "
              f"{sorted(phases)}; last: {seen[-1] if seen else None}")
        self.assertIn("erasing", phases)
        log = self.agent.read_log()
        self.assertIn("read-back check passed", log)

    def test_shred_without_zeroes_still_proves_the_erase(self) -> None:
        fill(self.device, self.disk_size)
        before = h.device_sha256(self.device, self.disk_size)
        done, _ = self.wait(self.start("erase_devices", {
            "agent_enable_discard_erase": False,
            "agent_erase_devices_zeroize": False}))
        report = done["command_result"]["clean_result"][self.device]
        self.assertEqual((report["result"], report["method"]),
                         ("erased", "overwrite"))
        check = report["verification"]
        self.assertEqual((check["expect"], check["passed"]),
                         ("changed", True))
        self.assertEqual(check["changed_not_zeroes"], check["samples"])
        self.assertNotEqual(h.device_sha256(self.device, self.disk_size),
                            before)

    def test_express_and_metadata(self) -> None:
        fill(self.device, self.disk_size)
        done, _ = self.wait(self.start("erase_devices_express", {}))
        self.assertEqual(done["command_status"], "SUCCEEDED", done)
        report = done["command_result"]["clean_result"][self.device]
        self.assertEqual(report["method"], "discard")
        # the node forbids discards: express is the metadata only
        h.run(["parted", "-s", self.device, "mklabel", "gpt"])
        done, _ = self.wait(self.start("erase_devices_express", {
            "agent_enable_discard_erase": False}))
        report = done["command_result"]["clean_result"][self.device]
        self.assertEqual(report["method"], "metadata")
        pttype = h.run(["blkid", "--probe", "--match-tag", "PTTYPE",
                        "--output", "value", self.device], check=False)
        self.assertEqual(pttype.stdout.strip(), "")

    def test_unknown_argument_is_a_typeerror(self) -> None:
        status, _, body = agent_api.call(
            self.netns, "POST", f"/v1/commands/?agent_token={TOKEN}",
            {"name": "clean.get_clean_steps",
             "params": {"node": {}, "ports": [], "new_in_ironic_99": 1}})
        self.assertEqual(status, 200, body)
        self.assertEqual((body["command_status"],
                          body["command_error"]["type"]),
                         ("FAILED", "TypeError"))


class MachineEraseTests(uefi_vm.MachineTestCase):
    """The agent in the test machine erases QEMU's emulated NVMe disk (Format
    NVM, user data erase: the controller offers no crypto erase and no
    sanitize) and an AHCI SATA disk (no ATA security: shred), each proven
    by the read-back check; the virtio disk is not allow-listed and keeps
    its bytes."""

    disk_size = 64 * MiB

    def test_nvme_and_sata(self) -> None:
        images = {}
        for name, size in (("nvme", 256 * MiB), ("sata", 64 * MiB)):
            images[name] = os.path.join(self.workdir, f"{name}.img")
            with open(images[name], "wb") as f:
                f.truncate(size)
            fill(images[name], size)
        fill(self.device, self.disk_size)
        virtio_before = h.device_sha256(self.device, self.disk_size)
        self.machine.devices = [
            "-drive", f"if=none,id=nvm0,format=raw,file={images['nvme']}",
            "-device", "nvme,serial=IPATWNVME0001,drive=nvm0",
            "-drive", f"if=none,id=sata0,format=raw,file={images['sata']}",
            "-device", "ahci,id=ahci",
            "-device", "ide-hd,bus=ahci.0,drive=sata0,serial=IPATWSATA0001"]
        self.start_agent(["--standalone", "--agent-token", TOKEN,
                          "--listen-host", "0.0.0.0",
                          "--device-allowlist", "/dev/nvme0n1,/dev/sda"],
                         setup="modprobe -a nvme ahci sd_mod; sleep 2")
        status, _, body = agent_api.call(
            self.netns, "POST",
            f"/v1/commands/?wait=true&agent_token={TOKEN}",
            {"name": "clean.execute_clean_step", "params": {
                "step": {"step": "erase_devices", "interface": "deploy"},
                "node": {"uuid": "n", "driver_internal_info": {
                    "disk_erasure_concurrency": 2}},
                "ports": []}}, port=self.port, timeout=900)
        self.assertEqual(status, 200, body)
        self.assertEqual(body["command_status"], "SUCCEEDED", body)
        reports = body["command_result"]["clean_result"]
        h.say("test machine erase report: " + json.dumps(reports)[:3000])
        self.assertEqual(sorted(reports), ["/dev/nvme0n1", "/dev/sda"])
        nvme = reports["/dev/nvme0n1"]
        self.assertEqual((nvme["result"], nvme["method"], nvme["serial"]),
                         ("erased", "nvme-format-user-data-erase",
                          "IPATWNVME0001"))
        self.assertEqual(nvme["capabilities"]["nvme"]["oacs"], 266)
        self.assertEqual(nvme["capabilities"]["nvme_namespaces_on_controller"],
                         1)
        self.assertTrue(nvme["verification"]["passed"])
        sata = reports["/dev/sda"]
        self.assertEqual((sata["result"], sata["method"], sata["serial"]),
                         ("erased", "overwrite", "IPATWSATA0001"))
        self.assertEqual(sata["capabilities"]["smartctl"]["security"],
                         "Unavailable")
        self.assertTrue(sata["verification"]["passed"])
        self.machine.stop()
        # what the emulated disks hold now, read on this side
        self.assertTrue(all_zero(images["sata"], 64 * MiB))
        with open(images["nvme"], "rb") as f:
            head = f.read(MiB)
        self.assertEqual(head, bytes(MiB))
        self.assertEqual(h.device_sha256(self.device, self.disk_size),
                         virtio_before)


def region(path: str, offset: int, length: int) -> bytes:
    """``length`` bytes at ``offset``, read past this side's page cache
    (QEMU wrote them through its own descriptor)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        return os.pread(fd, length, offset)
    finally:
        os.close(fd)


def digest(path: str, offset: int, length: int) -> str:
    return hashlib.sha256(region(path, offset, length)).hexdigest()


S = MiB // 512  # sectors of a MiB, for the dm tables


class DeviceMapperEraseTests(uefi_vm.MachineTestCase):
    """The agent in the test machine erases device-mapper devices built on
    its virtio disk vda (here the test's loop device), each allow-listed
    by its /dev/dm-N name, and the test reads vda afterwards:

    - dm-0 ``lin``: linear over vda's MiB 16-80; the metadata, express and
      full erases, the last proven by the read-back check and by the test
      (all zeroes where the tenant's bytes were);
    - dm-1 ``dying``: 16 MiB of vda, 16 MiB of ``error``, 16 MiB of vda:
      the erase fails, naming the device and the I/O error;
    - dm-2 ``liar``: ``flakey`` dropping every write while it says it took
      it: shred "succeeds", the read-back check fails the step;
    - dm-3 ``other``: linear over vdb, not allow-listed: never listed,
      never touched (nor vdb, nor vda outside the dm tables)."""

    disk_size = 256 * MiB
    #: vda's ranges (offset, length) no allow-listed device maps
    untouched = ((0, 16 * MiB), (80 * MiB, 16 * MiB), (128 * MiB, 16 * MiB),
                 (176 * MiB, 80 * MiB))

    def erase(self, step: str, device: str,
              info: dict[str, Any] | None = None) -> tuple[int, Any]:
        """Run ``step`` on ``device`` alone (the others skipped)."""
        others = [{"name": f"/dev/dm-{i}"} for i in range(3)
                  if f"/dev/dm-{i}" != device]
        t0 = time.monotonic()
        status, _, body = agent_api.call(
            self.netns, "POST",
            f"/v1/commands/?wait=true&agent_token={TOKEN}",
            {"name": "clean.execute_clean_step", "params": {
                "step": {"step": step, "interface": "deploy"},
                "node": {"uuid": "n", "driver_internal_info": info or {},
                         "properties": {"skip_block_devices": others}},
                "ports": []}}, port=self.port, timeout=900)
        h.say(f"{step} on {device}: {time.monotonic() - t0:.1f} s, "
              f"{body.get('command_status') if body else None}: "
              + json.dumps(body.get("command_result") or
                           body.get("command_error") if body else body
                           )[:1500])
        return status, body

    def test_linear_error_and_lying_targets(self) -> None:
        fill(self.device, self.disk_size)
        vdb = os.path.join(self.workdir, "vdb.img")
        with open(vdb, "wb") as f:
            f.truncate(32 * MiB)
        fill(vdb, 32 * MiB)
        vdb_before = h.device_sha256(vdb, 32 * MiB)
        # a GPT on dm-0 (its first and last MiB, where parted puts it)
        gpt = os.path.join(self.workdir, "gpt.img")
        with open(gpt, "wb") as f:
            f.truncate(64 * MiB)
        h.run(["parted", "-s", gpt, "mklabel", "gpt", "mkpart", "p",
               "1MiB", "10MiB"])
        with open(gpt, "rb") as src, open(self.device, "r+b") as dst:
            src.seek(63 * MiB)
            tail = src.read(MiB)
            src.seek(0)
            dst.seek(16 * MiB)
            dst.write(src.read(MiB))
            dst.seek(79 * MiB)
            dst.write(tail)
            dst.flush()
            os.fsync(dst.fileno())
        self.assertEqual(region(self.device, 16 * MiB + 512, 8), b"EFI PART")
        before = {r: digest(self.device, *r) for r in self.untouched}
        liar_before = digest(self.device, 144 * MiB, 32 * MiB)
        self.machine.disks.append(vdb)
        self.start_agent(
            ["--standalone", "--agent-token", TOKEN,
             "--listen-host", "0.0.0.0",
             "--device-allowlist", "/dev/dm-0,/dev/dm-1,/dev/dm-2"],
            setup=uefi_vm.device_mapper_setup([
                ("lin", f"0 {64 * S} linear /dev/vda {16 * S}\\n"),
                ("dying", f"0 {16 * S} linear /dev/vda {96 * S}\\n"
                          f"{16 * S} {16 * S} error\\n"
                          f"{32 * S} {16 * S} linear /dev/vda {112 * S}\\n"),
                ("liar", f"0 {32 * S} flakey /dev/vda {144 * S} 0 3600 1 "
                         f"drop_writes\\n"),
                ("other", f"0 {32 * S} linear /dev/vdb 0\\n")]))
        self.machine.wait_for_serial(r"dm other: 0 \d+ linear", 5)

        # listed: the allow-listed dm devices, nothing else
        status, _, body = agent_api.call(
            self.netns, "POST", f"/v1/commands/?wait=true&agent_token={TOKEN}",
            {"name": "poll.get_hardware_info", "params": {}}, port=self.port)
        self.assertEqual(status, 200, body)
        disks = {d["name"]: d["size"]
                 for d in body["command_result"]["disks"]}
        self.assertEqual(disks, {"/dev/dm-0": 64 * MiB,
                                 "/dev/dm-1": 48 * MiB,
                                 "/dev/dm-2": 32 * MiB})

        # metadata: the GPT is gone (both copies), the data between stays
        status, body = self.erase("erase_devices_metadata", "/dev/dm-0")
        self.assertEqual((status, body["command_status"]),
                         (200, "SUCCEEDED"), body)
        self.assertEqual(region(self.device, 16 * MiB, MiB), bytes(MiB))
        self.assertEqual(region(self.device, 79 * MiB, MiB), bytes(MiB))
        self.assertNotEqual(region(self.device, 40 * MiB, MiB), bytes(MiB))

        # express: no fast hardware erase on a dm device: metadata only
        status, body = self.erase("erase_devices_express", "/dev/dm-0")
        self.assertEqual((status, body["command_status"]),
                         (200, "SUCCEEDED"), body)
        report = body["command_result"]["clean_result"]
        self.assertEqual(sorted(report), ["/dev/dm-0"])
        self.assertEqual((report["/dev/dm-0"]["result"],
                          report["/dev/dm-0"]["method"]),
                         ("erased", "metadata"))

        # the full erase: shred (no hardware erase, no zeroing discard)
        status, body = self.erase("erase_devices", "/dev/dm-0")
        self.assertEqual((status, body["command_status"]),
                         (200, "SUCCEEDED"), body)
        reports = body["command_result"]["clean_result"]
        self.assertEqual(sorted(reports), ["/dev/dm-0"])
        lin = reports["/dev/dm-0"]
        self.assertEqual((lin["result"], lin["method"], lin["size"]),
                         ("erased", "overwrite", 64 * MiB))
        self.assertEqual(lin["capabilities"]["kind"], "other")
        self.assertIsNone(lin["capabilities"]["discard_reads_zeroes"])
        self.assertIn("overwrite (IPA's shred)", lin["why"])
        self.assertEqual(lin["bytes_covered"], 2 * 64 * MiB)
        check = lin["verification"]
        self.assertEqual((check["passed"], check["mode"], check["expect"]),
                         (True, "markers", "zeroes"))
        self.assertEqual(check["zeroes"], check["samples"])
        self.assertEqual(check["spread"], [0, 64 * MiB - 64 * 1024])
        self.assertTrue(all(region(self.device, 16 * MiB + i * MiB, MiB)
                            == bytes(MiB) for i in range(64)))

        # an error target in the middle: FAILED, naming the device
        status, body = self.erase("erase_devices", "/dev/dm-1")
        self.assertEqual((status, body["command_status"]),
                         (200, "FAILED"), body)
        error = body["command_error"]
        self.assertEqual(error["type"], "BlockDeviceEraseError")
        self.assertRegex(error["details"], (
            r"^erase_devices failed: /dev/dm-1 was not "
            r"erased: overwrite: \[Errno 5\] Input/output error, writing "
            rf"the random pass at byte {16 * MiB} of /dev/dm-1"))
        self.assertNotIn("/dev/dm-0", error["details"])

        # a device that drops the writes it acknowledges: the markers do
        # not read back, the samples as they were are the baseline, and
        # the read-back check fails the step (with the zeroes pass or not)
        for zeroize in (True, False):
            status, body = self.erase("erase_devices", "/dev/dm-2", {
                "agent_erase_devices_zeroize": zeroize})
            self.assertEqual((status, body["command_status"]),
                             (200, "FAILED"), body)
            self.assertRegex(body["command_error"]["details"], (
                r"^erase_devices failed: /dev/dm-2 was not "
                r"erased: overwrite: reported success, but the read-back "
                r"check failed"))
        self.machine.wait_for_serial(
            r"/dev/dm-2: overwrite reported success but the read-back "
            r"check failed: .*markers written, but (\d+) of \1 did not "
            r"read back", 5)

        self.machine.stop()
        # what lies outside the allow-listed devices is as it was, and the
        # liar kept every byte
        for r, want in before.items():
            self.assertEqual(digest(self.device, *r), want, r)
        self.assertEqual(h.device_sha256(vdb, 32 * MiB), vdb_before)
        self.assertEqual(digest(self.device, 144 * MiB, 32 * MiB),
                         liar_before)
