"""Writing a partition image: partitions, filesystems, the image into the
root partition, the config drive, and the UUIDs Ironic asks for."""

from __future__ import annotations

from typing import Any, Mapping

from twisted.logger import Logger

from ipa_twisted import errors
from ipa_twisted.hardware import blockio
from ipa_twisted.image import configdrive as cd
from ipa_twisted.image import partitions
from ipa_twisted.process import ProcessError

log = Logger()

REQUIRED = ("root_mb", "swap_mb", "ephemeral_mb", "ephemeral_format",
            "preserve_ephemeral")
#: filesystems an ephemeral partition may get (``mkfs -t``); FAT takes its
#: label with ``-n``
EPHEMERAL_FORMATS = ("ext2", "ext3", "ext4", "xfs", "btrfs", "vfat",
                     "msdos", "ntfs")


def _int(info: Mapping[str, Any], key: str) -> int:
    try:
        return int(info.get(key) or 0)
    except (TypeError, ValueError):
        raise errors.InvalidCommandParamsError(
            f"image_info {key} must be a number: {info.get(key)!r}") from None


def check_fields(image_info: Mapping[str, Any]) -> None:
    missing = [k for k in REQUIRED if k not in image_info]
    if missing:
        raise errors.InvalidCommandParamsError(
            f"a partition image needs {', '.join(missing)} in image_info")
    if _int(image_info, "root_mb") <= 0:
        raise errors.InvalidCommandParamsError("root_mb must be positive")
    ephemeral_format(image_info)


def ephemeral_format(image_info: Mapping[str, Any]) -> str:
    """The ephemeral filesystem type (ext4 when none is given); one of
    :data:`EPHEMERAL_FORMATS`, never anything else on mkfs's command line."""
    fmt = image_info.get("ephemeral_format") or "ext4"
    if fmt not in EPHEMERAL_FORMATS:
        raise errors.InvalidCommandParamsError(
            f"ephemeral_format must be one of {', '.join(EPHEMERAL_FORMATS)}"
            f", not {fmt!r}")
    return str(fmt)


async def uuid_of(context: Any, part: str) -> str:
    """Filesystem UUID, else partition UUID, else ""."""
    result = await context.process.run(
        ["lsblk", part, "--pairs", "--bytes", "--ascii", "--nodeps",
         "--output", "UUID,PARTUUID"], timeout=60.0, check=False)
    fields = {}
    for item in result.out.split():
        key, _, value = item.partition("=")
        fields[key] = value.strip('"')
    if fields.get("UUID"):
        return fields["UUID"]
    if fields.get("PARTUUID"):
        return fields["PARTUUID"]
    blkid = await context.process.run(
        ["blkid", "-p", "-o", "value", "-s", "UUID", part], timeout=60.0,
        check=False)
    return blkid.out.strip()


async def prepare(context: Any, image_info: Mapping[str, Any], device: str,
                  configdrive: Any, node: Mapping[str, Any] | None,
                  arch: str) -> tuple[dict[str, str], bytes | None, str, str]:
    """Partition ``device`` (unless preserve_ephemeral) and make the
    filesystems that do not depend on the image; returns (partition paths
    by role, the decoded config drive, boot mode, table type)."""
    check_fields(image_info)
    run = context.process.run
    context.guard.check(device)
    boot_mode = partitions.node_boot_mode(node)
    label = partitions.table_type(node, boot_mode)
    drive = await cd.fetch(context, configdrive) if configdrive else None
    preserve = str(image_info.get("preserve_ephemeral")).lower() == "true"
    parts = partitions.layout(
        boot_mode, label, arch, _int(image_info, "root_mb"),
        _int(image_info, "swap_mb"), _int(image_info, "ephemeral_mb"),
        cd.size_mb(drive) if drive else 0)
    paths = partitions.paths(device, parts)
    log.info("partition image: {mode} boot, {label} table, {layout}",
             mode=boot_mode, label=label,
             layout=", ".join(f"{p.role} {p.size_mb} MiB" for p in parts))
    try:
        if not preserve:
            await run(["wipefs", "--force", "--all", device], timeout=120.0)
            await context.in_thread(blockio.wipe_head_and_tail,
                                    context.guard, device)
            await run(partitions.parted_argv(device, label, parts),
                      timeout=120.0)
        await run(["partprobe", device], timeout=120.0, check=False)
        await cd.wait_for_partitions(context, device, list(paths.values()))
        if boot_mode == "uefi":
            await run(["mkfs", "-t", "vfat", "-n", "efi-part",
                       paths["efi system partition"]], timeout=300.0)
        if drive:
            await cd.write_to_partition(context, paths["configdrive"], drive)
    except ProcessError as e:
        raise errors.DeploymentError(
            f"cannot partition {device}: {e}") from None
    return paths, drive, boot_mode, label


async def finish(context: Any, image_info: Mapping[str, Any], device: str,
                 paths: Mapping[str, str]) -> dict[str, Any]:
    """Swap and ephemeral filesystems, then the UUIDs."""
    run = context.process.run
    preserve = str(image_info.get("preserve_ephemeral")).lower() == "true"
    try:
        if "swap" in paths:
            await run(["mkswap", "-L", "swap1", paths["swap"]], timeout=300.0)
        if "ephemeral" in paths and not preserve:
            fmt = ephemeral_format(image_info)
            argv = ["mkfs", "-t", fmt]
            if fmt in ("ext3", "ext4"):
                argv.append("-F")
            label = "-n" if fmt in ("vfat", "msdos") else "-L"
            await run(argv + [label, "ephemeral0", paths["ephemeral"]],
                      timeout=1800.0)
    except ProcessError as e:
        raise errors.DeploymentError(
            f"cannot make a filesystem: {e}") from None
    await run(["partprobe", device], timeout=120.0, check=False)
    uuids: dict[str, Any] = {
        "partitions": dict(paths),
        "root uuid": await uuid_of(context, paths["root"]),
        "efi system partition uuid": (
            await uuid_of(context, paths["efi system partition"])
            if "efi system partition" in paths else None),
    }
    if "PReP Boot partition" in paths:
        uuids["PReP Boot partition uuid"] = await uuid_of(
            context, paths["PReP Boot partition"])
    return uuids
