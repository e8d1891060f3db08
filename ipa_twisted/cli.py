"""Console scripts."""

from __future__ import annotations

import sys
from typing import Any


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


def agent_main() -> None:
    """``ipa-twisted-agent [options]``: ``twistd -n ipa [options]``."""
    from twisted.application.app import run as run_twistd
    from twisted.scripts.twistd import runApp

    sys.argv = [sys.argv[0], "--nodaemon", "--pidfile=", "ipa"] + sys.argv[1:]
    run_twistd(runApp, server_options())
