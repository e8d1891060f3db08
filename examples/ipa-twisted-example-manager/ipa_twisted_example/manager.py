"""ExampleVendorManager: how a vendor extends ipa-twisted."""

from __future__ import annotations

import os
from typing import Any

from twisted.logger import Logger

from ipa_twisted.hardware.generic import GenericHardwareManager
from ipa_twisted.hardware.manager import HardwareManager, HardwareSupport

log = Logger()

VENDOR = "Example Corp"


class ExampleVendorManager(HardwareManager):
    HARDWARE_MANAGER_NAME = "example_vendor_manager"
    HARDWARE_MANAGER_VERSION = "1.0"

    def evaluate_hardware_support(self) -> int:
        try:
            with open("/sys/class/dmi/id/sys_vendor") as f:
                vendor = f.read().strip()
        except OSError:
            vendor = ""
        if vendor == VENDOR or os.environ.get("IPA_TWISTED_EXAMPLE_MANAGER") == "1":
            return HardwareSupport.SERVICE_PROVIDER
        return HardwareSupport.NONE

    def initialize(self, agent: Any) -> None:
        self.agent = agent
        self._generic = GenericHardwareManager()
        self._generic.agent = agent

    def get_clean_steps(self, node: Any, ports: Any) -> list[dict[str, Any]]:
        return [
            {"step": "example_firmware_report", "priority": 0,
             "interface": "deploy", "reboot_requested": False,
             "abortable": True},
            {"step": "erase_devices_metadata", "priority": 99,
             "interface": "deploy", "reboot_requested": False,
             "abortable": True},
        ]

    async def example_firmware_report(self, node: Any, ports: Any,
                                      **kwargs: Any) -> dict[str, Any]:
        """A vendor clean step: report the running kernel (a stand-in for
        a vendor firmware tool)."""
        result = await self.agent.process.run(["uname", "-r"])
        return {"vendor": VENDOR, "kernel": result.out.strip()}

    async def erase_devices_metadata(self, node: Any, ports: Any
                                     ) -> dict[str, Any]:
        log.info("{vendor}: erasing metadata the generic way", vendor=VENDOR)
        await self._generic.erase_devices_metadata(node, ports)
        return {"erased_by": self.HARDWARE_MANAGER_NAME}
