"""Software RAID: the configuration rules, the layout, and what is run.

mdadm, parted and sgdisk are faked; what they print comes from real runs
in the test machine (tests/fixtures/raid, captured by
tests/integration/capture_raid_outputs.py).  The kernel's side (the
arrays in /sys/class/block: md/, slaves/) is a fake sysfs that the fake
mdadm updates as the kernel would.  The real thing, booted from either
disk, is tests/integration/test_raid_vm.py.
"""

from __future__ import annotations

import json
import os
from typing import Any, Sequence

from twisted.internet.defer import ensureDeferred
from twisted.trial.unittest import SynchronousTestCase

from ipa_twisted import errors
from ipa_twisted.config import load_config
from ipa_twisted.context import RunningAgent
from ipa_twisted.hardware import disks, raid
from ipa_twisted.hardware.disks import BlockDevice, DeviceGuard, parse_lsblk
from ipa_twisted.hardware.generic import GenericHardwareManager
from ipa_twisted.hardware.manager import HardwareManagers
from ipa_twisted.process import ProcessResult
from ipa_twisted.testing import FakeProcessRunner
from tests.fixtures import load
from tests.unit.test_bootloader import ThreadsAtOnce

GiB = 1024 ** 3


def r1(**extra: Any) -> dict[str, Any]:
    return {"size_gb": "MAX", "raid_level": "1", "controller": "software",
            **extra}


class FakeSys:
    """A /sys/class/block: disks with partitions, md arrays with their
    slaves (and partitions)."""

    def __init__(self, case: SynchronousTestCase) -> None:
        self.top = case.mktemp()
        os.makedirs(self.top)
        self.minor = 0

    def _dev(self, path: str) -> None:
        self.minor += 1
        with open(os.path.join(path, "dev"), "w") as f:
            f.write(f"254:{self.minor}\n")

    def disk(self, name: str, parts: int = 0) -> None:
        os.makedirs(os.path.join(self.top, name))
        self._dev(os.path.join(self.top, name))
        for n in range(1, parts + 1):
            self.partition(name, raid.member_partition(name, n)[0:]
                           .split("/")[-1], n)

    def partition(self, disk: str, name: str, number: int) -> None:
        path = os.path.join(self.top, disk, name)
        os.makedirs(path)
        self._dev(path)
        with open(os.path.join(path, "partition"), "w") as f:
            f.write(f"{number}\n")
        os.symlink(os.path.join(disk, name), os.path.join(self.top, name))

    def array(self, name: str, members: Sequence[str],
              level: str = "raid1") -> None:
        base = os.path.join(self.top, name)
        os.makedirs(os.path.join(base, "md"))
        os.makedirs(os.path.join(base, "slaves"))
        self._dev(base)
        with open(os.path.join(base, "md", "level"), "w") as f:
            f.write(level + "\n")
        for member in members:
            self.add_slave(name, member)

    def add_slave(self, name: str, member: str) -> None:
        os.symlink(os.path.join("..", "..", member),
                   os.path.join(self.top, name, "slaves", member))

    def remove(self, name: str) -> None:
        import shutil

        for entry in os.listdir(self.top):
            if entry.startswith(name + "p"):
                os.unlink(os.path.join(self.top, entry))
        shutil.rmtree(os.path.join(self.top, name))

    def names(self) -> list[str]:
        return sorted(os.listdir(self.top))


class FakeMdadm:
    """mdadm, parted, sgdisk, partprobe and wipefs: recorded, answering
    with captured outputs, changing the fake sysfs as the kernel would."""

    def __init__(self, runner: FakeProcessRunner, sys: FakeSys) -> None:
        self.sys = sys
        #: devices holding an md superblock
        self.superblocks: set[str] = set()
        #: arrays on the disks, not assembled: {name: members}
        self.on_disk: dict[str, list[str]] = {}
        #: members the kernel does not take at --create (--add needed)
        self.dropped: set[str] = set()
        self.configs: list[str] = []
        for tool in ("mdadm", "parted", "sgdisk", "partprobe", "wipefs"):
            runner.handlers[tool] = getattr(self, tool)

    @staticmethod
    def ok(argv: Sequence[str], out: str = "", code: int = 0,
           err: str = "") -> ProcessResult:
        return ProcessResult(tuple(argv), code, out.encode(), err.encode())

    def parted(self, argv: Sequence[str]) -> ProcessResult:
        if "mkpart" in argv:
            disk = os.path.basename(argv[4])
            have = [n for n in os.listdir(os.path.join(self.sys.top, disk))
                    if n.startswith(disk)]
            number = len(have) + 1
            self.sys.partition(disk, os.path.basename(
                raid.member_partition(f"/dev/{disk}", number)), number)
        return self.ok(argv)

    def sgdisk(self, argv: Sequence[str]) -> ProcessResult:
        if argv[1] == "-F":
            return self.ok(argv, load("raid", "sgdisk-F-vda.txt"))
        return self.ok(argv)

    def partprobe(self, argv: Sequence[str]) -> ProcessResult:
        return self.ok(argv)

    def wipefs(self, argv: Sequence[str]) -> ProcessResult:
        return self.ok(argv, load("raid", "wipefs-af-md0.txt")
                       if "md" in argv[-1] else "")

    def mdadm(self, argv: Sequence[str]) -> ProcessResult:
        args = list(argv[1:])
        if args[0] == "--create":
            md = os.path.basename(args[1])
            members = [os.path.basename(m) for m in
                       args[args.index("--raid-devices") + 2:]]
            level = "raid" + args[args.index("--level") + 1]
            self.sys.array(md, [m for m in members if m not in self.dropped],
                           level)
            self.superblocks |= {f"/dev/{m}" for m in members}
            self.on_disk[md] = members
            return self.ok(argv, err=load("raid",
                                          "mdadm-create-md0-raid1.txt"))
        if args[0] == "--add":
            self.sys.add_slave(os.path.basename(args[1]),
                               os.path.basename(args[2]))
            return self.ok(argv)
        if args[0] == "--stop":
            self.sys.remove(os.path.basename(args[1]))
            return self.ok(argv, err=load("raid", "mdadm-stop-md0.txt"))
        if args[:2] == ["--examine", "--export"]:
            if args[2] in self.superblocks:
                return self.ok(argv, load("raid",
                                          "mdadm-examine-export-vda1.txt"))
            return self.ok(argv, load(
                "raid", "mdadm-examine-export-vda-no-superblock.txt"))
        if args[0] == "--zero-superblock":
            self.superblocks.discard(args[1])
            return self.ok(argv)
        if args[:2] == ["--assemble", "--scan"]:
            for arg in args[2:]:
                with open(arg.split("=", 1)[1]) as f:
                    self.configs.append(f.read())
            for md, members in self.on_disk.items():
                if not os.path.exists(os.path.join(self.sys.top, md)):
                    self.sys.array(md, members)
            return self.ok(argv, err=load("raid",
                                          "mdadm-assemble-scan-config.txt"))
        raise AssertionError(f"unexpected {argv}")


def disk(name: str, size: int = 5 * GiB, **kw: Any) -> BlockDevice:
    return BlockDevice(name=name, model="virtio", size=size,
                       rotational=False, **kw)


class ConfigRulesTests(SynchronousTestCase):
    def problems(self, config: Any, count: int = 2) -> str:
        with self.assertRaises(raid.SoftwareRAIDError) as e:
            raid.validate_config(config, {"uuid": "n1"}, count)
        return str(e.exception)

    def test_valid_configurations(self) -> None:
        raid.validate_config({"logical_disks": [r1()]}, {}, 2)
        raid.validate_config({"logical_disks": [
            r1(size_gb=10, is_root_volume=True, volume_name="root"),
            {"size_gb": "MAX", "raid_level": "0", "controller": "software",
             "physical_disks": [{"name": "/dev/vda"}, {"name": "/dev/vdb"}]},
        ]}, {}, 2)
        raid.validate_config({"logical_disks": [
            r1(size_gb=10), {"size_gb": "MAX", "raid_level": "5",
                             "controller": "software"}]}, {}, 3)

    def test_every_problem_is_named(self) -> None:
        text = self.problems({"logical_disks": [
            {"size_gb": "MAX", "raid_level": "5", "controller": "software",
             "volume_name": "a", "is_root_volume": True},
            {"size_gb": "MAX", "raid_level": "6", "controller": "hw",
             "volume_name": "a", "is_root_volume": True,
             "physical_disks": ["/dev/vda", "/dev/vdb"]},
            {"size_gb": "lots", "raid_level": "50", "controller": "software"},
        ]})
        for expected in (
                "Could not validate Software RAID config for n1",
                "requires one or two logical disks",
                "'controller'='software'",
                "Duplicate software RAID device name a",
                "only one logical disk to be marked as is_root_volume",
                "RAID-1 for the first logical disk",
                "only one RAID device with size 'MAX'",
                "does not support RAID level 50",
                "size_gb must be a whole number",
                "list of device hints (dictionaries)",
                "RAID level 5 with only 2 block devices"):
            self.assertIn(expected, text)

    def test_no_logical_disks(self) -> None:
        self.assertIn("no logical disks", self.problems({}))
        self.assertIn("must be an object", self.problems([]))

    def test_boot_mode_and_partition_table_as_ipa(self) -> None:
        node: dict[str, Any] = {"instance_info": {}, "properties": {}}
        self.assertEqual(raid.node_boot_mode(node, "bios"), "bios")
        self.assertEqual(raid.node_boot_mode(node, "uefi"), "uefi")
        node["properties"]["capabilities"] = "boot_mode:uefi,x:y"
        self.assertEqual(raid.node_boot_mode(node, "bios"), "uefi")
        node["instance_info"]["deploy_boot_mode"] = "bios"
        self.assertEqual(raid.node_boot_mode(node, "uefi"), "bios")
        node["instance_info"]["capabilities"] = {"secure_boot": "true"}
        self.assertEqual(raid.node_boot_mode(node, "bios"), "uefi")
        self.assertEqual(raid.partition_table_type(node, "uefi"), "gpt")
        self.assertEqual(raid.partition_table_type({}, "bios"), "msdos")
        self.assertEqual(raid.partition_table_type(
            {"properties": {"capabilities": "disk_label:gpt"}}, "bios"),
            "gpt")

    def test_layout_arithmetic_as_ipa(self) -> None:
        self.assertEqual(raid.raid_start("uefi", "gpt", None), "551MiB")
        self.assertEqual(raid.raid_start("bios", "gpt", None), "8MiB")
        self.assertEqual(raid.raid_start("bios", "msdos", "2048"), "2048s")
        self.assertEqual(raid.partition_bounds(10, "551MiB"),
                         ("551MiB", "10GiB", 10))
        self.assertEqual(raid.partition_bounds(5, 10), ("10GiB", "15GiB", 15))
        self.assertEqual(raid.partition_bounds(None, 15),
                         ("15GiB", "-1", "-1"))
        self.assertEqual(raid.member_partition("/dev/vda", 1), "/dev/vda1")
        self.assertEqual(raid.member_partition("/dev/nvme0n1", 2),
                         "/dev/nvme0n1p2")

    def test_members_from_physical_disk_hints(self) -> None:
        devices = [disk("/dev/vda", serial="A"), disk("/dev/vdb", serial="B"),
                   disk("/dev/vdc", 8 * GiB, serial="C")]
        every, per = raid.choose_members(devices, [
            r1(physical_disks=[{"serial": "B"}, {"size": ">= 4"}]),
            {"raid_level": "0"}])
        self.assertEqual(per, [["/dev/vdb", "/dev/vda"],
                               ["/dev/vda", "/dev/vdb", "/dev/vdc"]])
        self.assertEqual(every, ["/dev/vdb", "/dev/vda", "/dev/vdc"])
        with self.assertRaises(raid.SoftwareRAIDError) as e:
            raid.choose_members(devices, [r1(physical_disks=[
                {"serial": "C"}, {"serial": "C"}])])
        self.assertIn("No candidates left", str(e.exception))
        with self.assertRaises(raid.SoftwareRAIDError) as e:
            raid.choose_members(devices, [r1(physical_disks=[
                {"serial": "Z"}, {"serial": "C"}])])
        self.assertIn("No candidates for physical disk", str(e.exception))

    def test_export_parsing(self) -> None:
        detail = raid.parse_export(load("raid",
                                        "mdadm-detail-export-md0.txt"))
        member = raid.parse_export(load("raid",
                                        "mdadm-examine-export-vda1.txt"))
        self.assertEqual((detail["MD_LEVEL"], detail["MD_NAME"]),
                         ("raid1", "(none):md0"))
        self.assertRegex(detail["MD_UUID"], r"^([0-9a-f]{8}:){3}[0-9a-f]{8}$")
        self.assertEqual(member["MD_UUID"], detail["MD_UUID"])
        self.assertEqual(raid.parse_export(load(
            "raid", "mdadm-examine-export-vda-no-superblock.txt")), {})


class GuardTests(SynchronousTestCase):
    """An md array is allowed when all its members are."""

    def setUp(self) -> None:
        self.sys = FakeSys(self)
        for name in ("vda", "vdb", "sda"):
            self.sys.disk(name, 2)
        self.sys.array("md0", ["vda1", "vdb1"])
        self.sys.partition("md0", "md0p1", 1)
        self.sys.array("md1", ["vda2", "sda2"])
        self.guard = DeviceGuard(["/dev/vda", "/dev/vdb"], self.sys.top)

    def test_arrays_on_allowed_disks_only(self) -> None:
        for path in ("/dev/md0", "/dev/md0p1", "/dev/vdb1"):
            self.assertTrue(self.guard.allows(path), path)
        for path in ("/dev/md1", "/dev/sda", "/dev/sda2"):
            self.assertFalse(self.guard.allows(path), path)
            self.assertRaises(errors.DeviceNotAllowed, self.guard.check, path)
        self.assertTrue(self.guard.listed("md0"))
        self.assertFalse(self.guard.listed("md1"))

    def test_lsblk_lists_the_allowed_array_as_raid(self) -> None:
        # the captured listing: md0 (raid1, on vda1+vdb1), md1 (the ESP
        # array, on vda2+vdb2), md0's partitions
        sys = FakeSys(self)
        for name in ("vda", "vdb"):
            sys.disk(name, 2)
        sys.array("md0", ["vda1", "vdb1"])
        sys.array("md1", ["vda2", "vdb2"])
        for n in (1, 2):
            sys.partition("md0", f"md0p{n}", n)
        guard = DeviceGuard(["/dev/vda", "/dev/vdb"], sys.top)
        found = parse_lsblk(load("raid", "lsblk-raid.json"), guard,
                            include_partitions=True, sys_block=sys.top)
        kinds = {d.name: d.kind for d in found}
        self.assertEqual(kinds, {
            "/dev/md0": "raid", "/dev/md1": "raid", "/dev/vda": "disk",
            "/dev/vda1": "part", "/dev/vda2": "part", "/dev/vdb": "disk",
            "/dev/vdb1": "part", "/dev/vdb2": "part", "/dev/md0p1": "part",
            "/dev/md0p2": "part"})
        # only vda allowed: no array is (each has a member on vdb)
        found = parse_lsblk(load("raid", "lsblk-raid.json"),
                            DeviceGuard(["/dev/vda"], sys.top),
                            include_partitions=True, sys_block=sys.top)
        self.assertEqual(sorted(d.name for d in found),
                         ["/dev/vda", "/dev/vda1", "/dev/vda2"])


class RaidCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.sys = FakeSys(self)
        for name in ("vda", "vdb", "vdc"):
            self.sys.disk(name)
        self.patch(disks, "SYS_BLOCK", self.sys.top)
        self.process = FakeProcessRunner()
        self.mdadm = FakeMdadm(self.process, self.sys)
        self.context = RunningAgent(
            config=load_config({}), reactor=ThreadsAtOnce(), disk_threads=ThreadsAtOnce(),
            process=self.process,
            guard=DeviceGuard(["/dev/vda", "/dev/vdb", "/dev/vdc"],
                              self.sys.top))
        self.devices = [disk("/dev/vda", serial="A"),
                        disk("/dev/vdb", serial="B"),
                        disk("/dev/vdc", serial="C")]
        self.raid = raid.SoftwareRAID(self.context)

    def calls(self, *tools: str) -> list[tuple[str, ...]]:
        return [c for c in self.process.calls if c[0] in tools]

    def create(self, config: dict[str, Any], mode: str = "uefi",
               node: dict[str, Any] | None = None) -> Any:
        return ensureDeferred(self.raid.create(
            node or {"uuid": "n1"}, config, self.devices, mode))


class CreateTests(RaidCase):
    def test_uefi_raid1_root_and_raid0_data_as_ipa_lays_them(self) -> None:
        roots = self.successResultOf(self.create({"logical_disks": [
            r1(is_root_volume=True, volume_name="root",
               physical_disks=[{"serial": "A"}, {"serial": "B"}]),
            {"size_gb": 10, "raid_level": "0", "controller": "software",
             "volume_name": "data", "is_root_volume": False,
             "physical_disks": [{"serial": "A"}, {"serial": "B"}]}]}))
        # MAX last: the data volume first (md0), then the root (md1)
        self.assertEqual(roots, {"/dev/md0": False, "/dev/md1": True})
        self.assertEqual(self.calls("parted", "mdadm"), [
            ("parted", "-s", "/dev/vda", "--", "mklabel", "gpt"),
            ("parted", "-s", "/dev/vdb", "--", "mklabel", "gpt"),
            # the sized volume first, from 551 MiB (an ESP comes before)
            ("parted", "-s", "-a", "optimal", "/dev/vda", "--", "mkpart",
             "primary", "551MiB", "10GiB"),
            ("parted", "-s", "-a", "optimal", "/dev/vdb", "--", "mkpart",
             "primary", "551MiB", "10GiB"),
            ("parted", "-s", "-a", "optimal", "/dev/vda", "--", "mkpart",
             "primary", "10GiB", "-1"),
            ("parted", "-s", "-a", "optimal", "/dev/vdb", "--", "mkpart",
             "primary", "10GiB", "-1"),
            ("mdadm", "--create", "/dev/md0", "--force", "--run",
             "--metadata=1", "--level", "0", "--name", "data",
             "--raid-devices", "2", "/dev/vda1", "/dev/vdb1"),
            ("mdadm", "--create", "/dev/md1", "--force", "--run",
             "--metadata=1", "--level", "1", "--name", "root",
             "--raid-devices", "2", "/dev/vda2", "/dev/vdb2")])
        self.assertNotIn("vdc", str(self.process.calls))

    def test_bios_msdos_starts_at_the_first_free_sector(self) -> None:
        self.successResultOf(self.create(
            {"logical_disks": [r1(), {"size_gb": 3, "raid_level": "1+0",
                                      "controller": "software"}]},
            mode="bios"))
        self.assertIn(("sgdisk", "-F", "/dev/vda"), self.process.calls)
        self.assertEqual(self.calls("parted")[:4], [
            ("parted", "-s", "/dev/vda", "--", "mklabel", "msdos"),
            ("parted", "-s", "/dev/vdb", "--", "mklabel", "msdos"),
            ("parted", "-s", "/dev/vdc", "--", "mklabel", "msdos"),
            ("parted", "-s", "-a", "optimal", "/dev/vda", "--", "mkpart",
             "primary", "2048s", "3GiB")])
        creates = [c for c in self.calls("mdadm") if c[1] == "--create"]
        self.assertEqual([(c[2], c[7], c[-3:]) for c in creates], [
            ("/dev/md0", "10", ("/dev/vda1", "/dev/vdb1", "/dev/vdc1")),
            ("/dev/md1", "1", ("/dev/vda2", "/dev/vdb2", "/dev/vdc2"))])
        # BIOS with the gpt disk_label capability: 8 MiB kept
        self.setUp()
        self.successResultOf(self.create(
            {"logical_disks": [r1()]}, mode="bios",
            node={"properties": {"capabilities": "disk_label:gpt"}}))
        self.assertIn(("parted", "-s", "-a", "optimal", "/dev/vda", "--",
                       "mkpart", "primary", "8MiB", "-1"),
                      self.process.calls)

    def test_a_member_the_kernel_left_out_is_added(self) -> None:
        self.mdadm.dropped = {"vdb1"}
        self.successResultOf(self.create({"logical_disks": [r1(
            physical_disks=[{"serial": "A"}, {"serial": "B"}])]}))
        self.assertIn(("mdadm", "--add", "/dev/md0", "/dev/vdb1"),
                      self.process.calls)

    def test_disks_with_partitions_are_refused_untouched(self) -> None:
        self.sys.partition("vdb", "vdb1", 1)
        failure = self.failureResultOf(self.create({"logical_disks": [
            r1()]}), raid.SoftwareRAIDError)
        self.assertIn("Partitions detected on devices /dev/vdb",
                      str(failure.value))
        self.assertEqual(self.calls("parted", "mdadm"), [])

    def test_a_failed_create_names_the_devices_and_mdadm_s_words(self
                                                                 ) -> None:
        def refuse(argv: Sequence[str]) -> ProcessResult:
            if argv[1] == "--create":
                return ProcessResult(tuple(argv), 1, b"", load(
                    "raid", "mdadm-zero-superblock-vda-none.txt").encode())
            raise AssertionError(argv)

        self.process.handlers["mdadm"] = refuse
        failure = self.failureResultOf(self.create({"logical_disks": [r1(
            physical_disks=[{"serial": "A"}, {"serial": "B"}])]}))
        self.assertIsInstance(failure.value, raid.SoftwareRAIDError)
        self.assertIn("Failed to create md device /dev/md0 on /dev/vda1 "
                      "/dev/vdb1: mdadm: Couldn't open /dev/vda for write",
                      str(failure.value))

    def test_named_raid_volumes_in_the_skip_list_are_refused(self) -> None:
        failure = self.failureResultOf(self.create(
            {"logical_disks": [r1()]}, node={"properties": {
                "skip_block_devices": [{"volume_name": "keep"}]}}))
        self.assertIn("not supported by this agent yet", str(failure.value))
        self.assertEqual(self.process.calls, [])


class DeleteAndAssembleTests(RaidCase):
    def built(self) -> None:
        self.successResultOf(self.create({"logical_disks": [r1(
            physical_disks=[{"serial": "A"}, {"serial": "B"}])]}))
        # the ESP array install_bootloader makes beside it
        self.sys.partition("vda", "vda2", 2)
        self.sys.partition("vdb", "vdb2", 2)
        self.sys.array("md1", ["vda2", "vdb2"])
        self.mdadm.superblocks |= {"/dev/vda2", "/dev/vdb2"}
        self.mdadm.on_disk["md1"] = ["vda2", "vdb2"]
        self.process.calls.clear()

    def listing(self) -> list[BlockDevice]:
        found = [disk("/dev/vda"), disk("/dev/vdb"), disk("/dev/vdc")]
        if os.path.exists(os.path.join(self.sys.top, "md0")):
            # a partition of the array, as lsblk lists it
            self.sys.partition("md0", "md0p1", 1)
            found.append(BlockDevice("/dev/md0p1", None, 1, False,
                                     kind="part"))
        for name in sorted(os.listdir(self.sys.top)):
            if name[:3] in ("vda", "vdb") and name[3:].isdigit():
                found.append(BlockDevice(f"/dev/{name}", None, 1, False,
                                         kind="part"))
        return found

    def test_delete_stops_zeroes_and_wipes(self) -> None:
        self.built()
        listing = self.listing()     # with md0p1, listed while md0 is up
        deleted = self.successResultOf(ensureDeferred(self.raid.delete(
            {"uuid": "n1"}, listing)))
        self.assertEqual(deleted, ["/dev/md0", "/dev/md1"])
        calls = [c for c in self.process.calls
                 if c[:3] != ("mdadm", "--examine", "--export")]
        self.assertEqual(calls[0][:3], ("mdadm", "--assemble", "--scan"))
        self.assertEqual(calls[1:], [
            ("wipefs", "-af", "/dev/md0"),
            ("mdadm", "--stop", "/dev/md0"),
            ("mdadm", "--zero-superblock", "/dev/vda1"),
            ("mdadm", "--zero-superblock", "/dev/vdb1"),
            ("wipefs", "-af", "/dev/md1"),
            ("mdadm", "--stop", "/dev/md1"),
            ("mdadm", "--zero-superblock", "/dev/vda2"),
            ("mdadm", "--zero-superblock", "/dev/vdb2"),
            ("wipefs", "-af", "/dev/vda"),
            ("wipefs", "-af", "/dev/vdb")])
        self.assertEqual(self.mdadm.superblocks, set())
        self.assertNotIn("md0", self.sys.names())
        # mdadm read only the allowed disks and partitions
        self.assertEqual(self.mdadm.configs, [
            "DEVICE /dev/vda /dev/vda1 /dev/vda2 /dev/vdb /dev/vdb1 "
            "/dev/vdb2 /dev/vdc\nHOMEHOST <ignore>\n"])

    def test_a_new_boot_assembles_then_deletes(self) -> None:
        self.built()
        for md in ("md0", "md1"):           # a new boot: nothing assembled
            self.sys.remove(md)
        deleted = self.successResultOf(ensureDeferred(self.raid.delete(
            {"uuid": "n1"}, self.listing())))
        self.assertEqual(deleted, ["/dev/md0", "/dev/md1"])
        self.assertEqual(self.mdadm.superblocks, set())

    def test_a_stale_superblock_is_zeroed_too(self) -> None:
        self.built()
        self.sys.remove("md1")
        self.mdadm.on_disk.pop("md1")     # it cannot be assembled
        self.successResultOf(ensureDeferred(self.raid.delete(
            {"uuid": "n1"}, self.listing())))
        self.assertIn(("mdadm", "--zero-superblock", "/dev/vdb2"),
                      self.process.calls)
        self.assertEqual(self.mdadm.superblocks, set())

    def test_assemble_without_mdadm_is_quiet(self) -> None:
        del self.process.handlers["mdadm"]
        self.assertEqual(self.successResultOf(ensureDeferred(
            self.raid.assemble(["/dev/vda"]))), [])

    def test_arrays_stopped_before_their_disks_are_erased(self) -> None:
        self.built()
        stopped = self.successResultOf(ensureDeferred(
            self.raid.stop_arrays_on(["/dev/vdb"])))
        self.assertEqual(stopped, ["/dev/md0", "/dev/md1"])
        self.assertEqual(self.successResultOf(ensureDeferred(
            self.raid.stop_arrays_on(["/dev/vdc"]))), [])


class ManagerTests(RaidCase):
    """The steps on the generic manager: root device, target config."""

    def manager(self, devices: list[BlockDevice]) -> GenericHardwareManager:
        manager = GenericHardwareManager()
        manager.agent = self.context

        async def listing(include_partitions: bool = False
                          ) -> list[BlockDevice]:
            return devices

        manager.list_block_devices = listing  # type: ignore[method-assign]
        self.context.hardware = HardwareManagers([manager])
        return manager

    def test_create_configuration_uses_target_raid_config(self) -> None:
        manager = self.manager(self.devices)
        node = {"uuid": "n1", "target_raid_config": {"logical_disks": [
            r1(is_root_volume=True,
               physical_disks=[{"serial": "B"}, {"serial": "C"}])]}}
        result = self.successResultOf(ensureDeferred(
            manager.create_configuration(node, [])))
        self.assertEqual(result, node["target_raid_config"])
        # the root volume is the root device, whatever the hints say
        self.context.node = {"properties": {"root_device": {
            "name": "/dev/vda"}}}
        self.assertEqual(self.successResultOf(ensureDeferred(
            manager.get_os_install_device())), "/dev/md0")
        self.assertEqual(self.successResultOf(ensureDeferred(
            manager.create_configuration({"uuid": "n1"}, []))), {})

    def test_without_software_raid_nothing_is_done(self) -> None:
        manager = self.manager(self.devices)
        node = {"target_raid_config": {"logical_disks": [
            {"size_gb": "MAX", "raid_level": "1", "controller": "hw0"}]}}
        self.assertEqual(self.successResultOf(ensureDeferred(
            manager.create_configuration(node, []))), {})
        self.assertEqual(self.process.calls, [])

    def test_an_array_is_a_root_device_candidate(self) -> None:
        md = BlockDevice("/dev/md0", None, int(4.4 * GiB), False,
                         kind="raid")
        manager = self.manager(self.devices + [md])
        self.context.node = {"properties": {}}
        self.assertEqual(self.successResultOf(ensureDeferred(
            manager.get_os_install_device())), "/dev/md0")
        # never erased as a disk of its own
        self.process.handlers["mdadm"] = lambda argv: ProcessResult(
            tuple(argv), 0, b"", b"")
        erasable = self.successResultOf(ensureDeferred(
            manager._erasable_disks({})))
        self.assertEqual([d.name for d in erasable],
                         ["/dev/vda", "/dev/vdb", "/dev/vdc"])

    def test_apply_configuration_deletes_then_creates(self) -> None:
        manager = self.manager(self.devices)
        config = {"logical_disks": [r1(physical_disks=[
            {"serial": "A"}, {"serial": "B"}])]}
        self.successResultOf(ensureDeferred(manager.apply_configuration(
            {"uuid": "n1"}, [], config)))
        tools = [c[:2] for c in self.process.calls]
        self.assertLess(tools.index(("mdadm", "--assemble")),
                        tools.index(("mdadm", "--create")))
        failure = self.failureResultOf(ensureDeferred(
            manager.apply_configuration({"uuid": "n1"}, [],
                                        {"logical_disks": []})))
        self.assertIsInstance(failure.value, raid.SoftwareRAIDError)


class LsblkFixtureTests(SynchronousTestCase):
    def test_the_capture_is_what_the_tests_assume(self) -> None:
        rows = json.loads(load("raid", "lsblk-raid.json"))["blockdevices"]
        self.assertEqual({r["kname"]: r["type"] for r in rows}["md0"],
                         "raid1")
