"""The generic manager's inventory with fake tools (real captured outputs
as their answers), and with no tools at all."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import ensureDeferred
from twisted.trial.unittest import SynchronousTestCase

from ipa_twisted.config import load_config
from ipa_twisted.context import RunningAgent
from ipa_twisted.hardware import ipmi
from ipa_twisted.hardware.disks import DeviceGuard, parse_lsblk
from ipa_twisted.hardware.generic import GenericHardwareManager
from ipa_twisted.testing import FakeProcessRunner
from tests.fixtures import load


class Manager(SynchronousTestCase):
    def make(self, tools: dict[str, str], **lookup: Any
             ) -> tuple[GenericHardwareManager, FakeProcessRunner]:
        process = FakeProcessRunner()
        for tool, output in tools.items():
            process.add(tool, output)
        context = RunningAgent(config=load_config(), reactor=None,
                               process=process, guard=DeviceGuard(None))
        context.lookup_config.update(lookup)
        manager = GenericHardwareManager()
        manager.agent = context
        return manager, process

    def inventory(self, manager: GenericHardwareManager) -> dict[str, Any]:
        return self.successResultOf(ensureDeferred(
            manager.list_hardware_info()))


class InventoryTests(Manager):
    def test_with_real_tool_outputs(self) -> None:
        manager, process = self.make({
            "lscpu": load("lscpu", "server-2s-intel-xeon-gold-6130.txt"),
            "lshw": load("lshw", "server-hp-proliant-dl360p-gen8.json"),
            "lsblk": load("lsblk", "firecracker-loops.txt"),
        })
        inv = self.inventory(manager)
        self.assertEqual(inv["cpu"]["count"], 64)
        self.assertEqual(inv["cpu"]["socket_count"], 2)
        self.assertEqual(inv["memory"]["physical_mb"], 262144)
        self.assertEqual(inv["system_vendor"]["product_name"],
                         "ProLiant DL360p Gen8 (763480-B21)")
        self.assertEqual([d["name"] for d in inv["disks"]], ["/dev/vda"])
        # every tool ran once, lshw included (shared by three fields)
        tools = [c[0] for c in process.calls]
        self.assertEqual(tools.count("lshw"), 1)
        self.assertEqual(tools.count("lscpu"), 1)

    def test_without_any_tool(self) -> None:
        manager, _ = self.make({})
        inv = self.inventory(manager)
        # nothing fails as a whole: the fields that need tools are empty
        self.assertEqual(inv["disks"], [])
        self.assertIsInstance(inv["memory"]["total"], int)
        self.assertIsInstance(inv["cpu"]["count"], int)  # /proc/cpuinfo
        # without lshw and dmidecode: sysfs DMI (absent in this VM: "")
        self.assertIsInstance(inv["system_vendor"]["product_name"], str)
        self.assertEqual(list(inv["system_vendor"]), [
            "product_name", "serial_number", "manufacturer", "firmware"])
        self.assertIsNone(inv["bmc_address"])
        self.assertNotIn("bmc_mac", inv)
        self.flushLoggedErrors()


class BMCTests(Manager):
    def setUp(self) -> None:
        self.patch(ipmi, "has_ipmi_device", lambda: True)
        lan = load("ipmitool", "lan-print-dell-idrac-assisted-installer.txt")
        v6 = load("ipmitool", "lan6-print-assisted-installer.txt")
        self.manager, self.process = self.make({})

        def ipmitool(argv: Any) -> Any:
            from ipa_twisted.process import ProcessResult

            out = lan if argv[1] == "lan" else v6
            return ProcessResult(tuple(argv), 0, out.encode(), b"")

        self.process.handlers["ipmitool"] = ipmitool

    def test_bmc_fields(self) -> None:
        inv = self.inventory(self.manager)
        self.assertEqual(inv["bmc_address"], "10.16.218.144")
        self.assertEqual(inv["bmc_v6address"], "::/0")
        self.assertEqual(inv["bmc_mac"], "4c:d9:8f:03:e8:74")
        self.assertEqual(list(inv)[-1], "bmc_mac")
        # asked again: the BMC is probed once per agent
        calls = len(self.process.calls)
        self.inventory(self.manager)
        ipmi_calls = [c for c in self.process.calls[calls:]
                      if c[0] == "ipmitool"]
        self.assertEqual(ipmi_calls, [])

    def test_skip_bmc_detect(self) -> None:
        manager, process = self.make({}, agent_skip_bmc_detect=True)
        process.handlers.update(self.process.handlers)
        inv = self.inventory(manager)
        self.assertIsNone(inv["bmc_address"])
        self.assertIsNone(inv["bmc_v6address"])
        self.assertNotIn("bmc_mac", inv)
        self.assertFalse([c for c in process.calls if c[0] == "ipmitool"])


class UdevTests(SynchronousTestCase):
    OUT = ('{"blockdevices": [{"kname": "sda", "model": "M", "size": 100, '
           '"rota": false, "type": "disk", "serial": null, "wwn": null, '
           '"log-sec": 512, "phy-sec": 512, "tran": "sas"}, '
           '{"kname": "sdb", "model": "M", "size": 100, "rota": false, '
           '"type": "disk", "serial": "LSBLK1", "wwn": "0x500a", '
           '"log-sec": 512, "phy-sec": 512, "tran": "sas"}]}')

    def test_udev_fills_gaps_lsblk_wins(self) -> None:
        props = {"ID_SERIAL_SHORT": "SHORT", "ID_SERIAL": "LONG_SHORT",
                 "ID_WWN": "0x5000c5", "ID_WWN_WITH_EXTENSION": "0x5000c5ext",
                 "DM_WWN_VENDOR_EXTENSION": "0xext"}
        sda, sdb = parse_lsblk(self.OUT, DeviceGuard(None),
                               sys_block="/nonexistent",
                               udev=lambda kname: props)
        self.assertEqual((sda.serial, sda.wwn, sda.wwn_with_extension,
                          sda.wwn_vendor_extension),
                         ("SHORT", "0x5000c5", "0x5000c5ext", "0xext"))
        self.assertEqual((sdb.serial, sdb.wwn), ("LSBLK1", "0x500a"))
        # hints see every known value
        self.assertEqual(sdb.hint_view()["serial"],
                         ["LSBLK1", "SHORT", "LONG_SHORT"])
        self.assertEqual(sdb.hint_view()["wwn"], ["0x500a", "0x5000c5"])
