"""Partition layouts for partition images (contract 5.2; as IPA lays them
out, so that Ironic and cloud images find what they expect).

Boot mode and table type come from the node (not from image_info): UEFI ->
GPT; else the ``disk_label`` capability (``gpt``, otherwise MBR).  One
``parted`` call makes, in order: the EFI system partition (UEFI, 550 MiB,
FAT32, ``boot``), a 1 MiB BIOS boot partition (BIOS on GPT, ``bios_grub``),
a PReP partition (ppc64 BIOS, 8 MiB), ephemeral, swap, the config drive,
and the root partition last (so that growroot can grow it), from 1 MiB on,
sizes in MiB.
"""

from __future__ import annotations

import json
import os
from typing import Any, Mapping

import attrs

ESP_MB = 550
BIOS_BOOT_MB = 1
PREP_MB = 8


@attrs.frozen
class Part:
    role: str
    size_mb: int
    fs_type: str = ""
    flags: tuple[str, ...] = ()


def _capabilities(value: Any) -> dict[str, str]:
    if isinstance(value, dict):
        return {str(k): str(v) for k, v in value.items()}
    if isinstance(value, str) and value.strip():
        try:
            parsed = json.loads(value)
        except ValueError:
            parsed = None
        if isinstance(parsed, dict):
            return {str(k): str(v) for k, v in parsed.items()}
        out = {}
        for item in value.split(","):
            key, _, val = item.partition(":")
            if key.strip():
                out[key.strip()] = val.strip()
        return out
    return {}


def ramdisk_boot_mode() -> str:
    return "uefi" if os.path.isdir("/sys/firmware/efi") else "bios"


def node_boot_mode(node: Mapping[str, Any] | None,
                   ramdisk: str | None = None) -> str:
    node = node or {}
    instance = node.get("instance_info") or {}
    props = node.get("properties") or {}
    internal = node.get("driver_internal_info") or {}
    inst_caps = _capabilities(instance.get("capabilities"))
    prop_caps = _capabilities(props.get("capabilities"))
    if "true" in (inst_caps.get("secure_boot", "").lower(),
                  prop_caps.get("secure_boot", "").lower()):
        return "uefi"
    for value in (instance.get("deploy_boot_mode"), prop_caps.get("boot_mode"),
                  internal.get("deploy_boot_mode")):
        if value in ("uefi", "bios"):
            return str(value)
    return ramdisk or ramdisk_boot_mode()


def table_type(node: Mapping[str, Any] | None, boot_mode: str) -> str:
    if boot_mode == "uefi":
        return "gpt"
    node = node or {}
    for caps in ((node.get("instance_info") or {}).get("capabilities"),
                 (node.get("properties") or {}).get("capabilities")):
        label = _capabilities(caps).get("disk_label")
        if label:
            return "gpt" if label == "gpt" else "msdos"
    return "msdos"


def layout(boot_mode: str, label: str, arch: str, root_mb: int,
           swap_mb: int = 0, ephemeral_mb: int = 0,
           configdrive_mb: int = 0) -> list[Part]:
    parts: list[Part] = []
    ppc = arch.startswith("ppc64")
    if boot_mode == "uefi":
        parts.append(Part("efi system partition", ESP_MB, "fat32",
                          ("boot",)))
    elif label == "gpt" and not ppc:
        parts.append(Part("BIOS Boot partition", BIOS_BOOT_MB, "",
                          ("bios_grub",)))
    if ppc and boot_mode == "bios":
        parts.append(Part("PReP Boot partition", PREP_MB, "",
                          (("boot",) if label == "msdos" else ()) + ("prep",)))
    if ephemeral_mb > 0:
        parts.append(Part("ephemeral", ephemeral_mb))
    if swap_mb > 0:
        parts.append(Part("swap", swap_mb, "linux-swap"))
    if configdrive_mb > 0:
        parts.append(Part("configdrive", configdrive_mb))
    root_flags = ("boot",) if (boot_mode == "bios" and label == "msdos"
                               and not ppc) else ()
    parts.append(Part("root", root_mb, "", root_flags))
    return parts


def parted_argv(device: str, label: str, parts: list[Part]) -> list[str]:
    argv = ["parted", "-a", "optimal", "-s", device, "--", "unit", "MiB",
            "mklabel", label]
    start = 1
    for number, part in enumerate(parts, start=1):
        end = start + part.size_mb
        argv += ["mkpart", "primary", part.fs_type or "", str(start),
                 str(end)]
        for flag in part.flags:
            argv += ["set", str(number), flag, "on"]
        start = end
    return argv


def partition_path(device: str, number: int) -> str:
    sep = "p" if device[-1:].isdigit() else ""
    return f"{device}{sep}{number}"


def paths(device: str, parts: list[Part]) -> dict[str, str]:
    return {p.role: partition_path(device, n)
            for n, p in enumerate(parts, start=1)}
