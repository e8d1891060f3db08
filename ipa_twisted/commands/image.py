"""The image extension: ``install_bootloader``.

UEFI (when the ramdisk itself booted by UEFI and ``efibootmgr`` is there):
the EFI system partition is found on the disk (or by the UUID Ironic
gives), its boot loaders are found (``BOOT<ARCH>.CSV`` files first, then
shim, then grub, then the removable-media path), and one NVRAM boot entry
per loader is (re)made with ``efibootmgr``.  Whole-disk images stop there.
A partition image's ESP is empty (the agent made it): the image's own GRUB
is installed into it first (``grub-install --target=x86_64-efi
--no-nvram`` in a chroot, then ``grub-mkconfig``), then registered.

BIOS, for partition images: the root filesystem (by its UUID) is mounted,
``/dev``, ``/proc``, ``/sys`` and ``/run`` are bound into it, and the
image's own ``grub-install`` (or ``grub2-install``) and ``grub-mkconfig``
run in a chroot.  As in IPA this only happens when Ironic allows it
(``enable_bios_bootloader_install``); otherwise the command fails, unless
``ignore_bootloader_failure``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from typing import Any

from twisted.logger import Logger

from ipa_twisted import errors
from ipa_twisted.commands.base import Extension, async_command
from ipa_twisted.process import ProcessError

log = Logger()

ESP_GUID = "c12a7328-f81f-11d2-ba4b-00a0c93ec93b"
EFI_ARCH = {"x86_64": "x64", "aarch64": "aa64", "i686": "ia32",
            "riscv64": "riscv64"}
GRUB_EFI_TARGET = {"x86_64": "x86_64-efi", "aarch64": "arm64-efi",
                   "i686": "i386-efi", "riscv64": "riscv64-efi"}


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
        shutil.which("efibootmgr") is not None


def efi_path(path: str) -> str:
    return "\\" + path.replace("/", "\\")


class ImageExtension(Extension):
    name = "image"

    async def _run(self, argv: list[str], timeout: float = 600.0,
                   check: bool = True) -> str:
        result = await self.agent.process.run(argv, timeout=timeout,
                                              check=check)
        out: str = result.out
        return out

    @async_command("install_bootloader")
    async def install_bootloader(self, root_uuid: Any = None,
                                 efi_system_part_uuid: Any = None,
                                 prep_boot_part_uuid: Any = None,
                                 target_boot_mode: str = "bios",
                                 ignore_bootloader_failure: Any = None
                                 ) -> None:
        ignore = ignore_bootloader_failure
        if ignore is None:
            ignore = self.agent.lookup_config.get("ignore_bootloader_failure",
                                                  False)
        try:
            await self._install(root_uuid, efi_system_part_uuid,
                                target_boot_mode)
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
                       target_boot_mode: str) -> None:
        device = await self.agent.hardware.dispatch("get_os_install_device")
        self.agent.guard.check(device)
        partition_image = bool(root_uuid) and \
            not str(root_uuid).startswith("0x")
        if uefi_firmware():
            if await self._efi(device, efi_uuid,
                               str(root_uuid) if partition_image else None):
                return
        if not partition_image:
            log.info("whole-disk image: no bootloader to install in BIOS "
                     "mode")
            return
        if not self.agent.lookup_config.get("enable_bios_bootloader_install"):
            raise errors.InvalidImage(
                "installing a BIOS bootloader for a partition image is "
                "disabled (Ironic's [agent]enable_bios_bootloader_install)")
        await self._grub(device, str(root_uuid))

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
            if len(fields) != 2 or fields[1] != "part":
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

    async def _efi(self, device: str, efi_uuid: Any,
                   root_uuid: str | None) -> bool:
        """UEFI: register the ESP's boot loaders in NVRAM.  For a partition
        image whose ESP has none yet (the agent made it empty), the image's
        own GRUB is installed into it first.  False when the disk has no
        ESP, or (whole-disk image) no loader on it."""
        parts = await self._partitions(device)
        esp = None
        if efi_uuid:
            esp = next((p for p in parts if str(efi_uuid) in
                        (p.get("UUID"), p.get("PARTUUID"))), None)
        if esp is None:
            esp = next((p for p in parts if p.get("PARTTYPE", "").lower()
                        in (ESP_GUID, "0xef")), None)
        if esp is None:
            log.info("no EFI system partition on {dev}", dev=device)
            return False
        part = f"/dev/{esp['NAME']}"
        number = esp.get("NUMBER") or "".join(
            ch for ch in esp["NAME"][::-1] if ch.isdigit())[::-1] or "1"
        loaders = await self._esp_loaders(part)
        if not loaders and root_uuid:
            log.info("no boot loader on {part} yet: installing the image's "
                     "GRUB into it", part=part)
            await self._grub(device, root_uuid, esp=part)
            loaders = await self._esp_loaders(part)
            if not loaders:
                raise BootloaderError(
                    f"grub-install left no boot loader on {part}")
        if not loaders:
            log.info("no boot loader on {part}", part=part)
            return False
        try:
            listing = await self._run(["efibootmgr", "-v"])
            for path, label in loaders:
                for line in listing.splitlines():
                    if line.startswith("Boot") and \
                            f" {label}\t" in line + "\t":
                        await self._run(["efibootmgr", "-b", line[4:8],
                                         "-B"])
                await self._run(["efibootmgr", "-v", "-c", "-d", device,
                                 "-p", number, "-w", "-L", label, "-l",
                                 efi_path(path)])
                log.info("UEFI boot entry {label} -> {path} on {part}",
                         label=label, path=path, part=part)
        except ProcessError as e:
            raise BootloaderError(failure_text(e)) from None
        return True

    async def _esp_loaders(self, part: str) -> list[tuple[str, str]]:
        mnt = tempfile.mkdtemp(prefix="esp-")
        try:
            await self._run(["mount", part, mnt])
            try:
                return find_loaders(mnt, EFI_ARCH.get(os.uname().machine,
                                                      "x64"))
            finally:
                await self._run(["umount", mnt])
        finally:
            os.rmdir(mnt)

    async def _grub(self, device: str, root_uuid: str,
                    esp: str | None = None) -> None:
        """The image's own GRUB, from a chroot into its root filesystem:
        for BIOS into ``device``'s boot sector; for UEFI (``esp``) into
        the ESP mounted at /boot/efi, without touching NVRAM (the caller
        registers what it finds there)."""
        parts = await self._partitions(device)
        root = next((p for p in parts if root_uuid in
                     (p.get("UUID"), p.get("PARTUUID"))), None)
        if root is None:
            raise errors.DeviceNotFound(
                f"no partition with UUID {root_uuid} on {device}")
        part = f"/dev/{root['NAME']}"
        mnt = tempfile.mkdtemp(prefix="root-")
        mounted: list[str] = []
        try:
            await self._run(["mount", part, mnt])
            mounted.append(mnt)
            if esp is not None:
                target = os.path.join(mnt, "boot", "efi")
                os.makedirs(target, exist_ok=True)
                await self._run(["mount", esp, target])
                mounted.append(target)
            for fs in ("/dev", "/proc", "/sys", "/run"):
                target = os.path.join(mnt, fs.lstrip("/"))
                os.makedirs(target, exist_ok=True)
                await self._run(["mount", "--bind", fs, target])
                mounted.append(target)
            tool = "grub2" if os.path.exists(
                os.path.join(mnt, "usr/sbin/grub2-install")) else "grub"
            cfg = "/boot/grub2/grub.cfg" if tool == "grub2" \
                else "/boot/grub/grub.cfg"
            if esp is None:
                argv = [f"{tool}-install", device]
            else:
                target_name = GRUB_EFI_TARGET.get(os.uname().machine,
                                                  "x86_64-efi")
                argv = [f"{tool}-install", f"--target={target_name}",
                        "--efi-directory=/boot/efi", "--no-nvram"]
            log.info("installing {tool} on {dev} (root {part}{esp})",
                     tool=tool, dev=device, part=part,
                     esp=f", ESP {esp}" if esp else "")
            await self._run(["chroot", mnt] + argv, timeout=1800.0)
            await self._run(["chroot", mnt, f"{tool}-mkconfig", "-o", cfg],
                            timeout=1800.0)
        except ProcessError as e:
            raise BootloaderError(failure_text(e)) from None
        finally:
            for path in reversed(mounted):
                try:
                    await self._run(["umount", path])
                except ProcessError:
                    await self.agent.process.run(["umount", "-l", path],
                                                 check=False)
            os.rmdir(mnt)
