"""The generic hardware manager: inventory, root disk, erase, steps.

Probes run concurrently; a probe that fails (missing tool, timeout) leaves
its fields empty and logs one line; the inventory as a whole never fails.
"""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
from typing import TYPE_CHECKING, AbstractSet as Set
from typing import Any, Mapping

import attrs
from twisted.internet.defer import (
    CancelledError,
    Deferred,
    DeferredList,
    ensureDeferred,
    succeed,
)
from twisted.logger import Logger

from ipa_twisted import errors
from ipa_twisted.hardware import blockio, mdassemble, netif
from ipa_twisted.hardware.disks import BlockDevice
from ipa_twisted.hardware.probes import ProbeFailed, ProbeSession
from ipa_twisted.hardware.manager import HardwareManager, HardwareSupport
from ipa_twisted.process import ProcessError

if TYPE_CHECKING:
    from ipa_twisted.context import RunningAgent
    from ipa_twisted.hardware import ipmi, raid, system

log = Logger()

MIN_ROOT_DISK = 4 * 1024 ** 3

#: IPA's default match_patterns of clean_uefi_nvram: entries booting a
#: disk, a shim or a GRUB
DEFAULT_NVRAM_PATTERNS = [r"^HD\(", r"shim.*\.efi", r"grub.*\.efi"]

CLEAN_UEFI_NVRAM_ARGSINFO = {
    "match_patterns": {
        "description": (
            "Json blob contains a list of regex patterns where any UEFI "
            "NVRAM entry matching that pattern will be deleted. Default "
            "value is '[\"" + '", "'.join(DEFAULT_NVRAM_PATTERNS) + "\"]'"),
        "required": False,
    },
}

#: The steps of IPA 13.0.0's GenericHardwareManager that this agent does
#: not offer yet (bootc): they are not advertised, so that Ironic never
#: runs a step that would claim success without doing its work.
NOT_YET: dict[str, tuple[str, ...]] = {
    "clean": (),
    "deploy": ("execute_bootc_install",),
    "service": ("execute_bootc_install",),
}

#: IPA's burn-in steps: clean steps; service steps too, but for the disk
#: one (it destroys the data of a deployed machine)
BURNIN_CLEAN = ("burnin_cpu", "burnin_gpu", "burnin_disk", "burnin_memory",
                "burnin_network")
BURNIN_SERVICE = ("burnin_cpu", "burnin_gpu", "burnin_memory",
                  "burnin_network")

#: device path nodes that start the path of an efibootmgr entry
_DEVICE_PATH = re.compile(r"\s(?=(?:BBS|HD|FvFile|FvVol|PciRoot|VenMsg|VenHw|"
                          r"UsbClass|Uri|MAC|File)\()")


def nvram_entries(output: str) -> list[tuple[str, str, str]]:
    """``(number, label, device path)`` of each Boot#### entry of
    ``efibootmgr -v`` (label and path split at efibootmgr's tab, else
    before the first device path node)."""
    entries = []
    for line in output.splitlines():
        match = re.match(r"^Boot([0-9A-Fa-f]{4})\*?\s+(.*)$", line)
        if not match:
            continue
        rest = match.group(2)
        if "\t" in rest:
            label, path = rest.split("\t", 1)
        else:
            parts = _DEVICE_PATH.split(rest, 1)
            label, path = (parts[0], parts[1]) if len(parts) == 2 \
                else (rest, "")
        entries.append((match.group(1), label.strip(), path.strip()))
    return entries


def _step(name: str, priority: int, abortable: bool | None = None,
          interface: str = "deploy", argsinfo: Mapping[str, Any] | None = None
          ) -> dict[str, Any]:
    step: dict[str, Any] = {
        "step": name,
        "priority": priority,
        "interface": interface,
        "reboot_requested": False,
    }
    if abortable is not None:
        step["abortable"] = abortable
    if argsinfo is not None:
        step["argsinfo"] = dict(argsinfo)
    return step


def root_device_hints(node: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if not node:
        return None
    instance = node.get("instance_info") or {}
    found = instance.get("root_device") or \
        (node.get("properties") or {}).get("root_device")
    return dict(found) if found else None


def root_hints_problem(root_hints: Any) -> str | None:
    """Why these root device hints cannot be used (None: they parse)."""
    from ipa_twisted.hardware import hints

    if not root_hints:
        return None
    try:
        hints.parse_hints(root_hints)
    except hints.HintError as e:
        return str(e)
    return None


def validate_node_root_hints(node: Any) -> None:
    """For a command's validator: the root device hints that ``node``
    (instance_info, else properties) carries must parse, else HTTP 400 at
    once (not a DeviceNotFound after every disk-wait attempt)."""
    if not node:
        return
    if not isinstance(node, Mapping):
        raise errors.InvalidCommandParamsError("node must be an object")
    sections = [node.get("instance_info") or {}, node.get("properties") or {}]
    if not all(isinstance(section, Mapping) for section in sections):
        raise errors.InvalidCommandParamsError(
            "node instance_info and properties must be objects")
    found = sections[0].get("root_device") or sections[1].get("root_device")
    if not found:
        return
    if not isinstance(found, Mapping):
        raise errors.InvalidCommandParamsError(
            f"root device hints must be an object: {found!r}")
    problem = root_hints_problem(found)
    if problem is not None:
        raise errors.InvalidCommandParamsError(
            f"invalid root device hints {dict(found)}: {problem}")


def skip_list(node: Mapping[str, Any] | None, devices: list[BlockDevice]
              ) -> set[str]:
    """Names of the devices that ``properties.skip_block_devices`` (a list
    of hint dicts) excludes from choosing and erasing."""
    from ipa_twisted.hardware import hints

    entries = ((node or {}).get("properties") or {}).get(
        "skip_block_devices") or []
    skipped: set[str] = set()
    for entry in entries:
        if not isinstance(entry, dict) or "volume_name" in entry:
            continue
        try:
            parsed = hints.parse_hints(entry)
        except hints.HintError as e:
            log.warn("ignoring an invalid skip_block_devices entry {e}",
                     e=e)
            continue
        for dev in devices:
            if hints.device_matches(dev.hint_view(), parsed):
                skipped.add(dev.name)
    return skipped


def choose_root_device(devices: list[BlockDevice],
                       root_hints: Mapping[str, Any] | None,
                       skipped: Set[str] = frozenset()) -> BlockDevice:
    """Hints -> first match; no hints -> smallest disk >= 4 GiB."""
    from ipa_twisted.hardware import hints

    disks = [d for d in devices if d.kind in ("disk", "raid")
             and d.name not in skipped]
    if root_hints:
        try:
            parsed = hints.parse_hints(root_hints)
        except hints.HintError as e:
            raise errors.DeviceNotFound(
                f"No devices could be found using the root device hints "
                f"{dict(root_hints)} because they failed to validate: {e}"
            ) from None
        for dev in disks:
            if hints.device_matches(dev.hint_view(), parsed):
                return dev
        raise errors.DeviceNotFound(
            f"No suitable device was found for deployment using these hints "
            f"{dict(root_hints)} (devices: "
            f"{', '.join(d.name for d in disks) or 'none'})"
        )
    big = sorted((d for d in disks if d.size >= MIN_ROOT_DISK),
                 key=lambda d: (d.size, d.name))
    if not big:
        raise errors.DeviceNotFound(
            f"No suitable device was found for deployment - root device "
            f"hints were not provided and no disk of at least 4 GiB was "
            f"found (devices: {', '.join(d.name for d in disks) or 'none'})"
        )
    return big[0]


_UNKNOWN = object()


class GenericHardwareManager(HardwareManager):
    HARDWARE_MANAGER_NAME = "generic_hardware_manager"
    HARDWARE_MANAGER_VERSION = "1.2"

    def __init__(self) -> None:
        super().__init__()
        self._bmc_cache: object = _UNKNOWN
        #: where erase_pstore finds the pstore mount
        self.proc_mounts = "/proc/mounts"
        #: software RAID arrays made by this agent that a logical disk's
        #: is_root_volume marked: {md device: is it the root?}
        self.raid_roots: dict[str, bool] = {}
        self._raid: raid.SoftwareRAID | None = None

    @property
    def raid(self) -> raid.SoftwareRAID:
        # imported on use: an idle agent does not hold raid.py and hints.py
        from ipa_twisted.hardware.raid import SoftwareRAID

        if self._raid is None:
            self._raid = SoftwareRAID(self.agent)
        return self._raid

    async def initialize(self, agent: RunningAgent) -> None:
        self.agent = agent
        if agent.config.collect_lldp:
            agent.start_lldp()
        try:
            # as IPA: the arrays a previous boot built, up for a deploy
            await mdassemble.assemble(self.agent,
                                      await self._raid_candidates())
        except Exception as e:
            log.warn("assembling software RAID arrays failed: {e}", e=e)

    async def _raid_candidates(self) -> list[str]:
        """The disks and partitions mdadm may read (with an allow-list)."""
        if not self.agent.guard.restricted:
            return []
        devices = await self.list_block_devices(include_partitions=True)
        return [d.name for d in devices if d.kind in ("disk", "part")]

    # ---------------------------------------------------------- lifecycle

    def evaluate_hardware_support(self) -> int:
        return HardwareSupport.GENERIC

    # ------------------------------------------------------------ probes

    def _session(self) -> ProbeSession:
        return ProbeSession(self.agent.process, self.agent.guard)

    def _skip_bmc(self) -> bool:
        return bool(self.agent.lookup_config.get("agent_skip_bmc_detect")
                    or (self.agent.node or {}).get("skip_bmc_detect"))

    async def list_network_interfaces(self, session: ProbeSession | None = None
                                      ) -> list[netif.NetworkInterface]:
        session = session or self._session()
        found = netif.list_interfaces()
        speeds_d = ensureDeferred(session.nic_speeds())
        lookups: list[Deferred[str | None]] = [
            succeed(None) if netif.is_vlan_name(nic.name)
            else ensureDeferred(session.biosdevname(nic.name))
            for nic in found
        ]
        bios = await DeferredList(lookups, consumeErrors=True)
        speeds = await speeds_d
        lldp = self._lldp_results()
        result = []
        for nic, (ok, biosname) in zip(found, bios):
            result.append(attrs.evolve(
                nic,
                biosdevname=biosname if ok else None,
                speed_mbps=speeds.get(nic.name),
                lldp=lldp.get(nic.name) if lldp is not None else None,
            ))
        return result

    def _lldp_results(self) -> dict[str, Any] | None:
        """LLDP TLVs by interface when collect_lldp is on, else None."""
        if not self.agent.config.collect_lldp:
            return None
        collector = getattr(self.agent, "lldp", None)
        return dict(collector.results) if collector is not None else {}

    async def get_cpus(self, session: ProbeSession | None = None
                       ) -> system.CPU:
        return await (session or self._session()).cpu()

    async def get_memory(self, session: ProbeSession | None = None
                         ) -> dict[str, Any]:
        return await (session or self._session()).memory()

    async def list_block_devices(self, include_partitions: bool = False
                                 ) -> list[BlockDevice]:
        try:
            return await self._session().block_devices(include_partitions)
        except ProbeFailed as e:
            raise errors.BlockDeviceError(f"lsblk failed: {e}") from None

    async def get_system_vendor_info(self, session: ProbeSession | None = None
                                     ) -> dict[str, Any]:
        return await (session or self._session()).system_vendor()

    def get_boot_info(self) -> dict[str, Any]:
        from ipa_twisted.hardware import system

        return system.boot_info(self.agent.config.bootif)

    async def _bmc(self, session: ProbeSession | None = None
                   ) -> ipmi.BMCInfo | None:
        """BMC addresses, probed once per agent (as IPA caches them)."""
        if self._bmc_cache is _UNKNOWN:
            self._bmc_cache = await (session or self._session()).bmc()
        return self._bmc_cache  # type: ignore[return-value]

    async def get_bmc_address(self) -> str | None:
        if self._skip_bmc():
            return None
        info = await self._bmc()
        return info.address if info else None

    async def get_bmc_v6address(self) -> str | None:
        if self._skip_bmc():
            return None
        info = await self._bmc()
        return info.v6address if info else None

    async def get_bmc_mac(self) -> str | None:
        if self._skip_bmc():
            return None
        info = await self._bmc()
        return info.mac if info else None

    async def list_hardware_info(self) -> dict[str, Any]:
        """The inventory.  Every probe runs at once; one that fails leaves
        its part empty (logged), never the whole inventory."""
        # the inventory's parsers: imported when one is taken (the lookup
        # does not wait for it, registration.py)
        from ipa_twisted.hardware import system

        session = self._session()

        async def guarded(what: str, coro: Any, default: Any) -> Any:
            try:
                return await coro
            except CancelledError:
                raise
            except Exception as e:
                log.warn("{what} probe failed: {e}", what=what, e=e)
                return default

        parts = {
            "interfaces": guarded("network", self.list_network_interfaces(
                session), []),
            "cpu": guarded("cpu", session.cpu(),
                           system.CPU("", "", 0, platform.machine())),
            "disks": guarded("disk", session.block_devices(), []),
            "memory": guarded("memory", session.memory(),
                              {"total": None, "physical_mb": None}),
            "bmc": guarded("bmc", self._bmc(session), None)
            if not self._skip_bmc() else succeed(None),
            "system_vendor": guarded("system vendor", session.system_vendor(),
                                     system.system_vendor("/nonexistent")),
        }
        keys = list(parts)
        done = await DeferredList([ensureDeferred(p) if not isinstance(
            p, Deferred) else p for p in parts.values()])
        values = {k: r for k, (_, r) in zip(keys, done)}
        bmc: ipmi.BMCInfo | None = values["bmc"]
        inventory: dict[str, Any] = {
            "interfaces": [i.serialize() for i in values["interfaces"]],
            "cpu": values["cpu"].serialize(),
            "disks": [d.serialize() for d in values["disks"]],
            "memory": values["memory"],
            "bmc_address": bmc.address if bmc else None,
            "bmc_v6address": bmc.v6address if bmc else None,
            "system_vendor": values["system_vendor"],
            "boot": self.get_boot_info(),
            "hostname": system.hostname(),
        }
        if bmc is not None and bmc.mac:
            inventory["bmc_mac"] = bmc.mac
        return inventory

    # --------------------------------------------------------- root disk

    async def get_os_install_device(self, permit_refresh: bool = False) -> str:
        """The root device; tries ``disk_wait_attempts`` times (slow disk
        controllers) before giving up with DeviceNotFound."""
        root_hints = root_device_hints(self.agent.node)
        if permit_refresh and not root_hints and \
                self.agent.refresh_node is not None:
            await self.agent.refresh_node()
            root_hints = root_device_hints(self.agent.node)
        problem = root_hints_problem(root_hints)
        if problem is not None:
            # no disk that may still appear can help: fail at once
            raise errors.DeviceNotFound(
                f"No devices could be found using the root device hints "
                f"{root_hints} because they failed to validate: {problem}")
        roots = [md for md, is_root in self.raid_roots.items() if is_root]
        if roots:
            if root_hints:
                log.warn("both root device hints {hints} and a root volume "
                         "of the RAID configuration: the RAID root volume "
                         "{md} is used", hints=root_hints, md=roots[0])
            log.info("root device {md}: the root volume of the RAID "
                     "configuration", md=roots[0])
            return roots[0]
        config = self.agent.config
        # watching starts before the first look: a disk udev adds between
        # a look and the wait still ends the wait
        watch = self.agent.device_events().watch("block")
        clock = self.agent.reactor
        deadline = clock.seconds() + (config.disk_wait_attempts - 1) \
            * config.disk_wait_delay
        try:
            while True:
                devices = self._not_root_volumes(
                    await self.list_block_devices())
                skipped = skip_list(self.agent.node, devices)
                try:
                    dev = choose_root_device(devices, root_hints, skipped)
                except errors.DeviceNotFound as e:
                    left = deadline - clock.seconds()
                    if left <= 0:
                        raise
                    wait = min(config.disk_wait_delay, left)
                    if watch.event_driven:
                        log.warn("{error}; waiting for udev to add a disk "
                                 "(up to {t:.0f} s)", error=e.details, t=left)
                    else:
                        log.warn("{error}; looking again in {t} s",
                                 error=e.details, t=wait)
                    await watch.next(wait)
                    continue
                log.info("picked root device {dev} (hints: {hints})",
                         dev=dev.name, hints=root_hints)
                return dev.name
        finally:
            watch.close()

    def _not_root_volumes(self, devices: list[BlockDevice]
                          ) -> list[BlockDevice]:
        """Without the arrays marked ``is_root_volume: false`` and their
        disks (as IPA)."""
        excluded: set[str] = set()
        for md, is_root in self.raid_roots.items():
            from ipa_twisted.hardware import raid

            array = raid.array_of(md)
            if is_root is False and array is not None:
                excluded |= {f"/dev/{n}" for n in
                             (array.name,) + array.members + array.holders}
        return [d for d in devices if d.name not in excluded]

    # -------------------------------------------------------------- erase

    async def erase_devices_metadata(self, node: Any, ports: Any) -> None:
        """Remove partition tables and signatures from every disk.

        Partitions first (last to first), then each disk: ``wipefs``, then
        the first and last MiB are zeroed (MBR, both GPT copies).
        """
        self.agent.cache_node(node)
        await self._stop_arrays_for(node)
        devices = await self.list_block_devices(include_partitions=True)
        skipped = skip_list(node, devices)
        if skipped:
            log.info("erase_devices_metadata skips {devs} "
                     "(skip_block_devices)", devs=", ".join(sorted(skipped)))
        devices = [d for d in devices if d.name not in skipped
                   and not any(d.name.startswith(s) for s in skipped)]
        disks = [d for d in devices if d.kind == "disk"]
        parts = sorted((d for d in devices if d.kind == "part"),
                       key=lambda d: d.name, reverse=True)
        if not disks:
            log.warn("erase_devices_metadata: no disks to erase")
        failed = []
        for dev in parts + disks:
            try:
                await self._erase_metadata(dev.name, dev.kind == "disk")
            except (OSError, ProcessError, errors.AgentError) as e:
                log.error("erasing metadata of {dev} failed: {e}",
                          dev=dev.name, e=e)
                failed.append(f"{dev.name}: {e}")
        if failed:
            raise errors.BlockDeviceEraseError(
                "Failed to erase the metadata on the device(s): "
                + "; ".join(failed)
            )

    async def _erase_metadata(self, path: str, whole_disk: bool) -> None:
        self.agent.guard.check(path)
        log.info("erasing metadata of {dev}", dev=path)
        await self.agent.process.run(["wipefs", "--force", "--all", path],
                                     timeout=120.0)
        if whole_disk:
            await self.agent.in_thread(blockio.wipe_head_and_tail,
                                       self.agent.guard, path)
            await self.agent.process.run(["blockdev", "--rereadpt", path],
                                         timeout=60.0, check=False)

    # -------------------------------------------------------------- sync

    async def full_sync(self) -> None:
        await self.agent.process.run(["sync"], timeout=600.0)
        for dev in await self.list_block_devices():
            await self.agent.process.run(["blockdev", "--flushbufs",
                                          dev.name], timeout=60.0,
                                         check=False)

    # ------------------------------------------------------ erase (data)

    async def _stop_arrays_for(self, node: Any) -> None:
        """Software RAID arrays on disks about to be erased are stopped
        first (they hold their members busy; the erase ends them: IPA's
        erase steps destroy them too)."""
        devices = await self.list_block_devices()
        skipped = skip_list(node, devices)
        await self.raid.stop_arrays_on(
            d.name for d in devices if d.kind == "disk"
            and d.name not in skipped)

    async def _erasable_disks(self, node: Any) -> list[BlockDevice]:
        await self._stop_arrays_for(node)
        devices = await self.list_block_devices()
        skipped = skip_list(node, devices)
        if skipped:
            log.info("not erasing {devs} (skip_block_devices)",
                     devs=", ".join(sorted(skipped)))
        return [d for d in devices if d.name not in skipped
                and d.kind == "disk"]

    async def _erase_disks(self, node: Any, step: str, express: bool
                           ) -> dict[str, Any]:
        # only erasing needs them (an idle agent does not hold them)
        from ipa_twisted.hardware import erase, eraser

        self.agent.cache_node(node)
        options = erase.EraseOptions.from_node(node)
        disks = await self._erasable_disks(node)
        if not disks:
            log.warn("{step}: no disks to erase", step=step)
            return {}

        async def metadata(path: str) -> None:
            await self._erase_metadata(path, True)

        worker = eraser.DiskEraser(self.agent, options, metadata,
                                   express=express)
        reports = await worker.erase_all(disks, step)
        failed = {name: r for name, r in reports.items()
                  if r.get("result") == "failed"}
        if failed:
            summary = worker.progress.text() if worker.progress else ""
            # the whole report in the log (the error holds the reasons)
            log.warn("{step} failed on {devs}; report: {report}", step=step,
                     devs=", ".join(sorted(failed)),
                     report=json.dumps(reports, sort_keys=True, default=str))

            def reason(name: str, report: Mapping[str, Any]) -> str:
                text = str(report.get("reason"))
                return text if text.startswith(name) else f"{name}: {text}"

            raise errors.BlockDeviceEraseError(
                f"{step} failed: "
                + "; ".join(reason(n, r) for n, r in sorted(failed.items()))
                + (f" -- {summary}" if summary else ""))
        return reports

    async def erase_devices(self, node: Any, ports: Any) -> dict[str, Any]:
        """Erase every disk (clean step, priority 10), each by the best
        method it offers, proven by a read-back check; the result is the
        erase report, by device name (see hardware/eraser.py)."""
        return await self._erase_disks(node, "erase_devices", express=False)

    async def erase_devices_express(self, node: Any, ports: Any
                                    ) -> dict[str, Any]:
        """A fast hardware erase where the disk has one (NVMe format or
        crypto sanitize, a discard that reads back as zeroes), else the
        metadata only (as IPA)."""
        return await self._erase_disks(node, "erase_devices_express",
                                       express=True)

    # ------------------------------------------------------ erase (other)

    def _pstore_mount(self) -> str | None:
        try:
            with open(self.proc_mounts, encoding="utf-8", errors="replace") as f:
                for line in f:
                    fields = line.split()
                    if len(fields) >= 3 and fields[0] == "pstore" and \
                            fields[2] == "pstore":
                        return fields[1]
        except OSError:
            return None
        return None

    def erase_pstore(self, node: Any, ports: Any) -> None:
        """Remove the kernel's persistent store records (crash dumps that
        may hold the last tenant's memory), as IPA."""
        path = self._pstore_mount()
        if path is None:
            log.info("erase_pstore: no pstore mounted")
            return
        removed = 0
        for name in sorted(os.listdir(path)):
            entry = os.path.join(path, name)
            if os.path.isdir(entry) and not os.path.islink(entry):
                shutil.rmtree(entry)
            else:
                os.remove(entry)
            removed += 1
        log.info("erase_pstore: removed {n} record(s) from {path}",
                 n=removed, path=path)

    async def clean_uefi_nvram(self, node: Any, ports: Any,
                               match_patterns: Any = None) -> None:
        """Delete the UEFI boot entries whose device path matches one of
        ``match_patterns`` (regular expressions, case-insensitive; IPA's
        default: disk, shim and GRUB entries)."""
        if match_patterns is None:
            match_patterns = DEFAULT_NVRAM_PATTERNS
        problem = (f"The match_patterns must be a list of strings: "
                   f"{match_patterns}")
        if type(match_patterns) is not list:
            raise errors.InvalidCommandParamsError(problem)
        patterns = []
        for item in match_patterns:
            if not isinstance(item, str):
                raise errors.InvalidCommandParamsError(problem)
            try:
                patterns.append(re.compile(item, re.IGNORECASE))
            except re.error:
                raise errors.InvalidCommandParamsError(problem) from None
        listing = await self.agent.process.run(["efibootmgr", "-v"],
                                               timeout=60.0)
        for number, label, path in nvram_entries(listing.out):
            hit = next((p for p in patterns if p.search(path)), None)
            if hit is None:
                continue
            log.info("clean_uefi_nvram: deleting Boot{number} ({label}): "
                     "{path} matches {pattern}", number=number, label=label,
                     path=path, pattern=hit.pattern)
            await self.agent.process.run(["efibootmgr", "-b", number, "-B"],
                                         timeout=60.0)

    # ------------------------------------------------------------- steps

    def get_clean_steps(self, node: Any, ports: Any) -> list[dict[str, Any]]:
        """IPA 13.0.0's clean steps, those this agent has (NOT_YET: the
        others)."""
        return [
            _step("erase_devices", 10, abortable=True),
            _step("erase_devices_metadata", 99, abortable=True),
            _step("erase_devices_express", 0, abortable=True),
            _step("erase_pstore", 0, abortable=True),
            _step("clean_uefi_nvram", 0, abortable=True,
                  argsinfo=CLEAN_UEFI_NVRAM_ARGSINFO),
            _step("delete_configuration", 0, abortable=True,
                  interface="raid"),
            _step("create_configuration", 0, abortable=True,
                  interface="raid"),
        ] + [_step(name, 0, abortable=True) for name in BURNIN_CLEAN]

    def _inject_priority(self) -> int:
        agent = getattr(self, "agent", None)
        return int(agent.config.inject_files_priority) if agent else 0

    def get_deploy_steps(self, node: Any, ports: Any) -> list[dict[str, Any]]:
        from ipa_twisted.hardware import inject, raid

        return [
            _step("erase_devices_metadata", 0),
            _step("apply_configuration", 0, interface="raid",
                  argsinfo=raid.APPLY_ARGSINFO),
            _step("clean_uefi_nvram", 0, argsinfo=CLEAN_UEFI_NVRAM_ARGSINFO),
            _step("write_image", 0),
            _step("inject_files", self._inject_priority(),
                  argsinfo=inject.ARGSINFO),
        ]

    def get_service_steps(self, node: Any, ports: Any
                          ) -> list[dict[str, Any]]:
        from ipa_twisted.hardware import inject, raid

        return [
            _step("delete_configuration", 0, abortable=True,
                  interface="raid"),
            _step("apply_configuration", 0, interface="raid",
                  argsinfo=raid.APPLY_ARGSINFO),
            _step("create_configuration", 0, abortable=True,
                  interface="raid"),
        ] + [_step(name, 0, abortable=True) for name in BURNIN_SERVICE] + [
            _step("write_image", 0),
            _step("inject_files", self._inject_priority(),
                  argsinfo=inject.ARGSINFO),
        ]

    # ------------------------------------------------------------ burn-in

    async def burnin_cpu(self, node: Any, ports: Any) -> dict[str, Any]:
        """Clean and service step: stress-ng's cpu stressor (see
        hardware/burnin.py for the node's driver_info keys)."""
        from ipa_twisted.hardware import burnin

        self.agent.cache_node(node)
        return await burnin.stress_ng(self.agent, node, "burnin_cpu", "cpu")

    async def burnin_memory(self, node: Any, ports: Any) -> dict[str, Any]:
        """Clean and service step: stress-ng's vm stressor."""
        from ipa_twisted.hardware import burnin

        self.agent.cache_node(node)
        return await burnin.stress_ng(self.agent, node, "burnin_memory",
                                      "vm")

    async def burnin_disk(self, node: Any, ports: Any) -> dict[str, Any]:
        """Clean step: a verified fio read/write run on every disk the
        agent may erase (allow-list, skip_block_devices)."""
        from ipa_twisted.hardware import burnin

        self.agent.cache_node(node)
        return await burnin.fio_disk(self.agent, node,
                                     await self._erasable_disks(node))

    async def burnin_network(self, node: Any, ports: Any) -> dict[str, Any]:
        """Clean and service step: fio's net engine with a partner node,
        each way."""
        from ipa_twisted.hardware import burnin

        self.agent.cache_node(node)
        return await burnin.fio_network(self.agent, node, "burnin_network")

    async def burnin_gpu(self, node: Any, ports: Any) -> dict[str, Any]:
        """Clean and service step: gpu_burn (from its install directory)."""
        from ipa_twisted.hardware import burnin

        self.agent.cache_node(node)
        return await burnin.gpu_burn(self.agent, node, "burnin_gpu")

    # ------------------------------------------------------ software RAID

    def _ramdisk_boot_mode(self) -> str:
        return "uefi" if os.path.isdir("/sys/firmware/efi") else "bios"

    async def _physical_disks(self, node: Any) -> list[BlockDevice]:
        devices = await self.list_block_devices()
        skipped = skip_list(node, devices)
        return [d for d in devices if d.kind == "disk"
                and d.name not in skipped]

    async def create_configuration(self, node: Any, ports: Any
                                   ) -> dict[str, Any]:
        """Clean and service step: the node's target_raid_config, when it
        is a software RAID (see hardware/raid.py); {} otherwise."""
        self.agent.cache_node(node)
        raid_config = (node or {}).get("target_raid_config") or {}
        if not raid_config:
            log.info("create_configuration: no target_raid_config")
            return {}
        return await self._create_raid(node, raid_config)

    async def _create_raid(self, node: Any, raid_config: Any
                           ) -> dict[str, Any]:
        from ipa_twisted.hardware import raid

        if not raid.software_logical_disks(raid_config):
            log.info("no software RAID in the RAID configuration: nothing "
                     "to do")
            return {}
        roots = await self.raid.create(
            node, raid_config, await self._physical_disks(node),
            self._ramdisk_boot_mode())
        self.raid_roots.update(roots)
        return dict(raid_config)

    async def delete_configuration(self, node: Any, ports: Any) -> None:
        """Clean and service step: every software RAID on the disks
        (see hardware/raid.py)."""
        self.agent.cache_node(node)
        devices = await self.list_block_devices(include_partitions=True)
        skipped = skip_list(node, devices)
        devices = [d for d in devices if d.name not in skipped and not any(
            d.name.startswith(s) for s in skipped)]
        await self.raid.delete(node, devices)
        self.raid_roots.clear()

    async def apply_configuration(self, node: Any, ports: Any,
                                  raid_config: Any,
                                  delete_existing: Any = True
                                  ) -> dict[str, Any]:
        """Deploy and service step: ``raid_config`` built (after deleting
        what is there, unless ``delete_existing`` is false)."""
        from ipa_twisted.hardware import raid

        self.agent.cache_node(node)
        raid.validate_config(raid_config, node,
                             len(await self._physical_disks(node)))
        if delete_existing:
            await self.delete_configuration(node, ports)
        return await self._create_raid(node, raid_config)

    async def inject_files(self, node: Any, ports: Any, files: Any = None,
                           verify_ca: Any = True) -> list[str]:
        """Deploy and service step: files written into the deployed
        disk's filesystems (see hardware/inject.py)."""
        from ipa_twisted.hardware import inject

        self.agent.cache_node(node)
        return await inject.inject_files(self.agent, node, ports, files,
                                         verify_ca)

    async def write_image(self, node: Any, ports: Any, image_info: Any,
                          configdrive: Any = None) -> str:
        """Deploy step: write the image (the standby extension does it)."""
        self.agent.cache_node(node)
        standby = self.agent.get_extension("standby")
        return await standby.write_image(image_info, configdrive)
