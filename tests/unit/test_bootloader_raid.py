"""image.install_bootloader when the root device is a software RAID.

The disks (vda, vdb) each hold a RAID member partition; md0 is the array,
md0p1 the ESP a partition image made on it, md0p2 its root.  Tools are
faked (tests/unit/test_bootloader.FakeDisk for mounts and the chroot; the
others here); blkid answers from a table (test data).  The sysfs is
tests/unit/test_raid.FakeSys, updated by the fake sgdisk and mdadm as the
kernel would.  The real thing, booted from either disk, is
tests/integration/test_raid_vm.py.
"""

from __future__ import annotations

from typing import Any, Sequence

from twisted.internet.defer import ensureDeferred
from twisted.trial.unittest import SynchronousTestCase

from ipa_twisted.commands import bootloader, image
from ipa_twisted.commands.base import CommandRunner
from ipa_twisted.config import load_config
from ipa_twisted.context import RunningAgent
from ipa_twisted.hardware import disks
from ipa_twisted.hardware.disks import DeviceGuard
from ipa_twisted.hardware.manager import HardwareManagers
from ipa_twisted.process import ProcessResult
from ipa_twisted.testing import FakeHardwareManager
from tests.fixtures import load
from tests.unit.test_bootloader import (
    FakeDisk,
    RecordingRunner,
    ThreadsAtOnce,
)
from tests.unit.test_raid import FakeSys

ESP = "c12a7328-f81f-11d2-ba4b-00a0c93ec93b"
ROOT_UUID = "3d0c1d9e-2f0c-4b3a-9a53-ff2b5c3f0a11"


class RaidDisk(FakeDisk):
    """FakeDisk for a RAID: lsblk of md0, blkid from a table, and sgdisk,
    partprobe, mdadm, mkfs.vfat, wipefs changing the fake sysfs."""

    def __init__(self, runner: Any, sys: FakeSys,
                 trees: dict[str, dict[str, bytes]]) -> None:
        super().__init__(runner, trees)
        self.sys = sys
        self.blkid_table = {
            "/dev/md0p1": f"TYPE=vfat\nUUID=ABCD-1234\nLABEL=efi-part\n"
                          f"PART_ENTRY_TYPE={ESP}\nPART_ENTRY_NUMBER=1\n",
            "/dev/md0p2": f"TYPE=ext4\nUUID={ROOT_UUID}\n"
                          f"PART_ENTRY_NUMBER=2\n",
        }
        self.wiped: list[str] = []
        for tool in ("sgdisk", "partprobe", "mdadm", "mkfs.vfat", "wipefs"):
            runner.handlers[tool] = getattr(self, tool.replace(".", "_"))

    def lsblk(self, argv: Sequence[str]) -> ProcessResult:
        assert argv[-1] == "/dev/md0", argv
        return self.ok(argv, "md0 raid1\nmd0p1 md\nmd0p2 md\n")

    def blkid(self, argv: Sequence[str]) -> ProcessResult:
        device = argv[-1]
        if "-s" in argv:       # one value: TYPE or PTTYPE
            tag = argv[argv.index("-s") + 1]
            values = dict(line.split("=", 1) for line in
                          self.blkid_table.get(device, "").splitlines())
            return self.ok(argv, values.get(tag, "") + "\n")
        return self.ok(argv, self.blkid_table.get(device, ""))

    def sgdisk(self, argv: Sequence[str]) -> ProcessResult:
        if argv[1] == "-F":
            return self.ok(argv, load("raid", "sgdisk-F-vda.txt"))
        disk = argv[-1].split("/")[-1]
        label = argv[argv.index("-c") + 1].split(":", 1)[1]
        self.sys.partition(disk, f"{disk}2", 2)
        # what blkid said of vda2 made so in the test machine (captured);
        # vdb2's name is its own
        self.blkid_table[f"/dev/{disk}2"] = load(
            "raid", "blkid-p-vda2-esp-holder.txt").replace(
            "uefi-holder-0", label).replace("/dev/vda2", f"/dev/{disk}2")
        return self.ok(argv)

    def partprobe(self, argv: Sequence[str]) -> ProcessResult:
        return self.ok(argv)

    def mdadm(self, argv: Sequence[str]) -> ProcessResult:
        assert argv[1] == "--create", argv
        name = argv[2].split("/")[-1]
        members = [m.split("/")[-1] for m in argv[-2:]]
        self.sys.array(name, members)
        return self.ok(argv)

    def mkfs_vfat(self, argv: Sequence[str]) -> ProcessResult:
        self.blkid_table[argv[-1]] = load("raid", "blkid-p-md1.txt")
        self.trees.setdefault(argv[-1], {})
        return self.ok(argv)

    def wipefs(self, argv: Sequence[str]) -> ProcessResult:
        self.wiped.append(argv[-1])
        return self.ok(argv)


class RaidBootloaderTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.patch(bootloader, "uefi_firmware", lambda: True)
        self.sys = FakeSys(self)
        for name in ("vda", "vdb", "sda"):
            self.sys.disk(name, 1)
        self.sys.array("md0", ["vda1", "vdb1"])
        self.sys.partition("md0", "md0p1", 1)
        self.sys.partition("md0", "md0p2", 2)
        self.patch(bootloader, "SYS_BLOCK", self.sys.top)
        self.patch(disks, "SYS_BLOCK", self.sys.top)
        self.process = RecordingRunner()
        self.context = RunningAgent(
            config=load_config({}), reactor=ThreadsAtOnce(), disk_threads=ThreadsAtOnce(),
            process=self.process,
            guard=DeviceGuard(["/dev/vda", "/dev/vdb"], self.sys.top))
        self.hardware = HardwareManagers([
            FakeHardwareManager(root_device="/dev/md0")])
        self.context.hardware = self.hardware
        self.context.extensions = {"image": image.ImageExtension(
            self.context)}
        self.context.lookup_config["enable_bios_bootloader_install"] = True
        self.runner = CommandRunner(self.context.extensions)
        self.successResultOf(ensureDeferred(
            self.hardware.initialize(self.context)))

    def install(self, **params: Any) -> Any:
        result = self.runner.execute("image.install_bootloader", params)
        return self.successResultOf(result.wait())

    def calls(self, tool: str) -> list[tuple[str, ...]]:
        if tool == "chroot":
            return [c[5:] for c in self.process.calls if c[0] == "setpriv"]
        return [c[1:] for c in self.process.calls if c[0] == tool]

    def test_uefi_an_esp_on_each_member_mirrored(self) -> None:
        disk = RaidDisk(self.process, self.sys, {
            "/dev/md0p1": {"EFI/old/note.txt": b"from the image's ESP"},
            "/dev/md0p2": {}})
        result = self.install(root_uuid=ROOT_UUID,
                              efi_system_part_uuid="ABCD-1234",
                              target_boot_mode="uefi")
        self.assertEqual(result.status, "SUCCEEDED", result.error)
        self.assertEqual(self.calls("sgdisk"), [
            ("-F", "/dev/vda"),
            ("-n", "0:2048:+550MiB", "-t", "0:ef00", "-c",
             "0:uefi-holder-0", "/dev/vda"),
            ("-F", "/dev/vdb"),
            ("-n", "0:2048:+550MiB", "-t", "0:ef00", "-c",
             "0:uefi-holder-1", "/dev/vdb")])
        self.assertEqual(self.calls("mdadm"), [
            ("--create", "/dev/md1", "--force", "--run", "--metadata=1.0",
             "--level", "1", "--name", "esp", "--raid-devices", "2",
             "/dev/vda2", "/dev/vdb2")])
        # the image's ESP's name kept, its content moved, itself wiped
        self.assertEqual(self.calls("mkfs.vfat"),
                         [("-n", "efi-part", "-i", "ABCD1234", "/dev/md1")])
        self.assertEqual(disk.wiped, ["/dev/md0p1"])
        self.assertEqual(disk.trees["/dev/md1"]["EFI/old/note.txt"],
                         b"from the image's ESP")
        self.assertIn("EFI/debian/grubx64.efi", disk.trees["/dev/md1"])
        # the chroot's /dev held the array, its members and the ESP array
        # (block nodes made), nothing else
        nodes = sorted(c[2].split("/")[-1] for c in self.calls("mknod")
                       if c[3] == "b")
        self.assertEqual(nodes, sorted(set(nodes)))
        self.assertEqual(nodes, ["md0", "md0p1", "md0p2", "md1", "vda",
                                 "vda1", "vda2", "vdb", "vdb1", "vdb2"])
        self.assertEqual([c[3:9] for c in self.calls("efibootmgr")
                          if "-c" in c], [
            ("/dev/vda", "-p", "2", "-w", "-L", "debian (RAID, part0)"),
            ("/dev/vdb", "-p", "2", "-w", "-L", "debian (RAID, part1)")])
        self.assertEqual(disk.mounted, {})

    def test_uefi_the_esp_array_of_a_previous_install_is_reused(self
                                                                ) -> None:
        for name in ("vda", "vdb"):
            self.sys.partition(name, f"{name}2", 2)
        self.sys.array("md1", ["vda2", "vdb2"])
        disk = RaidDisk(self.process, self.sys, {
            "/dev/md1": {"EFI/debian/grubx64.efi": b"MZ"}})
        disk.blkid_table["/dev/md1"] = load("raid", "blkid-p-md1.txt")
        result = self.install(root_uuid="0x00000000",
                              target_boot_mode="uefi")
        self.assertEqual(result.status, "SUCCEEDED", result.error)
        self.assertEqual(self.calls("sgdisk"), [])
        self.assertEqual(self.calls("mdadm"), [])
        self.assertEqual(len([c for c in self.calls("efibootmgr")
                              if "-c" in c]), 2)

    def test_bios_grub_on_each_member_disk(self) -> None:
        self.patch(bootloader, "uefi_firmware", lambda: False)
        disk = RaidDisk(self.process, self.sys, {"/dev/md0p2": {}})
        disk.blkid_table["/dev/vda"] = "PTTYPE=gpt\n"
        disk.blkid_table["/dev/vdb"] = "PTTYPE=dos\n"
        result = self.install(root_uuid=ROOT_UUID, target_boot_mode="bios")
        self.assertEqual(result.status, "SUCCEEDED", result.error)
        # a BIOS boot partition on the GPT member only
        self.assertEqual([c for c in self.calls("sgdisk") if c[0] == "-n"], [
            ("-n", "0:2048:+2MiB", "-t", "0:ef02", "-c",
             "0:bios-boot-part-0", "/dev/vda")])
        self.assertEqual([c[1:] for c in self.calls("chroot")], [
            ("grub-install", "--target=i386-pc", "/dev/vda"),
            ("grub-install", "--target=i386-pc", "/dev/vdb"),
            ("grub-mkconfig", "-o", "/boot/grub/grub.cfg")])

    def test_an_array_on_a_disk_off_the_allow_list_is_refused(self) -> None:
        self.sys.array("md5", ["vda1", "sda1"])
        self.hardware = HardwareManagers([
            FakeHardwareManager(root_device="/dev/md5")])
        self.context.hardware = self.hardware
        RaidDisk(self.process, self.sys, {})
        result = self.install(root_uuid=ROOT_UUID, target_boot_mode="uefi")
        self.assertEqual(result.status, "FAILED")
        self.assertEqual(result.error["type"], "DeviceNotAllowed")
        self.assertEqual(self.process.calls, [])
