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
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from ipa_twisted import errors
from ipa_twisted.commands import bootloader, image
from ipa_twisted.commands.base import CommandRunner
from ipa_twisted.commands.bootloader import efi_path, find_loaders
from ipa_twisted.config import load_config
from ipa_twisted.context import RunningAgent
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


class Link(str):
    """In a FakeDisk tree: a symbolic link to this target."""


class FakeDisk:
    """The file trees of a disk's partitions behind fake ``mount``,
    ``umount`` and ``chroot`` (what the image's grub-install would write),
    with lsblk, blkid and efibootmgr answering from real captures, and a
    sysfs (``bootloader.SYS_BLOCK``) that lists vda's partitions."""

    def __init__(self, runner: FakeProcessRunner,
                 trees: dict[str, dict[str, bytes]],
                 listing: str = "efibootmgr-v-before.txt",
                 create_exit: int = 0,
                 failing: dict[str, str] | None = None,
                 lsblk: str = "lsblk-vda.txt") -> None:
        self.trees = trees
        self.failing = failing or {}
        self.mounted: dict[str, str] = {}
        self.listing = load("uefi", listing)
        self.lsblk_out = load("uefi", lsblk) if lsblk.endswith(".txt") \
            else lsblk
        self.create_exit = create_exit
        self.chroots: list[tuple[str, ...]] = []
        for tool in ("mount", "umount", "chroot", "lsblk", "blkid",
                     "efibootmgr", "setpriv", "mknod"):
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
        elif argv[1] in ("-t", "-o"):      # tmpfs, read-only binds
            self.mounted[argv[-1]] = argv[2] if argv[1] == "-t" else "ro"
        elif argv[1] != "--bind":
            part, where = argv[1], argv[2]
            for name, data in self.trees.get(part, {}).items():
                path = os.path.join(where, name)
                os.makedirs(os.path.dirname(path), exist_ok=True)
                if isinstance(data, Link):
                    os.symlink(data, path)
                    continue
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
        elif part in ("tmpfs", "ro"):
            # what was made on the tmpfs goes with it
            for name in os.listdir(where):
                full = os.path.join(where, name)
                if os.path.isdir(full) and not os.path.islink(full):
                    shutil.rmtree(full)
                else:
                    os.unlink(full)
        elif part is not None:
            tree = self.trees.setdefault(part, {})
            for base, dirs, files in os.walk(where):
                for name in files + dirs:
                    path = os.path.join(base, name)
                    if os.path.islink(path):
                        tree[os.path.relpath(path, where)] = Link(
                            os.readlink(path))
                    elif name in files:
                        with open(path, "rb") as f:
                            tree[os.path.relpath(path, where)] = f.read()
            for name in os.listdir(where):
                full = os.path.join(where, name)
                if os.path.isdir(full) and not os.path.islink(full):
                    shutil.rmtree(full)
                else:
                    os.unlink(full)
        return self.ok(argv)

    def mknod(self, argv: Sequence[str]) -> ProcessResult:
        return self.ok(argv)

    def setpriv(self, argv: Sequence[str]) -> ProcessResult:
        rest = list(argv[1:])
        assert rest[:2] == ["--bounding-set", ",".join(
            "-" + c for c in bootloader.DROPPED_CAPABILITIES)], argv
        assert rest[2:4] == ["--", "chroot"], argv
        return self.chroot(rest[3:])

    def chroot(self, argv: Sequence[str]) -> ProcessResult:
        self.chroots.append(tuple(argv))
        # the chroot is sealed when the image's tools run
        root = argv[1]
        dev = os.path.join(root, "dev")
        self.dev_seen = sorted(
            os.path.relpath(os.path.join(base, n), dev)
            for base, dirs, files in os.walk(dev) for n in dirs + files)
        for name, kind in (("dev", "tmpfs"), ("proc", "ro"), ("sys", "ro"),
                           ("run", "tmpfs")):
            assert self.mounted.get(os.path.join(root, name)) == kind, \
                (name, self.mounted)
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

    def lsblk(self, argv: Sequence[str]) -> ProcessResult:
        return self.ok(argv, self.lsblk_out)

    def blkid(self, argv: Sequence[str]) -> ProcessResult:
        name = os.path.basename(argv[-1])
        try:
            return self.ok(argv, load("uefi", f"blkid-{name}.txt"))
        except OSError:
            return self.ok(argv, code=2)

    def efibootmgr(self, argv: Sequence[str]) -> ProcessResult:
        if "-c" in argv:
            if self.create_exit:
                return self.ok(argv, code=self.create_exit,
                               err="Could not prepare Boot variable: No such "
                                   "file or directory\n")
            return self.ok(argv, load("uefi", "efibootmgr-v-create.txt"))
        return self.ok(argv, self.listing)


class RecordingRunner(FakeProcessRunner):
    """Records the environment each tool was given, too."""

    def __init__(self) -> None:
        super().__init__()
        self.envs: list[tuple[tuple[str, ...], dict[str, str]]] = []

    def run(self, argv: Sequence[str], timeout: float = 60.0,
            check: bool = True, stdin: bytes | None = None,
            env: Any = None) -> Any:
        self.envs.append((tuple(argv), dict(env or {})))
        return super().run(argv, timeout, check, stdin, env)


class ThreadsAtOnce:
    """A reactor whose thread pool runs work at once (synchronous tests;
    also the disk pool of their RunningAgent)."""

    def getThreadPool(self) -> Any:
        return self

    def seconds(self) -> float:
        return 0.0

    def callInThreadWithCallback(self, onResult: Any, func: Any, *a: Any,
                                 **kw: Any) -> None:
        try:
            result = func(*a, **kw)
        except BaseException as e:
            onResult(False, Failure(e))
        else:
            onResult(True, result)

    def callFromThread(self, f: Any, *a: Any, **kw: Any) -> None:
        f(*a, **kw)


def fake_sys_block(case: SynchronousTestCase, disks: dict[str, list[str]],
                   holders: dict[str, str] | None = None) -> str:
    """A /sys/class/block: each disk (major 254) with its partitions, and
    holder devices' partitions (``{partition: holder}``)."""
    top = case.mktemp()
    minor = 0
    for disk, parts in disks.items():
        os.makedirs(os.path.join(top, disk))
        with open(os.path.join(top, disk, "dev"), "w") as f:
            f.write(f"254:{minor}\n")
        for part in parts:
            minor += 1
            os.makedirs(os.path.join(top, disk, part))
            for name, text in (("dev", f"254:{minor}\n"),
                               ("partition", "1\n")):
                with open(os.path.join(top, disk, part, name), "w") as f:
                    f.write(text)
            os.symlink(os.path.join(disk, part), os.path.join(top, part))
        minor += 16
    for part, holder in (holders or {}).items():
        os.makedirs(os.path.join(top, holder, part), exist_ok=True)
        with open(os.path.join(top, holder, part, "partition"), "w") as f:
            f.write("1\n")
        os.symlink(os.path.join(holder, part), os.path.join(top, part))
    return top


CSV_LOADER = {
    "EFI/debian/BOOTX64.CSV":
        "grubx64.efi,Debian from CSV,,This is the boot entry for Debian "
        "from CSV\n".encode("utf-16"),
    "EFI/debian/grubx64.efi": b"MZ",
}
ROOT_PARTUUID = "613f0ec2-5f72-4587-a446-475fdcac8bc0"  # vda2's


class BootloaderCase(SynchronousTestCase):
    """image.install_bootloader on a UEFI machine, its tools faked."""

    def setUp(self) -> None:
        self.patch(bootloader, "uefi_firmware", lambda: True)
        self.process = RecordingRunner()
        self.sys_block = fake_sys_block(self, {"vda": ["vda1", "vda2"]})
        self.patch(bootloader, "SYS_BLOCK", self.sys_block)
        self.context = RunningAgent(config=load_config({}),
                                    reactor=ThreadsAtOnce(),
                                    disk_threads=ThreadsAtOnce(),
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
        if tool == "chroot":    # run through setpriv: what follows it
            return [c[5:] for c in self.process.calls if c[0] == "setpriv"]
        return [c[1:] for c in self.process.calls if c[0] == tool]


class InstallBootloaderUefiTests(BootloaderCase):
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
        self.patch(bootloader, "uefi_firmware", lambda: False)
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
        self.assertEqual(self.calls("cp"), [])
        self.assertEqual(disk.trees["/dev/vda1"], dict(CSV_LOADER))
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
        self.patch(bootloader, "uefi_firmware", lambda: False)
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


class SealedChrootTests(BootloaderCase):
    """What the image's own tools see, and what the image can make the
    agent mount or copy (issue 12, items 9 and 10)."""

    def test_the_chroot_has_a_private_dev(self) -> None:
        disk = FakeDisk(self.process, {"/dev/vda1": {}, "/dev/vda2": {}})
        result = self.install(root_uuid=ROOT_PARTUUID)
        self.assertEqual(result.status, "SUCCEEDED", result.error)
        root = disk.chroots[0][1]
        mounts = self.calls("mount")
        # the ramdisk's /dev is never bound in; a tmpfs with only...
        self.assertNotIn(("--bind", "/dev", f"{root}/dev"), mounts)
        self.assertIn(("-t", "tmpfs", "-o", "mode=0755,nosuid,noexec,size=4m",
                       "ipa-dev", f"{root}/dev"), mounts)
        nodes = {c[2][len(root) + 5:]: c[3:] for c in self.calls("mknod")}
        self.assertEqual(nodes, {
            "null": ("c", "1", "3"), "zero": ("c", "1", "5"),
            "full": ("c", "1", "7"), "random": ("c", "1", "8"),
            "urandom": ("c", "1", "9"), "tty": ("c", "5", "0"),
            # ...the install disk and its own partitions (sysfs numbers)
            "vda": ("b", "254", "0"), "vda1": ("b", "254", "1"),
            "vda2": ("b", "254", "2")})
        self.assertIn(f"disk/by-partuuid/{ROOT_PARTUUID}", disk.dev_seen)
        self.assertIn("disk/by-uuid/F064-641A", disk.dev_seen)
        for fs in ("proc", "sys"):
            self.assertIn(("-o", "bind,ro", f"/{fs}", f"{root}/{fs}"),
                          mounts)
        self.assertIn(("-t", "tmpfs", "-o", "mode=0755,nosuid,nodev,size=16m",
                       "ipa-run", f"{root}/run"), mounts)
        # os-prober off, capabilities dropped, for every tool of the image
        runs = [(argv, env) for argv, env in self.process.envs
                if argv[0] == "setpriv"]
        self.assertEqual(len(runs), 3)
        for argv, env in runs:
            self.assertEqual(argv[:5], (
                "setpriv", "--bounding-set",
                "-mknod,-sys_admin,-sys_module,-sys_rawio,-sys_boot,"
                "-sys_ptrace", "--", "chroot"))
            self.assertEqual(env.get("GRUB_DISABLE_OS_PROBER"), "true")
        self.assertEqual(disk.mounted, {})

    def test_a_holder_on_another_disk_is_not_mounted(self) -> None:
        # md0 is built on vda and another disk: its partition is listed
        # under vda by lsblk, but is not vda's
        self.patch(bootloader, "SYS_BLOCK", fake_sys_block(
            self, {"vda": ["vda1", "vda2"]}, holders={"md0p1": "md0"}))
        self.context.guard = DeviceGuard(
            ["/dev/vda"], sys_block=bootloader.SYS_BLOCK)
        disk = FakeDisk(self.process, {"/dev/vda1": {}, "/dev/md0p1": {}},
                        lsblk="vda disk\nvda1 part\nvda2 part\nmd0 raid1\n"
                              "md0p1 part\n")
        blkid = disk.blkid

        def holder_blkid(argv: Sequence[str]) -> ProcessResult:
            if argv[-1] == "/dev/md0p1":
                return disk.ok(argv, "PART_ENTRY_UUID=4d0e1d9a-0000-4000-"
                                     "8000-000000000001\n")
            return blkid(argv)

        self.process.handlers["blkid"] = holder_blkid
        result = self.install(
            root_uuid="4d0e1d9a-0000-4000-8000-000000000001")
        self.assertEqual(result.status, "FAILED")
        self.assertEqual(result.error["type"], "DeviceNotAllowed")
        self.assertIn("/dev/md0p1", result.error["details"])
        self.assertNotIn("/dev/md0p1", [c[0] for c in self.calls("mount")])
        self.assertEqual(disk.mounted, {})

    def test_an_image_dev_that_is_a_link_is_not_mounted_over(self) -> None:
        disk = FakeDisk(self.process, {"/dev/vda1": {}, "/dev/vda2": {
            "dev": Link("/"), "boot/grub/.keep": b""}})
        result = self.install(root_uuid=ROOT_PARTUUID)
        self.assertEqual(result.status, "FAILED")
        self.assertEqual(result.error["type"], "BootloaderError")
        self.assertIn("the image's /dev is not a directory",
                      result.error["details"])
        targets = [c[-1] for c in self.calls("mount")]
        self.assertFalse([t for t in targets if t.endswith("/dev")], targets)
        self.assertEqual(self.calls("chroot"), [])
        self.assertEqual(disk.mounted, {})

    def test_esp_content_links_are_resolved_in_the_image(self) -> None:
        # an absolute link means the image's file, not the ramdisk's
        disk = FakeDisk(self.process, {"/dev/vda1": {}, "/dev/vda2": {
            "boot/efi/EFI/BOOT/BOOTX64.EFI": Link(
                "/usr/lib/shim/shimx64.efi.signed"),
            "boot/efi/EFI/BOOT/fb.efi": Link("../../../../usr/lib/shim/"
                                             "fbx64.efi"),
            "usr/lib/shim/shimx64.efi.signed": b"MZ the image's shim",
            "usr/lib/shim/fbx64.efi": b"MZ the image's fallback"}})
        result = self.install(root_uuid=ROOT_PARTUUID)
        self.assertEqual(result.status, "SUCCEEDED", result.error)
        self.assertEqual(disk.trees["/dev/vda1"], {
            "EFI/BOOT/BOOTX64.EFI": b"MZ the image's shim",
            "EFI/BOOT/fb.efi": b"MZ the image's fallback"})
        self.assertEqual(self.calls("chroot"), [])

    def test_esp_content_linking_out_of_the_image_is_refused(self) -> None:
        secret = self.mktemp()
        with open(secret, "wb") as f:
            f.write(b"ramdisk secret")
        for link, why in (
                (Link(os.path.abspath(secret)), "not in the image"),
                (Link("/proc/cmdline"), "not in the image"),
                (Link("../../../../../../.." + os.path.abspath(secret)),
                 "leads out of the image")):
            self.process.calls.clear()
            disk = FakeDisk(self.process, {"/dev/vda1": {}, "/dev/vda2": {
                "boot/efi/EFI/BOOT/BOOTX64.EFI": b"MZ",
                "boot/efi/EFI/BOOT/leak": link}})
            result = self.install(root_uuid=ROOT_PARTUUID)
            self.assertEqual(result.status, "FAILED", link)
            self.assertEqual(result.error["type"], "BootloaderError")
            self.assertIn("the image's /boot/efi cannot be copied: "
                          "/boot/efi/EFI/BOOT/leak", result.error["details"])
            self.assertIn(why, result.error["details"])
            # nothing left on the ESP, nothing of the ramdisk anywhere
            self.assertEqual(disk.trees["/dev/vda1"], {})
            self.assertEqual(disk.mounted, {})
            self.assertEqual(self.calls("chroot"), [])

