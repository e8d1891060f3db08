"""The process runner with real (harmless) processes: sessions, exit
statuses, and that a timeout or a cancellation leaves nothing running.

No root, no disk, no network: only sh, sleep and cat.  Processes are
counted by their process group in /proc (zombies excepted: a killed
orphan waits there for whoever reaps orphans on this machine).
"""

from __future__ import annotations

import os
import time

from twisted.internet import reactor
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from ipa_twisted.process import (
    ProcessFailed,
    ProcessRunner,
    ProcessTimeout,
    ToolNotFound,
)

#: slack for a loaded machine, on top of what the runner promises
SLACK = 2.0


def stat(pid: int | str) -> list[str] | None:
    """Fields of /proc/PID/stat from the state on (state, ppid, pgrp,
    session, ...), or None when the process is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            text = f.read()
    except OSError:
        return None
    return text[text.rindex(")") + 2:].split()


def in_group(pgid: int) -> list[int]:
    """The live (not zombie) processes of process group ``pgid``."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        fields = stat(name)
        if fields and int(fields[2]) == pgid and fields[0] != "Z":
            found.append(int(name))
    return found


class RealProcessTests(TestCase):
    timeout = 60

    def setUp(self) -> None:
        self.runner = ProcessRunner(reactor, reactor, kill_grace=1.0,
                                    cancel_grace=0.5, drain=0.3)
        # whatever a failing test leaves behind goes too
        self.addCleanup(self.runner.stop)

    async def gone(self, pgid: int, within: float) -> None:
        """Wait (up to ``within`` s) for group ``pgid`` to be empty."""
        deadline = time.monotonic() + within
        while in_group(pgid) and time.monotonic() < deadline:
            await deferLater(reactor, 0.05)
        self.assertEqual(in_group(pgid), [])

    async def test_output_and_exit_code(self) -> None:
        result = await self.runner.run(["sh", "-c", "echo out; echo err >&2"])
        self.assertEqual((result.exit_code, result.out, result.err),
                         (0, "out\n", "err\n"))

    async def test_stdin(self) -> None:
        result = await self.runner.run(["cat"], stdin=b"hello")
        self.assertEqual(result.stdout, b"hello")

    async def test_failure_and_signal_pass_through(self) -> None:
        with self.assertRaises(ProcessFailed) as cm:
            await self.runner.run(["sh", "-c", "echo nope >&2; exit 3"])
        self.assertEqual(cm.exception.result.exit_code, 3)  # type: ignore
        self.assertIn("exit code 3: nope", str(cm.exception))
        result = await self.runner.run(["sh", "-c", "exit 4"], check=False)
        self.assertEqual(result.exit_code, 4)
        result = await self.runner.run(["sh", "-c", "kill -9 $$"],
                                       check=False)
        self.assertEqual(result.exit_code, 128 + 9)

    async def test_missing_tool(self) -> None:
        with self.assertRaises(ToolNotFound):
            await self.runner.run(["no-such-tool-ipa-twisted"])

    async def test_the_tool_leads_its_own_session(self) -> None:
        # cat itself reads its stat: same pid as spawned, its own group
        # and session, and the agent is not in them
        result = await self.runner.run(["cat", "/proc/self/stat"])
        text = result.out
        pid = int(text.split()[0])
        _, ppid, pgrp, session = text[text.rindex(")") + 2:].split()[:4]
        self.assertEqual((int(pgrp), int(session)), (pid, pid))
        self.assertEqual(int(ppid), os.getpid())
        self.assertNotEqual(os.getpgrp(), pid)

    async def test_timeout_is_bounded_with_a_grandchild_on_stdout(self) -> None:
        # sh waits for sleep, which holds sh's stdout: before, the wait
        # lasted the 8 s of sleep
        t0 = time.monotonic()
        with self.assertRaises(ProcessTimeout) as cm:
            await self.runner.run(["sh", "-c", "echo $$; sleep 8 & wait"],
                                  timeout=0.5)
        elapsed = time.monotonic() - t0
        self.assertGreaterEqual(elapsed, 0.5)
        self.assertLess(elapsed, 0.5 + 1.0 + SLACK)
        self.assertIn("timed out after 0.5 s", str(cm.exception))
        pgid = int(cm.exception.result.out)  # type: ignore[union-attr]
        await self.gone(pgid, 1.0 + SLACK)

    async def test_timeout_kills_hard_when_term_is_ignored(self) -> None:
        # the tool and its grandchild both ignore TERM (SIG_IGN survives
        # exec), and the grandchild holds stdout
        t0 = time.monotonic()
        with self.assertRaises(ProcessTimeout) as cm:
            await self.runner.run(
                ["sh", "-c", "trap '' TERM; echo $$; sleep 30 & wait"],
                timeout=0.3)
        elapsed = time.monotonic() - t0
        self.assertGreaterEqual(elapsed, 0.3 + 1.0)  # TERM did nothing
        self.assertLess(elapsed, 0.3 + 1.0 + SLACK)
        self.assertEqual(cm.exception.result.exit_code,  # type: ignore
                         128 + 9)
        await self.gone(int(cm.exception.result.out), SLACK)  # type: ignore

    async def test_cancel_leaves_nothing_running(self) -> None:
        marker = os.path.abspath(self.mktemp())
        d = self.runner.run(
            ["sh", "-c", f"sleep 30 & sleep 31 & echo $$ > {marker}; wait"],
            timeout=60)
        deadline = time.monotonic() + 10
        while not os.path.exists(marker) or not open(marker).read():
            self.assertLess(time.monotonic(), deadline, "never started")
            await deferLater(reactor, 0.02)
        pgid = int(open(marker).read())
        self.assertEqual(len(in_group(pgid)), 3)  # sh and two sleeps
        t0 = time.monotonic()
        d.cancel()
        with self.assertRaises(CancelledError):
            await d
        await self.runner.stop()  # fires once the run has ended
        self.assertLess(time.monotonic() - t0, 0.5 + SLACK)
        self.assertEqual(in_group(pgid), [])

    async def test_stop_ends_what_runs(self) -> None:
        marker = os.path.abspath(self.mktemp())
        waits: list[Deferred[object]] = []
        for n in range(3):
            waits.append(self.runner.run(
                ["sh", "-c", f"trap '' TERM; echo $$ > {marker}.{n}; "
                 "sleep 30"], timeout=60))
        deadline = time.monotonic() + 10
        while not all(os.path.exists(f"{marker}.{n}") and
                      open(f"{marker}.{n}").read() for n in range(3)):
            self.assertLess(time.monotonic(), deadline, "never started")
            await deferLater(reactor, 0.02)
        groups = [int(open(f"{marker}.{n}").read()) for n in range(3)]
        t0 = time.monotonic()
        await self.runner.stop()
        self.assertLess(time.monotonic() - t0, 0.5 + SLACK)
        for d in waits:
            with self.assertRaises(CancelledError):
                await d
        for pgid in groups:
            self.assertEqual(in_group(pgid), [])

    async def test_straggler_is_not_waited_for(self) -> None:
        # sh exits at once; the sleep it left holds its stdout
        t0 = time.monotonic()
        result = await self.runner.run(["sh", "-c", "echo $$; sleep 30 &"],
                                       timeout=60)
        self.assertLess(time.monotonic() - t0, 0.3 + SLACK)
        self.assertEqual(result.exit_code, 0)
        await self.gone(int(result.out), 1.0 + SLACK)
