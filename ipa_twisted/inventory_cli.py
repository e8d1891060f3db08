"""``ipa-inventory``: print this machine's inventory as Ironic would get it.

    ipa-inventory [--pretty] [--device-allowlist /dev/sdX,...]
                  [--collect-lldp [--lldp-timeout S]] [--config-file F]

It reads the same options as the agent (files, kernel command line, flags)
and only reads the machine: nothing is written.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from twisted.internet.defer import ensureDeferred
from twisted.internet.task import react
from twisted.python import usage

from ipa_twisted import encoding
from ipa_twisted.config import ConfigError, Config
from ipa_twisted.options import SourceOptions


class Options(SourceOptions):
    synopsis = "[--pretty] [options]"
    optFlags = [
        ["pretty", None, "Indent the JSON."],
        ["collect-lldp", None, "Listen for LLDP frames and include them."],
        ["debug", None, "Log debug messages (to stderr)."],
    ]
    optParameters = [
        ["device-allowlist", None, None,
         "List only these block devices (comma separated)."],
        ["lldp-timeout", None, None, "How long to listen for LLDP (s)."],
    ]

    def cli_values(self) -> dict[str, Any]:
        return {
            "device_allowlist": self["device-allowlist"],
            "lldp_timeout": self["lldp-timeout"],
            "collect_lldp": True if self["collect-lldp"] else None,
            "debug": True if self["debug"] else None,
        }


async def collect(reactor: Any, config: Config) -> dict[str, Any]:
    from ipa_twisted.context import RunningAgent
    from ipa_twisted.hardware.disks import DeviceGuard
    from ipa_twisted.hardware.manager import HardwareManagers
    from ipa_twisted.process import ProcessRunner

    context = RunningAgent(config=config, reactor=reactor,
                           process=ProcessRunner(reactor, reactor),
                           guard=DeviceGuard(config.device_allowlist))
    hardware = HardwareManagers.from_entry_points()
    context.hardware = hardware
    await hardware.initialize(context)
    if config.collect_lldp:
        # the generic manager started listening in initialize()
        await context.start_lldp().when_done()
    inventory: dict[str, Any] = await hardware.dispatch("list_hardware_info")
    return inventory


def main(argv: list[str] | None = None) -> None:
    options = Options()
    try:
        options.parseOptions(sys.argv[1:] if argv is None else argv)
        config = options.resolve()
    except (usage.UsageError, ConfigError) as e:
        sys.stderr.write(f"ipa-inventory: {e}\n")
        raise SystemExit(2) from None
    if config.debug:
        from twisted.logger import globalLogBeginner, textFileLogObserver

        globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stderr)],
                                         redirectStandardIO=False)
    else:
        from twisted.logger import (
            FilteringLogObserver,
            LogLevel,
            LogLevelFilterPredicate,
            globalLogBeginner,
            textFileLogObserver,
        )

        globalLogBeginner.beginLoggingTo([FilteringLogObserver(
            textFileLogObserver(sys.stderr),
            [LogLevelFilterPredicate(defaultLogLevel=LogLevel.warn)])],
            redirectStandardIO=False)

    async def run(reactor: Any) -> None:
        inventory = await collect(reactor, config)
        text = json.dumps(encoding.to_jsonable(inventory),
                          indent=2 if options["pretty"] else None,
                          sort_keys=False)
        sys.stdout.write(text + "\n")

    react(lambda reactor: ensureDeferred(run(reactor)))
