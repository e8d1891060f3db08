"""The system extension: ``lockdown``.

Ironic locks the agent down instead of powering the node off when the node
may not be powered off (``disable_power_off``): at the end of a deploy,
before it leaves servicing.  It sends ``system.lockdown`` and then polls
the agent until it can no longer connect.  As IPA: the answer goes out,
then the API and the heartbeats stop, then every network interface the
agent knows is set down (the node now runs the instance's workload on
that network); the process stays, so that no service manager starts a
fresh agent.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred, ensureDeferred
from twisted.logger import Logger

from ipa_twisted.commands.base import Extension, sync_command
from ipa_twisted.hardware import netif
from ipa_twisted.process import ProcessError

log = Logger()


class SystemExtension(Extension):
    name = "system"

    @sync_command("lockdown")
    def lockdown(self) -> None:
        """Lock the agent down (see the module's docstring)."""
        log.warn("lockdown asked: the agent will stop serving and set its "
                 "network interfaces down")
        # after this command's answer is written (the same POST)
        self.agent.reactor.callLater(0, self._lock_down)

    def _lock_down(self) -> "Deferred[None]":
        d = self.agent.stop_serving("locked down")
        d.addCallback(lambda _: ensureDeferred(self._down()))
        return d

    async def _down(self) -> None:
        for nic in netif.list_interfaces():
            try:
                await self.agent.process.run(
                    ["ip", "link", "set", nic.name, "down"], timeout=30.0)
                log.info("lockdown: {nic} is down", nic=nic.name)
            except ProcessError as e:
                log.warn("lockdown: could not set {nic} down: {e}",
                         nic=nic.name, e=e)
