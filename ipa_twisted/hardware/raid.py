"""Software RAID with mdadm, laid out as ironic-python-agent 13.0.0 lays it.

``target_raid_config`` with ``"controller": "software"`` on every logical
disk (one or two of them; the first RAID-1; levels 0, 1, 1+0, 5, 6; one
``MAX`` at most; ``physical_disks`` as root-device hints, two at least;
one ``is_root_volume`` at most).  ``create``:

1. the members: for each logical disk, per hint the first matching disk
   not taken yet by it, or every disk; a member with partitions is refused
   (the disks must be clean: delete the configuration first);
2. each member gets a partition table (GPT in UEFI mode, else the node's
   ``disk_label`` capability, msdos by default) and its first RAID
   partition starts after room kept for boot partitions: 551 MiB in UEFI
   mode (an ESP of 550 MiB comes there at install_bootloader), 8 MiB for
   BIOS on GPT (a BIOS boot partition), the first free sector on msdos;
3. one partition per logical disk on each member, ``MAX`` last, sized as
   IPA sizes them (``size_gb`` counted from the disk's start for the
   first), then ``mdadm --create /dev/mdN --metadata=1 --level L --name
   <volume_name or mdN>``; a member missing from the new array is added.

``delete`` assembles what the allowed disks hold, then for every array:
its signatures wiped, stopped, its members' superblocks zeroed; then any
superblock left on an allowed disk or partition, and the partition tables
of the disks that held arrays.  ``assemble`` (at start-up, as IPA) brings
up the arrays of a previous boot so that a deploy finds its root device.

With a device allow-list, mdadm reads only the allowed disks (a
configuration file of this agent's naming them: ``DEVICE`` lines), and an
md array counts as allowed when all its members are
(:class:`ipa_twisted.hardware.disks.DeviceGuard`).  Not supported (yet):
``volume_name`` entries in ``skip_block_devices`` (IPA's keep/wipe of
named arrays): refused with a clear error, never half done.
"""

from __future__ import annotations

import os
import re
from typing import Any, Iterable, Mapping, Sequence

import attrs
from twisted.logger import Logger

from ipa_twisted import errors
from ipa_twisted.hardware import disks, hints, partinfo
from ipa_twisted.hardware.disks import BlockDevice, kname_of
from ipa_twisted.process import ProcessError

log = Logger()

SUPPORTED_LEVELS = ("0", "1", "1+0", "5", "6")
#: the fewest members mdadm builds each level with (IPA checks 5 and 6)
MIN_MEMBERS = {"0": 2, "1": 2, "1+0": 2, "5": 3, "6": 4}
#: IPA's ESP size on each member (diskimage-builder's)
ESP_SIZE_MIB = 550
MAX_MD = 128

#: IPA 13.0.0's argsinfo of apply_configuration (what Ironic shows).
APPLY_ARGSINFO = {
    "raid_config": {
        "description": "The RAID configuration to apply.",
        "required": True,
    },
    "delete_existing": {
        "description": (
            "Setting this to 'True' indicates to delete existing RAID "
            "configuration prior to creating the new configuration. "
            "Default value is 'True'."
        ),
        "required": False,
    },
}


class SoftwareRAIDError(errors.AgentError):
    message = "Software RAID caused unknown error"


# ---------------------------------------------------------------- the config


def software_logical_disks(raid_config: Any) -> list[dict[str, Any]]:
    if not isinstance(raid_config, Mapping):
        return []
    found = raid_config.get("logical_disks") or []
    if not isinstance(found, list):
        return []
    return [ld for ld in found if isinstance(ld, dict)
            and ld.get("controller") == "software"]


def _size(value: Any) -> int | None:
    """size_gb: whole GiB, or None for MAX; ValueError otherwise."""
    if value == "MAX":
        return None
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ValueError(value)
    size = int(value)
    if size < 1:
        raise ValueError(value)
    return size


def validate_config(raid_config: Any, node: Mapping[str, Any] | None,
                    disk_count: int) -> None:
    """IPA's rules for a software RAID configuration; every problem is
    named at once (SoftwareRAIDError)."""
    if not isinstance(raid_config, Mapping):
        raise SoftwareRAIDError("the RAID configuration must be an object")
    lds = raid_config.get("logical_disks")
    if not lds or not isinstance(lds, list):
        raise SoftwareRAIDError("RAID config contains no logical disks")
    problems = []
    if len(lds) not in (1, 2):
        problems.append("Software RAID configuration requires one or two "
                        "logical disks")
    names: list[str] = []
    roots = 0
    maxes = 0
    for ld in lds:
        if not isinstance(ld, dict):
            problems.append(f"a logical disk must be an object: {ld!r}")
            continue
        if ld.get("controller") != "software":
            problems.append("Software RAID configuration requires all "
                            "logical disks to have 'controller'='software'")
        name = ld.get("volume_name")
        if name is not None:
            if not isinstance(name, str) or not re.fullmatch(
                    r"[A-Za-z0-9][A-Za-z0-9_.-]{0,31}", name):
                problems.append(f"volume_name {name!r}: letters, digits, "
                                f"'_', '.', '-' (32 at most)")
            elif name in names:
                problems.append(f"Duplicate software RAID device name "
                                f"{name} detected")
            else:
                names.append(name)
        if ld.get("is_root_volume"):
            roots += 1
        level = ld.get("raid_level")
        if level not in SUPPORTED_LEVELS:
            problems.append(f"Software RAID configuration does not support "
                            f"RAID level {level}")
        try:
            if _size(ld.get("size_gb")) is None:
                maxes += 1
        except (TypeError, ValueError):
            problems.append(f"size_gb must be a whole number of GiB or "
                            f"'MAX', not {ld.get('size_gb')!r}")
        physical = ld.get("physical_disks")
        members = disk_count
        if physical is not None:
            if not isinstance(physical, list) or len(physical) < 2:
                problems.append("The physical_disks parameter for software "
                                "RAID must be a list with at least 2 items, "
                                "each specifying a disk in the device hints "
                                "format")
            elif any(not isinstance(item, dict) for item in physical):
                problems.append("The physical_disks parameter for software "
                                "RAID must be a list of device hints "
                                "(dictionaries)")
            else:
                members = len(physical)
        need = MIN_MEMBERS.get(str(level), 2)
        if level in MIN_MEMBERS and members < need:
            problems.append(f"Software RAID configuration is not possible "
                            f"for RAID level {level} with only {members} "
                            f"block devices found.")
    if roots > 1:
        problems.append("Software RAID configuration allows only one "
                        "logical disk to be marked as is_root_volume")
    if lds and isinstance(lds[0], dict) and lds[0].get("raid_level") != "1":
        problems.append("Software RAID Configuration requires RAID-1 for "
                        "the first logical disk")
    if maxes > 1:
        problems.append("Software RAID can have only one RAID device with "
                        "size 'MAX'")
    if problems:
        uuid = (node or {}).get("uuid")
        raise SoftwareRAIDError(
            f"Could not validate Software RAID config for {uuid}: "
            + "; ".join(problems))


def parse_capabilities(value: Any) -> dict[str, str]:
    """``"a:b,c:d"`` (or an object) -> ``{"a": "b", "c": "d"}``."""
    if isinstance(value, Mapping):
        return {str(k): str(v) for k, v in value.items()}
    found = {}
    for item in str(value or "").split(","):
        key, sep, val = item.partition(":")
        if sep and key.strip():
            found[key.strip()] = val.strip()
    return found


def node_boot_mode(node: Mapping[str, Any] | None,
                   ramdisk_mode: str) -> str:
    """The boot mode the instance will use, as IPA decides it: secure boot
    means UEFI; else instance_info's deploy_boot_mode, the node's
    boot_mode capability, driver_internal_info's deploy_boot_mode, the
    ramdisk's own."""
    node = node or {}
    instance = node.get("instance_info") or {}
    inst_caps = parse_capabilities(instance.get("capabilities"))
    node_caps = parse_capabilities((node.get("properties") or {}).get(
        "capabilities"))
    if "true" in (str(inst_caps.get("secure_boot")).lower(),
                  str(node_caps.get("secure_boot")).lower()):
        return "uefi"
    mode = instance.get("deploy_boot_mode") or node_caps.get("boot_mode") \
        or (node.get("driver_internal_info") or {}).get("deploy_boot_mode") \
        or ramdisk_mode
    return "uefi" if str(mode).lower() == "uefi" else "bios"


def partition_table_type(node: Mapping[str, Any] | None, mode: str) -> str:
    """GPT in UEFI mode; else the disk_label capability (instance_info,
    then properties), msdos by default."""
    if mode == "uefi":
        return "gpt"
    node = node or {}
    label = parse_capabilities((node.get("instance_info") or {}).get(
        "capabilities")).get("disk_label") or parse_capabilities(
        (node.get("properties") or {}).get("capabilities")).get("disk_label")
    return "gpt" if label == "gpt" else "msdos"


def choose_members(devices: Sequence[BlockDevice],
                   logical_disks: Sequence[Mapping[str, Any]]
                   ) -> tuple[list[str], list[list[str]]]:
    """(every member disk in order, each logical disk's members): per
    ``physical_disks`` hint the first matching disk not yet taken by that
    logical disk; without hints, every disk."""
    every: list[str] = []
    per_disk: list[list[str]] = []
    for ld in logical_disks:
        physical = ld.get("physical_disks")
        if physical:
            chosen: list[str] = []
            for hint in physical:
                try:
                    parsed = hints.parse_hints(hint)
                except hints.HintError as e:
                    raise SoftwareRAIDError(
                        f"invalid physical disk hints {hint}: {e}") from None
                candidates = [d.name for d in devices
                              if hints.device_matches(d.hint_view(), parsed)]
                if not candidates:
                    raise SoftwareRAIDError(
                        f"No candidates for physical disk {hint} from the "
                        f"list {[d.name for d in devices]}")
                left = [c for c in candidates if c not in chosen]
                if not left:
                    raise SoftwareRAIDError(
                        f"No candidates left for physical disk {hint} from "
                        f"the list {candidates} after picking {chosen} for "
                        f"previous volumes")
                chosen.append(left[0])
        else:
            chosen = [d.name for d in devices]
        per_disk.append(chosen)
        every.extend(d for d in chosen if d not in every)
    return every, per_disk


def member_partition(disk: str, number: int) -> str:
    """The kernel's name for partition ``number`` of ``disk``
    (``/dev/vda1``, ``/dev/nvme0n1p1``, ``/dev/md0p1``)."""
    sep = "p" if disk[-1].isdigit() else ""
    return f"{disk}{sep}{number}"


def raid_start(mode: str, table: str, first_free: str | None) -> str:
    """Where the first RAID partition starts (parted's units)."""
    if mode == "uefi":
        return f"{ESP_SIZE_MIB + 1}MiB"
    if table == "gpt":
        return "8MiB"
    return f"{first_free}s"


def partition_bounds(size_gb: int | None, start: str | int
                     ) -> tuple[str, str, int | str]:
    """parted's start and end of a RAID partition, and where the next
    starts: IPA's arithmetic (the first partition ends at ``size_gb``
    GiB from the disk's start; the next ones follow, ``size_gb`` each;
    ``MAX`` runs to the end)."""
    start_str = f"{start}GiB" if isinstance(start, int) else start
    if size_gb is None:
        return start_str, "-1", "-1"
    end = start + size_gb if isinstance(start, int) else size_gb
    return start_str, f"{end}GiB", end


def parse_export(text: str) -> dict[str, str]:
    """``mdadm --detail --export`` / ``--examine --export``: KEY=value."""
    found = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and re.fullmatch(r"[A-Z0-9_]+", key):
            found[key] = value.strip()
    return found


@attrs.frozen
class Array:
    """An assembled md array, from sysfs."""

    name: str                      # md0, md127
    level: str                     # raid1, raid0, ...
    members: tuple[str, ...]       # kernel names: vda1, vdb1
    holders: tuple[str, ...]       # their disks: vda, vdb

    @property
    def path(self) -> str:
        return f"/dev/{self.name}"


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return ""


def holder_disk(kname: str, sys_block: str | None = None) -> str:
    """The disk a member is on (itself when it is a whole disk)."""
    return disks.parent_kname(kname, sys_block or disks.SYS_BLOCK) or kname


def arrays(sys_block: str | None = None) -> list[Array]:
    """Every assembled md array (not its partitions), by name."""
    base = sys_block or disks.SYS_BLOCK
    try:
        names = sorted(os.listdir(base))
    except OSError:
        return []
    found = []
    for name in names:
        if not disks.is_md(name, base):
            continue
        members = tuple(disks.md_members(name, base))
        holders: list[str] = []
        for member in members:
            disk = holder_disk(member, base)
            if disk not in holders:
                holders.append(disk)
        found.append(Array(name, _read(os.path.join(base, name, "md",
                                                     "level")),
                           members, tuple(holders)))
    return found


def array_of(device: str, sys_block: str | None = None) -> Array | None:
    """The array ``device`` (an md device or one of its partitions) is."""
    base = sys_block or disks.SYS_BLOCK
    kname = kname_of(device)
    name = disks.parent_kname(kname, base) or kname
    return next((a for a in arrays(base) if a.name == name), None)


def next_free_md(sys_block: str | None = None) -> str:
    base = sys_block or disks.SYS_BLOCK
    for index in range(MAX_MD):
        if not os.path.exists(os.path.join(base, f"md{index}")):
            return f"/dev/md{index}"
    raise SoftwareRAIDError("No free md (RAID) devices are left")


# ------------------------------------------------------------ doing things


class SoftwareRAID:
    """mdadm for one agent (its process runner, its device guard)."""

    def __init__(self, agent: Any, sys_block: str | None = None) -> None:
        self.agent = agent
        self.sys_block = sys_block

    async def _run(self, argv: list[str], check: bool = True,
                   timeout: float = 300.0) -> Any:
        return await self.agent.process.run(argv, timeout=timeout,
                                            check=check)

    def _arrays(self) -> list[Array]:
        """The arrays the guard allows (all their members allowed)."""
        return [a for a in arrays(self.sys_block)
                if self.agent.guard.allows(a.path)]

    # ----------------------------------------------------------- assemble

    async def assemble(self, devices: Iterable[str] = ()) -> list[str]:
        """Assemble the arrays the disks hold (a previous boot made them):
        see :func:`ipa_twisted.hardware.mdassemble.assemble`."""
        from ipa_twisted.hardware import mdassemble

        return await mdassemble.assemble(self.agent, devices, self.sys_block,
                                         run=self._run)

    # ------------------------------------------------------------- create

    async def create(self, node: Mapping[str, Any] | None,
                     raid_config: Mapping[str, Any],
                     devices: Sequence[BlockDevice], ramdisk_mode: str
                     ) -> dict[str, bool]:
        """Build the software RAID of ``raid_config`` on ``devices`` (the
        physical disks, skip list applied); ``{md device: is_root_volume}``
        for the logical disks that say."""
        validate_config(raid_config, node, len(devices))
        _refuse_volume_skip_list(node)
        lds = software_logical_disks(raid_config)
        members, per_disk = choose_members(devices, lds)
        for member in members:
            self.agent.guard.check(member)
            busy = partinfo.partition_names(member, self.sys_block)
            if busy:
                raise SoftwareRAIDError(
                    f"Partitions detected on devices {member} during RAID "
                    f"config ({', '.join(n for _, n in busy)}): delete the "
                    f"RAID configuration (or erase the disks) first")
        mode = node_boot_mode(node, ramdisk_mode)
        table = partition_table_type(node, mode)
        log.info("creating software RAID on {members} ({mode}, {table} "
                 "partition tables)", members=", ".join(members), mode=mode,
                 table=table)
        starts: dict[str, str | int] = {}
        for member in members:
            await self._run(["parted", "-s", member, "--", "mklabel", table])
            first_free = None
            if mode != "uefi" and table == "msdos":
                out = (await self._run(["sgdisk", "-F", member])).out
                first_free = out.strip().splitlines()[-1].strip()
            starts[member] = raid_start(mode, table, first_free)
        order = sorted(range(len(lds)),
                       key=lambda i: lds[i].get("size_gb") == "MAX")
        for i in order:
            size = _size(lds[i].get("size_gb"))
            for member in per_disk[i]:
                start, end, after = partition_bounds(size, starts[member])
                await self._run(["parted", "-s", "-a", "optimal", member,
                                 "--", "mkpart", "primary", start, end])
                starts[member] = after
        for member in members:
            await self._run(["partprobe", member], check=False)
        roots: dict[str, bool] = {}
        numbers: dict[str, int] = {}
        for i in order:
            ld = lds[i]
            components = []
            for member in per_disk[i]:
                numbers[member] = numbers.get(member, 0) + 1
                components.append(member_partition(member, numbers[member]))
            md = next_free_md(self.sys_block)
            level = "10" if ld["raid_level"] == "1+0" else ld["raid_level"]
            name = ld.get("volume_name") or os.path.basename(md)
            try:
                await self._run(["mdadm", "--create", md, "--force", "--run",
                                 "--metadata=1", "--level", level, "--name",
                                 name, "--raid-devices",
                                 str(len(components))] + components)
            except ProcessError as e:
                raise SoftwareRAIDError(
                    f"Failed to create md device {md} on "
                    f"{' '.join(components)}: {_said(e)}") from None
            present = set(disks.md_members(kname_of(md),
                                           self.sys_block or disks.SYS_BLOCK))
            for component in components:
                if kname_of(component) not in present:
                    log.warn("{dev} is missing from {md}: adding it",
                             dev=component, md=md)
                    try:
                        await self._run(["mdadm", "--add", md, component])
                    except ProcessError as e:
                        raise SoftwareRAIDError(
                            f"Failed re-add {component} to {md}: "
                            f"{_said(e)}") from None
            log.info("software RAID {md}: RAID-{raid_level} {name} on "
                     "{components}", md=md, raid_level=ld["raid_level"],
                     name=name, components=", ".join(components))
            if ld.get("is_root_volume") is not None:
                roots[md] = bool(ld.get("is_root_volume"))
        return roots

    # ------------------------------------------------------------- delete

    async def delete(self, node: Mapping[str, Any] | None,
                     devices: Sequence[BlockDevice]) -> list[str]:
        """Remove every software RAID the allowed disks hold (see the
        module's docstring); ``devices``: the disks and their partitions.
        The arrays deleted."""
        _refuse_volume_skip_list(node)
        # the disks and their partitions (not the arrays' partitions,
        # which go with the arrays)
        names = [d.name for d in devices if d.kind in ("disk", "part")
                 and array_of(d.name, self.sys_block) is None]
        await self.assemble(names)
        deleted: list[str] = []
        holders: list[str] = []
        for attempt in (1, 2):
            found = self._arrays()
            if not found:
                break
            if attempt == 2:
                raise SoftwareRAIDError(
                    f"Unable to clean all softraid correctly. Remaining "
                    f"{[a.path for a in found]}")
            for array in found:
                holders.extend(h for h in array.holders if h not in holders)
                await self._delete_array(array)
                deleted.append(array.path)
        # superblocks left on the allowed disks and partitions (members of
        # arrays that could not be assembled), partitions first
        for name in sorted(names, reverse=True):
            await self._zero_if_member(name)
        for disk in holders:
            path = f"/dev/{disk}"
            self.agent.guard.check(path)
            log.info("removing the partitions of {disk}", disk=path)
            try:
                await self._run(["wipefs", "-af", path])
            except ProcessError as e:
                log.warn("wipefs {disk} failed: {e}", disk=path,
                         e=_said(e))
        return deleted

    async def _delete_array(self, array: Array) -> None:
        self.agent.guard.check(array.path)
        log.info("deleting software RAID {md} ({raid_level} on "
                 "{members})", md=array.path, raid_level=array.level,
                 members=", ".join(array.members))
        try:
            await self._run(["wipefs", "-af", array.path])
        except ProcessError as e:
            log.warn("wipefs {md} failed: {e}", md=array.path, e=_said(e))
        try:
            await self._run(["mdadm", "--stop", array.path])
        except ProcessError as e:
            log.warn("stopping {md} failed: {e}", md=array.path, e=_said(e))
        for member in array.members:
            await self._zero_if_member(f"/dev/{member}")

    async def _zero_if_member(self, device: str) -> None:
        base = self.sys_block or disks.SYS_BLOCK
        if not os.path.exists(os.path.join(base, kname_of(device))):
            return          # gone with its disk's partition table
        self.agent.guard.check(device)
        examined = await self._run(["mdadm", "--examine", "--export",
                                    device], check=False)
        if "MD_UUID" not in parse_export(examined.out):
            return
        log.info("zeroing the md superblock of {dev}", dev=device)
        try:
            await self._run(["mdadm", "--zero-superblock", device])
        except ProcessError as e:
            log.warn("zeroing the md superblock of {dev} failed: {e}",
                     dev=device, e=_said(e))

    # --------------------------------------------------------------- stop

    async def stop_arrays_on(self, disk_names: Iterable[str]) -> list[str]:
        """Stop the arrays built on any of these disks (before they are
        erased: an array holds its members busy).  The arrays stopped."""
        wanted = {kname_of(d) for d in disk_names}
        stopped = []
        for array in self._arrays():
            if not wanted & set(array.holders):
                continue
            log.info("stopping software RAID {md} (on {holders}) before "
                     "erasing its disks", md=array.path,
                     holders=", ".join(array.holders))
            await self._run(["mdadm", "--stop", array.path])
            stopped.append(array.path)
        return stopped


def _said(e: ProcessError) -> str:
    text = (e.result.err or e.result.out).strip() if e.result else ""
    return text[-500:] or e.reason


def _refuse_volume_skip_list(node: Mapping[str, Any] | None) -> None:
    entries = ((node or {}).get("properties") or {}).get(
        "skip_block_devices") or []
    named = [e.get("volume_name") for e in entries
             if isinstance(e, dict) and "volume_name" in e]
    if named:
        raise SoftwareRAIDError(
            f"skip_block_devices names RAID volumes "
            f"({', '.join(map(str, named))}): keeping named software RAID "
            f"arrays is not supported by this agent yet; nothing was "
            f"changed")
