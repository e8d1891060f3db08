"""``twistd ipa``: command line options and the service.

Flags come from the option table in :mod:`ipa_twisted.config`; a flag
that is not given leaves the value to the other sources (config files,
the kernel command line, the defaults).
"""

from __future__ import annotations

import sys
from typing import Any

from twisted.application.service import IService

from ipa_twisted.config import OPTIONS, ConfigError, Config
from ipa_twisted.options import SourceOptions


class Options(SourceOptions):
    synopsis = "[options]"
    longdesc = (
        "ipa-twisted: a bare-metal provisioning agent for OpenStack Ironic. "
        "Options are read from the defaults, then --config-file/--config-dir "
        "([DEFAULT] section), then the kernel command line (ipa-* "
        "parameters), then these flags; later wins."
    )
    optParameters: list[list[Any]] = [
        [o.flag, None, None, o.help + f" [default: {o.default!r}]"]
        for o in OPTIONS if not o.is_bool
    ]
    optFlags: list[list[Any]] = [
        flag
        for o in OPTIONS if o.is_bool
        for flag in (
            [o.flag, None, o.help + (" [default]" if o.default else "")],
            ["no-" + o.flag, None, f"Disable --{o.flag}."
             + (" [default]" if not o.default else "")],
        )
    ]

    def __init__(self) -> None:
        super().__init__()
        self.config: Config | None = None

    def cli_values(self) -> dict[str, str | bool | None]:
        values: dict[str, str | bool | None] = {}
        for o in OPTIONS:
            if o.is_bool:
                if self.get("no-" + o.flag):
                    values[o.name] = False
                elif self.get(o.flag):
                    values[o.name] = True
            else:
                values[o.name] = self.get(o.flag)
        return values


def makeService(options: Options) -> IService:
    from twisted.internet import reactor

    try:
        config = options.resolve()
    except ConfigError as e:
        sys.stderr.write(f"ipa-twisted: configuration error: {e}\n")
        raise SystemExit(2) from None

    from ipa_twisted.agent import AgentService
    from ipa_twisted.logs import apply_log_level

    apply_log_level(config.debug)
    return AgentService(config, reactor)
