"""Hardware managers: the interface, loading, and dispatch.

A hardware manager is any object providing :class:`IHardwareManager`,
registered as an entry point in the group ``ipa_twisted.hardware_managers``
(the entry point names the class; it is instantiated with no arguments).
Managers whose ``evaluate_hardware_support()`` is above zero are kept,
sorted by that level (highest first, stable), then ``initialize(agent)`` is
called on each.

``dispatch(method, ...)`` calls the first manager that has ``method`` and
does not raise :class:`~ipa_twisted.errors.IncompatibleHardwareMethodError`;
``dispatch_to(names, method, ...)`` does the same over the named managers
only (steps: those that advertised the step); ``dispatch_all`` calls every
such manager and returns ``{class name: result}``.  Methods may return plain values, Deferreds or coroutines.
"""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Sequence

from twisted.logger import Logger
from zope.interface import Attribute, Interface, implementer

from ipa_twisted import errors
from ipa_twisted.entrypoints import entry_points

if TYPE_CHECKING:
    from ipa_twisted.context import RunningAgent

log = Logger()

ENTRY_POINT_GROUP = "ipa_twisted.hardware_managers"


class HardwareSupport:
    NONE = 0
    GENERIC = 1
    MAINLINE = 2
    SERVICE_PROVIDER = 3


class IHardwareManager(Interface):
    """What a hardware manager may implement (all but the first optional).

    Methods a manager does not support either are absent or raise
    ``IncompatibleHardwareMethodError``; dispatch then asks the next one.
    Step methods have the signature ``(node, ports, **args)``.
    """

    HARDWARE_MANAGER_NAME = Attribute("Name reported with the version.")
    HARDWARE_MANAGER_VERSION = Attribute("Version string reported to Ironic.")

    def evaluate_hardware_support() -> int:
        """0 (none) .. 3 (service provider): how well this manager fits."""

    def initialize(agent: Any) -> Any:
        """Prepare, with access to the agent's services."""

    def list_hardware_info() -> Any:
        """The inventory (dict), for the managers that assemble it."""

    def get_cpus() -> Any:
        """CPU information."""

    def get_memory() -> Any:
        """Memory information."""

    def list_network_interfaces() -> Any:
        """NICs."""

    def list_block_devices(include_partitions: bool = False) -> Any:
        """Disks (and partitions)."""

    def get_os_install_device(permit_refresh: bool = False) -> Any:
        """The device name the image goes to."""

    def get_bmc_address() -> Any:
        """BMC IPv4 address or None."""

    def get_bmc_v6address() -> Any:
        """BMC IPv6 address or None."""

    def get_system_vendor_info() -> Any:
        """product_name, serial_number, manufacturer, firmware."""

    def get_boot_info() -> Any:
        """current_boot_mode and pxe_interface."""

    def erase_block_device(node: Any, block_device: Any) -> Any:
        """Erase one disk."""

    def erase_devices_metadata(node: Any, ports: Any) -> Any:
        """Wipe partition tables and signatures of every disk."""

    def get_clean_steps(node: Any, ports: Any) -> Any:
        """Clean steps: list of dicts."""

    def get_deploy_steps(node: Any, ports: Any) -> Any:
        """Deploy steps: list of dicts."""

    def get_service_steps(node: Any, ports: Any) -> Any:
        """Service steps: list of dicts."""

    def get_version() -> Any:
        """{"name": ..., "version": ...}."""


def _incompatible(name: str) -> Any:
    def method(self: Any, *args: Any, **kwargs: Any) -> Any:
        raise errors.IncompatibleHardwareMethodError(
            f"{type(self).__name__} does not implement {name}")

    method.__name__ = name
    return method


@implementer(IHardwareManager)
class HardwareManager:
    """Base class for hardware managers: every optional method says
    "incompatible" (so dispatch asks the next manager), steps are empty,
    the version comes from the two class attributes."""

    HARDWARE_MANAGER_NAME: str | None = None
    HARDWARE_MANAGER_VERSION = "1.0"

    def __init__(self) -> None:
        self.agent: RunningAgent = None  # type: ignore[assignment]

    def evaluate_hardware_support(self) -> int:
        return HardwareSupport.NONE

    def initialize(self, agent: RunningAgent) -> Any:
        self.agent = agent

    list_hardware_info = _incompatible("list_hardware_info")
    get_cpus = _incompatible("get_cpus")
    get_memory = _incompatible("get_memory")
    list_network_interfaces = _incompatible("list_network_interfaces")
    list_block_devices = _incompatible("list_block_devices")
    get_os_install_device = _incompatible("get_os_install_device")
    get_bmc_address = _incompatible("get_bmc_address")
    get_bmc_v6address = _incompatible("get_bmc_v6address")
    get_system_vendor_info = _incompatible("get_system_vendor_info")
    get_boot_info = _incompatible("get_boot_info")
    erase_block_device = _incompatible("erase_block_device")
    erase_devices_metadata = _incompatible("erase_devices_metadata")

    def get_clean_steps(self, node: Any, ports: Any) -> Any:
        return []

    def get_deploy_steps(self, node: Any, ports: Any) -> Any:
        return []

    def get_service_steps(self, node: Any, ports: Any) -> Any:
        return []

    def get_version(self) -> dict[str, str]:
        return {
            "name": self.HARDWARE_MANAGER_NAME or type(self).__name__,
            "version": str(self.HARDWARE_MANAGER_VERSION),
        }


async def _settle(value: Any) -> Any:
    while inspect.isawaitable(value):
        value = await value
    return value


async def _first_compatible(managers: Sequence[Any], method: str,
                            args: Sequence[Any], kwargs: Mapping[str, Any]
                            ) -> Any:
    """``method`` of the first of ``managers`` that has it and does not
    answer IncompatibleHardwareMethodError (a None in the list is
    skipped)."""
    for manager in managers:
        func = getattr(manager, method, None)
        if func is None:
            continue
        try:
            return await _settle(func(*args, **kwargs))
        except errors.IncompatibleHardwareMethodError:
            log.debug("{name}.{method} is not compatible; trying the "
                      "next manager", name=type(manager).__name__,
                      method=method)
    raise errors.HardwareManagerMethodNotFound(method)


def manager_version(manager: Any) -> dict[str, str]:
    getter = getattr(manager, "get_version", None)
    if getter is not None:
        version = getter()
        if isinstance(version, dict):
            return {"name": str(version["name"]),
                    "version": str(version["version"])}
    return {
        "name": getattr(manager, "HARDWARE_MANAGER_NAME", None)
        or type(manager).__name__,
        "version": str(getattr(manager, "HARDWARE_MANAGER_VERSION", "1.0")),
    }


class HardwareManagers:
    """The loaded managers, in priority order, and dispatch over them."""

    def __init__(self, managers: Sequence[Any]) -> None:
        scored = []
        for manager in managers:
            try:
                support = int(manager.evaluate_hardware_support())
            except Exception:
                log.failure("hardware manager {name} failed to evaluate "
                            "support; skipping it",
                            name=type(manager).__name__)
                continue
            if support > 0:
                scored.append((support, manager))
            else:
                log.info("hardware manager {name} does not support this "
                         "machine", name=type(manager).__name__)
        if not scored:
            raise errors.HardwareManagerNotFound()
        scored.sort(key=lambda pair: -pair[0])
        self.managers = [m for _, m in scored]
        self.support = {type(m).__name__: s for s, m in scored}
        for support, manager in scored:
            log.info("hardware manager {name} (support {support}, version "
                     "{version})", name=type(manager).__name__,
                     support=support, version=manager_version(manager))

    @classmethod
    def from_entry_points(cls, group: str = ENTRY_POINT_GROUP,
                          only: Iterable[str] | None = None
                          ) -> "HardwareManagers":
        managers = []
        wanted = set(only) if only is not None else None
        for ep in sorted(entry_points(group),
                         key=lambda e: e.name):
            if wanted is not None and ep.name not in wanted:
                continue
            try:
                factory = ep.load()
                managers.append(factory())
            except Exception:
                log.failure("cannot load hardware manager {name}",
                            name=ep.name)
        return cls(managers)

    async def initialize(self, agent: RunningAgent) -> None:
        for manager in self.managers:
            init = getattr(manager, "initialize", None)
            if init is not None:
                await _settle(init(agent))

    def versions(self) -> dict[str, str]:
        """``{manager name: version}``, as Ironic stores and compares it."""
        out = {}
        for manager in self.managers:
            v = manager_version(manager)
            out[v["name"]] = v["version"]
        return out

    async def dispatch(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return await _first_compatible(self.managers, method, args, kwargs)

    async def dispatch_to(self, names: Sequence[str], method: str,
                          *args: Any, **kwargs: Any) -> Any:
        """As :meth:`dispatch`, but only to the managers named (class
        names), in the order given: a step runs on the managers that
        advertised it, never on another that merely has a method of that
        name."""
        by_name = {type(m).__name__: m for m in self.managers}
        return await _first_compatible(
            [by_name.get(name) for name in names], method, args, kwargs)

    async def dispatch_all(self, method: str, *args: Any, **kwargs: Any
                           ) -> dict[str, Any]:
        results: dict[str, Any] = {}
        for manager in self.managers:
            func = getattr(manager, method, None)
            if func is None:
                continue
            try:
                results[type(manager).__name__] = await _settle(
                    func(*args, **kwargs))
            except errors.IncompatibleHardwareMethodError:
                continue
        if not results:
            raise errors.HardwareManagerMethodNotFound(method)
        return results
