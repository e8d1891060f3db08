"""Automated cleaning by a real Ironic 39.0.0 with its defaults: it runs
erase_devices_metadata then erase_devices through our agent (sandboxed,
its disk a loop device full of data); the disk ends up zeroed and the
erase report's summary is in the node's driver_internal_info."""

from __future__ import annotations

import json

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
