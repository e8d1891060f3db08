"""``lshw -quiet -json``: physical memory, system vendor, NIC speeds.

As ironic-python-agent reads it: the root node gives product, serial and
vendor; ``core``'s ``firmware`` child the firmware; ``core``'s direct
``memory`` / ``memory:N`` children (or their banks) the physical memory;
the first ``network`` node whose ``logicalname`` is the interface its
``capacity`` (else ``speed``).  Unlike IPA, a missing or failing lshw only
empties these fields (IPA fails the whole inventory).
"""

from __future__ import annotations

import json
import re
from typing import Any, Iterator

MiB = 1024 * 1024
_MEMORY_ID = re.compile(r"^memory(:\d+)?$")
_SIZE_UNITS = {"bytes": 1, "kib": 1024, "mib": MiB, "gib": 1024 * MiB}
_SPEED_UNITS = {"bit/s": 1e-6, "bit_s": 1e-6, "kbit/s": 1e-3, "mbit/s": 1.0,
                "gbit/s": 1e3}


def parse(output: str) -> dict[str, Any]:
    """The root node (newer lshw prints a list of one)."""
    data = json.loads(output)
    if isinstance(data, list):
        if not data:
            raise ValueError("lshw printed an empty list")
        data = data[0]
    if not isinstance(data, dict):
        raise ValueError("lshw output is not an object")
    return data


def _children(node: dict[str, Any]) -> list[dict[str, Any]]:
    children = node.get("children") or []
    return [c for c in children if isinstance(c, dict)]


def _walk(node: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for child in _children(node):
        yield child
        yield from _walk(child)


def _core(root: dict[str, Any]) -> dict[str, Any]:
    for child in _children(root):
        if child.get("id") == "core":
            return child
    return {}


def _mib(node: dict[str, Any]) -> int:
    factor = _SIZE_UNITS.get(str(node.get("units", "bytes")).lower())
    if factor is None:
        raise ValueError(f"unknown lshw memory unit {node.get('units')!r}")
    return int(int(node["size"]) * factor // MiB)


def physical_memory_mb(root: dict[str, Any]) -> int:
    total = 0
    for node in _children(_core(root)):
        if not _MEMORY_ID.match(str(node.get("id", ""))):
            continue
        if node.get("size"):
            total += _mib(node)
        else:
            for bank in _children(node):
                if bank.get("size"):
                    total += _mib(bank)
    return total


def system_vendor(root: dict[str, Any]) -> dict[str, Any]:
    firmware: dict[str, Any] = {}
    for child in _children(_core(root)):
        if child.get("id") == "firmware":
            firmware = child
            break
    return {
        "product_name": root.get("product", ""),
        "serial_number": root.get("serial", ""),
        "manufacturer": root.get("vendor", ""),
        "firmware": {
            "vendor": firmware.get("vendor", ""),
            "version": firmware.get("version", ""),
            "build_date": firmware.get("date", ""),
        },
    }


def nic_speeds(root: dict[str, Any]) -> dict[str, int]:
    """``{logicalname: Mbit/s}`` from network nodes' capacity (or speed)."""
    speeds: dict[str, int] = {}
    for node in _walk(root):
        if node.get("class") != "network":
            continue
        name = node.get("logicalname")
        if not isinstance(name, str) or name in speeds:
            continue
        value = node.get("capacity", node.get("speed"))
        if value is None:
            continue
        unit = str(node.get("units", "bit/s")).lower()
        factor = _SPEED_UNITS.get(unit)
        if factor is None:
            continue
        speeds[name] = int(float(value) * factor)
    return speeds
