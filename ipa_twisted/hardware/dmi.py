"""``dmidecode`` output: records by type, and the summaries we use.

``parse_dmidecode`` turns the text into records (handle, type, title,
fields); a field whose value is a list (``Characteristics:`` followed by
indented lines) becomes a list of strings.
"""

from __future__ import annotations

import re
from typing import Any

import attrs

_HANDLE = re.compile(r"^Handle (0x[0-9A-Fa-f]+), DMI type (\d+), (\d+) bytes")


@attrs.frozen
class DMIRecord:
    handle: str
    type: int
    title: str
    fields: dict[str, Any]
    #: the "Handle 0x..., DMI type N, M bytes" line
    line: str = ""


def parse_dmidecode(text: str) -> list[DMIRecord]:
    records: list[DMIRecord] = []
    current: dict[str, Any] | None = None
    title: str | None = None
    handle = header = ""
    dmi_type = -1
    list_key: str | None = None

    def close() -> None:
        if current is not None and title is not None:
            records.append(DMIRecord(handle, dmi_type, title, current,
                                     header))

    for line in text.splitlines():
        m = _HANDLE.match(line)
        if m:
            close()
            handle, dmi_type = m.group(1), int(m.group(2))
            header = line.strip()
            current, title, list_key = {}, None, None
            continue
        if current is None:
            continue
        if not line.strip():
            continue
        if title is None and not line.startswith("\t"):
            title = line.strip()
            continue
        if line.startswith("\t\t"):
            if list_key is not None:
                current[list_key].append(line.strip())
            continue
        if line.startswith("\t"):
            key, sep, value = line.strip().partition(":")
            if not sep:
                continue
            key, value = key.strip(), value.strip()
            if value:
                current[key] = value
                list_key = None
            else:
                current[key] = []
                list_key = key
    close()
    return records


def by_type(records: list[DMIRecord], dmi_type: int) -> list[DMIRecord]:
    return [r for r in records if r.type == dmi_type]


_SIZE = re.compile(r"^(\d+)\s*(bytes|kB|KB|MB|GB|TB)$")
_SCALE_MB = {"bytes": 1 / (1024 * 1024), "kB": 1 / 1024, "KB": 1 / 1024,
             "MB": 1, "GB": 1024, "TB": 1024 * 1024}


def memory_device_mb(size: str) -> int:
    """``16384 MB`` / ``16 GB`` -> MiB; 0 for "No Module Installed"."""
    m = _SIZE.match(size.strip())
    if not m:
        return 0
    return int(int(m.group(1)) * _SCALE_MB[m.group(2)])


def physical_memory_mb(records: list[DMIRecord]) -> int:
    """Sum of the installed memory devices (type 17)."""
    return sum(memory_device_mb(str(r.fields.get("Size", "")))
               for r in by_type(records, 17))


def _value(record: DMIRecord | None, key: str) -> str:
    if record is None:
        return ""
    value = record.fields.get(key, "")
    return value if isinstance(value, str) else ""


def system_vendor(records: list[DMIRecord]) -> dict[str, Any]:
    system = next(iter(by_type(records, 1)), None)
    bios = next(iter(by_type(records, 0)), None)
    return {
        "product_name": _value(system, "Product Name"),
        "serial_number": _value(system, "Serial Number"),
        "manufacturer": _value(system, "Manufacturer"),
        "firmware": {
            "vendor": _value(bios, "Vendor"),
            "version": _value(bios, "Version"),
            "build_date": _value(bios, "Release Date"),
        },
    }


def _with_handle(record: DMIRecord) -> dict[str, Any]:
    return {"Handle": record.line, **record.fields}


def inspection_summary(records: list[DMIRecord]) -> dict[str, Any]:
    """The ``dmi`` key of the ``dmi-decode`` inspection collector, shaped
    as IPA's: ``bios`` (type 0) and each ``cpu`` (type 4) with their
    ``Handle`` line; ``memory`` = the first memory array (type 16) with
    ``Number Of Devices`` summed over all arrays (an int), and ``devices``
    = every memory device (type 17) with its ``Handle`` line."""
    bios = next(iter(by_type(records, 0)), None)
    arrays = by_type(records, 16)
    memory: dict[str, Any] = {"devices": []}
    if arrays:
        memory = dict(arrays[0].fields)
        memory["Number Of Devices"] = sum(
            int(a.fields.get("Number Of Devices", 0)) for a in arrays)
    devices = by_type(records, 17)
    if devices:
        memory["devices"] = [_with_handle(r) for r in devices]
    return {
        "bios": _with_handle(bios) if bios else {},
        "cpu": [_with_handle(r) for r in by_type(records, 4)],
        "memory": memory,
    }
