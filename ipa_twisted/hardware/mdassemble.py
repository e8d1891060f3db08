"""Assembling the software RAID arrays a previous boot made.

Every agent does it as it starts (as IPA), so it lives apart from
:mod:`ipa_twisted.hardware.raid` (building, deleting, validating RAID
configurations, and the root device hints it needs): an idle agent does
not hold those.  The arrays are listed with ``raid.py`` only when the
kernel has one.
"""

from __future__ import annotations

import os
import tempfile
from typing import Any, Awaitable, Callable, Iterable

from twisted.logger import Logger

from ipa_twisted.hardware import disks
from ipa_twisted.process import ToolNotFound

log = Logger()


def _any_md(sys_block: str) -> bool:
    try:
        names = os.listdir(sys_block)
    except OSError:
        return False
    return any(disks.is_md(name, sys_block) for name in names)


async def assemble(agent: Any, devices: Iterable[str] = (),
                   sys_block: str | None = None,
                   run: Callable[..., Awaitable[Any]] | None = None
                   ) -> list[str]:
    """Assemble the arrays the disks hold: with an allow-list, from
    ``devices`` (the allowed disks and their partitions) only.  Never
    fails: mdadm missing or nothing to assemble is logged.  The names of
    the arrays now up (those the guard allows)."""
    argv = ["mdadm", "--assemble", "--scan"]
    config = None
    if agent.guard.restricted:
        names = sorted(set(devices))
        if not names:
            return []
        fd, config = tempfile.mkstemp(prefix="ipa-mdadm-", suffix=".conf")
        with os.fdopen(fd, "w") as f:
            # only these devices are read; every array found is ours
            f.write("DEVICE " + " ".join(names) + "\n"
                    "HOMEHOST <ignore>\n")
        argv.append(f"--config={config}")
    try:
        if run is not None:
            result = await run(argv, check=False, timeout=120.0)
        else:
            result = await agent.process.run(argv, timeout=120.0,
                                             check=False)
    except ToolNotFound:
        log.info("no mdadm: software RAID arrays are not assembled")
        return []
    finally:
        if config is not None:
            os.unlink(config)
    said = (result.err + result.out).strip()
    base = sys_block or disks.SYS_BLOCK
    up: list[str] = []
    if _any_md(base):
        from ipa_twisted.hardware import raid

        up = [a.name for a in raid.arrays(base)
              if agent.guard.allows(a.path)]
    if up:
        log.info("software RAID arrays up: {arrays} ({said})",
                 arrays=", ".join(up), said=said.replace("\n", "; "))
    return up
