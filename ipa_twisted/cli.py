"""Console scripts."""

from __future__ import annotations

import os
import signal
import sys
from typing import Any, Callable


def server_options() -> Any:
    """twistd's options, knowing the ``ipa`` plugin only.

    twistd looks for every plugin installed (``getPlugins``), and reading
    their cache imports the interfaces they provide: trial's (and with it
    ``unittest``), words', cred's...  An agent runs one plugin, its own:
    the rest is memory it would hold for nothing.
    """
    from twisted.scripts.twistd import ServerOptions

    class AgentServerOptions(ServerOptions):  # type: ignore[misc]
        @staticmethod
        def _getPlugins(interface: Any, package: Any = None) -> list[Any]:
            from twisted.plugins.ipa_twisted_plugin import ipa

            return [ipa]

    return AgentServerOptions


def serve(service: Any, reactor: Any,
          begin_logging: Callable[[], None]) -> None:
    """Run ``service`` as ``twistd --nodaemon`` runs a plugin's service:
    logging begins, the service starts (privileged part first), stops
    before the reactor shuts down, and the reactor runs until then."""
    from twisted.logger import Logger

    begin_logging()
    Logger().info("ipa-twisted agent starting up (Python {py}, reactor "
                  "{reactor})", py=sys.version.split()[0],
                  reactor=type(reactor).__name__)
    service.privilegedStartService()
    service.startService()
    reactor.addSystemEventTrigger("before", "shutdown", service.stopService)
    reactor.run()


def log_to_stdout() -> None:
    """twistd's log for ``--nodaemon`` without ``--logfile``: text lines
    on standard output; ``print`` and standard error go to the log."""
    from twisted.logger import globalLogBeginner, textFileLogObserver

    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stdout)])


def agent_main(argv: list[str] | None = None) -> None:
    """``ipa-twisted-agent [options]``: what ``twistd --nodaemon --pidfile=
    ipa [options]`` does, with the same options and log, without twistd's
    application runner (``twisted.application.app`` and
    ``twisted.scripts`` import ``pdb``, profilers, log files, persistence:
    about half a MiB an agent would hold for nothing)."""
    from twisted.python import usage

    from ipa_twisted.tap import Options, makeService

    options = Options()
    try:
        options.parseOptions(sys.argv[1:] if argv is None else argv)
    except usage.UsageError as e:
        print(options)
        print(f"{os.path.basename(sys.argv[0])}: {e}")
        sys.exit(1)
    service = makeService(options)  # a configuration error exits here (2)
    from twisted.internet import reactor

    serve(service, reactor, log_to_stdout)
    exit_signal = getattr(reactor, "_exitSignal", None)
    if exit_signal is not None:
        # ended by a signal: end the way twistd does, by that signal
        signal.signal(exit_signal, signal.SIG_DFL)
        os.kill(os.getpid(), exit_signal)
