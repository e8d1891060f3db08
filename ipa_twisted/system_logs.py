"""The system's logs as a gzipped tarball, base64: what the
``log.collect_system_logs`` command answers and what the ``logs``
inspection collector posts.

Every source is collected concurrently with a timeout; one that fails puts
its error in the tarball instead, so the operator sees what was missing.
The journal is collected when there is one, else the files of /var/log
(their last 16 MiB each).  Secrets are scrubbed from everything that goes
in (``ps`` shows the agent's flags, ``dmesg`` and the journal the kernel
command line): :func:`ipa_twisted.redact.scrub`.
"""

from __future__ import annotations

import base64
import io
import os
import time
from typing import TYPE_CHECKING, Iterable

from twisted.internet.defer import DeferredList
from twisted.logger import Logger

from ipa_twisted.process import IProcessRunner, ProcessError, ProcessResult
from ipa_twisted.redact import scrub

if TYPE_CHECKING:
    import tarfile

    from ipa_twisted.context import RunningAgent

log = Logger()

#: Each file from /var/log is cut to its last this many bytes.
MAX_FILE = 16 * 1024 * 1024

COMMANDS: dict[str, list[str]] = {
    "df": ["df", "-a"],
    "dmesg": ["dmesg"],
    "ip_addr": ["ip", "addr"],
    "ip_route": ["ip", "route"],
    "lsblk": ["lsblk", "--all", "-o", "+UUID,PARTUUID,MODEL,SERIAL,WWN"],
    "lsblk-full": ["lsblk", "--all", "--bytes", "--json", "-O"],
    "mount": ["mount"],
    "parted": ["parted", "-l", "-s"],
    "ps": ["ps", "auxf"],
    "journal": ["journalctl", "--full", "--no-pager", "-b", "-n", "10000"],
}


def _add(tar: tarfile.TarFile, name: str, data: bytes, mtime: float) -> None:
    import tarfile

    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = int(mtime)
    tar.addfile(info, io.BytesIO(data))


def _tail(path: str) -> bytes:
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        size = f.tell()
        f.seek(max(0, size - MAX_FILE))
        return f.read()


def build_tarball(outputs: dict[str, bytes], log_dir: str | None,
                  secrets: Iterable[str] = ()) -> str:
    """The tarball (base64) of ``outputs`` and the files of ``log_dir``,
    every secret option's value and every value of ``secrets`` scrubbed."""
    import tarfile  # only when logs are collected: not held by an idle agent

    buf = io.BytesIO()
    now = time.time()
    secrets = list(secrets)
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in sorted(outputs.items()):
            _add(tar, name, scrub(data, secrets), now)
        if log_dir and os.path.isdir(log_dir):
            for root, _, files in os.walk(log_dir):
                for fname in sorted(files):
                    path = os.path.join(root, fname)
                    if not os.path.isfile(path) or os.path.islink(path):
                        continue
                    try:
                        data = _tail(path)
                    except OSError as e:
                        data = f"cannot read: {e}\n".encode()
                    _add(tar, "var/log/" + os.path.relpath(path, log_dir),
                         scrub(data, secrets), now)
    return base64.b64encode(buf.getvalue()).decode("ascii")


async def run_commands(process: IProcessRunner) -> dict[str, bytes]:
    """The output of each of :data:`COMMANDS` (or why it has none)."""
    names = list(COMMANDS)
    runs = [process.run(COMMANDS[n], timeout=60.0, check=False)
            for n in names]
    results = await DeferredList(runs, consumeErrors=True)
    outputs: dict[str, bytes] = {}
    for name, (ok, value) in zip(names, results):
        if ok and isinstance(value, ProcessResult):
            outputs[name] = value.stdout + (
                b"\n--- stderr ---\n" + value.stderr if value.stderr
                else b"")
        else:
            err = getattr(value, "value", value)
            reason = err.reason if isinstance(err, ProcessError) \
                else str(err)
            outputs[name] = f"not collected: {reason}\n".encode()
    return outputs


async def collect(agent: RunningAgent) -> str:
    """The tarball, base64 (the tarball is built in a thread)."""
    outputs = await run_commands(agent.process)
    journal_ok = not outputs.get("journal", b"").startswith(
        b"not collected")
    log_dir = None if journal_ok else "/var/log"
    logs: str = await agent.in_thread(build_tarball, outputs, log_dir,
                                      agent.secret_values())
    log.info("collected system logs ({n} bytes base64)", n=len(logs))
    return logs
