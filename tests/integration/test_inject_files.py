"""The inject_files deploy step, run by a sandboxed agent on a loop device
holding two ext4 filesystems made here (what a deployed image leaves),
one of them hostile: links to this machine's files and a FIFO.  The
results are read back with debugfs (no mount on this machine)."""

from __future__ import annotations

import base64
import os
from typing import Any

from tests.integration import agent_api
from tests.integration import harness as h
from tests.integration.base import SandboxTestCase

MiB = 1024 ** 2
TOKEN = "i" * 40
NODE_UUID = "0b8c6bbd-1c1e-4d8b-a4b4-0d8a1d7f5a10"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


class InjectFilesTests(SandboxTestCase):
    disk_size = 5 << 30

    def setUp(self) -> None:
        super().setUp()
        dev = self.device
        h.run(["sgdisk", "-n", "1:2048:+64M", "-c", "1:boot", "-t", "1:8300",
               "-n", "2:0:+128M", "-c", "2:root", "-t", "2:8300", dev])
        h.run(["partprobe", dev])
        # a file of this machine that links in the image point at
        self.victim = os.path.join(self.workdir, "victim")
        with open(self.victim, "w") as f:
            f.write("this machine's\n")
        boot = os.path.join(self.workdir, "boot-tree")
        os.makedirs(os.path.join(boot, "grub"))
        root = os.path.join(self.workdir, "root-tree")
        etc = os.path.join(root, "etc")
        os.makedirs(etc)
        with open(os.path.join(etc, "hostname"), "w") as f:
            f.write("image\n")
        os.symlink(self.victim, os.path.join(etc, "hijack"))
        os.symlink("../../../../../../..", os.path.join(etc, "up"))
        os.mkfifo(os.path.join(etc, "fifo"))
        h.run(["mkfs.ext4", "-q", "-F", "-L", "boot", "-d", boot, dev + "p1"])
        h.run(["mkfs.ext4", "-q", "-F", "-L", "root", "-d", root, dev + "p2"])
        www = os.path.join(self.workdir, "www")
        os.makedirs(www)
        with open(os.path.join(www, f"motd-{NODE_UUID}"), "w") as f:
            f.write("served for this node\n")
        h.serve_http(self.cleanups, self.netns, 8092, www)
        self.agent = h.Agent(self.cleanups, self.netns, self.workdir, dev,
                             None, ["--standalone", "--agent-token", TOKEN,
                                    "--listen-host", "127.0.0.1"])
        self.agent.wait_for_log("agent API listening", 30)

    def step(self, files: list[dict[str, Any]]) -> Any:
        return agent_api.command(
            self.netns, TOKEN, "deploy.execute_deploy_step",
            step={"step": "inject_files", "interface": "deploy",
                  "priority": 0, "args": {"files": files}},
            node={"uuid": NODE_UUID, "instance_info": {},
                  "properties": {"root_device": {"name": self.device}}},
            ports=[])

    def debugfs(self, part: str, request: str) -> str:
        return h.run(["debugfs", "-R", request, self.device + part]).stdout

    def test_files_land_in_the_image_and_nowhere_else(self) -> None:
        body = self.step([
            {"path": "/etc/hostname", "content": b64(b"node-1\n"),
             "mode": 0o640},
            {"path": "/etc/new/dir/conf", "content": b64(b"k=v\n"),
             "dirmode": 0o700},
            {"path": "/grub/custom.cfg", "content": b64(b"# custom\n")},
            {"path": "/motd", "partition": "LABEL=root",
             "content": "http://127.0.0.1:8092/motd-{node[uuid]}"},
            {"path": "/etc/hijack", "content": b64(b"written by the step")},
        ])
        self.assertEqual(body["command_status"], "SUCCEEDED", body)
        self.assertEqual(body["command_result"]["deploy_result"], [
            f"/etc/hostname: 7 bytes written on {self.device}p2",
            f"/etc/new/dir/conf: 4 bytes written on {self.device}p2",
            f"/grub/custom.cfg: 9 bytes written on {self.device}p1",
            f"/motd: 21 bytes written on {self.device}p2",
            f"/etc/hijack: 19 bytes written on {self.device}p2"])
        self.assertEqual(self.debugfs("p2", "cat /etc/hostname"), "node-1\n")
        self.assertIn("Mode:  0640", self.debugfs("p2", "stat /etc/hostname"))
        self.assertEqual(self.debugfs("p2", "cat /etc/new/dir/conf"),
                         "k=v\n")
        self.assertIn("Mode:  0700", self.debugfs("p2", "stat /etc/new/dir"))
        self.assertEqual(self.debugfs("p1", "cat /grub/custom.cfg"),
                         "# custom\n")
        self.assertEqual(self.debugfs("p2", "cat /motd"),
                         "served for this node\n")
        # the link led to the image's own path, never to this machine's
        with open(self.victim) as f:
            self.assertEqual(f.read(), "this machine's\n")
        self.assertIn("Type: symlink", self.debugfs("p2", "stat /etc/hijack"))
        self.assertEqual(self.debugfs("p2", f"cat {self.victim}"),
                         "written by the step")

        # a FIFO in the file's place, a path up and out: refused
        for path in ("/etc/fifo", "/etc/up/x"):
            body = self.step([{"path": path, "content": b64(b"no")}])
            self.assertEqual(body["command_status"], "FAILED", body)
            self.assertEqual(body["command_error"]["type"], "InjectError")
            self.assertIn(path, body["command_error"]["details"])
        self.assertIn("Type: FIFO", self.debugfs("p2", "stat /etc/fifo"))

        # deleted
        body = self.step([{"path": "/etc/hostname", "deleted": True}])
        self.assertEqual(body["command_status"], "SUCCEEDED", body)
        self.assertIn("File not found",
                      h.run(["debugfs", "-R", "stat /etc/hostname",
                             self.device + "p2"]).stderr)
        # nothing is left mounted (in the agent's mount namespace)
        pid = h.child_pid(self.agent.proc.pid)
        with open(f"/proc/{pid}/mounts") as f:
            mounts = f.read()
        self.assertIn("/proc", mounts)
        self.assertNotIn(self.device, mounts)
        self.assertIn("inject_files: /etc is on", self.agent.read_log())
