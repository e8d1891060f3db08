"""Our inventory against ironic-python-agent 13.0.0's, on this machine.

Both run in the same network namespace (a veth ``ipa0.10`` with IPv4 and
IPv6 addresses) and in the same disk-masking sandbox; the only disk is a
loop device.  IPA is installed from PyPI into its own virtualenv (cached).
Field by field, what the issue asks to be equal is equal.
"""

from __future__ import annotations

import json
import os
import sys


from tests.integration import harness as h
from tests.integration.base import SandboxTestCase, unavailable

DUMP = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                    "ipa_inventory_dump.py")
STEPS_DUMP = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                          "ipa_steps_dump.py")


class IPAParityTests(SandboxTestCase):
    disk_size = 3 << 30

    def setUp(self) -> None:
        super().setUp()
        try:
            self.ipa = h.ipa_venv()
        except h.Unavailable as e:
            unavailable(e)
        ns = ["ip", "netns", "exec", self.netns]
        h.run(ns + ["ip", "addr", "add", "192.0.2.10/24", "dev", "ipa0.10"])
        h.run(ns + ["ip", "-6", "addr", "add", "fd00:12::10/64", "dev",
                    "ipa0.10", "nodad"])
        self.stubs = os.path.join(self.workdir, "stubs")
        self.cmdline = os.path.join(self.workdir, "cmdline")
        with open(self.cmdline, "w") as f:
            f.write("\n")

    def test_inventory_matches_ipa(self) -> None:
        theirs = json.loads(h.sandboxed(
            self.netns, self.device, self.stubs,
            [os.path.join(self.ipa, "bin", "python"), DUMP, self.device]
        ).stdout)
        ours = json.loads(h.sandboxed(
            self.netns, self.device, self.stubs,
            [os.path.join(os.path.dirname(sys.executable), "ipa-inventory"),
             "--device-allowlist", self.device, "--cmdline-file",
             self.cmdline]).stdout)

        nic_fields = ("name", "mac_address", "ipv4_address", "ipv6_address",
                      "has_carrier", "vendor", "product", "pci_address",
                      "driver", "client_id", "biosdevname", "lldp")
        self.assertEqual(
            [{k: n[k] for k in nic_fields} for n in ours["interfaces"]],
            [{k: n[k] for k in nic_fields} for n in theirs["interfaces"]])
        self.assertEqual([n["name"] for n in ours["interfaces"]], ["ipa0.10"])
        self.assertEqual(ours["interfaces"][0]["ipv4_address"], "192.0.2.10")

        disk_fields = ("name", "size", "rotational", "model", "serial", "wwn",
                       "vendor", "hctl", "by_path", "logical_sectors",
                       "physical_sectors", "tran", "wwn_with_extension",
                       "wwn_vendor_extension")
        self.assertEqual(len(theirs["disks"]), 1)
        self.assertEqual([{k: d[k] for k in disk_fields} for d in ours["disks"]],
                         [{k: d[k] for k in disk_fields}
                          for d in theirs["disks"]])

        for key in ("count", "flags", "model_name", "architecture",
                    "socket_count"):
            self.assertEqual(ours["cpu"][key], theirs["cpu"][key], key)
        self.assertIsInstance(ours["cpu"]["frequency"], str)
        self.assertEqual(ours["memory"], theirs["memory"])
        self.assertEqual(ours["boot"], theirs["boot"])

    def test_steps_match_ipa(self) -> None:
        """Every step we advertise is IPA 13.0.0's, field for field; the
        ones we lack are exactly those listed as not there yet."""
        from ipa_twisted.hardware.generic import (
            NOT_YET,
            GenericHardwareManager,
        )

        theirs = json.loads(h.run([os.path.join(self.ipa, "bin", "python"),
                                   STEPS_DUMP]).stdout)
        generic = GenericHardwareManager()
        for kind in ("clean", "deploy", "service"):
            ours = getattr(generic, f"get_{kind}_steps")({}, [])
            by_name = {s["step"]: s for s in theirs[kind]}
            for step in ours:
                self.assertEqual(step, by_name[step["step"]], kind)
            self.assertEqual(
                sorted(set(by_name) - {s["step"] for s in ours}),
                sorted(NOT_YET[kind]), kind)
