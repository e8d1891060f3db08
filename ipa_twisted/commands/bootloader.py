"""Installing the bootloader (the image extension's ``install_bootloader``,
:mod:`ipa_twisted.commands.image`, imports this module when it runs).

UEFI (``target_boot_mode``, by default how the ramdisk booted): the EFI
system partition is the one whose UUID Ironic gives, else the first by
type; its boot loaders are found (``BOOT<ARCH>.CSV`` files first, then
shim, then grub, then the removable-media path), and one NVRAM boot entry
per loader is (re)made with ``efibootmgr`` (an entry with the same label is
replaced).  Whole-disk images stop there.  A partition image's ESP is empty
(the agent made it): what the image ships in its own /boot/efi (shim,
signed GRUB) is copied into it; if that is no boot loader, the image's GRUB
is installed into it (``grub-install --target=x86_64-efi --no-nvram``, and
again with ``--removable`` for the fallback path, then ``grub-mkconfig``,
in a chroot).  A failed install removes what it wrote on the ESP.  When
the ramdisk cannot write NVRAM (not booted by UEFI, or no efibootmgr) only
the removable-media path is installed.

BIOS, for partition images: the root filesystem (by its UUID) is mounted
and the image's own ``grub-install`` (or ``grub2-install``) and
``grub-mkconfig`` run in a chroot.  As in IPA this only happens when
Ironic allows it (``enable_bios_bootloader_install``); otherwise the
command fails, unless ``ignore_bootloader_failure``.

**The image is not trusted.**  Every partition mounted is checked against
the device allow-list first (a holder built on another disk is refused).
The image's /boot/efi is copied with its links resolved inside the image
(:mod:`ipa_twisted.confined`): a link to ``/proc/cmdline`` or to a ramdisk
file is refused, never followed.  The chroot is sealed: its ``/dev`` is a
fresh tmpfs holding only the install disk, its partitions (and their
``/dev/disk/by-uuid`` names) and the usual character devices; ``/proc``
and ``/sys`` are bound read-only, ``/run`` is empty; the image's tools run
without the capabilities to make device nodes, mount, load modules, do raw
I/O, reboot or trace the agent (``setpriv``), and with os-prober disabled
(``GRUB_DISABLE_OS_PROBER=true``; without mount rights and other disks it
could not look anyway).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import stat
import tempfile
from typing import Any, AsyncIterator

from twisted.internet.defer import CancelledError
from twisted.logger import Logger

from ipa_twisted import errors, tools
from ipa_twisted.confined import OutsideTree, copy_from_image, resolve_in
from ipa_twisted.hardware import disks as disks_mod
from ipa_twisted.hardware import partinfo, raid
from ipa_twisted.hardware.disks import kname_of
from ipa_twisted.process import ProcessError

log = Logger()

ESP_GUID = "c12a7328-f81f-11d2-ba4b-00a0c93ec93b"
BIOS_BOOT_GUID = "21686148-6449-6e6f-744e-656564454649"
EFI_ARCH = {"x86_64": "x64", "aarch64": "aa64", "i686": "ia32",
            "riscv64": "riscv64"}
#: a Boot#### line of ``efibootmgr [-v]``: number, label (up to the tab
#: that starts the device path, or the end of the line)
BOOT_ENTRY = re.compile(r"^Boot([0-9A-Fa-f]{4})\*?\s+(.*?)(?:\t|$)")
GRUB_EFI_TARGET = {"x86_64": "x86_64-efi", "aarch64": "arm64-efi",
                   "i686": "i386-efi", "riscv64": "riscv64-efi"}

#: Where the kernel lists block devices (the install disk's partitions
#: and device numbers come from here).
SYS_BLOCK = "/sys/class/block"
#: The character devices of the chroot's private /dev: name, major, minor.
CHAR_DEVICES = (("null", 1, 3), ("zero", 1, 5), ("full", 1, 7),
                ("random", 1, 8), ("urandom", 1, 9), ("tty", 5, 0))
#: Capabilities the image's tools lose in the chroot (bounding set): no
#: device nodes, mounts, modules, raw I/O, reboots, nor reading the
#: agent's memory, environment or root through /proc.
DROPPED_CAPABILITIES = ("mknod", "sys_admin", "sys_module", "sys_rawio",
                        "sys_boot", "sys_ptrace")
#: The environment of the image's tools (os-prober off).
CHROOT_ENV = {"GRUB_DISABLE_OS_PROBER": "true"}
#: Mount points of the chroot: never a link, never the ESP's place.
SEALED = ("dev", "proc", "sys", "run")
_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:+-]*")


class BootloaderError(errors.AgentError):
    message = "Error installing the bootloader"


def find_loaders(esp: str, arch: str = "x64") -> list[tuple[str, str]]:
    """``(path inside the ESP, label)`` of the boot loaders to register,
    best first: a ``BOOT<ARCH>.CSV`` file's entries, else shim, else grub,
    else the removable-media loader."""
    efi = os.path.join(esp, "EFI")
    try:
        vendors = sorted(os.listdir(efi))
    except OSError:
        return []
    found: list[tuple[str, str]] = []
    for vendor in vendors:
        if vendor.upper() == "BOOT":
            continue
        base = os.path.join(efi, vendor)
        for name in sorted(os.listdir(base)) if os.path.isdir(base) else []:
            if name.upper() == f"BOOT{arch.upper()}.CSV":
                with open(os.path.join(base, name), "rb") as f:
                    raw = f.read()
                text = raw.decode("utf-16") if raw[:2] in (b"\xff\xfe",
                                                           b"\xfe\xff") \
                    else raw.decode("utf-8", "replace")
                for line in text.splitlines():
                    fields = [x.strip() for x in line.split(",")]
                    if len(fields) >= 2 and fields[0]:
                        found.append((f"EFI/{vendor}/{fields[0]}", fields[1]))
    if found:
        return found
    for pattern in (f"shim{arch}.efi", f"grub{arch}.efi"):
        for vendor in vendors:
            path = os.path.join(efi, vendor, pattern)
            if vendor.upper() != "BOOT" and os.path.isfile(path):
                return [(f"EFI/{vendor}/{pattern}", vendor)]
    for vendor in vendors:  # the removable-media path, EFI/BOOT/BOOTX64.EFI
        if vendor.upper() == "BOOT":
            for name in os.listdir(os.path.join(efi, vendor)):
                if name.upper() == f"BOOT{arch.upper()}.EFI":
                    return [(f"EFI/{vendor}/{name}", "ironic")]
    return []


def failure_text(e: ProcessError) -> str:
    """The command, how it failed and the end of what it said."""
    text = f"{' '.join(e.argv)}: {e.reason}"
    said = (e.result.err or e.result.out).strip() if e.result else ""
    return f"{text}: {said[-500:]}" if said else text


def uefi_firmware() -> bool:
    """Did this ramdisk boot by UEFI, with efibootmgr at hand?"""
    return os.path.isdir("/sys/firmware/efi") and \
        shutil.which("efibootmgr", path=tools.search_path()) is not None


def efi_path(path: str) -> str:
    return "\\" + path.replace("/", "\\")


class Installer:
    """One ``install_bootloader`` for ``agent``."""

    def __init__(self, agent: Any) -> None:
        self.agent = agent

    async def _run(self, argv: list[str], timeout: float = 600.0,
                   check: bool = True,
                   env: dict[str, str] | None = None) -> str:
        if env is None:
            result = await self.agent.process.run(argv, timeout=timeout,
                                                  check=check)
        else:
            result = await self.agent.process.run(argv, timeout=timeout,
                                                  check=check, env=env)
        out: str = result.out
        return out

    async def _chroot(self, root: str, argv: list[str]) -> str:
        """Run one of the image's tools in its (sealed) root."""
        drop = ",".join("-" + cap for cap in DROPPED_CAPABILITIES)
        return await self._run(["setpriv", "--bounding-set", drop, "--",
                                "chroot", root] + argv, timeout=1800.0,
                               env=dict(CHROOT_ENV))

    async def install_bootloader(self, root_uuid: Any = None,
                                 efi_system_part_uuid: Any = None,
                                 prep_boot_part_uuid: Any = None,
                                 target_boot_mode: str | None = None,
                                 ignore_bootloader_failure: Any = None
                                 ) -> None:
        ignore = ignore_bootloader_failure
        if ignore is None:
            ignore = self.agent.lookup_config.get("ignore_bootloader_failure",
                                                  False)
        try:
            await self._install(root_uuid, efi_system_part_uuid,
                                target_boot_mode)
        except CancelledError:
            raise
        except Exception as e:
            if ignore:
                log.warn("installing the bootloader failed ({e}); going on "
                         "(ignore_bootloader_failure)", e=e)
                return
            if isinstance(e, errors.AgentError):
                raise
            raise BootloaderError(failure_text(e) if isinstance(
                e, ProcessError) else str(e)) from e

    async def _install(self, root_uuid: Any, efi_uuid: Any,
                       target_boot_mode: str | None) -> None:
        device = await self.agent.hardware.dispatch("get_os_install_device")
        self.agent.guard.check(device)
        partition_image = bool(root_uuid) and \
            not str(root_uuid).startswith("0x")
        nvram = uefi_firmware()
        current = "uefi" if os.path.isdir("/sys/firmware/efi") else "bios"
        mode = target_boot_mode or current
        if mode != current:
            log.warn("boot mode mismatch: the instance is to boot by {mode}, "
                     "this ramdisk booted by {current}; installing for "
                     "{mode}", mode=mode, current=current)
        if mode == "uefi":
            if await self._efi(device, efi_uuid,
                               str(root_uuid) if partition_image else None,
                               nvram):
                return
        if not partition_image:
            log.info("whole-disk image: no bootloader to install ({mode} "
                     "mode)", mode=mode)
            return
        if not self.agent.lookup_config.get("enable_bios_bootloader_install"):
            raise errors.InvalidImage(
                "installing a BIOS bootloader for a partition image is "
                "disabled (Ironic's [agent]enable_bios_bootloader_install)")
        await self._bios_grub(device, str(root_uuid))

    async def _partitions(self, device: str) -> list[dict[str, str]]:
        """The partitions of ``device`` with their identifiers.

        lsblk only names them: without a udev database it reports no
        UUIDs, so each partition is probed directly with ``blkid -p``.
        """
        out = await self._run(["lsblk", "-n", "-r", "-o", "NAME,TYPE",
                               device])
        rows = []
        for line in out.splitlines():
            fields = line.split()
            # (a partition of an md array is typed "md" by some lsblk)
            partition = fields[1] == "part" or (
                fields[1] == "md" and fields[0] != kname_of(device))
            if len(fields) != 2 or not partition:
                continue
            row = {"NAME": fields[0]}
            probe = await self._run(
                ["blkid", "-p", "-o", "export", f"/dev/{fields[0]}"],
                check=False)
            values = dict(item.split("=", 1) for item in probe.splitlines()
                          if "=" in item)
            row["UUID"] = values.get("UUID", "")
            row["PARTUUID"] = values.get("PART_ENTRY_UUID", "")
            row["PARTTYPE"] = values.get("PART_ENTRY_TYPE", "")
            row["NUMBER"] = values.get("PART_ENTRY_NUMBER", "")
            rows.append(row)
        return rows

    async def _efi(self, device: str, efi_uuid: Any, root_uuid: str | None,
                   nvram: bool) -> bool:
        """UEFI: register the ESP's boot loaders in NVRAM (``nvram``).  A
        partition image's empty ESP is filled first.  False when the disk
        has no ESP, or (whole-disk image) no loader on it."""
        parts = await self._partitions(device)
        esp = None
        if efi_uuid:
            esp = next((p for p in parts if str(efi_uuid) in
                        (p.get("UUID"), p.get("PARTUUID"))), None)
            if esp is None:
                log.warn("no partition with UUID {uuid} on {dev}: looking "
                         "for an EFI system partition by type",
                         uuid=efi_uuid, dev=device)
        if esp is None:
            esp = next((p for p in parts if p.get("PARTTYPE", "").lower()
                        in (ESP_GUID, "0xef")), None)
        array = raid.array_of(device, SYS_BLOCK)
        if esp is None and array is None:
            log.info("no EFI system partition on {dev}", dev=device)
            return False
        if array is not None:
            # as IPA: an ESP on each member, mirrored (metadata 1.0: each
            # member is a plain FAT to the firmware); the one on the array
            # (a partition image's) moves there
            part = await self._raid_esp(array, f"/dev/{esp['NAME']}"
                                        if esp else None)
            targets = [(f"/dev/{raid.holder_disk(m, SYS_BLOCK)}",
                        partition_number(m), f" (RAID, part{i})")
                       for i, m in enumerate(disks_mod.md_members(
                           kname_of(part), SYS_BLOCK))]
        else:
            assert esp is not None
            part = f"/dev/{esp['NAME']}"
            trailing = re.search(r"(\d+)$", esp["NAME"])
            number = esp.get("NUMBER") or (trailing.group(1) if trailing
                                           else "1")
            targets = [(device, number, "")]
        async with self._mounted(part) as mnt:
            loaders = find_loaders(mnt, efi_arch())
        if not loaders and root_uuid:
            loaders = await self._fill_esp(device, root_uuid, part,
                                           removable_only=not nvram)
        if not loaders:
            log.info("no boot loader on {part}", part=part)
            return False
        if not nvram:
            log.warn("this ramdisk cannot write UEFI variables (not booted "
                     "by UEFI, or no efibootmgr): no boot entry made; the "
                     "firmware must find {path} on {part} by itself",
                     path=loaders[0][0], part=part)
            return True
        try:
            listing = await self._run(["efibootmgr", "-v"])
            for path, label in loaders:
                for disk, number, suffix in targets:
                    name = label + suffix
                    for line in listing.splitlines():
                        entry = BOOT_ENTRY.match(line)
                        if entry and entry.group(2).strip() == name:
                            await self._run(["efibootmgr", "-b",
                                             entry.group(1), "-B"])
                    await self._run(["efibootmgr", "-v", "-c", "-d", disk,
                                     "-p", number, "-w", "-L", name, "-l",
                                     efi_path(path)])
                    log.info("UEFI boot entry {label} -> {path} on {part} "
                             "({disk} partition {number})", label=name,
                             path=path, part=part, disk=disk, number=number)
        except ProcessError as e:
            raise BootloaderError(failure_text(e)) from None
        return True

    async def _fill_esp(self, device: str, root_uuid: str, esp: str,
                        removable_only: bool) -> list[tuple[str, str]]:
        """A partition image's empty ESP: copy in what the image ships in
        its /boot/efi; if that holds no boot loader, install the image's
        GRUB.  Returns the loaders found on the ESP afterwards.  On failure
        what was written on the ESP is removed again, so that a later try
        does not take a half-made install for a finished one."""
        async with self._mounted_root(device, root_uuid) as (root, parts), \
                self._mounted(esp) as esp_dir:
            before = tree_of(esp_dir)
            try:
                image_esp = self._esp_place(root)
                if os.path.isdir(image_esp) and os.listdir(image_esp):
                    log.info("copying the image's /boot/efi onto {esp}",
                             esp=esp)
                    try:
                        await self.agent.in_thread(
                            copy_from_image, root, "boot/efi", esp_dir)
                    except OutsideTree as e:
                        raise BootloaderError(
                            f"the image's /boot/efi cannot be copied: {e}"
                        ) from None
                    loaders = find_loaders(esp_dir, efi_arch())
                    if loaders:
                        return loaders
                os.makedirs(image_esp, exist_ok=True)
                await self._run(["mount", "--bind", esp_dir, image_esp])
                try:
                    async with self._sealed(root, device, parts):
                        await self._efi_grub_install(root, device, esp,
                                                     removable_only)
                finally:
                    await self._umount(image_esp)
                return find_loaders(esp_dir, efi_arch())
            except BaseException:
                for path in sorted(tree_of(esp_dir) - before, reverse=True):
                    full = os.path.join(esp_dir, path)
                    with contextlib.suppress(OSError):
                        if os.path.isdir(full) and not os.path.islink(full):
                            os.rmdir(full)
                        else:
                            os.unlink(full)
                raise

    async def _efi_grub_install(self, root: str, device: str, esp: str,
                                removable_only: bool) -> None:
        tool = grub_tool(root)
        target = GRUB_EFI_TARGET.get(os.uname().machine, "x86_64-efi")
        base = [f"{tool}-install", f"--target={target}",
                "--efi-directory=/boot/efi", "--no-nvram"]
        log.info("installing {tool} for UEFI on {esp} (disk {dev})",
                 tool=tool, esp=esp, dev=device)
        try:
            if not removable_only:
                await self._chroot(root, base)
            # the fallback path too, for firmware that loses its entries
            await self._chroot(root, base + ["--removable"])
            await self._chroot(root, [f"{tool}-mkconfig", "-o",
                                      grub_cfg(tool)])
        except ProcessError as e:
            raise BootloaderError(failure_text(e)) from None

    async def _bios_grub(self, device: str, root_uuid: str) -> None:
        """The image's own GRUB into ``device``'s boot sector (on a
        software RAID: into each member disk's, as IPA)."""
        array = raid.array_of(device, SYS_BLOCK)
        targets = [device]
        if array is not None:
            targets = [f"/dev/{h}" for h in array.holders]
            await self._bios_boot_partitions(targets)
        async with self._mounted_root(device, root_uuid) as (root, parts), \
                self._sealed(root, device, parts):
            tool = grub_tool(root)
            argv = [f"{tool}-install"]
            if os.uname().machine in ("x86_64", "i686"):
                # never guess from the ramdisk's firmware: BIOS is asked for
                argv.append("--target=i386-pc")
            try:
                for target in targets:
                    self.agent.guard.check(target)
                    log.info("installing {tool} on {dev} (BIOS)", tool=tool,
                             dev=target)
                    await self._chroot(root, argv + [target])
                await self._chroot(root, [f"{tool}-mkconfig", "-o",
                                          grub_cfg(tool)])
            except ProcessError as e:
                raise BootloaderError(failure_text(e)) from None

    async def _bios_boot_partitions(self, holders: list[str]) -> None:
        """As IPA: a 2 MiB BIOS boot partition on each GPT member of a
        software RAID (GRUB's core image goes there), once."""
        for number, holder in enumerate(holders):
            self.agent.guard.check(holder)
            label = f"bios-boot-part-{number}"
            probe = await self._run(["blkid", "-p", "-o", "value", "-s",
                                     "PTTYPE", holder], check=False)
            if probe.strip() != "gpt":
                continue
            parts = await partinfo.partitions(self.agent.process, holder,
                                              SYS_BLOCK)
            if any(p.partlabel == label or p.parttype.lower() ==
                   BIOS_BOOT_GUID for p in parts):
                continue
            first = (await self._run(["sgdisk", "-F", holder])).strip()
            log.info("BIOS boot partition on {disk}", disk=holder)
            await self._run(["sgdisk", "-n", f"0:{first.splitlines()[-1]}"
                             f":+2MiB", "-t", "0:ef02", "-c", f"0:{label}",
                             holder])
            await self._run(["partprobe", holder], check=False)

    async def _raid_esp(self, array: raid.Array, image_esp: str | None
                        ) -> str:
        """The mirrored ESP of a software RAID (an md RAID-1 of an ESP
        partition on each member disk, metadata 1.0), made once; what an
        ESP on the array holds is moved there and that ESP wiped (so that
        the instance mounts one ESP only).  Returns the ESP array."""
        existing = await self._esp_array(array)
        if existing is not None:
            log.info("the RAID ESP {md} is there already", md=existing)
            esp = existing
        else:
            members = []
            for number, holder in enumerate(array.holders):
                path = f"/dev/{holder}"
                self.agent.guard.check(path)
                label = f"uefi-holder-{number}"
                first = (await self._run(["sgdisk", "-F", path])).strip()
                await self._run(["sgdisk", "-n", f"0:{first.splitlines()[-1]}"
                                 f":+{raid.ESP_SIZE_MIB}MiB", "-t", "0:ef00",
                                 "-c", f"0:{label}", path])
                await self._run(["partprobe", path], check=False)
                found = [p for p in await partinfo.partitions(
                    self.agent.process, path, SYS_BLOCK)
                    if p.partlabel == label]
                if not found:
                    raise BootloaderError(f"the ESP partition {label} made "
                                          f"on {path} is not there")
                members.append(found[0].path)
            esp = raid.next_free_md(SYS_BLOCK)
            log.info("creating the RAID ESP {md} on {members}", md=esp,
                     members=", ".join(members))
            await self._run(["mdadm", "--create", esp, "--force", "--run",
                             "--metadata=1.0", "--level", "1", "--name",
                             "esp", "--raid-devices", str(len(members))]
                            + members)
            label, uuid = "efi-part", ""
            if image_esp:
                values = partinfo.parse_blkid_export(await self._run(
                    ["blkid", "-p", "-o", "export", image_esp], check=False))
                if values.get("TYPE") == "vfat":
                    label = values.get("LABEL") or "esp"
                    uuid = values.get("UUID", "").replace("-", "")
            argv = ["mkfs.vfat", "-n", label[:11]]
            if re.fullmatch(r"[0-9A-Fa-f]{8}", uuid):
                argv += ["-i", uuid]
            await self._run(argv + [esp])
        if image_esp:
            self.agent.guard.check(image_esp)
            async with self._mounted(image_esp) as src, \
                    self._mounted(esp) as dst:
                if os.listdir(src):
                    log.info("moving the ESP {src} onto the RAID ESP {md}",
                             src=image_esp, md=esp)
                    try:
                        await self.agent.in_thread(copy_from_image, src, "",
                                                   dst)
                    except OutsideTree as e:
                        raise BootloaderError(
                            f"the ESP {image_esp} cannot be copied: {e}"
                        ) from None
            await self._run(["wipefs", "-a", image_esp])
        return esp

    async def _esp_array(self, array: raid.Array) -> str | None:
        """A RAID-1 ESP array on the same disks as ``array`` (a previous
        install made it)."""
        for other in raid.arrays(SYS_BLOCK):
            if other.name == array.name or other.level != "raid1" or \
                    not set(other.holders) <= set(array.holders):
                continue
            probe = await self._run(["blkid", "-p", "-o", "value", "-s",
                                     "TYPE", other.path], check=False)
            if probe.strip() == "vfat":
                return other.path
        return None

    @contextlib.asynccontextmanager
    async def _mounted(self, part: str) -> AsyncIterator[str]:
        """``part`` mounted on a fresh directory, unmounted (lazily if it
        must) and the directory removed afterwards."""
        self.agent.guard.check(part)
        where = tempfile.mkdtemp(prefix="ipa-mnt-")
        try:
            try:
                await self._run(["mount", part, where])
            except ProcessError as e:
                raise BootloaderError(failure_text(e)) from None
            try:
                yield where
            finally:
                await self._umount(where)
        finally:
            try:
                os.rmdir(where)
            except OSError as e:
                log.warn("could not remove {dir}: {e}", dir=where, e=e)

    @contextlib.asynccontextmanager
    async def _mounted_root(self, device: str, root_uuid: str
                            ) -> AsyncIterator[tuple[str, list[dict[str,
                                                                     str]]]]:
        """The image's root filesystem (by UUID or PARTUUID) mounted (and
        nothing in it yet: :meth:`_sealed` readies it for a chroot), with
        the partitions of ``device``."""
        parts = await self._partitions(device)
        root = next((p for p in parts if root_uuid in
                     (p.get("UUID"), p.get("PARTUUID"))), None)
        if root is None:
            raise errors.DeviceNotFound(
                f"no partition with UUID {root_uuid} on {device}")
        async with self._mounted(f"/dev/{root['NAME']}") as mnt:
            yield mnt, parts

    @staticmethod
    def _esp_place(root: str) -> str:
        """Where the image's /boot/efi is, resolved inside the image; never
        the image's root nor one of the chroot's mount points."""
        try:
            place = resolve_in(root, "boot/efi")
        except OutsideTree as e:
            raise BootloaderError(f"the image's /boot/efi: {e}") from None
        first = os.path.relpath(place, root).split(os.sep)[0]
        if first in (".",) + SEALED:
            raise BootloaderError(
                f"the image's /boot/efi leads to /{first.strip('.')}: "
                f"refusing to mount the EFI system partition there")
        return place

    @staticmethod
    def _mount_point(root: str, name: str) -> str:
        """``root``/``name``, a real directory of the image (made if
        missing): never a link that would carry a mount elsewhere."""
        path = os.path.join(root, name)
        try:
            info = os.lstat(path)
        except FileNotFoundError:
            os.mkdir(path, 0o755)
            return path
        if not stat.S_ISDIR(info.st_mode):
            raise BootloaderError(
                f"the image's /{name} is not a directory (a link?): "
                f"refusing to mount over it")
        return path

    @contextlib.asynccontextmanager
    async def _sealed(self, root: str, device: str,
                      parts: list[dict[str, str]]) -> AsyncIterator[None]:
        """``root`` ready for the image's tools: a private /dev (the
        install disk, its partitions, the usual character devices), /proc
        and /sys bound read-only, an empty /run; all undone afterwards."""
        mounted: list[str] = []
        try:
            dev = self._mount_point(root, "dev")
            await self._run(["mount", "-t", "tmpfs", "-o",
                             "mode=0755,nosuid,noexec,size=4m", "ipa-dev",
                             dev])
            mounted.append(dev)
            await self._fill_dev(dev, device, parts)
            for name in ("proc", "sys"):
                target = self._mount_point(root, name)
                await self._run(["mount", "-o", "bind,ro", f"/{name}",
                                 target])
                mounted.append(target)
            run = self._mount_point(root, "run")
            await self._run(["mount", "-t", "tmpfs", "-o",
                             "mode=0755,nosuid,nodev,size=16m", "ipa-run",
                             run])
            mounted.append(run)
            yield
        except ProcessError as e:
            raise BootloaderError(failure_text(e)) from None
        finally:
            for target in reversed(mounted):
                await self._umount(target)

    async def _fill_dev(self, dev: str, device: str,
                        parts: list[dict[str, str]]) -> None:
        """The private /dev: character devices, then the install disk and
        its own partitions (from sysfs; each allow-listed), with the
        names GRUB looks for (the disk's path as given, by-uuid and
        by-partuuid links)."""
        for name, major, minor in CHAR_DEVICES:
            await self._run(["mknod", "-m", "0666", os.path.join(dev, name),
                             "c", str(major), str(minor)])
        disk = kname_of(device)
        nodes = chroot_devices(disk)
        for name in nodes:
            self.agent.guard.check(f"/dev/{name}")
            major, minor = device_number(name)
            await self._run(["mknod", "-m", "0660", os.path.join(dev, name),
                             "b", str(major), str(minor)])
        links = {"fd": "/proc/self/fd", "stdin": "/proc/self/fd/0",
                 "stdout": "/proc/self/fd/1", "stderr": "/proc/self/fd/2"}
        alias = os.path.normpath(device)
        if alias.startswith("/dev/") and alias != f"/dev/{disk}":
            links[alias[len("/dev/"):]] = f"/dev/{disk}"
        for row in parts:
            if row.get("NAME") not in nodes:
                continue
            for key, kind in (("UUID", "by-uuid"),
                              ("PARTUUID", "by-partuuid")):
                value = row.get(key, "")
                if _SAFE_NAME.fullmatch(value):
                    links[f"disk/{kind}/{value}"] = f"/dev/{row['NAME']}"
        os.mkdir(os.path.join(dev, "shm"), 0o1777)
        for name, target in links.items():
            path = os.path.join(dev, name)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            if not os.path.lexists(path):
                os.symlink(target, path)

    async def _umount(self, path: str) -> None:
        try:
            await self._run(["umount", path])
        except ProcessError as e:
            log.warn("umount {path} failed ({e}); detaching it lazily",
                     path=path, e=e.reason)
            await self.agent.process.run(["umount", "-l", path],
                                         check=False)


def efi_arch() -> str:
    return EFI_ARCH.get(os.uname().machine, "x64")


def grub_tool(root: str) -> str:
    """grub2 (RHEL-like images) or grub (Debian-like)."""
    try:
        found = os.path.exists(resolve_in(root, "usr/sbin/grub2-install"))
    except OutsideTree:
        found = False
    return "grub2" if found else "grub"


def chroot_devices(disk: str) -> list[str]:
    """The block devices of the chroot's /dev: the install disk and its
    partitions; for a software RAID also its member disks, their
    partitions, and the other arrays on them (the ESP array) with theirs,
    as GRUB needs them to find the array's members."""
    names = [disk] + partitions_of(disk)
    array = raid.array_of(disk, SYS_BLOCK)
    if array is not None:
        for holder in array.holders:
            names += [holder] + partitions_of(holder)
        for other in raid.arrays(SYS_BLOCK):
            if set(other.holders) & set(array.holders):
                names += [other.name] + partitions_of(other.name)
    return list(dict.fromkeys(names))


def partition_number(kname: str) -> str:
    """A partition's number, from sysfs (else the name's last digits)."""
    try:
        with open(os.path.join(SYS_BLOCK, kname, "partition")) as f:
            return f.read().strip()
    except OSError:
        trailing = re.search(r"(\d+)$", kname)
        return trailing.group(1) if trailing else "1"


def partitions_of(disk: str) -> list[str]:
    """The kernel names of ``disk``'s own partitions (not of holders
    built on it), by number."""
    return [name for _, name in partinfo.partition_names(disk, SYS_BLOCK)]


def device_number(name: str) -> tuple[int, int]:
    """(major, minor) of a block device, from sysfs."""
    with open(os.path.join(SYS_BLOCK, name, "dev")) as f:
        major, _, minor = f.read().strip().partition(":")
    return int(major), int(minor)


def grub_cfg(tool: str) -> str:
    return "/boot/grub2/grub.cfg" if tool == "grub2" else "/boot/grub/grub.cfg"


def tree_of(top: str) -> set[str]:
    """Every path under ``top``, relative to it."""
    found: set[str] = set()
    for base, dirs, files in os.walk(top):
        for name in dirs + files:
            found.add(os.path.relpath(os.path.join(base, name), top))
    return found
