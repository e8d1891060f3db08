"""Parsers on real outputs captured from real machines (tests/fixtures;
each fixture names its source in its header)."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from ipa_twisted.hardware import dmi, ipmi, lshw, system
from tests.fixtures import load

GiB_MB = 1024


class LscpuTests(SynchronousTestCase):
    def cpu(self, name: str, cpuinfo: str | None = None) -> system.CPU:
        info = load("cpuinfo", cpuinfo) if cpuinfo else None
        return system.parse_cpu(load("lscpu", name), info, "x86_64")

    def test_two_socket_xeon(self) -> None:
        cpu = self.cpu("server-2s-intel-xeon-gold-6130.txt")
        self.assertEqual(
            (cpu.model_name, cpu.frequency, cpu.count, cpu.architecture,
             cpu.socket_count),
            ("Intel(R) Xeon(R) Gold 6130 CPU @ 2.10GHz", "3700.0000", 64,
             "x86_64", 2))
        self.assertIn("avx512f", cpu.flags)
        self.assertEqual(cpu.flags[:3], ["fpu", "vme", "de"])

    def test_two_socket_epyc_older_layout(self) -> None:
        cpu = self.cpu("server-2s-amd-epyc-7742.txt")
        self.assertEqual((cpu.model_name, cpu.count, cpu.socket_count,
                          cpu.frequency),
                         ("AMD EPYC 7742 64-Core Processor", 128, 2,
                          "2250.0000"))
        self.assertIn("sse4_2", cpu.flags)

    def test_laptop(self) -> None:
        cpu = self.cpu("laptop-intel-core-i5-1145g7.txt")
        self.assertEqual((cpu.count, cpu.socket_count, cpu.frequency),
                         (8, 1, "4400.0000"))

    def test_vm_without_frequency_uses_cpuinfo(self) -> None:
        cpu = self.cpu("vm-firecracker-epyc.txt", "vm-firecracker-epyc.txt")
        self.assertEqual((cpu.model_name, cpu.count, cpu.socket_count),
                         ("AMD EPYC", 2, 1))
        self.assertEqual(cpu.frequency, "2596.096")

    def test_cpuinfo_alone(self) -> None:
        cpu = system.parse_cpu(None, load("cpuinfo",
                                          "server-oracle-x5-2-oda.txt"),
                               "x86_64")
        self.assertEqual(cpu.model_name,
                         "Intel(R) Xeon(R) CPU E5-2699 v3 @ 2.30GHz")
        self.assertEqual(cpu.count, 16)  # 16 "processor" blocks
        # (this old kernel lists avx but not avx2)
        self.assertIn("vmx", cpu.flags)
        self.assertNotIn("avx2", cpu.flags)
        self.assertEqual(cpu.socket_count, 0)


class LshwTests(SynchronousTestCase):
    def test_server(self) -> None:
        root = lshw.parse(load("lshw", "server-hp-proliant-dl360p-gen8.json"))
        # 16 DIMMs of 16 GiB in the banks of memory:0 and memory:1
        self.assertEqual(lshw.physical_memory_mb(root), 16 * 16 * GiB_MB)
        self.assertEqual(lshw.system_vendor(root), {
            "product_name": "ProLiant DL360p Gen8 (763480-B21)",
            "serial_number": "[REMOVED]", "manufacturer": "HP",
            "firmware": {"vendor": "HP", "version": "P71",
                         "build_date": "07/01/2015"}})
        self.assertEqual(lshw.nic_speeds(root), {"eno1": 10000,
                                                 "eno2": 10000})

    def test_laptop_list_output(self) -> None:
        root = lshw.parse(load("lshw", "laptop-hp-probook-6450b.json"))
        self.assertEqual(lshw.physical_memory_mb(root), 6 * GiB_MB)
        self.assertEqual(lshw.system_vendor(root)["product_name"],
                         "HP ProBook 6450b (WZ299UT#ABA)")
        self.assertEqual(lshw.system_vendor(root)["firmware"]["version"],
                         "68CDE Ver. F.06")
        self.assertEqual(lshw.nic_speeds(root), {"enp0s25": 1000})

    def test_vm_without_dmi(self) -> None:
        root = lshw.parse(load("lshw", "vm-firecracker.json"))
        self.assertEqual(lshw.physical_memory_mb(root), 24 * GiB_MB)
        self.assertEqual(lshw.system_vendor(root), {
            "product_name": "", "serial_number": "", "manufacturer": "",
            "firmware": {"vendor": "", "version": "", "build_date": ""}})
        self.assertEqual(lshw.nic_speeds(root), {})

    def test_bad_output(self) -> None:
        for text in ("[]", "5", "{"):
            with self.assertRaises(ValueError):
                lshw.parse(text)


class DmidecodeTests(SynchronousTestCase):
    def records(self, name: str) -> list[dmi.DMIRecord]:
        return dmi.parse_dmidecode(load("dmidecode", name))

    def test_server_with_bmc(self) -> None:
        recs = self.records("server-dell-poweredge-r740.txt")
        self.assertEqual(dmi.system_vendor(recs)["product_name"],
                         "PowerEdge R740")
        self.assertEqual(dmi.system_vendor(recs)["manufacturer"], "Dell Inc.")
        ipmi_dev, = dmi.by_type(recs, 38)
        self.assertEqual(ipmi_dev.title, "IPMI Device Information")
        self.assertEqual(ipmi_dev.fields["Interface Type"], "KCS (Keyboard Control Style)")
        self.assertEqual(len(dmi.by_type(recs, 4)), 2)
        self.assertEqual(dmi.physical_memory_mb(recs), 16 * 16 * GiB_MB)
        bios, = dmi.by_type(recs, 0)
        self.assertIn("PCI is supported", bios.fields["Characteristics"])

    def test_other_servers(self) -> None:
        cases = {
            "server-hpe-proliant-dl380-gen10.txt": ("ProLiant DL380 Gen10",
                                                    768 * GiB_MB),
            "server-lenovo-thinksystem-sr650.txt": (
                "ThinkSystem SR650 -[7X06CTO1WW]-", 512 * GiB_MB),
            "server-supermicro-sys-1029p-wtr.txt": ("SYS-1029P-WTR",
                                                    384 * GiB_MB),
        }
        for name, (product, memory) in cases.items():
            recs = self.records(name)
            self.assertEqual(dmi.system_vendor(recs)["product_name"], product)
            self.assertEqual(dmi.physical_memory_mb(recs), memory, name)
            self.assertEqual(len(dmi.by_type(recs, 38)), 1, name)

    def test_laptops(self) -> None:
        recs = self.records("laptop-dell-latitude-5420.txt")
        self.assertEqual(dmi.system_vendor(recs)["product_name"],
                         "Latitude 5420")
        self.assertEqual(dmi.physical_memory_mb(recs), 16 * GiB_MB)
        self.assertEqual(dmi.by_type(recs, 38), [])
        recs = self.records("laptop-lenovo-thinkpad-t14-gen1.txt")
        self.assertEqual(dmi.physical_memory_mb(recs), 32 * GiB_MB)

    def test_vms(self) -> None:
        recs = self.records("vm-qemu-standard-pc.txt")
        vendor = dmi.system_vendor(recs)
        self.assertEqual((vendor["manufacturer"], vendor["product_name"]),
                         ("QEMU", "Standard PC (Q35 + ICH9, 2009)"))
        self.assertEqual(dmi.physical_memory_mb(recs), 8 * GiB_MB)
        self.assertEqual(dmi.physical_memory_mb(
            self.records("vm-redhat-kvm.txt")), 4 * GiB_MB)
        self.assertEqual(dmi.system_vendor(self.records(
            "vm-vmware-esx.txt"))["product_name"], "VMware Virtual Platform")
        self.assertEqual(self.records("vm-firecracker-no-dmi.txt"), [])

    def test_inspection_summary_shape(self) -> None:
        summary = dmi.inspection_summary(
            self.records("server-supermicro-sys-1029p-wtr.txt"))
        self.assertEqual(set(summary), {"bios", "cpu", "memory"})
        self.assertEqual(len(summary["cpu"]), 2)
        # 4 memory arrays of 3 devices each: the count is summed
        self.assertEqual(summary["memory"]["Number Of Devices"], 12)
        self.assertEqual(summary["memory"]["Use"], "System Memory")
        self.assertEqual(len(summary["memory"]["devices"]), 12)
        self.assertTrue(summary["memory"]["devices"][0]["Handle"].startswith(
            "Handle 0x"))
        self.assertEqual(summary["bios"]["Handle"],
                         "Handle 0x0000, DMI type 0, 26 bytes")

    def test_memory_sizes(self) -> None:
        self.assertEqual(dmi.memory_device_mb("16384 MB"), 16384)
        self.assertEqual(dmi.memory_device_mb("32 GB"), 32768)
        self.assertEqual(dmi.memory_device_mb("No Module Installed"), 0)


class IpmitoolTests(SynchronousTestCase):
    def lan(self, name: str) -> ipmi.LanInfo:
        return ipmi.parse_lan_print(load("ipmitool", name))

    def test_lan_print(self) -> None:
        self.assertEqual(self.lan("lan-print-dell-idrac-assisted-installer.txt"),
                         ipmi.LanInfo("10.16.218.144", "4c:d9:8f:03:e8:74"))
        self.assertEqual(self.lan("lan-print-supermicro-dfinity.txt"),
                         ipmi.LanInfo("10.12.4.62", "3c:ec:ef:2f:7a:79"))
        self.assertEqual(self.lan("lan-print-hp-ilo-fusioninventory-issue140.txt"),
                         ipmi.LanInfo("192.168.191.119", "00:1b:78:df:c7:48"))
        self.assertEqual(self.lan("lan-print-gprovision-unknown-vendor.txt"),
                         ipmi.LanInfo("10.155.8.180", "00:26:fd:a0:0d:52"))
        self.assertEqual(self.lan("lan-print-glpi-sample1-intel-mac.txt"),
                         ipmi.LanInfo("0.0.0.0", "00:15:17:8f:48:32"))

    def test_lan6_print_without_addresses(self) -> None:
        text = load("ipmitool", "lan6-print-assisted-installer.txt")
        # IPv4 only, and every address is ::/N
        self.assertEqual(ipmi.parse_lan6_addresses(text), (False, []))
        self.assertFalse(ipmi.lan6_has_global_address(text))


class BMCProbeTests(SynchronousTestCase):
    """Channel logic over the real captures."""

    def probe(self, answers: dict[str, tuple[int, str, str]]) -> ipmi.BMCInfo:
        async def run(argv: list[str]) -> tuple[int, str, str]:
            return answers.get(" ".join(argv[1:]), (1, "", "Invalid channel 9"))

        from twisted.internet.defer import ensureDeferred

        return self.successResultOf(ensureDeferred(ipmi.probe_bmc(run)))

    def test_first_channel_with_an_address(self) -> None:
        lan = load("ipmitool", "lan-print-dell-idrac-assisted-installer.txt")
        empty = load("ipmitool", "lan-print-glpi-sample1-intel-mac.txt")
        v6 = load("ipmitool", "lan6-print-assisted-installer.txt")
        info = self.probe({
            "lan print 1": (0, empty, ""), "lan6 print 1": (0, v6, ""),
            "lan print 2": (0, lan, ""), "lan6 print 2": (0, v6, ""),
        })
        self.assertEqual(info, ipmi.BMCInfo("10.16.218.144", "::/0",
                                            "4c:d9:8f:03:e8:74"))

    def test_no_address_configured(self) -> None:
        empty = load("ipmitool", "lan-print-glpi-sample1-intel-mac.txt")
        info = self.probe({"lan print 1": (0, empty, "")})
        # IPMI present but unconfigured: 0.0.0.0, ::/0, and no MAC
        self.assertEqual(info, ipmi.BMCInfo("0.0.0.0", "::/0", None))
