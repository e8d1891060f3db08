"""erase_devices for real: a sandboxed standalone agent erases a loop device
(discard, then the overwrite IPA runs shred for), and the test reads the whole device back; QEMU's
emulated NVMe disk is erased by the agent inside the test machine."""

from __future__ import annotations

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
