"""Console scripts."""

from __future__ import annotations

import sys


def agent_main() -> None:
    """``ipa-twisted-agent [options]``: ``twistd -n ipa [options]``."""
    from twisted.scripts.twistd import run

    sys.argv = [sys.argv[0], "--nodaemon", "--pidfile=", "ipa"] + sys.argv[1:]
    run()
