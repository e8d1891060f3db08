"""Cleaning by a real Ironic 39.0.0 through our agent (sandboxed, its disk
a loop device full of data).  Automated cleaning with Ironic's defaults
runs erase_devices_metadata then erase_devices: the disk ends up zeroed
and the erase report's summary is in the node's driver_internal_info.
Manual cleaning runs each erase step by itself."""

from __future__ import annotations

import json
from typing import Any

from tests.integration import harness as h
from tests.integration import scenarios
from tests.integration.base import IronicTestCase

MiB = 1024 ** 2


class AutomatedCleaningTests(IronicTestCase):
    environment = {"heartbeat_timeout": 30, "automated_clean": True,
                   "disk_size": 512 * MiB}

    def test_automated_cleaning_erases_and_reports(self) -> None:
        result = scenarios.automated_clean(self.env)
        node = result["node"]
        self.assertEqual(node["provision_state"], "available")
        self.assertIsNone(node["last_error"])
        log = result["agent_log"]
        # Ironic's default order: metadata (99), then the data (10)
        metadata = log.index("executing clean step erase_devices_metadata")
        data = log.index("executing clean step erase_devices ")
        self.assertLess(metadata, data)
        self.assertIn("read-back check passed", log)
        # the disk reads as zeroes, all of it
        zero = bytes(8 * MiB)
        with open(self.env.device, "rb") as f:
            for _ in range(result["size"] // len(zero)):
                self.assertEqual(f.read(len(zero)), zero)
        # the report's summary, as Ironic stored it from our heartbeat
        info = node["driver_internal_info"]
        self.assertEqual(info.get("agent_status"), "end")
        message = info["agent_status_message"]
        prefix = "erase_devices finished: "
        self.assertTrue(message.startswith(prefix), message)
        summary = json.loads(message[len(prefix):])
        h.say(f"driver_internal_info.agent_status_message: {message}")
        entry = summary[self.env.device]
        self.assertEqual((entry["result"], entry["method"]),
                         ("erased", "discard"))
        self.assertEqual(entry["bytes"], result["size"])
        self.assertTrue(entry["readback"].startswith("passed "), entry)
        # Ironic's clean parameters reached the agent
        self.assertEqual(info.get("disk_erasure_concurrency"), 4)


def reads_zero(device: str, size: int) -> bool:
    zero = bytes(8 * MiB)
    with open(device, "rb") as f:
        for _ in range(size // len(zero)):
            if f.read(len(zero)) != zero:
                return False
    return True


class ManualCleaningTests(IronicTestCase):
    """Each erase step, asked for by manual cleaning, on one node."""

    environment = {"heartbeat_timeout": 30, "disk_size": 256 * MiB}

    def clean(self, step: str) -> tuple[dict[str, Any], int]:
        """(the node after a manual clean with ``step``, the disk's size)"""
        size = scenarios.fill_with_data(self.env.device)
        self.assertEqual(scenarios.partition_table_type(self.env.device),
                         "gpt")
        result = scenarios.manual_clean(self.env, "e2e-manual", [
            {"interface": "deploy", "step": step}])
        node: dict[str, Any] = result["node"]
        self.assertEqual(node["provision_state"], "manageable")
        self.assertIsNone(node["last_error"])
        self.assertIn(f"executing clean step {step} ", result["agent_log"])
        return node, size

    def test_each_erase_step(self) -> None:
        device = self.env.device
        # metadata only: no partition table, no signature; the data stays
        _, size = self.clean("erase_devices_metadata")
        self.assertEqual(scenarios.partition_table_type(device), "")
        self.assertEqual(h.run(["wipefs", "--no-act", device]).stdout, "")
        self.assertFalse(reads_zero(device, size))

        for step in ("erase_devices", "erase_devices_express"):
            node, size = self.clean(step)
            # a loop device's discarded blocks read back as zeroes: the
            # express step discards too (else it would erase metadata only)
            self.assertTrue(reads_zero(device, size), step)
            message = node["driver_internal_info"]["agent_status_message"]
            prefix = f"{step} finished: "
            self.assertTrue(message.startswith(prefix), message)
            entry = json.loads(message[len(prefix):])[device]
            self.assertEqual((entry["result"], entry["method"]),
                             ("erased", "discard"))
            self.assertTrue(entry["readback"].startswith("passed "), entry)
