"""The inventory as operators and Ironic see it: ``ipa-inventory`` on this
machine (sandboxed), and ``poll.get_hardware_info`` of a running agent
with LLDP frames arriving on its veth after it started."""

from __future__ import annotations

import json
import os
import socket
import struct
import sys
import time


from ipa_twisted.hardware import lldp
from tests.integration import agent_api
from tests.integration import harness as h
from tests.integration.base import SandboxTestCase

TOKEN = "i" * 40
NIC_TYPES = {
    "name": str, "mac_address": str, "ipv4_address": (str, type(None)),
    "ipv6_address": (str, type(None)), "has_carrier": bool,
    "lldp": (list, type(None)), "vendor": (str, type(None)),
    "product": (str, type(None)), "client_id": (str, type(None)),
    "biosdevname": (str, type(None)), "speed_mbps": (int, type(None)),
    "pci_address": (str, type(None)), "driver": (str, type(None)),
}
DISK_TYPES = {
    "name": str, "model": (str, type(None)), "size": int, "rotational": bool,
    "wwn": (str, type(None)), "serial": (str, type(None)),
    "vendor": (str, type(None)), "wwn_with_extension": (str, type(None)),
    "wwn_vendor_extension": (str, type(None)), "hctl": (str, type(None)),
    "by_path": (str, type(None)), "logical_sectors": (int, type(None)),
    "physical_sectors": (int, type(None)), "tran": (str, type(None)),
}


class InventoryTests(SandboxTestCase):
    disk_size = 2 << 30

    def setUp(self) -> None:
        super().setUp()
        h.run(["ip", "netns", "exec", self.netns, "ip", "addr", "add",
               "192.0.2.20/24", "dev", "ipa0.10"])
        self.cmdline = os.path.join(self.workdir, "cmdline-bootif")
        with open(self.cmdline, "w") as f:
            f.write("BOOTIF=01-52-54-00-12-34-56\n")

    def check_types(self, inventory: dict) -> None:
        self.assertEqual(list(inventory)[:9], [
            "interfaces", "cpu", "disks", "memory", "bmc_address",
            "bmc_v6address", "system_vendor", "boot", "hostname"])
        for nic in inventory["interfaces"]:
            self.assertEqual(list(nic), list(NIC_TYPES))
            for key, kind in NIC_TYPES.items():
                self.assertIsInstance(nic[key], kind, key)
        for disk in inventory["disks"]:
            self.assertEqual(list(disk), list(DISK_TYPES))
            for key, kind in DISK_TYPES.items():
                self.assertIsInstance(disk[key], kind, key)
        cpu = inventory["cpu"]
        self.assertEqual(list(cpu), ["model_name", "frequency", "count",
                                     "architecture", "flags", "socket_count"])
        self.assertIsInstance(cpu["count"], int)
        self.assertGreater(cpu["count"], 0)
        self.assertEqual(cpu["architecture"], os.uname().machine)
        self.assertTrue(all(isinstance(f, str) for f in cpu["flags"]))
        self.assertIsInstance(cpu["socket_count"], int)
        self.assertIsInstance(inventory["memory"]["total"], int)
        self.assertIsInstance(inventory["memory"]["physical_mb"], int)
        vendor = inventory["system_vendor"]
        self.assertEqual(list(vendor), ["product_name", "serial_number",
                                        "manufacturer", "firmware"])
        self.assertEqual(list(vendor["firmware"]),
                         ["vendor", "version", "build_date"])
        self.assertEqual(inventory["boot"], {
            "current_boot_mode": "uefi" if os.path.isdir("/sys/firmware/efi")
            else "bios", "pxe_interface": "01-52-54-00-12-34-56"})
        self.assertIsInstance(inventory["hostname"], str)

    def test_ipa_inventory_command(self) -> None:
        out = h.sandboxed(self.netns, self.device,
                          os.path.join(self.workdir, "stubs"),
                          [os.path.join(os.path.dirname(sys.executable),
                                        "ipa-inventory"), "--pretty",
                           "--device-allowlist", self.device,
                           "--cmdline-file", self.cmdline]).stdout
        self.assertTrue(out.startswith("{\n  \"interfaces\""))
        inventory = json.loads(out)
        self.check_types(inventory)
        self.assertEqual([(n["name"], n["mac_address"], n["ipv4_address"])
                          for n in inventory["interfaces"]],
                         [("ipa0.10", h.NODE_MAC, "192.0.2.20")])
        self.assertEqual([(d["name"], d["size"]) for d in inventory["disks"]],
                         [(self.device, 2 << 30)])
        # no IPMI device here: no BMC and no bmc_mac key
        self.assertIsNone(inventory["bmc_address"])
        self.assertNotIn("bmc_mac", inventory)

    def test_agent_inventory_with_lldp_arriving_later(self) -> None:
        agent = h.Agent(self.cleanups, self.netns, self.workdir, self.device,
                        None, ["--standalone", "--agent-token", TOKEN,
                               "--listen-host", "127.0.0.1", "--collect-lldp",
                               "--lldp-timeout", "60", "--cmdline-file",
                               self.cmdline])
        agent.wait_for_log("agent API listening", 30)
        # The API is up while LLDP is still being listened for.
        self.assertIn("listening for LLDP on", agent.read_log())
        first = agent_api.command(self.netns, TOKEN,
                                  "poll.get_hardware_info")["command_result"]
        self.check_types(first)
        nic, = first["interfaces"]
        self.assertIsNone(nic["lldp"])  # still listening, nothing yet
        frame = (lldp.LLDP_MULTICAST + bytes.fromhex("020000aabbcc")
                 + struct.pack("!H", 0x88CC) + lldp.build_lldpdu([
                     (1, b"\x04\x02\x00\x00\xaa\xbb\xcc"),
                     (2, b"\x05swp7"), (3, b"\x00\x78"),
                     (5, b"leaf-1"),
                     (127, bytes.fromhex("0080c2010064"))]))
        with h.in_netns(self.netns):
            sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
            sock.bind(("ipapeer", 0))
            sock.send(frame)
            sock.close()
        deadline = time.monotonic() + 10
        while "LLDP frame on ipa0.10" not in agent.read_log():
            self.assertLess(time.monotonic(), deadline, agent.read_log())
            time.sleep(0.1)
        later = agent_api.command(self.netns, TOKEN,
                                  "poll.get_hardware_info")["command_result"]
        self.assertEqual(later["interfaces"][0]["lldp"], [
            [1, "04020000aabbcc"],
            [2, "05" + b"swp7".hex()], [3, "0078"],
            [5, b"leaf-1".hex()], [127, "0080c2010064"]])
