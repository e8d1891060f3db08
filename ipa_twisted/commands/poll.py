"""The poll extension: the inventory, and node info in standalone mode."""

from __future__ import annotations

from typing import Any

from ipa_twisted import errors
from ipa_twisted.commands.base import Extension, sync_command


class PollExtension(Extension):
    name = "poll"

    @sync_command("get_hardware_info")
    async def get_hardware_info(self) -> dict[str, Any]:
        return await self.agent.hardware.dispatch("list_hardware_info")

    @sync_command("set_node_info")
    def set_node_info(self, node_info: Any) -> None:
        if not self.agent.config.standalone:
            raise errors.InvalidCommandError(
                "set_node_info is only allowed in standalone mode"
            )
        if not isinstance(node_info, dict) or not isinstance(
                node_info.get("node"), dict):
            raise errors.InvalidCommandParamsError(
                "node_info must be an object with a 'node' object"
            )
        self.agent.cache_node(node_info["node"])
        config = node_info.get("config")
        if isinstance(config, dict):
            self.agent.lookup_config.update(config)
            apply = getattr(self.agent.tls_policy, "apply", None)
            if apply is not None:   # outbound TLS follows, as after lookup
                apply(config.get("tls_min_version"),
                      config.get("tls_cipher_suites"))
