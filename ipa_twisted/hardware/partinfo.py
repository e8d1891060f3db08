"""The partitions of a disk (or of a software RAID device), as the kernel
lists them, with what ``blkid -p`` reads from each.

Without a udev database lsblk knows no UUIDs, so each partition is probed
directly; the list itself comes from sysfs (a partition of ``md0`` is
``md0p1`` there too, where lsblk's TYPE says ``md``, not ``part``).
"""

from __future__ import annotations

import os
from typing import Any

import attrs

from ipa_twisted.hardware import disks
from ipa_twisted.hardware.disks import kname_of


@attrs.frozen
class Partition:
    name: str                 # kernel name: vda2, md0p1, nvme0n1p3
    number: int | None        # the partition table's number
    uuid: str = ""            # filesystem UUID
    partuuid: str = ""
    parttype: str = ""        # GPT type GUID or MBR type (0x83)
    label: str = ""           # filesystem label
    partlabel: str = ""       # GPT partition name
    fstype: str = ""

    @property
    def path(self) -> str:
        return f"/dev/{self.name}"


def partition_names(disk: str, sys_block: str | None = None
                    ) -> list[tuple[int, str]]:
    """(number, kernel name) of ``disk``'s own partitions (not of holders
    built on it), by number."""
    base = os.path.join(sys_block or disks.SYS_BLOCK, kname_of(disk))
    try:
        names = os.listdir(base)
    except OSError:
        return []
    found = []
    for name in names:
        try:
            with open(os.path.join(base, name, "partition")) as f:
                number = int(f.read().strip() or 0)
        except (OSError, ValueError):
            continue
        found.append((number, name))
    return sorted(found)


def parse_blkid_export(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines()
                if "=" in line)


async def partitions(process: Any, disk: str,
                     sys_block: str | None = None) -> list[Partition]:
    """Every partition of ``disk`` with its identifiers (``blkid -p``)."""
    found = []
    for sys_number, name in partition_names(disk, sys_block):
        probe = await process.run(["blkid", "-p", "-o", "export",
                                   f"/dev/{name}"], timeout=60.0,
                                  check=False)
        values = parse_blkid_export(probe.out)
        number = values.get("PART_ENTRY_NUMBER", "")
        found.append(Partition(
            name=name,
            number=int(number) if number.isdigit() else sys_number or None,
            uuid=values.get("UUID", ""),
            partuuid=values.get("PART_ENTRY_UUID", ""),
            parttype=values.get("PART_ENTRY_TYPE", ""),
            label=values.get("LABEL", ""),
            partlabel=values.get("PART_ENTRY_NAME", ""),
            fstype=values.get("TYPE", "")))
    return found
