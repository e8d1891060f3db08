"""Inspection collectors: each adds its keys to the data posted.

A collector provides :class:`ICollector`.  Ours are built in; others come
from the entry point group ``ipa_twisted.inspection.collectors`` (the entry
point names the collector; the object it loads is a collector class).

===============  ===========================================================
``default``      ``inventory``, ``root_disk``, ``boot_interface``,
                 ``configuration`` (after waiting for DHCP on the PXE NIC)
``logs``         ``logs``: base64 gzipped tarball of the journal (or
                 /var/log) and system commands
``pci-devices``  ``pci_devices``: vendor/product/class/revision/bus/NUMA
``numa-topology`` ``numa_topology``: ram, cpus (thread siblings), nics
``dmi-decode``   ``dmi``: bios, cpu, memory (+devices) from dmidecode
``lldp``         ``lldp_raw``: LLDP TLVs per interface
``usb-devices``  ``usb_devices``: product/vendor/handle from lshw
===============  ===========================================================
"""

from __future__ import annotations

import os
from importlib import metadata
from typing import TYPE_CHECKING, Any, Sequence

from twisted.internet.defer import CancelledError
from twisted.internet.task import deferLater
from twisted.logger import Logger
from zope.interface import Attribute, Interface, implementer

from ipa_twisted.hardware import dmi, netif
from ipa_twisted.hardware.generic import MIN_ROOT_DISK
from ipa_twisted.hardware.manager import manager_version
from ipa_twisted.hardware.probes import ProbeSession

if TYPE_CHECKING:
    from ipa_twisted.context import RunningAgent


log = Logger()

ENTRY_POINT_GROUP = "ipa_twisted.inspection.collectors"
DEFAULT_COLLECTORS = ("default", "logs")
DHCP_POLL = 2.0


class Failures:
    """Collector errors, reported in the posted data as ``error``."""

    def __init__(self) -> None:
        self.items: list[str] = []

    def add(self, text: str) -> None:
        log.error("inspection: {text}", text=text)
        self.items.append(text)

    def error(self) -> str | None:
        if not self.items:
            return None
        return "The following errors were encountered:\n" + "\n".join(
            f"* {item}" for item in self.items)

    def __bool__(self) -> bool:
        return bool(self.items)


class ICollector(Interface):
    name = Attribute("The collector's name (as in ipa-inspection-collectors).")

    def collect(context: RunningAgent, data: dict, failures: Failures,
                names: Sequence[str]) -> Any:
        """Add keys to ``data`` (may return a Deferred or be a coroutine);
        report problems with ``failures.add``."""


def normalize_mac(mac: str) -> str:
    """pxelinux ``01-aa-bb-..`` or ``aa:bb:..`` -> ``aa:bb:..``."""
    if "-" in mac:
        mac = mac.split("-", 1)[1].replace("-", ":")
    return mac.lower()


@implementer(ICollector)
class DefaultCollector:
    name = "default"

    async def wait_for_dhcp(self, context: RunningAgent) -> bool:
        config = context.config
        timeout = config.inspection_dhcp_wait_timeout
        if not timeout:
            return True
        pxe_mac = normalize_mac(config.bootif) if config.bootif else None
        if pxe_mac is None and not config.inspection_dhcp_all_interfaces:
            log.warn("no PXE interface known (no BOOTIF): not waiting for "
                     "DHCP")
            return False
        clock = context.reactor
        deadline = clock.seconds() + timeout
        while True:
            nics = netif.list_interfaces()
            if pxe_mac is not None and not \
                    config.inspection_dhcp_all_interfaces:
                nics = [n for n in nics if n.mac_address == pxe_mac]
            missing = [n.name for n in nics if not n.ipv4_address]
            if nics and not missing:
                return True
            if clock.seconds() >= deadline:
                log.warn("NICs still without an IPv4 address after {t} s: "
                         "{names}", t=timeout,
                         names=", ".join(missing) or "(PXE NIC not found)")
                return False
            await deferLater(clock, DHCP_POLL)

    async def collect(self, context: RunningAgent, data: dict, failures: Failures,
                      names: Sequence[str]) -> None:
        await self.wait_for_dhcp(context)
        if context.config.collect_lldp:
            # interfaces[].lldp asked for: wait for the frames (bounded by
            # lldp_timeout) so that they are in the posted inventory
            await context.start_lldp().when_done()
        inventory = await context.hardware.dispatch("list_hardware_info")
        data["inventory"] = inventory
        disks = sorted(inventory.get("disks") or [],
                       key=lambda d: (d.get("size") or 0, d.get("name", "")))
        root = next((d for d in disks if (d.get("size") or 0)
                     >= MIN_ROOT_DISK), None)
        if root is not None:
            data["root_disk"] = root
        else:
            log.warn("no suitable root disk (none of at least 4 GiB)")
        data["boot_interface"] = (inventory.get("boot") or {}).get(
            "pxe_interface")
        data["configuration"] = {
            "collectors": list(names),
            "managers": [manager_version(m)
                         for m in context.hardware.managers],
        }


@implementer(ICollector)
class LogsCollector:
    name = "logs"

    async def collect(self, context: RunningAgent, data: dict, failures: Failures,
                      names: Sequence[str]) -> None:
        from ipa_twisted import system_logs

        try:
            data["logs"] = await system_logs.collect(context)
        except CancelledError:
            raise
        except Exception as e:  # as IPA: log failures are not reported
            log.warn("cannot collect logs for inspection: {e}", e=e)


def _hex_value(path: str) -> str:
    with open(path) as f:
        return f.read().strip().split("x")[1]


@implementer(ICollector)
class PCIDevicesCollector:
    name = "pci-devices"
    path = "/sys/bus/pci/devices"

    def collect(self, context: RunningAgent, data: dict, failures: Failures,
                names: Sequence[str]) -> None:
        try:
            entries = os.listdir(self.path)
        except OSError as e:
            failures.add(f"Failed to get list of PCI devices: {e}")
            return
        devices = []
        for bus in entries:
            base = os.path.join(self.path, bus)
            if not os.path.isdir(base):
                continue
            try:
                vendor = _hex_value(os.path.join(base, "vendor"))
                product = _hex_value(os.path.join(base, "device"))
                pci_class = _hex_value(os.path.join(base, "class"))
            except (OSError, IndexError) as e:
                log.warn("PCI device {bus}: {e}", bus=bus, e=e)
                continue
            try:
                revision: str | None = _hex_value(os.path.join(base,
                                                               "revision"))
            except (OSError, IndexError):
                revision = None
            try:
                with open(os.path.join(base, "numa_node")) as f:
                    numa: str | None = f.read().strip()
            except OSError:
                numa = None
            devices.append({"vendor_id": vendor, "product_id": product,
                            "class": pci_class, "revision": revision,
                            "bus": bus, "numa_node_id": numa})
        data["pci_devices"] = devices


class NumaFormatError(Exception):
    pass


def _kb(text: str) -> int:
    number, _, unit = text.strip().partition(" ")
    scale = {"kb": 1, "mb": 1024, "gb": 1024 * 1024, "": 1}.get(
        unit.strip().lower())
    if scale is None:
        raise NumaFormatError(f"unknown memory unit in {text!r}")
    return int(number) * scale


def numa_topology(node_path: str = "/sys/devices/system/node",
                  net_path: str = "/sys/class/net") -> dict[str, Any] | None:
    try:
        nodes = sorted(n for n in os.listdir(node_path)
                       if n.startswith("node")
                       and os.path.isdir(os.path.join(node_path, n)))
    except OSError:
        log.warn("no NUMA information ({p} missing)", p=node_path)
        return None
    ram: list[dict[str, int]] = []
    cpus: dict[tuple[int, int], dict[str, Any]] = {}
    try:
        for node in nodes:
            node_id = int(node[4:])
            base = os.path.join(node_path, node)
            with open(os.path.join(base, "meminfo")) as f:
                line = next((ln for ln in f if "MemTotal" in ln), None)
            if line is None:
                raise NumaFormatError(f"no MemTotal for {node}")
            ram.append({"numa_node": node_id,
                        "size_kb": _kb(line.split(":", 1)[1])})
            for entry in os.listdir(base):
                if not entry.startswith("cpu") or not entry[3:].isdigit():
                    continue
                thread = int(entry[3:])
                with open(os.path.join(base, entry, "topology",
                                       "core_id")) as f:
                    core = int(f.read().strip())
                item = cpus.setdefault((node_id, core), {
                    "cpu": core, "numa_node": node_id, "thread_siblings": []})
                if thread not in item["thread_siblings"]:
                    item["thread_siblings"].append(thread)
        nics = []
        for nic in os.listdir(net_path):
            numa_file = os.path.join(net_path, nic, "device", "numa_node")
            if not os.path.isfile(numa_file):
                continue
            with open(numa_file) as f:
                nics.append({"name": nic, "numa_node": int(f.read().strip())})
    except (OSError, ValueError, NumaFormatError) as e:
        log.warn("cannot read the NUMA topology: {e}", e=e)
        return None
    for item in cpus.values():
        item["thread_siblings"].sort()
    return {"ram": ram, "cpus": list(cpus.values()), "nics": nics}


@implementer(ICollector)
class NumaTopologyCollector:
    name = "numa-topology"

    def collect(self, context: RunningAgent, data: dict, failures: Failures,
                names: Sequence[str]) -> None:
        topology = numa_topology()
        if topology is not None:
            data["numa_topology"] = topology


@implementer(ICollector)
class DmiDecodeCollector:
    name = "dmi-decode"

    async def collect(self, context: RunningAgent, data: dict, failures: Failures,
                      names: Sequence[str]) -> None:
        from ipa_twisted.process import ProcessError

        try:
            result = await context.process.run(
                ["dmidecode", "-t", "bios", "-t", "processor", "-t",
                 "memory"], timeout=60.0)
        except ProcessError as e:
            failures.add(f"failed to run dmidecode: {e}")
            return
        data["dmi"] = dmi.inspection_summary(dmi.parse_dmidecode(result.out))


@implementer(ICollector)
class LLDPCollector:
    name = "lldp"

    async def collect(self, context: RunningAgent, data: dict, failures: Failures,
                      names: Sequence[str]) -> None:
        collector = context.start_lldp()
        data["lldp_raw"] = dict(await collector.when_done())


@implementer(ICollector)
class USBDevicesCollector:
    name = "usb-devices"

    async def collect(self, context: RunningAgent, data: dict, failures: Failures,
                      names: Sequence[str]) -> None:
        root = await ProbeSession(context.process, context.guard).lshw()
        devices = []

        def walk(node: dict) -> None:
            for child in node.get("children") or []:
                ident = str(child.get("id", ""))
                if child.get("class") == "generic" and (
                        ident == "usb" or ident.startswith("usb:")):
                    devices.append({"product": child.get("product", ""),
                                    "vendor": child.get("vendor", ""),
                                    "handle": child.get("handle", "")})
                walk(child)

        if root is None:
            log.warn("no lshw output: no USB devices reported")
        else:
            walk(root)
        data["usb_devices"] = devices


BUILTIN: dict[str, type] = {c.name: c for c in (
    DefaultCollector, LogsCollector, PCIDevicesCollector,
    NumaTopologyCollector, DmiDecodeCollector, LLDPCollector,
    USBDevicesCollector)}


def load_collectors(names: Sequence[str], failures: Failures
                    ) -> list[tuple[str, Any]]:
    """The collectors named, in order; unknown names go to ``failures``."""
    plugins = {ep.name: ep for ep in metadata.entry_points(
        group=ENTRY_POINT_GROUP)}
    found = []
    for name in names:
        if name in BUILTIN:
            found.append((name, BUILTIN[name]()))
            continue
        ep = plugins.get(name)
        if ep is None:
            failures.add(f"unknown inspection collector {name!r} (known: "
                         f"{', '.join(sorted(set(BUILTIN) | set(plugins)))})")
            continue
        try:
            found.append((name, ep.load()()))
        except Exception as e:
            failures.add(f"cannot load inspection collector {name!r}: {e}")
    return found

