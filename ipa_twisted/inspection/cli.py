"""``ironic-collect-introspection-data``: post inspection data from a running
(e.g. ACTIVE) node, once or as a daemon.

    ironic-collect-introspection-data --inspection-callback-url URL|mdns
        [--inspection-collectors default,logs] [--introspection-daemon
        [--introspection-daemon-post-interval 300]] [--config-file F]

IPA's underscore spellings (``--inspection_callback_url``...) are accepted
too.  Once: exit status 0 when the data was accepted, 1 otherwise.  As a
daemon: posts on a fixed, jittered grid until SIGTERM, then exits 0.
"""

from __future__ import annotations

import sys
from typing import Any

from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.task import react
from twisted.python import usage

from ipa_twisted.config import Config, ConfigError
from ipa_twisted.options import SourceOptions
from ipa_twisted.inspection import inspector
from ipa_twisted.inspection.daemon import IntrospectionDaemon

#: options settable here (flags are their names with dashes; IPA's
#: underscore spellings are accepted too)
PARAMETERS = ["inspection_callback_url", "inspection_collectors",
              "introspection_daemon_post_interval", "device_allowlist",
              "http_request_timeout", "global_request_id"]


def dashed(argv: list[str]) -> list[str]:
    """``--inspection_callback_url=x`` -> ``--inspection-callback-url=x``."""
    out = []
    for arg in argv:
        if arg.startswith("--"):
            name, sep, value = arg[2:].partition("=")
            arg = "--" + name.replace("_", "-") + sep + value
        out.append(arg)
    return out


class Options(SourceOptions):
    synopsis = "[options]"
    optFlags = [
        ["introspection-daemon", None, "Keep posting, every interval."],
        ["insecure", None, "Do not verify TLS certificates."],
        ["use-mdns", None, "Find the inspector by mDNS when no URL is given."],
        ["debug", None, "Log debug messages."],
    ]
    optParameters = [[name.replace("_", "-"), None, None, f"Option {name}."]
                     for name in PARAMETERS]

    def parseOptions(self, options: Any = None) -> None:
        super().parseOptions(dashed(list(options if options is not None
                                         else sys.argv[1:])))

    def cli_values(self) -> dict[str, Any]:
        cli: dict[str, Any] = {}
        for name in PARAMETERS:
            value = self[name.replace("_", "-")]
            if value is not None:
                cli[name] = value
        if self["introspection-daemon"]:
            cli["introspection_daemon"] = True
        for flag in ("insecure", "use-mdns", "debug"):
            if self[flag]:
                cli[flag.replace("-", "_")] = True
        return cli


def build_context(reactor: Any, config: Config) -> Any:
    from ipa_twisted.context import RunningAgent
    from ipa_twisted.hardware.disks import DeviceGuard
    from ipa_twisted.httpclient import outbound
    from ipa_twisted.process import ProcessRunner

    out = outbound(reactor, config, persistent=False)
    return RunningAgent(config=config, reactor=reactor,
                        process=ProcessRunner(reactor, reactor),
                        guard=DeviceGuard(config.device_allowlist),
                        http=out.client, tls_policy=out.policy)


async def run(reactor: Any, config: Config) -> int:
    from twisted.logger import Logger

    from ipa_twisted.hardware.manager import HardwareManagers

    log = Logger(namespace="ipa_twisted.collect")
    if not config.inspection_callback_url:
        if config.use_mdns:
            config = config.replace(inspection_callback_url=["mdns"])
        else:
            log.error("no --inspection-callback-url (and no --use-mdns): "
                      "nothing to post to")
            return 2
    context = build_context(reactor, config)
    context.hardware = HardwareManagers.from_entry_points()
    await context.hardware.initialize(context)

    async def post_once() -> bool:
        result = await inspector.inspect(context, None)
        return bool(result is not None and result.status is not None
                    and result.status < 400)

    if not config.introspection_daemon:
        return 0 if await post_once() else 1
    daemon = IntrospectionDaemon(reactor, post_once,
                                 config.introspection_daemon_post_interval)
    done = daemon.start()
    # SIGTERM: stop cleanly (the reactor waits for the daemon to end)
    reactor.addSystemEventTrigger("before", "shutdown", daemon.stop)
    await done
    return 0


def main(argv: list[str] | None = None) -> None:
    options = Options()
    try:
        options.parseOptions(sys.argv[1:] if argv is None else argv)
        config = options.resolve()
    except (usage.UsageError, ConfigError) as e:
        sys.stderr.write(f"ironic-collect-introspection-data: {e}\n")
        raise SystemExit(2) from None
    from twisted.logger import (
        FilteringLogObserver,
        LogLevel,
        LogLevelFilterPredicate,
        globalLogBeginner,
        textFileLogObserver,
    )

    level = LogLevel.debug if config.debug else LogLevel.info
    globalLogBeginner.beginLoggingTo([FilteringLogObserver(
        textFileLogObserver(sys.stderr),
        [LogLevelFilterPredicate(defaultLogLevel=level)])],
        redirectStandardIO=False)

    def start(reactor: Any) -> Deferred[None]:
        def finish(code: int) -> None:
            if code:
                raise SystemExit(code)

        return ensureDeferred(run(reactor, config)).addCallback(finish)

    react(start)
