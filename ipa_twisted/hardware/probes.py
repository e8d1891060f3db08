"""The inventory's external probes, each with a timeout, each allowed to
fail on its own (its fields are then empty, and one line is logged).

A :class:`ProbeSession` runs each tool at most once (``lshw`` feeds the
memory, the system vendor and the NIC speeds) and lets the parts of one
inventory run concurrently.
"""

from __future__ import annotations

import os
import platform
from typing import TYPE_CHECKING, Any, Awaitable, Callable, TypeVar

from twisted.internet.defer import Deferred, ensureDeferred
from twisted.logger import Logger

from ipa_twisted.hardware.disks import (
    LSBLK_COLUMNS,
    BlockDevice,
    DeviceGuard,
    by_path_links,
    parse_lsblk,
    udev_properties,
)
from ipa_twisted.observer import OneShotObserver
from ipa_twisted.process import IProcessRunner, ProcessError, ToolNotFound

if TYPE_CHECKING:
    from ipa_twisted.hardware import dmi, ipmi, system

log = Logger()

T = TypeVar("T")


class ProbeFailed(Exception):
    pass


class ProbeSession:
    """Runs each probe once; results are shared by the parts that need
    them."""

    def __init__(self, process: IProcessRunner, guard: DeviceGuard) -> None:
        self._process = process
        self._guard = guard
        self._once: dict[str, OneShotObserver[Any]] = {}

    def _memo(self, key: str, factory: Callable[[], Awaitable[T]]
              ) -> Deferred[T]:
        if key not in self._once:
            once: OneShotObserver[Any] = OneShotObserver()
            self._once[key] = once
            ensureDeferred(factory()).addBoth(  # type: ignore[arg-type]
                once.fire)
        return self._once[key].when_fired()

    async def run(self, argv: list[str], timeout: float = 60.0) -> str:
        """stdout of a tool; ProbeFailed (logged once) when it fails."""
        try:
            result = await self._process.run(argv, timeout=timeout)
        except ToolNotFound:
            log.info("{tool} is not installed: its inventory fields stay "
                     "empty", tool=argv[0])
            raise ProbeFailed(f"{argv[0]} not installed") from None
        except ProcessError as e:
            log.warn("{argv} failed: {reason}", argv=" ".join(argv),
                     reason=e.reason)
            raise ProbeFailed(e.reason) from None
        return result.out

    # --------------------------------------------------------------- tools

    def lscpu(self) -> Deferred[str | None]:
        return self._memo("lscpu", lambda: self._optional(["lscpu"]))

    def lshw(self) -> Deferred[dict[str, Any] | None]:
        async def get() -> dict[str, Any] | None:
            from ipa_twisted.hardware import lshw

            out = await self._optional(["lshw", "-quiet", "-json"], 120.0)
            if out is None:
                return None
            try:
                return lshw.parse(out)
            except ValueError as e:
                log.warn("cannot parse lshw's output: {e}", e=e)
                return None

        return self._memo("lshw", get)

    def dmidecode(self) -> Deferred[list[dmi.DMIRecord] | None]:
        async def get() -> list[dmi.DMIRecord] | None:
            from ipa_twisted.hardware import dmi

            out = await self._optional(["dmidecode"])
            if out is None:
                return None
            return dmi.parse_dmidecode(out) or None

        return self._memo("dmidecode", get)

    async def _optional(self, argv: list[str], timeout: float = 60.0
                        ) -> str | None:
        try:
            return await self.run(argv, timeout)
        except ProbeFailed:
            return None

    async def block_devices(self, include_partitions: bool = False
                            ) -> list[BlockDevice]:
        if os.path.isdir("/run/udev"):
            await self._optional(["udevadm", "settle"], 60.0)
        out = await self.run(["lsblk", "-bia", "--json", "-l", "-o",
                              LSBLK_COLUMNS])
        return parse_lsblk(out, self._guard, include_partitions,
                           by_path=by_path_links(), udev=udev_properties)

    async def biosdevname(self, name: str) -> str | None:
        try:
            result = await self._process.run(["biosdevname", "-i", name],
                                             timeout=10.0, check=False)
        except ProcessError:
            return None
        if result.exit_code != 0:
            return None
        return result.out.rstrip("\n")

    async def bmc(self) -> ipmi.BMCInfo | None:
        from ipa_twisted.hardware import ipmi

        if not ipmi.has_ipmi_device():
            return None

        async def run(argv: list[str]) -> tuple[int, str, str]:
            result = await self._process.run(argv, timeout=30.0, check=False)
            return result.exit_code, result.out, result.err

        try:
            return await ipmi.probe_bmc(run)
        except ProcessError as e:
            log.warn("ipmitool failed: {e}", e=e.reason)
            return None

    # ------------------------------------------------------------- derived

    async def cpu(self) -> system.CPU:
        from ipa_twisted.hardware import system

        lscpu = await self.lscpu()
        try:
            with open("/proc/cpuinfo") as f:
                cpuinfo: str | None = f.read()
        except OSError:
            cpuinfo = None
        return system.parse_cpu(lscpu, cpuinfo, platform.machine())

    async def memory(self) -> dict[str, Any]:
        from ipa_twisted.hardware import dmi, lshw, system

        try:
            with open("/proc/meminfo") as f:
                total = system.parse_meminfo_total(f.read())
        except OSError:
            total = None
        physical: int | None = None
        root = await self.lshw()
        if root is not None:
            try:
                physical = lshw.physical_memory_mb(root)
            except (KeyError, ValueError) as e:
                log.warn("cannot read memory size from lshw: {e}", e=e)
        if not physical:
            records = await self.dmidecode()
            if records:
                physical = dmi.physical_memory_mb(records) or physical
        if physical is None:
            physical = system.physical_memory_mb()
        return {"total": total, "physical_mb": physical}

    async def system_vendor(self) -> dict[str, Any]:
        from ipa_twisted.hardware import dmi, lshw, system

        root = await self.lshw()
        if root is not None:
            return lshw.system_vendor(root)
        records = await self.dmidecode()
        if records:
            return dmi.system_vendor(records)
        return system.system_vendor()

    async def nic_speeds(self) -> dict[str, int]:
        from ipa_twisted.hardware import lshw

        root = await self.lshw()
        return lshw.nic_speeds(root) if root is not None else {}
