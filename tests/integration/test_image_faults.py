"""Image writes that go wrong, with a sandboxed agent and real disks:
a disk that fails mid-write, a wrong checksum, and the progress of a slow
download.  (This kernel has no device-mapper, so the failing disk is a
loop device whose backing file lives on a small tmpfs: past its size every
write fails, as a dying disk's do.)"""

from __future__ import annotations

import os
import sys
import time


from tests.integration import agent_api
from tests.integration import harness as h
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
                         r"could not wipe")

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
