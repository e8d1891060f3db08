"""CPU, memory, system vendor, boot mode: small probes and their parsers."""

from __future__ import annotations

import os
import socket
from typing import Any

import attrs


@attrs.frozen
class CPU:
    """As IPA reports it: strings ("" when unknown), integers (0 when
    unknown), flags as a list."""

    model_name: str
    frequency: str
    count: int
    architecture: str
    flags: list[str] = attrs.field(factory=list)
    socket_count: int = 0

    def serialize(self) -> dict[str, Any]:
        return {
            "model_name": self.model_name,
            "frequency": self.frequency,
            "count": self.count,
            "architecture": self.architecture,
            "flags": list(self.flags),
            "socket_count": self.socket_count,
        }


def parse_key_values(text: str, sep: str = ":") -> list[tuple[str, str]]:
    pairs = []
    for line in text.splitlines():
        key, found, value = line.partition(sep)
        if found:
            pairs.append((key.strip().lower(), value.strip()))
    return pairs


def _int_or_zero(value: str | None) -> int:
    try:
        return int(value) if value is not None else 0
    except ValueError:
        return 0


def parse_cpu(lscpu: str | None, cpuinfo: str | None,
              machine: str | None = None) -> CPU:
    """CPU facts from ``lscpu`` output, with ``/proc/cpuinfo`` filling gaps."""
    info = dict(parse_key_values(lscpu or ""))
    first_block: dict[str, str] = {}
    processors = 0
    for key, value in parse_key_values(cpuinfo or ""):
        if key == "processor":
            processors += 1
        if processors <= 1:
            first_block.setdefault(key, value)
    flags_text = info.get("flags") or first_block.get("flags") \
        or first_block.get("features") or ""
    # lscpu's maximum frequency, else its current one, else /proc/cpuinfo's
    # (IPA stops at lscpu and reports "" in VMs without cpufreq).
    frequency = info.get("cpu max mhz") or info.get("cpu mhz") \
        or first_block.get("cpu mhz") or ""
    return CPU(
        model_name=info.get("model name") or first_block.get("model name")
        or "",
        frequency=frequency,
        count=_int_or_zero(info.get("cpu(s)")) or processors,
        architecture=info.get("architecture") or machine or "",
        flags=flags_text.split(),
        socket_count=_int_or_zero(info.get("socket(s)")),
    )


def parse_meminfo_total(text: str) -> int | None:
    for key, value in parse_key_values(text):
        if key == "memtotal":
            number, _, unit = value.partition(" ")
            scale = 1024 if unit.strip().lower() == "kb" else 1
            return int(number) * scale
    return None


def physical_memory_mb(sys_memory: str = "/sys/devices/system/memory"
                       ) -> int | None:
    """Memory the kernel knows of (all memory blocks), in MiB."""
    try:
        with open(os.path.join(sys_memory, "block_size_bytes")) as f:
            block = int(f.read().strip(), 16)
        count = sum(1 for n in os.listdir(sys_memory)
                    if n.startswith("memory") and n[6:].isdigit())
    except (OSError, ValueError):
        return None
    return (block * count) // (1024 * 1024) or None


def _read(path: str) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read().strip()
    except OSError:
        return ""


def system_vendor(dmi: str = "/sys/class/dmi/id") -> dict[str, Any]:
    """product_name, serial_number, manufacturer, firmware; empty strings
    when the machine has no DMI data."""
    return {
        "product_name": _read(os.path.join(dmi, "product_name")),
        "serial_number": _read(os.path.join(dmi, "product_serial")),
        "manufacturer": _read(os.path.join(dmi, "sys_vendor")),
        "firmware": {
            "vendor": _read(os.path.join(dmi, "bios_vendor")),
            "version": _read(os.path.join(dmi, "bios_version")),
            "build_date": _read(os.path.join(dmi, "bios_date")),
        },
    }


def boot_info(bootif: str | None,
              efi_dir: str = "/sys/firmware/efi") -> dict[str, Any]:
    return {
        "current_boot_mode": "uefi" if os.path.isdir(efi_dir) else "bios",
        "pxe_interface": bootif,
    }


def hostname() -> str:
    return socket.gethostname()
