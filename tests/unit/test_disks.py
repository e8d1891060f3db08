"""Block device listing (real lsblk output) and the device guard."""

from __future__ import annotations

import os

from twisted.trial.unittest import SynchronousTestCase

from ipa_twisted import errors
from ipa_twisted.hardware import disks
from ipa_twisted.hardware.disks import BlockDevice, DeviceGuard, parse_lsblk
from ipa_twisted.hardware.generic import choose_root_device
from tests.fixtures import load

GiB = 1024 ** 3


class ParseTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.output = load("lsblk", "firecracker-loops.txt")
        self.sys = self.mktemp()
        os.makedirs(self.sys)

    def names(self, guard: DeviceGuard, parts: bool = False) -> list[str]:
        return [d.name for d in parse_lsblk(self.output, guard, parts,
                                            sys_block=self.sys)]

    def test_unrestricted_lists_real_disks_only(self) -> None:
        # Loop devices and zram are never disks (as IPA); vda is.
        self.assertEqual(self.names(DeviceGuard(None)), ["/dev/vda"])

    def test_allowlist_lists_only_those(self) -> None:
        guard = DeviceGuard(["/dev/loop1"])
        self.assertEqual(self.names(guard), ["/dev/loop1"])
        self.assertEqual(self.names(guard, parts=True),
                         ["/dev/loop1", "/dev/loop1p1"])
        # An empty loop device (size 0) is never listed.
        self.assertEqual(self.names(DeviceGuard(["/dev/loop5"])), [])

    def test_device_mapper_only_when_allow_listed(self) -> None:
        # A dm device over a virtio disk (the fault tests' dying disk):
        # never a disk by itself, listed when the allow-list names it.
        output = load("lsblk", "qemu-virtio-dm.txt")

        def names(guard: DeviceGuard) -> list[str]:
            return [d.name for d in parse_lsblk(output, guard,
                                                sys_block=self.sys)]

        self.assertEqual(names(DeviceGuard(None)), ["/dev/vda"])
        self.assertEqual(names(DeviceGuard(["/dev/dm-0"])), ["/dev/dm-0"])
        self.assertEqual(names(DeviceGuard(["/dev/vda"])), ["/dev/vda"])

    def test_fields(self) -> None:
        dev, = parse_lsblk(self.output, DeviceGuard(["/dev/loop0"]),
                           sys_block=self.sys)
        self.assertEqual(dev.serialize(), {
            "name": "/dev/loop0", "model": None, "size": 6 * GiB,
            "rotational": True, "wwn": None, "serial": None, "vendor": None,
            "wwn_with_extension": None, "wwn_vendor_extension": None,
            "hctl": None, "by_path": None, "logical_sectors": 512,
            "physical_sectors": 512, "tran": None,
        })

    def test_old_lsblk_strings(self) -> None:
        # util-linux < 2.33 prints every value as a string.
        out = ('{"blockdevices": [{"kname": "sda", "model": "DISK  ", '
               '"size": "500107862016", "rota": "1", "type": "disk", '
               '"serial": "", "wwn": "0x5000", "log-sec": "512", '
               '"phy-sec": "4096", "tran": "sata"}]}')
        dev, = parse_lsblk(out, DeviceGuard(None), sys_block=self.sys)
        self.assertEqual((dev.model, dev.size, dev.rotational, dev.serial,
                          dev.physical_sectors, dev.tran),
                         ("DISK", 500107862016, True, None, 4096, "sata"))


class GuardTests(SynchronousTestCase):
    def test_unrestricted(self) -> None:
        guard = DeviceGuard(None)
        self.assertFalse(guard.restricted)
        guard.check("/dev/sda")

    def test_restricted(self) -> None:
        sys_block = os.path.abspath(self.mktemp())
        os.makedirs(os.path.join(sys_block, "loop3", "loop3p1"))
        open(os.path.join(sys_block, "loop3", "loop3p1", "partition"),
             "w").close()
        os.symlink(os.path.join(sys_block, "loop3", "loop3p1"),
                   os.path.join(sys_block, "loop3p1"))
        guard = DeviceGuard(["/dev/loop3"], sys_block=sys_block)
        guard.check("/dev/loop3")
        guard.check("/dev/loop3p1")
        for other in ("/dev/vda", "/dev/loop30", "/dev/loop4"):
            with self.assertRaises(errors.DeviceNotAllowed) as cm:
                guard.check(other)
            self.assertIn("not in device_allowlist", str(cm.exception))


def disk(name: str, size_gib: float, **kw: object) -> BlockDevice:
    return BlockDevice(name=name, model=kw.pop("model", None),  # type: ignore
                       size=int(size_gib * GiB), rotational=False, **kw)  # type: ignore


class RootDeviceTests(SynchronousTestCase):
    devices = [disk("/dev/sdb", 10), disk("/dev/sda", 10, serial="S1"),
               disk("/dev/sdc", 2), disk("/dev/nvme0n1", 500, wwn="0xAB")]

    def test_no_hints_smallest_at_least_4_gib_then_name(self) -> None:
        self.assertEqual(choose_root_device(self.devices, None).name, "/dev/sda")

    def test_hints(self) -> None:
        self.assertEqual(choose_root_device(self.devices, {"name": "/dev/sdb"}).name,
                         "/dev/sdb")
        self.assertEqual(choose_root_device(self.devices, {"name": "sdc"}).name,
                         "/dev/sdc")
        self.assertEqual(choose_root_device(self.devices, {"size": 500}).name,
                         "/dev/nvme0n1")
        self.assertEqual(choose_root_device(self.devices, {"serial": "s1"}).name,
                         "/dev/sda")
        self.assertEqual(choose_root_device(self.devices, {"wwn": "0xab"}).name,
                         "/dev/nvme0n1")
        self.assertEqual(choose_root_device(self.devices, {"size": ">= 11"}).name,
                         "/dev/nvme0n1")

    def test_nothing_matches(self) -> None:
        with self.assertRaises(errors.DeviceNotFound) as cm:
            choose_root_device(self.devices, {"serial": "nope"})
        self.assertIn("No suitable device", str(cm.exception))
        with self.assertRaises(errors.DeviceNotFound):
            choose_root_device([disk("/dev/sda", 3)], None)

    def test_invalid_hints(self) -> None:
        with self.assertRaises(errors.DeviceNotFound) as cm:
            choose_root_device(self.devices, {"colour": "red"})
        self.assertIn("failed to validate", str(cm.exception))


class WipeTests(SynchronousTestCase):
    """wipe_head_and_tail on a dying disk: the start still gets zeroed."""

    def setUp(self) -> None:
        from ipa_twisted.hardware import blockio
        self.blockio = blockio
        self.path = self.mktemp()
        with open(self.path, "wb") as f:
            f.write(b"\xff" * (4 * 1024 * 1024))
        self.real = blockio.zero_range

    def test_both_ends(self) -> None:
        self.blockio.wipe_head_and_tail(DeviceGuard(None), self.path)
        with open(self.path, "rb") as f:
            data = f.read()
        mib = 1024 * 1024
        self.assertEqual(data[:mib] + data[-mib:], bytes(2 * mib))
        self.assertEqual(data[mib:-mib], b"\xff" * (2 * mib))

    def test_failing_end_still_wipes_the_start(self) -> None:
        def zero_range(guard: DeviceGuard, path: str, offset: int,
                       length: int) -> None:
            if offset > 0:
                raise OSError(5, "Input/output error")
            self.real(guard, path, offset, length)

        self.patch(self.blockio, "zero_range", zero_range)
        with self.assertRaises(self.blockio.WipeError) as caught:
            self.blockio.wipe_head_and_tail(DeviceGuard(None), self.path)
        self.assertEqual(list(caught.exception.failed), ["end"])
        self.assertEqual(caught.exception.errno, 5)
        self.assertIn("could not zero the end of", str(caught.exception))
        with open(self.path, "rb") as f:
            self.assertEqual(f.read(1024 * 1024), bytes(1024 * 1024))

    def test_failing_start_is_said(self) -> None:
        def zero_range(guard: DeviceGuard, path: str, offset: int,
                       length: int) -> None:
            if offset == 0:
                raise OSError(5, "Input/output error")
            self.real(guard, path, offset, length)

        self.patch(self.blockio, "zero_range", zero_range)
        with self.assertRaises(self.blockio.WipeError) as caught:
            self.blockio.wipe_head_and_tail(DeviceGuard(None), self.path)
        self.assertEqual(list(caught.exception.failed), ["start"])
        with open(self.path, "rb") as f:
            data = f.read()
        self.assertEqual(data[-1024 * 1024:], bytes(1024 * 1024))
        self.assertEqual(data[:1024 * 1024], b"\xff" * (1024 * 1024))


class UdevPropertiesTests(SynchronousTestCase):
    """udev's properties of a block device, read from sysfs and udev's
    database as libudev does (without pyudev in the agent's memory)."""

    def setUp(self) -> None:
        self.sys = self.mktemp()
        self.data = self.mktemp()
        os.makedirs(os.path.join(self.sys, "cciss!c0d0"))
        os.makedirs(self.data)
        with open(os.path.join(self.sys, "cciss!c0d0", "uevent"), "w") as f:
            f.write("MAJOR=104\nMINOR=0\nDEVNAME=cciss/c0d0\n"
                    "DEVTYPE=disk\nDISKSEQ=3\n")
        with open(os.path.join(self.data, "b104:0"), "w") as f:
            f.write("S:disk/by-id/wwn-0x5000c500a0b1c2d3\nI:123456\n"
                    "E:ID_SERIAL=ST4000_Z1Z2\nE:ID_SERIAL_SHORT=Z1Z2\n"
                    "E:ID_WWN_WITH_EXTENSION=0x5000c500a0b1c2d3\n"
                    "E:ID_PATH=pci-0000:00:1f.2-ata-1=x\nG:systemd\n"
                    "Q:systemd\nV:1\n")

    def test_uevent_then_database(self) -> None:
        props = disks.udev_properties("cciss/c0d0", self.sys, self.data)
        self.assertEqual(props, {
            "MAJOR": "104", "MINOR": "0", "DEVNAME": "/dev/cciss/c0d0",
            "DEVTYPE": "disk", "DISKSEQ": "3", "SUBSYSTEM": "block",
            "ID_SERIAL": "ST4000_Z1Z2", "ID_SERIAL_SHORT": "Z1Z2",
            "ID_WWN_WITH_EXTENSION": "0x5000c500a0b1c2d3",
            "ID_PATH": "pci-0000:00:1f.2-ata-1=x"})

    def test_without_udev(self) -> None:
        props = disks.udev_properties("cciss/c0d0", self.sys,
                                      self.mktemp())
        self.assertEqual(props["DEVNAME"], "/dev/cciss/c0d0")
        self.assertNotIn("ID_SERIAL", props)

    def test_no_such_device(self) -> None:
        self.assertEqual(disks.udev_properties("sdq", self.sys, self.data),
                         {})

    def test_serials_for_the_inventory(self) -> None:
        output = ('{"blockdevices": [{"kname": "cciss/c0d0", "name": '
                  '"cciss/c0d0", "type": "disk", "size": 4096, '
                  '"serial": null, "wwn": null}]}')
        dev, = parse_lsblk(
            output, DeviceGuard(None), sys_block=self.sys,
            udev=lambda k: disks.udev_properties(k, self.sys, self.data))
        self.assertEqual((dev.serial, dev.wwn_with_extension),
                         ("Z1Z2", "0x5000c500a0b1c2d3"))
