"""A third-party hardware manager (examples/ipa-twisted-example-manager),
installed beside a sandboxed agent, is found through its entry point and
wins dispatch over the generic manager."""

from __future__ import annotations

import os
import subprocess
import sys


from tests.integration import agent_api
from tests.integration import harness as h
from tests.integration.base import SandboxTestCase

TOKEN = "e" * 40
EXAMPLE = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir,
                       os.pardir, "examples", "ipa-twisted-example-manager")


class ThirdPartyManagerTests(SandboxTestCase):
    disk_size = 1 << 30

    def setUp(self) -> None:
        super().setUp()
        self.site = os.path.join(self.workdir, "site")
        result = subprocess.run(
            [sys.executable, "-m", "pip", "install", "-q", "--no-deps",
             "--target", self.site, EXAMPLE],
            capture_output=True, text=True)
        if result.returncode != 0:
            raise AssertionError(f"cannot install the example: {result.stderr}")

    def test_example_manager_wins(self) -> None:
        agent = h.Agent(self.cleanups, self.netns, self.workdir, self.device,
                        None, ["--standalone", "--agent-token", TOKEN,
                               "--listen-host", "127.0.0.1"],
                        env={"PYTHONPATH": self.site,
                             "IPA_TWISTED_EXAMPLE_MANAGER": "1"})
        agent.wait_for_log("agent API listening", 30)
        log = agent.read_log()
        self.assertIn("hardware manager ExampleVendorManager (support 3", log)
        steps = agent_api.command(self.netns, TOKEN, "clean.get_clean_steps",
                                  node={"uuid": "n"}, ports=[])
        result = steps["command_result"]
        names = {manager: [s["step"] for s in found]
                 for manager, found in result["clean_steps"].items()}
        # erase_devices_metadata: the example (support 3) beats generic (1)
        self.assertEqual(sorted(names["ExampleVendorManager"]),
                         ["erase_devices_metadata", "example_firmware_report"])
        self.assertNotIn("erase_devices_metadata",
                         names["GenericHardwareManager"])
        self.assertEqual(result["hardware_manager_version"], {
            "example_vendor_manager": "1.0",
            "generic_hardware_manager": "1.2"})
        versions = result["hardware_manager_version"]
        report = agent_api.command(
            self.netns, TOKEN, "clean.execute_clean_step",
            step={"step": "example_firmware_report", "interface": "deploy"},
            node={}, ports=[], clean_version=versions)
        self.assertEqual(report["command_status"], "SUCCEEDED", report)
        self.assertEqual(report["command_result"]["clean_result"]["kernel"],
                         os.uname().release)
        h.run(["parted", "-s", self.device, "mklabel", "gpt"])
        erase = agent_api.command(
            self.netns, TOKEN, "clean.execute_clean_step",
            step={"step": "erase_devices_metadata", "interface": "deploy"},
            node={}, ports=[], clean_version=versions)
        self.assertEqual(erase["command_status"], "SUCCEEDED", erase)
        self.assertEqual(erase["command_result"]["clean_result"],
                         {"erased_by": "example_vendor_manager"})
        self.assertIn("Example Corp: erasing metadata", agent.read_log())
        pttype = h.run(["blkid", "--probe", "--match-tag", "PTTYPE",
                        "--output", "value", self.device], check=False)
        self.assertEqual(pttype.stdout.strip(), "")
