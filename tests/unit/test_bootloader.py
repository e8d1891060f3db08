"""image.install_bootloader on UEFI: which boot loaders it registers from
an ESP tree, and what it runs (tools faked; their outputs are real
captures from the QEMU test machine, tests/fixtures/uefi).

The trees are built here; the BOOTX64.CSV layout (UTF-16, "loader,label,
options,description") is the one shim's fallback loader documents.  The
real thing, booted, is tests/integration/test_uefi_bootloader.py.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from typing import Any, Sequence

from twisted.internet.defer import ensureDeferred
from twisted.trial.unittest import SynchronousTestCase

from ipa_twisted import errors
from ipa_twisted.commands import image
from ipa_twisted.commands.base import CommandRunner
from ipa_twisted.commands.image import efi_path, find_loaders
from ipa_twisted.config import load_config
from ipa_twisted.context import AgentContext
from ipa_twisted.hardware.disks import DeviceGuard
from ipa_twisted.hardware.manager import HardwareManagers
from ipa_twisted.process import ProcessResult
from ipa_twisted.testing import FakeHardwareManager, FakeProcessRunner
from tests.fixtures import load


class FindLoadersTests(SynchronousTestCase):
    def esp(self, files: dict[str, bytes]) -> str:
        root = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, root)
        for name, content in files.items():
            path = os.path.join(root, name)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "wb") as f:
                f.write(content)
        return root

    def test_csv_entries_come_first(self) -> None:
        csv = "shimx64.efi,debian,,This is the boot entry for debian\n"
        esp = self.esp({
            "EFI/debian/BOOTX64.CSV": csv.encode("utf-16"),
            "EFI/debian/shimx64.efi": b"MZ",
            "EFI/debian/grubx64.efi": b"MZ",
            "EFI/BOOT/BOOTX64.EFI": b"MZ",
        })
        self.assertEqual(find_loaders(esp),
                         [("EFI/debian/shimx64.efi", "debian")])

    def test_shim_before_grub_before_removable_path(self) -> None:
        both = self.esp({"EFI/fedora/grubx64.efi": b"MZ",
                         "EFI/fedora/shimx64.efi": b"MZ",
                         "EFI/BOOT/BOOTX64.EFI": b"MZ"})
        self.assertEqual(find_loaders(both),
                         [("EFI/fedora/shimx64.efi", "fedora")])
        grub = self.esp({"EFI/ubuntu/grubx64.efi": b"MZ",
                         "EFI/BOOT/BOOTX64.EFI": b"MZ"})
        self.assertEqual(find_loaders(grub),
                         [("EFI/ubuntu/grubx64.efi", "ubuntu")])
        removable = self.esp({"EFI/BOOT/BOOTX64.EFI": b"MZ"})
        self.assertEqual(find_loaders(removable),
                         [("EFI/BOOT/BOOTX64.EFI", "ironic")])

    def test_architecture_selects_the_loader(self) -> None:
        esp = self.esp({"EFI/debian/grubaa64.efi": b"MZ",
                        "EFI/debian/grubx64.efi": b"MZ"})
        self.assertEqual(find_loaders(esp, "aa64"),
                         [("EFI/debian/grubaa64.efi", "debian")])

    def test_nothing_to_boot(self) -> None:
        self.assertEqual(find_loaders(self.esp({})), [])
        self.assertEqual(find_loaders(self.esp({"EFI/debian/README": b""})),
                         [])

    def test_efi_path_uses_backslashes(self) -> None:
        self.assertEqual(efi_path("EFI/debian/shimx64.efi"),
                         "\\EFI\\debian\\shimx64.efi")


class FakeDisk:
    """The file trees of a disk's partitions behind fake ``mount``,
    ``umount`` and ``chroot`` (what the image's grub-install would write),
    with lsblk, blkid and efibootmgr answering from real captures."""

    def __init__(self, runner: FakeProcessRunner,
                 trees: dict[str, dict[str, bytes]],
                 listing: str = "efibootmgr-v-before.txt",
                 create_exit: int = 0,
                 failing: dict[str, str] | None = None) -> None:
        self.trees = trees
        self.failing = failing or {}
        self.mounted: dict[str, str] = {}
        self.listing = load("uefi", listing)
        self.create_exit = create_exit
        for tool in ("mount", "umount", "chroot", "lsblk", "blkid",
                     "efibootmgr", "cp"):
            runner.handlers[tool] = getattr(self, tool)

    @staticmethod
    def ok(argv: Sequence[str], out: str = "", code: int = 0,
           err: str = "") -> ProcessResult:
        return ProcessResult(tuple(argv), code, out.encode(), err.encode())

    def mount(self, argv: Sequence[str]) -> ProcessResult:
        if argv[1] == "--bind" and argv[2] in self.mounted:
            # a bind of a (fake) mounted partition: a symlink stands in
            os.rmdir(argv[3])
            os.symlink(argv[2], argv[3])
            self.mounted[argv[3]] = "bind"
        elif argv[1] != "--bind":
            part, where = argv[1], argv[2]
            for name, data in self.trees.get(part, {}).items():
                path = os.path.join(where, name)
                os.makedirs(os.path.dirname(path), exist_ok=True)
                with open(path, "wb") as f:
                    f.write(data)
            self.mounted[where] = part
        return self.ok(argv)

    def umount(self, argv: Sequence[str]) -> ProcessResult:
        where = argv[-1]
        part = self.mounted.pop(where, None)
        if part == "bind":
            os.unlink(where)
            os.mkdir(where)
        elif part is not None:
            tree = self.trees.setdefault(part, {})
            for base, _, files in os.walk(where):
                for name in files:
                    path = os.path.join(base, name)
                    with open(path, "rb") as f:
                        tree[os.path.relpath(path, where)] = f.read()
            for name in os.listdir(where):
                shutil.rmtree(os.path.join(where, name))
        return self.ok(argv)

    def chroot(self, argv: Sequence[str]) -> ProcessResult:
        root, tool = argv[1], argv[2]
        if tool in self.failing:
            return self.ok(argv, code=1,
                           err=f"{tool}: error: {self.failing[tool]}\n")
        written = {"grub-install": "boot/efi/EFI/debian/grubx64.efi",
                   "grub-mkconfig": "boot/grub/grub.cfg"}[tool]
        if "--removable" in argv:
            written = "boot/efi/EFI/BOOT/BOOTX64.EFI"
        path = os.path.join(root, written)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(b"written by " + tool.encode())
        return self.ok(argv)

    def cp(self, argv: Sequence[str]) -> ProcessResult:
        assert tuple(argv[1:3]) == ("-rL", "--"), argv
        source, target = argv[3], argv[4]
        shutil.copytree(source, target, dirs_exist_ok=True)
        return self.ok(argv)

    def lsblk(self, argv: Sequence[str]) -> ProcessResult:
        return self.ok(argv, load("uefi", "lsblk-vda.txt"))

    def blkid(self, argv: Sequence[str]) -> ProcessResult:
        name = os.path.basename(argv[-1])
        return self.ok(argv, load("uefi", f"blkid-{name}.txt"))

    def efibootmgr(self, argv: Sequence[str]) -> ProcessResult:
        if "-c" in argv:
            if self.create_exit:
                return self.ok(argv, code=self.create_exit,
                               err="Could not prepare Boot variable: No such "
                                   "file or directory\n")
            return self.ok(argv, load("uefi", "efibootmgr-v-create.txt"))
        return self.ok(argv, self.listing)


CSV_LOADER = {
    "EFI/debian/BOOTX64.CSV":
        "grubx64.efi,Debian from CSV,,This is the boot entry for Debian "
        "from CSV\n".encode("utf-16"),
    "EFI/debian/grubx64.efi": b"MZ",
}
ROOT_PARTUUID = "613f0ec2-5f72-4587-a446-475fdcac8bc0"  # vda2's


class InstallBootloaderUefiTests(SynchronousTestCase):
    """image.install_bootloader on a UEFI machine, its tools faked."""

    def setUp(self) -> None:
        self.patch(image, "uefi_firmware", lambda: True)
        self.process = FakeProcessRunner()
        self.context = AgentContext(config=load_config({}), reactor=None,
                                    process=self.process,
                                    guard=DeviceGuard(None))
        self.hardware = HardwareManagers([
            FakeHardwareManager(root_device="/dev/vda")])
        self.context.hardware = self.hardware
        self.context.extensions = {"image": image.ImageExtension(
            self.context)}
        self.runner = CommandRunner(self.context.extensions)
        self.successResultOf(ensureDeferred(
            self.hardware.initialize(self.context)))

    def install(self, **params: Any) -> Any:
        params.setdefault("target_boot_mode", "uefi")
        result = self.runner.execute("image.install_bootloader", params)
        return self.successResultOf(result.wait())

    def calls(self, tool: str) -> list[tuple[str, ...]]:
        return [c[1:] for c in self.process.calls if c[0] == tool]

    def test_whole_disk_image_entry_from_the_csv(self) -> None:
        FakeDisk(self.process, {"/dev/vda1": dict(CSV_LOADER)})
        result = self.install(root_uuid="0x00000000")
        self.assertEqual(result.status, "SUCCEEDED", result.error)
        self.assertEqual(self.calls("efibootmgr"), [
            ("-v",),
            ("-v", "-c", "-d", "/dev/vda", "-p", "1", "-w", "-L",
             "Debian from CSV", "-l", "\\EFI\\debian\\grubx64.efi")])
        self.assertEqual(self.calls("chroot"), [])

    def test_an_entry_with_the_same_label_is_replaced(self) -> None:
        FakeDisk(self.process, {"/dev/vda1": dict(CSV_LOADER)},
                 listing="efibootmgr-v-after.txt")
        result = self.install(root_uuid="0x00000000")
        self.assertEqual(result.status, "SUCCEEDED", result.error)
        self.assertEqual(self.calls("efibootmgr")[:2],
                         [("-v",), ("-b", "0001", "-B")])
        self.assertEqual(self.calls("efibootmgr")[2][1], "-c")

    def test_partition_image_gets_the_images_grub_first(self) -> None:
        disk = FakeDisk(self.process, {"/dev/vda1": {}, "/dev/vda2": {}})
        result = self.install(root_uuid=ROOT_PARTUUID,
                              efi_system_part_uuid="F064-641A")
        self.assertEqual(result.status, "SUCCEEDED", result.error)
        chroots = [c[1:] for c in self.calls("chroot")]
        install = ("grub-install", "--target=x86_64-efi",
                   "--efi-directory=/boot/efi", "--no-nvram")
        self.assertEqual(chroots, [
            install, install + ("--removable",),
            ("grub-mkconfig", "-o", "/boot/grub/grub.cfg")])
        # the ESP was bound at /boot/efi of the root, and kept what
        # grub-install wrote there
        self.assertEqual(disk.trees["/dev/vda1"], {
            "EFI/debian/grubx64.efi": b"written by grub-install",
            "EFI/BOOT/BOOTX64.EFI": b"written by grub-install"})
        self.assertIn("boot/grub/grub.cfg", disk.trees["/dev/vda2"])
        self.assertEqual(self.calls("efibootmgr")[-1],
                         ("-v", "-c", "-d", "/dev/vda", "-p", "1", "-w",
                          "-L", "debian", "-l",
                          "\\EFI\\debian\\grubx64.efi"))
        self.assertEqual(disk.mounted, {})

    def test_whole_disk_image_without_a_loader_is_left_alone(self) -> None:
        FakeDisk(self.process, {"/dev/vda1": {}})
        result = self.install(root_uuid="0x00000000")
        self.assertEqual(result.status, "SUCCEEDED", result.error)
        self.assertEqual(self.calls("efibootmgr"), [])
        self.assertEqual(self.calls("chroot"), [])

    def test_the_esp_ironic_names_wins(self) -> None:
        # vda2 is not of the ESP type, but Ironic says it is the ESP
        FakeDisk(self.process, {"/dev/vda1": dict(CSV_LOADER),
                                "/dev/vda2": {"EFI/fedora/shimx64.efi": b"MZ"}})
        result = self.install(root_uuid="0x00000000",
                              efi_system_part_uuid=ROOT_PARTUUID)
        self.assertEqual(result.status, "SUCCEEDED", result.error)
        self.assertEqual(self.calls("efibootmgr")[-1][3:9],
                         ("/dev/vda", "-p", "2", "-w", "-L", "fedora"))

    def test_efibootmgr_failure_fails_the_command(self) -> None:
        FakeDisk(self.process, {"/dev/vda1": dict(CSV_LOADER)},
                 create_exit=5)
        result = self.install(root_uuid="0x00000000")
        self.assertEqual(result.status, "FAILED")
        self.assertEqual(result.error["type"], "BootloaderError")
        self.assertIn("Could not prepare Boot variable",
                      result.error["details"])

    def test_ignore_bootloader_failure(self) -> None:
        FakeDisk(self.process, {"/dev/vda1": dict(CSV_LOADER)},
                 create_exit=5)
        result = self.install(root_uuid="0x00000000",
                              ignore_bootloader_failure=True)
        self.assertEqual(result.status, "SUCCEEDED", result.error)

    def test_bios_ramdisk_and_whole_disk_image_does_nothing(self) -> None:
        self.patch(image, "uefi_firmware", lambda: False)
        FakeDisk(self.process, {"/dev/vda1": dict(CSV_LOADER)})
        result = self.install(root_uuid="0x00000000",
                              target_boot_mode="bios")
        self.assertEqual(result.status, "SUCCEEDED", result.error)
        self.assertEqual(self.process.calls, [])

    def test_partition_image_shipping_its_esp_content(self) -> None:
        # e.g. a RHEL-like image: signed shim and GRUB in /boot/efi
        shipped = {f"boot/efi/{k}": v for k, v in CSV_LOADER.items()}
        disk = FakeDisk(self.process, {"/dev/vda1": {},
                                       "/dev/vda2": shipped})
        result = self.install(root_uuid=ROOT_PARTUUID)
        self.assertEqual(result.status, "SUCCEEDED", result.error)
        self.assertEqual(self.calls("chroot"), [])
        self.assertIn(("-rL", "--"), [c[:2] for c in self.calls("cp")])
        self.assertEqual(self.calls("efibootmgr")[-1][7:9],
                         ("-L", "Debian from CSV"))
        self.assertEqual(disk.mounted, {})

    def test_failed_grub_install_leaves_nothing_behind(self) -> None:
        disk = FakeDisk(self.process, {"/dev/vda1": {}, "/dev/vda2": {}},
                        failing={"grub-mkconfig": "disk not found"})
        result = self.install(root_uuid=ROOT_PARTUUID)
        self.assertEqual(result.status, "FAILED")
        self.assertEqual(result.error["type"], "BootloaderError")
        self.assertIn("grub-mkconfig: error: disk not found",
                      result.error["details"])
        # grub-install had written two loaders: both gone again, so that a
        # retry installs anew instead of registering a GRUB without config
        self.assertEqual(disk.trees["/dev/vda1"], {})
        self.assertEqual(disk.mounted, {})
        self.assertEqual(self.calls("efibootmgr"), [])
        umounts = self.calls("umount")
        self.assertEqual(len(umounts), len(set(umounts)))

    def test_ramdisk_without_uefi_variables(self) -> None:
        # UEFI is asked for, but this ramdisk booted by BIOS: only the
        # removable-media path, and no NVRAM entry
        self.patch(image, "uefi_firmware", lambda: False)
        disk = FakeDisk(self.process, {"/dev/vda1": {}, "/dev/vda2": {}})
        result = self.install(root_uuid=ROOT_PARTUUID)
        self.assertEqual(result.status, "SUCCEEDED", result.error)
        self.assertEqual([c[-1] for c in self.calls("chroot")],
                         ["--removable", "/boot/grub/grub.cfg"])
        self.assertEqual(disk.trees["/dev/vda1"],
                         {"EFI/BOOT/BOOTX64.EFI": b"written by grub-install"})
        self.assertEqual(self.calls("efibootmgr"), [])

    def test_only_the_exact_label_is_replaced(self) -> None:
        # "Other debian" and the inactive "debian (old)" stay
        FakeDisk(self.process, {"/dev/vda1": {
            "EFI/debian/grubx64.efi": b"MZ"}},
            listing="efibootmgr-v-similar-labels.txt")
        result = self.install(root_uuid="0x00000000")
        self.assertEqual(result.status, "SUCCEEDED", result.error)
        self.assertEqual(self.calls("efibootmgr")[:2],
                         [("-v",), ("-b", "0002", "-B")])
        self.assertEqual(self.calls("efibootmgr")[2][7:9], ("-L", "debian"))
        self.assertEqual(len(self.calls("efibootmgr")), 3)

    def test_bad_parameters_are_refused_before_anything_runs(self) -> None:
        for params in ({"target_boot_mode": "legacy"},
                       {"root_uuid": 42},
                       {"efi_system_part_uuid": ["x"]}):
            with self.assertRaises(errors.InvalidCommandParamsError):
                self.runner.execute("image.install_bootloader", params)
        self.assertEqual(self.process.calls, [])
        self.assertEqual(self.runner.list(), [])
