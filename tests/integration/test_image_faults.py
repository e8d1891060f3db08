"""Image writes that go wrong, with a sandboxed agent and real disks:
a disk that fails mid-write, a wrong checksum, and the progress of a slow
download.  Two failing disks: a loop device whose backing file lives on a
small tmpfs (past its size every write fails), and a device-mapper
``error`` target in the QEMU test machine (this machine's kernel has no
device-mapper)."""

from __future__ import annotations

import os
import sys
import time
from typing import Any


from tests.integration import agent_api
from tests.integration import harness as h
from tests.integration import uefi_vm
from tests.integration.base import SandboxTestCase

MiB = 1024 * 1024
TOKEN = "f" * 40


class FaultTests(SandboxTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.www = os.path.join(self.workdir, "www")
        os.makedirs(self.www)

    def serve(self, rate: int | None = None) -> str:
        port = 8090
        argv = None
        if rate is not None:
            argv = [sys.executable, os.path.join(h.HERE, "slow_http.py"),
                    os.path.join(self.www, "disk.img"), str(port), str(rate)]
        h.serve_http(self.cleanups, self.netns, port, self.www, argv)
        return f"http://127.0.0.1:{port}/disk.img"

    def agent(self, device: str) -> h.Agent:
        agent = h.Agent(self.cleanups, self.netns, self.workdir, device, None,
                        ["--standalone", "--agent-token", TOKEN,
                         "--listen-host", "127.0.0.1",
                         "--image-download-connection-retries", "1",
                         "--image-download-connection-retry-interval", "0"])
        agent.wait_for_log("agent API listening", 30)
        return agent

    def prepare(self, url: str, digest: str, wait: bool = True) -> dict:
        params = {"image_info": {"id": "img", "urls": [url],
                                 "os_hash_algo": "sha256",
                                 "os_hash_value": digest,
                                 "disk_format": "raw"}}
        path = f"/v1/commands/?agent_token={TOKEN}" + (
            "&wait=true" if wait else "")
        status, _, body = agent_api.call(self.netns, "POST", path, {
            "name": "standby.prepare_image", "params": params}, timeout=300)
        self.assertEqual(status, 200, body)
        return body

    def test_disk_failing_mid_write(self) -> None:
        tmpfs = os.path.join(self.workdir, "tmpfs")
        os.makedirs(tmpfs)
        h.run(["mount", "-t", "tmpfs", "-o", "size=48m", "ipa-test", tmpfs])
        self.cleanups.add("tmpfs", lambda: h.run(["umount", "-l", tmpfs]))
        device = h.make_loop_device(self.cleanups, tmpfs, 5 << 30)
        image = os.path.join(self.www, "disk.img")
        digest = h.make_disk_image(image, 160 * MiB)
        agent = self.agent(device)
        started = time.monotonic()
        body = self.prepare(self.serve(), digest)
        self.assertLess(time.monotonic() - started, 120)
        self.assertEqual(body["command_status"], "FAILED")
        self.assertEqual(body["command_error"]["type"], "ImageWriteError")
        self.assertRegex(body["command_error"]["details"],
                         r"Input/output error|No space left on device")
        # the agent tried to make the disk unbootable (on a dead disk that
        # may fail too: it says so)
        self.assertRegex(agent.read_log(), r"wiped the partition tables of|"
                         r"wiped the start of|could not wipe")

    def test_wrong_checksum_fails_and_wipes(self) -> None:
        device = h.make_loop_device(self.cleanups, self.workdir, 5 << 30)
        h.run(["parted", "-s", device, "mklabel", "gpt"])
        image = os.path.join(self.www, "disk.img")
        h.make_disk_image(image, 32 * MiB)
        self.agent(device)
        body = self.prepare(self.serve(), "0" * 64)
        self.assertEqual(body["command_status"], "FAILED")
        self.assertEqual(body["command_error"]["type"], "ImageChecksumError")
        # the image was written, then its MBR (and the old GPT) wiped
        pttype = h.run(["blkid", "--probe", "--match-tag", "PTTYPE",
                        "--output", "value", device], check=False)
        self.assertEqual(pttype.stdout.strip(), "")

    def test_compressed_image_expanding_past_the_disk(self) -> None:
        """A gzip image that inflates past the disk's end (4 MiB on the
        wire, 4 GiB + 64 MiB inside, for a 4 GiB disk) fails the command,
        wipes the disk and frees the agent; it was RUNNING for ever."""
        import hashlib

        from tests import hostile_images as hi

        size = 4 << 30
        device = h.make_loop_device(self.cleanups, self.workdir, size)
        data = hi.gzip_bomb(size + 64 * MiB)
        with open(os.path.join(self.www, "disk.img"), "wb") as f:
            f.write(data)
        agent = self.agent(device)
        started = self.prepare(self.serve(),
                               hashlib.sha256(data).hexdigest(), wait=False)
        self.assertEqual(started["command_status"], "RUNNING")
        deadline = time.monotonic() + 240
        while True:
            _, _, one = agent_api.call(
                self.netns, "GET",
                f"/v1/commands/{started['id']}?agent_token={TOKEN}")
            if one["command_status"] != "RUNNING":
                break
            self.assertLess(time.monotonic(), deadline,
                            "the command is still RUNNING")
            time.sleep(1)
        self.assertEqual(one["command_status"], "FAILED", one)
        self.assertEqual(one["command_error"]["type"], "ImageWriteError")
        self.assertIn(f"larger than the device ({size} bytes) once inflated",
                      one["command_error"]["details"])
        agent.wait_for_log(f"wiped the partition tables of {device}", 30)
        # the agent is free: the next command runs
        status, _, body = agent_api.call(
            self.netns, "POST", f"/v1/commands/?wait=true&agent_token={TOKEN}",
            {"name": "standby.get_partition_uuids", "params": {}})
        self.assertEqual(status, 200, body)
        self.assertEqual(body["command_status"], "SUCCEEDED")

    def test_progress_of_a_slow_download(self) -> None:
        device = h.make_loop_device(self.cleanups, self.workdir, 5 << 30)
        image = os.path.join(self.www, "disk.img")
        digest = h.make_disk_image(image, 48 * MiB)
        agent = self.agent(device)
        url = self.serve(rate=8 * MiB)
        started = self.prepare(url, digest, wait=False)
        self.assertEqual(started["command_status"], "RUNNING")
        seen = None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            _, _, one = agent_api.call(
                self.netns, "GET",
                f"/v1/commands/{started['id']}?agent_token={TOKEN}")
            if one["command_status"] != "RUNNING":
                break
            if one["command_result"] and "progress" in one["command_result"]:
                seen = one["command_result"]["progress"]
            time.sleep(0.5)
        self.assertEqual(one["command_status"], "SUCCEEDED", one)
        self.assertIsNotNone(seen)
        assert seen is not None
        self.assertEqual(seen["total"], 48 * MiB)
        self.assertTrue(0 < seen["bytes"] <= 48 * MiB)
        self.assertIn("percent", seen)
        self.assertIn("MiB/s, ETA", agent.read_log())
        self.assertEqual(h.device_sha256(device, 48 * MiB), digest)


class DeviceMapperFaultTests(uefi_vm.MachineTestCase):
    """Disks that fail under the agent, made with device-mapper targets
    (``error``: every sector past 64 MiB answers EIO; ``flakey``: every
    write fails).  This machine's kernel has no device-mapper, so the agent
    runs in the QEMU test machine (tests/integration/uefi_vm.py), whose
    Debian kernel has it, over its virtio disk (a loop device here)."""

    def write_to_dm(self, table: str) -> tuple[uefi_vm.UefiMachine, str,
                                               dict[str, Any]]:
        """Boot the machine with dm device "dying" (``table``, where
        $sectors is the virtio disk's size) as the agent's only disk and
        have the agent write a 160 MiB image to it: (machine, the image's
        path, the command's result)."""
        image = os.path.join(self.www, "disk.img")
        digest = h.make_disk_image(image, 160 * MiB)
        setup = uefi_vm.device_mapper_setup([("dying", table)])
        machine = self.machine
        self.start_agent(["--standalone", "--agent-token", TOKEN,
                          "--listen-host", "0.0.0.0",
                          "--device-allowlist", "/dev/dm-0",
                          "--image-download-connection-retries", "1"],
                         setup=setup)
        machine.wait_for_serial(r"dm dying: 0 \d+ ", 5)
        status, _, body = agent_api.call(
            self.netns, "POST", f"/v1/commands/?wait=true&agent_token={TOKEN}",
            {"name": "standby.prepare_image", "params": {"image_info": {
                "id": "img", "urls": ["http://127.0.0.1:8080/disk.img"],
                "os_hash_algo": "sha256", "os_hash_value": digest,
                "disk_format": "raw"}}}, port=self.port, timeout=300)
        self.assertEqual(status, 200, body)
        self.assertEqual(body["command_status"], "FAILED", body)
        self.assertEqual(body["command_error"]["type"], "ImageWriteError")
        self.assertIn("Input/output error", body["command_error"]["details"])
        machine.wait_for_serial("picked root device /dev/dm-0", 5)
        machine.wait_for_serial(r"writing /dev/dm-0: Input/output error", 5)
        return machine, image, body

    def test_error_target_past_64_mib(self) -> None:
        good = 64 * MiB // 512
        machine, image, _ = self.write_to_dm(
            f"0 {good} linear /dev/vda 0\\n"
            f"{good} $((sectors - {good})) error\\n")
        machine.wait_for_serial(rf"dm dying: 0 {good} linear \d+:0 0;"
                                rf"{good} \d+ error", 5)
        # the first 64 MiB still work: the partition table was wiped there,
        # the end of the disk could not be
        machine.wait_for_serial(r"wiped the start of /dev/dm-0 \(its "
                                r"partition table\) after a failed write; "
                                r"its end could not be zeroed", 5)
        machine.stop()
        pttype = h.run(["blkid", "--probe", "--match-tag", "PTTYPE",
                        "--output", "value", self.device], check=False)
        self.assertEqual(pttype.stdout.strip(), "")
        # what lies before the failing sector is the image's
        with open(self.device, "rb") as disk, open(image, "rb") as src:
            disk.seek(MiB)
            src.seek(MiB)
            self.assertEqual(disk.read(8 * MiB), src.read(8 * MiB))

    def test_flakey_target_failing_every_write(self) -> None:
        # a disk that reads but takes no write at all: up 0 s, down 1 h
        machine, _, _ = self.write_to_dm(
            "0 $sectors flakey /dev/vda 0 0 3600 1 error_writes\\n")
        machine.wait_for_serial(r"dm dying: 0 \d+ flakey \d+:0 0 0 3600 1 "
                                r"error_writes", 5)
        # nothing can make it unbootable: the agent says so
        machine.wait_for_serial(r"could not wipe /dev/dm-0 after a failed "
                                r"write: .*could not zero the start and the "
                                r"end of /dev/dm-0", 5)
