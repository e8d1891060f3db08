"""Block devices: listing them, and the guard that decides which we may touch.

Listing follows ironic-python-agent: ``lsblk`` (bytes, all devices), keep
types ``disk``, ``raid*`` and ``mpath``; drop floppies, RAM disks, zram,
empty devices.  Loop devices are never disks, except those named in
``device_allowlist``.

**The guard.** When ``device_allowlist`` is set, the agent lists, chooses,
writes and erases only those devices (and their partitions), and the
software RAID (md) devices built only on them.  Every write and erase path
calls :meth:`DeviceGuard.check` right before it opens the device, so that
no code path can reach another disk by accident.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any, Callable, Iterable, Mapping, Sequence

import attrs

from ipa_twisted import errors

LSBLK_COLUMNS = (
    "KNAME,MODEL,SIZE,ROTA,TYPE,UUID,PARTUUID,SERIAL,WWN,LOG-SEC,PHY-SEC,"
    "TRAN,PKNAME"
)

SYS_BLOCK = "/sys/class/block"


@attrs.frozen
class BlockDevice:
    """A disk as the inventory reports it (14 fields, always present)."""

    name: str
    model: str | None
    size: int
    rotational: bool
    wwn: str | None = None
    serial: str | None = None
    vendor: str | None = None
    wwn_with_extension: str | None = None
    wwn_vendor_extension: str | None = None
    hctl: str | None = None
    by_path: str | None = None
    logical_sectors: int | None = None
    physical_sectors: int | None = None
    tran: str | None = None
    # kept, not serialized (as IPA)
    uuid: str | None = attrs.field(default=None, eq=False)
    partuuid: str | None = attrs.field(default=None, eq=False)
    #: "disk", "part", or "raid" (a software RAID array, lsblk's raidN)
    kind: str = attrs.field(default="disk", eq=False)
    #: every serial / WWN known (lsblk, then udev), for root device hints
    all_serials: tuple[str | None, ...] = attrs.field(default=(), eq=False)
    all_wwns: tuple[str | None, ...] = attrs.field(default=(), eq=False)

    def hint_view(self) -> dict[str, Any]:
        """The fields root device hints match against (serial and wwn are
        lists of every known value, as IPA's all_serial_and_wwn)."""
        view = self.serialize()
        view["serial"] = list(self.all_serials) or [self.serial]
        view["wwn"] = list(self.all_wwns) or [self.wwn]
        return view

    def serialize(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "model": self.model,
            "size": self.size,
            "rotational": self.rotational,
            "wwn": self.wwn,
            "serial": self.serial,
            "vendor": self.vendor,
            "wwn_with_extension": self.wwn_with_extension,
            "wwn_vendor_extension": self.wwn_vendor_extension,
            "hctl": self.hctl,
            "by_path": self.by_path,
            "logical_sectors": self.logical_sectors,
            "physical_sectors": self.physical_sectors,
            "tran": self.tran,
        }


def kname_of(path: str) -> str:
    """``/dev/disk/by-id/x`` or ``/dev/sda`` -> ``sda`` (symlinks resolved)."""
    return os.path.basename(os.path.realpath(path))


def is_md(kname: str, sys_block: str = SYS_BLOCK) -> bool:
    """Is this a software RAID (md) array (not a partition of one)?"""
    return os.path.isdir(os.path.join(sys_block, kname, "md"))


def md_members(kname: str, sys_block: str = SYS_BLOCK) -> list[str]:
    """Kernel names of the devices an md array is built on (its slaves)."""
    try:
        return sorted(os.listdir(os.path.join(sys_block, kname, "slaves")))
    except OSError:
        return []


def parent_kname(kname: str, sys_block: str = SYS_BLOCK) -> str | None:
    """The whole-disk kname of a partition, or None for a whole disk."""
    if not os.path.exists(os.path.join(sys_block, kname, "partition")):
        return None
    real = os.path.realpath(os.path.join(sys_block, kname))
    return os.path.basename(os.path.dirname(real))


class DeviceGuard:
    """Which block devices the agent may list, choose, write and erase."""

    def __init__(self, allowlist: Sequence[str] | None,
                 sys_block: str = SYS_BLOCK) -> None:
        self.allowlist = list(allowlist) if allowlist else None
        self._sys_block = sys_block
        self._allowed = (
            {kname_of(p) for p in allowlist} if allowlist else None
        )

    @property
    def restricted(self) -> bool:
        return self._allowed is not None

    def _allowed_kname(self, kname: str, depth: int = 0) -> bool:
        """An allow-listed device, a partition of one, or an md array all
        of whose members are allowed (and their partitions)."""
        assert self._allowed is not None
        if kname in self._allowed:
            return True
        if depth > 4:   # md on md on ...: enough
            return False
        parent = parent_kname(kname, self._sys_block)
        if parent is not None:
            return self._allowed_kname(parent, depth + 1)
        if not is_md(kname, self._sys_block):
            return False
        members = md_members(kname, self._sys_block)
        return bool(members) and all(self._allowed_kname(m, depth + 1)
                                     for m in members)

    def listed(self, kname: str) -> bool:
        """May this whole device appear in lists (and be chosen)?"""
        return self._allowed is None or (
            kname in self._allowed or (is_md(kname, self._sys_block)
                                       and self._allowed_kname(kname)))

    def allows(self, path: str) -> bool:
        if self._allowed is None:
            return True
        return self._allowed_kname(kname_of(path))

    def check(self, path: str) -> None:
        """Raise unless ``path`` (or its disk) is allow-listed."""
        if not self.allows(path):
            raise errors.DeviceNotAllowed(
                f"{path} is not in device_allowlist "
                f"({', '.join(self.allowlist or [])})"
            )


def _str(value: Any) -> str | None:
    if value is None:
        return None
    text = str(value).strip()
    return text or None


def _int(value: Any) -> int | None:
    if value is None or value == "":
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    return str(value).strip() in ("1", "true", "True")


def _read_sys(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read().strip() or None
    except OSError:
        return None


def _hctl(kname: str, sys_block: str) -> str | None:
    try:
        entries = os.listdir(os.path.join(sys_block, kname, "device",
                                          "scsi_device"))
    except OSError:
        return None
    return entries[0] if entries else None


def by_path_links(directory: str = "/dev/disk/by-path") -> dict[str, str]:
    """``{kname: /dev/disk/by-path/...}`` (first link per device)."""
    found: dict[str, str] = {}
    try:
        names = sorted(os.listdir(directory))
    except OSError:
        return found
    for name in names:
        link = os.path.join(directory, name)
        found.setdefault(kname_of(link), link)
    return found


_SKIP_NAMES = re.compile(r"^(fd\d|ram\d|zram\d)")


def is_disk_type(kind: str) -> bool:
    return kind == "disk" or kind.startswith("raid") or kind == "mpath"


#: where the kernel lists block devices (their ``uevent`` files)
SYS_CLASS_BLOCK = "/sys/class/block"
#: udev's database: ``b<major>:<minor>`` per block device it has handled
UDEV_DATA = "/run/udev/data"


def udev_properties(kname: str, sys_class_block: str = SYS_CLASS_BLOCK,
                    udev_data: str = UDEV_DATA) -> Mapping[str, str]:
    """udev's properties of a block device, by name: what libudev answers
    (the kernel's ``uevent`` properties, then the ``E:`` entries of the
    device's record in udev's database), read from the files themselves:
    pyudev and libudev would stay in the agent's memory for the rest of
    its life for a handful of serial numbers read at start-up.

    With no udev daemon (no record in /run/udev/data) only the kernel's
    uevent properties exist: ID_SERIAL and friends are then simply absent.
    """
    # a sysfs name has "!" where the kernel's name has "/" (cciss/c0d0)
    sysname = kname.replace("/", "!")
    props: dict[str, str] = {}
    try:
        with open(os.path.join(sys_class_block, sysname, "uevent"),
                  encoding="utf-8", errors="replace") as f:
            for line in f:
                key, eq, value = line.rstrip("\n").partition("=")
                if eq:
                    props[key] = value
    except OSError:
        return {}
    # as libudev names them
    if props.get("DEVNAME"):
        props["DEVNAME"] = "/dev/" + props["DEVNAME"]
    real = os.path.realpath(os.path.join(sys_class_block, sysname))
    if real.startswith("/sys/"):
        props["DEVPATH"] = real[len("/sys"):]
    props["SUBSYSTEM"] = "block"
    major, minor = props.get("MAJOR"), props.get("MINOR")
    if major and minor:
        try:
            with open(os.path.join(udev_data, f"b{major}:{minor}"),
                      encoding="utf-8", errors="replace") as f:
                for line in f:
                    if line.startswith("E:"):
                        key, eq, value = line[2:].rstrip("\n").partition("=")
                        if eq:
                            props[key] = value
        except OSError:
            pass
    return props


def _udev(props: Mapping[str, str], key: str) -> str | None:
    return _str(props.get(f"ID_{key}")) or _str(props.get(f"DM_{key}"))


def parse_lsblk(
    output: str,
    guard: DeviceGuard,
    include_partitions: bool = False,
    sys_block: str = SYS_BLOCK,
    by_path: dict[str, str] | None = None,
    udev: Callable[[str], Mapping[str, str]] = lambda _: {},
) -> list[BlockDevice]:
    """Block devices from ``lsblk -bia --json -l -o <LSBLK_COLUMNS>``.

    serial and wwn come from lsblk, else udev (ID_ or DM_ properties);
    wwn_with_extension and wwn_vendor_extension from udev only.
    """
    data = json.loads(output)
    rows: Iterable[dict[str, Any]] = data.get("blockdevices", [])
    by_path = by_path if by_path is not None else {}
    devices: list[BlockDevice] = []
    seen: set[str] = set()
    for row in rows:
        kname = _str(row.get("kname"))
        kind = _str(row.get("type")) or ""
        if not kname or kname in seen:
            continue
        if kind == "md" and parent_kname(kname, sys_block) is not None:
            kind = "part"       # a partition of an md array, as some
            # lsblk versions type it
        if kind == "part":
            if not include_partitions:
                continue
            parent = _str(row.get("pkname")) or parent_kname(kname, sys_block)
            if parent is None or not guard.listed(parent):
                continue
        elif kind in ("loop", "dm"):
            # never a machine's disk by themselves: listed only when the
            # allow-list names them (tests; an operator who means it)
            if not guard.restricted or not guard.listed(kname):
                continue
        else:
            if not is_disk_type(kind) or _SKIP_NAMES.match(kname):
                continue
            if not guard.listed(kname):
                continue
        size = _int(row.get("size")) or 0
        if size == 0:
            continue
        seen.add(kname)
        props = udev(kname)
        lsblk_serial = _str(row.get("serial"))
        lsblk_wwn = _str(row.get("wwn"))
        serial_short = _udev(props, "SERIAL_SHORT")
        serial_long = _udev(props, "SERIAL")
        udev_wwn = _udev(props, "WWN")
        devices.append(BlockDevice(
            name=f"/dev/{kname}",
            model=_str(row.get("model")),
            size=size,
            rotational=_bool(row.get("rota")),
            wwn=lsblk_wwn or udev_wwn,
            serial=lsblk_serial or serial_short or serial_long,
            wwn_with_extension=_udev(props, "WWN_WITH_EXTENSION"),
            wwn_vendor_extension=_udev(props, "WWN_VENDOR_EXTENSION"),
            vendor=_read_sys(os.path.join(sys_block, kname, "device",
                                          "vendor")),
            hctl=_hctl(kname, sys_block),
            by_path=by_path.get(kname),
            logical_sectors=_int(row.get("log-sec")),
            physical_sectors=_int(row.get("phy-sec")),
            tran=_str(row.get("tran")),
            uuid=_str(row.get("uuid")),
            partuuid=_str(row.get("partuuid")),
            kind="part" if kind == "part" else
            "raid" if kind.startswith("raid") else "disk",
            all_serials=(lsblk_serial, serial_short, serial_long),
            all_wwns=(lsblk_wwn, udev_wwn),
        ))
    return devices
