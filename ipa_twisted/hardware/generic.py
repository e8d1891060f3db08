"""The generic hardware manager: inventory, root disk, erase, steps.

Probes run concurrently; a probe that fails (missing tool, timeout) leaves
its fields empty and logs one line; the inventory as a whole never fails.
"""

from __future__ import annotations

import os
import platform
from typing import Any, Mapping

from twisted.internet.defer import ensureDeferred
from twisted.internet.task import deferLater
from twisted.logger import Logger

from ipa_twisted import errors
from ipa_twisted.hardware import blockio, hints, netif, system
from ipa_twisted.hardware.disks import (
    LSBLK_COLUMNS,
    BlockDevice,
    by_path_links,
    parse_lsblk,
)
from ipa_twisted.hardware.manager import HardwareManager, HardwareSupport
from ipa_twisted.process import ProcessError

log = Logger()

MIN_ROOT_DISK = 4 * 1024 ** 3

WRITE_IMAGE_ARGSINFO = {
    "image_info": {
        "description": "Image information (id, urls, checksum, disk_format "
                       "...) as the conductor builds it.",
        "required": True,
    },
    "configdrive": {
        "description": "A config drive: gzipped and base64-encoded ISO, "
                       "or its URL.",
        "required": False,
    },
}


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


def choose_root_device(devices: list[BlockDevice],
                       root_hints: Mapping[str, Any] | None) -> BlockDevice:
    """Hints -> first match; no hints -> smallest disk >= 4 GiB."""
    disks = [d for d in devices if d.kind == "disk"]
    if root_hints:
        try:
            parsed = hints.parse_hints(root_hints)
        except hints.HintError as e:
            raise errors.DeviceNotFound(
                f"No devices could be found using the root device hints "
                f"{dict(root_hints)} because they failed to validate: {e}"
            ) from None
        for dev in disks:
            if hints.device_matches(dev.serialize(), parsed):
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


class GenericHardwareManager(HardwareManager):
    HARDWARE_MANAGER_NAME = "generic_hardware_manager"
    HARDWARE_MANAGER_VERSION = "1.2"

    # ---------------------------------------------------------- lifecycle

    def evaluate_hardware_support(self) -> int:
        return HardwareSupport.GENERIC

    # ------------------------------------------------------------ probes

    async def _run(self, argv: list[str], timeout: float = 30.0) -> str | None:
        try:
            result = await self.agent.process.run(argv, timeout=timeout)
        except ProcessError as e:
            log.warn("probe {tool} failed: {reason}", tool=argv[0],
                     reason=e.reason)
            return None
        return result.out

    def list_network_interfaces(self) -> list[netif.NetworkInterface]:
        return netif.list_interfaces()

    async def get_cpus(self) -> system.CPU:
        lscpu = await self._run(["lscpu"])
        try:
            with open("/proc/cpuinfo") as f:
                cpuinfo = f.read()
        except OSError:
            cpuinfo = None
        return system.parse_cpu(lscpu, cpuinfo, platform.machine())

    def get_memory(self) -> dict[str, Any]:
        try:
            with open("/proc/meminfo") as f:
                total = system.parse_meminfo_total(f.read())
        except OSError:
            total = None
        return {"total": total, "physical_mb": system.physical_memory_mb()}

    async def list_block_devices(self, include_partitions: bool = False
                                 ) -> list[BlockDevice]:
        if os.path.isdir("/run/udev"):
            await self._run(["udevadm", "settle"], timeout=60.0)
        out = await self._run(
            ["lsblk", "-bia", "--json", "-l", "-o", LSBLK_COLUMNS]
        )
        if out is None:
            raise errors.BlockDeviceError("lsblk failed; see the log")
        return parse_lsblk(out, self.agent.guard, include_partitions,
                           by_path=by_path_links())

    def get_system_vendor_info(self) -> dict[str, Any]:
        return system.system_vendor()

    def get_boot_info(self) -> dict[str, Any]:
        return system.boot_info(self.agent.config.bootif)

    def get_bmc_address(self) -> str | None:
        # No IPMI probing yet (the full inventory is issue #3): report none.
        return None

    def get_bmc_v6address(self) -> str | None:
        return None

    async def list_hardware_info(self) -> dict[str, Any]:
        """The inventory; probes run concurrently, a failed one leaves its
        part empty."""

        async def guarded(what: str, coro: Any, default: Any) -> Any:
            try:
                return await coro
            except Exception as e:
                log.warn("{what} probe failed: {e}", what=what, e=e)
                return default

        cpu_d = ensureDeferred(guarded(
            "cpu", self.get_cpus(),
            system.CPU(None, None, None, platform.machine())))
        disks_d = ensureDeferred(guarded(
            "disk", self.list_block_devices(), []))
        cpu = await cpu_d
        disk_list = await disks_d
        return {
            "interfaces": [i.serialize()
                           for i in self.list_network_interfaces()],
            "cpu": cpu.serialize(),
            "disks": [d.serialize() for d in disk_list],
            "memory": self.get_memory(),
            "bmc_address": self.get_bmc_address(),
            "bmc_v6address": self.get_bmc_v6address(),
            "system_vendor": self.get_system_vendor_info(),
            "boot": self.get_boot_info(),
            "hostname": system.hostname(),
        }

    # --------------------------------------------------------- root disk

    async def get_os_install_device(self, permit_refresh: bool = False) -> str:
        """The root device; tries ``disk_wait_attempts`` times (slow disk
        controllers) before giving up with DeviceNotFound."""
        root_hints = root_device_hints(self.agent.node)
        if permit_refresh and not root_hints and \
                self.agent.refresh_node is not None:
            await self.agent.refresh_node()
            root_hints = root_device_hints(self.agent.node)
        config = self.agent.config
        for attempt in range(1, config.disk_wait_attempts + 1):
            devices = await self.list_block_devices()
            try:
                dev = choose_root_device(devices, root_hints)
            except errors.DeviceNotFound as e:
                if attempt == config.disk_wait_attempts:
                    raise
                log.warn("{error}; looking again in {t} s ({n}/{total})",
                         error=e.details, t=config.disk_wait_delay,
                         n=attempt, total=config.disk_wait_attempts)
                await deferLater(self.agent.reactor, config.disk_wait_delay)
                continue
            log.info("picked root device {dev} (hints: {hints})",
                     dev=dev.name, hints=root_hints)
            return dev.name
        raise AssertionError("unreachable")

    # -------------------------------------------------------------- erase

    async def erase_devices_metadata(self, node: Any, ports: Any) -> None:
        """Remove partition tables and signatures from every disk.

        Partitions first (last to first), then each disk: ``wipefs``, then
        the first and last MiB are zeroed (MBR, both GPT copies).
        """
        self.agent.cache_node(node)
        devices = await self.list_block_devices(include_partitions=True)
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

    # ------------------------------------------------------------- steps

    def get_clean_steps(self, node: Any, ports: Any) -> list[dict[str, Any]]:
        return [_step("erase_devices_metadata", 99, abortable=True)]

    def get_deploy_steps(self, node: Any, ports: Any) -> list[dict[str, Any]]:
        return [
            _step("erase_devices_metadata", 0),
            _step("write_image", 0, argsinfo=WRITE_IMAGE_ARGSINFO),
        ]

    def get_service_steps(self, node: Any, ports: Any
                          ) -> list[dict[str, Any]]:
        return [_step("write_image", 0, argsinfo=WRITE_IMAGE_ARGSINFO)]

    async def write_image(self, node: Any, ports: Any, image_info: Any,
                          configdrive: Any = None) -> str:
        """Deploy step: write the image (the standby extension does it)."""
        self.agent.cache_node(node)
        standby = self.agent.get_extension("standby")
        return await standby.write_image(image_info, configdrive)
