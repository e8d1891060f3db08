"""A partition mounted for the agent's own use, and unmounted afterwards.

The device is checked against the allow-list first; the mount point is a
fresh private directory; the filesystem (what a deployed image holds: not
trusted) is mounted without device nodes, set-user-ID or execution.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from typing import Any, AsyncIterator

from twisted.logger import Logger

from ipa_twisted.process import ProcessError

log = Logger()

#: An image's filesystem, mounted to be read or written by the agent.
UNTRUSTED = "nodev,nosuid,noexec"


class MountFailed(Exception):
    """The device could not be mounted (the text says why)."""


@contextlib.asynccontextmanager
async def mounted(agent: Any, device: str, options: str = UNTRUSTED
                  ) -> AsyncIterator[str]:
    """``device`` mounted on a fresh directory; unmounted (lazily if it
    must) and the directory removed afterwards."""
    agent.guard.check(device)
    where = tempfile.mkdtemp(prefix="ipa-mnt-")
    try:
        try:
            await agent.process.run(["mount", "-o", options, device, where],
                                    timeout=120.0)
        except ProcessError as e:
            said = (e.result.err or e.result.out).strip() if e.result else ""
            raise MountFailed(f"mount {device}: {said or e.reason}") from None
        try:
            yield where
        finally:
            try:
                await agent.process.run(["umount", where], timeout=120.0)
            except ProcessError as e:
                log.warn("umount {path} failed ({e}); detaching it lazily",
                         path=where, e=e.reason)
                await agent.process.run(["umount", "-l", where],
                                        timeout=60.0, check=False)
    finally:
        try:
            os.rmdir(where)
        except OSError as e:
            log.warn("could not remove {dir}: {e}", dir=where, e=e)
