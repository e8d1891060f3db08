"""The process runner's logic on a Clock and a fake reactor: what it
spawns, when it signals the tool's group, when the caller's wait ends.

(Real processes: tests/integration/test_process.py.)
"""

from __future__ import annotations

import errno
import os
import signal
from typing import Any

from twisted.internet import error as ierror
from twisted.internet.defer import CancelledError
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from ipa_twisted import process
from ipa_twisted.process import (
    IProcessRunner,
    ProcessFailed,
    ProcessResult,
    ProcessRunner,
    ProcessTimeout,
    ToolNotFound,
)
from ipa_twisted.testing import FakeProcessRunner

SETSID = "/usr/bin/setsid"
TERM, KILL = signal.SIGTERM, signal.SIGKILL


class FakeProcess:
    """What ``spawnProcess`` returns; the test plays the kernel."""

    def __init__(self, proto: Any, pid: int) -> None:
        self.proto = proto
        self.pid = pid
        self.stdin = b""
        self.closed: set[str] = set()
        self.signals: list[str] = []
        self.reaped = False
        self.ended = False

    def write(self, data: bytes) -> None:
        self.stdin += data

    def closeStdin(self) -> None:
        self.closed.add("stdin")

    def closeStdout(self) -> None:
        self.closed.add("stdout")
        self._maybe_end()

    def closeStderr(self) -> None:
        self.closed.add("stderr")
        self._maybe_end()

    def signalProcess(self, name: str) -> None:
        if self.reaped:
            raise ierror.ProcessExitedAlready()
        self.signals.append(name)

    # --- the kernel's side

    def exit(self, code: int = 0, signal: int | None = None,
             pipes_held: bool = False) -> None:
        """The tool ends (and is reaped); with ``pipes_held`` something it
        started still holds its stdout and stderr."""
        if signal is None and code == 0:
            reason = Failure(ierror.ProcessDone(0))
        else:
            reason = Failure(ierror.ProcessTerminated(
                None if signal else code, signal))
        self.reaped = True
        self.reason = reason
        self.proto.processExited(reason)
        if not pipes_held:
            self.closed.update({"stdout", "stderr"})
        self._maybe_end()

    def _maybe_end(self) -> None:
        if self.reaped and not self.ended and \
                {"stdout", "stderr"} <= self.closed:
            self.ended = True
            self.proto.processEnded(self.reason)


class FakeReactor:
    def __init__(self) -> None:
        self.spawned: list[tuple[str, list[str], dict[str, str]]] = []
        self.processes: list[FakeProcess] = []
        self.refuse: OSError | None = None

    def spawnProcess(self, proto: Any, executable: str, args: list[str],
                     env: dict[str, str] | None = None, **kw: Any
                     ) -> FakeProcess:
        if self.refuse is not None:
            raise self.refuse
        self.spawned.append((executable, list(args), dict(env or {})))
        transport = FakeProcess(proto, 1000 + len(self.processes))
        self.processes.append(transport)
        proto.makeConnection(transport)
        return transport


class Groups:
    """``os.killpg`` for the fake: records signals; signal 0 answers
    whether anything is left in the group."""

    def __init__(self) -> None:
        self.sent: list[tuple[int, int]] = []
        self.alive: set[int] = set()
        #: how many more "anyone there?" a KILLed group answers yes to
        self.dying = 0

    def __call__(self, pgid: int, sig: int) -> None:
        if sig == 0:
            if pgid in self.alive and self.dying and \
                    (pgid, KILL) in self.sent:
                self.dying -= 1
                return
            if pgid not in self.alive or (pgid, KILL) in self.sent:
                raise ProcessLookupError(errno.ESRCH, "No such process")
            return
        self.sent.append((pgid, sig))


class RunnerTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.reactor = FakeReactor()
        self.groups = Groups()
        self.runner = ProcessRunner(self.reactor, self.clock, kill_grace=5.0,
                                    cancel_grace=1.0, drain=1.0,
                                    setsid=SETSID, kill_group=self.groups,
                                    has_live_members=lambda pgid: True)

    def start(self, argv: list[str], **kw: Any) -> tuple[Any, FakeProcess]:
        d = self.runner.run(argv, **kw)
        return d, self.reactor.processes[-1]

    def assertNothingLeft(self) -> None:
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(self.runner._runs, set())

    def test_interface(self) -> None:
        verifyObject(IProcessRunner, self.runner)
        verifyObject(IProcessRunner, FakeProcessRunner())

    def test_runs_in_a_session_of_its_own(self) -> None:
        d, proc = self.start(["sh", "-c", "echo hi"], stdin=b"in")
        executable, args, env = self.reactor.spawned[0]
        self.assertEqual(executable, SETSID)
        self.assertEqual(args[0], "setsid")
        self.assertTrue(args[1].startswith("/") and args[1].endswith("/sh"),
                        args)
        self.assertEqual(args[2:], ["-c", "echo hi"])
        self.assertEqual(env["LC_ALL"], "C.UTF-8")
        self.assertEqual((proc.stdin, proc.closed), (b"in", {"stdin"}))
        proc.proto.outReceived(b"out\n")
        proc.proto.errReceived(b"err\n")
        proc.exit(0)
        result = self.successResultOf(d)
        self.assertEqual(result, ProcessResult(("sh", "-c", "echo hi"), 0,
                                               b"out\n", b"err\n"))
        self.assertEqual(self.groups.sent, [])
        self.assertNothingLeft()

    def test_failure_and_signals(self) -> None:
        d, proc = self.start(["sh", "-c", "exit 3"])
        proc.proto.errReceived(b"first\nnope\n")
        proc.exit(3)
        e = self.failureResultOf(d, ProcessFailed).value
        self.assertIn("exit code 3: nope", str(e))
        self.assertEqual(e.result.exit_code, 3)
        d, proc = self.start(["sh", "-c", "exit 4"], check=False)
        proc.exit(4)
        self.assertEqual(self.successResultOf(d).exit_code, 4)
        d, proc = self.start(["sh"], check=False)
        proc.exit(signal=9)
        self.assertEqual(self.successResultOf(d).exit_code, 137)
        self.assertNothingLeft()

    def test_missing_tool(self) -> None:
        self.failureResultOf(self.runner.run(["no-such-tool-ipa-twisted"]),
                             ToolNotFound)
        self.reactor.refuse = OSError(errno.EACCES, "Permission denied")
        f = self.failureResultOf(self.runner.run(["sh"]), ToolNotFound)
        self.assertIn("Permission denied", str(f.value))
        self.assertNothingLeft()

    def test_output_is_bounded(self) -> None:
        self.patch(process, "MAX_OUTPUT", 10)
        d, proc = self.start(["sh"])
        proc.proto.outReceived(b"0123456789abc")
        proc.exit(0)
        self.assertEqual(self.successResultOf(d).stdout, b"0123456789")

    def test_timeout_terms_the_group(self) -> None:
        d, proc = self.start(["sleep", "30"], timeout=0.3)
        self.groups.alive.add(proc.pid)
        self.clock.advance(0.29)
        self.assertEqual(self.groups.sent, [])
        self.clock.advance(0.01)
        self.assertEqual(self.groups.sent, [(proc.pid, TERM)])
        self.assertNoResult(d)
        self.groups.alive.discard(proc.pid)  # TERM ended them all
        proc.exit(signal=15)
        f = self.failureResultOf(d, ProcessTimeout)
        self.assertIn("timed out after 0.3 s", str(f.value))
        self.assertEqual(f.value.result.exit_code, 143)
        self.assertNothingLeft()  # nothing left to KILL

    def test_timeout_kills_hard_when_term_is_ignored(self) -> None:
        d, proc = self.start(["sh", "-c", "trap '' TERM; sleep 30"],
                             timeout=0.3)
        self.groups.alive.add(proc.pid)
        self.clock.advance(0.3)
        self.clock.advance(4.9)
        self.assertEqual(self.groups.sent, [(proc.pid, TERM)])
        self.assertNoResult(d)
        self.clock.advance(0.1)  # timeout + grace
        self.assertEqual(self.groups.sent, [(proc.pid, TERM),
                                            (proc.pid, KILL)])
        proc.exit(signal=9)
        self.assertEqual(self.failureResultOf(d, ProcessTimeout)
                         .value.result.exit_code, 137)
        self.assertNothingLeft()

    def test_grandchild_holding_stdout_does_not_extend_the_wait(self) -> None:
        # sh -c "sleep 8 & wait": sh dies of TERM; a grandchild that
        # ignores TERM keeps the pipes open
        d, proc = self.start(["sh", "-c", "sleep 8 & wait"], timeout=0.5)
        self.groups.alive.add(proc.pid)
        self.clock.advance(0.5)
        proc.exit(signal=15, pipes_held=True)
        self.assertNoResult(d)
        self.clock.advance(5.0)
        self.assertEqual(self.groups.sent, [(proc.pid, TERM),
                                            (proc.pid, KILL)])
        self.assertEqual(proc.closed, {"stdin", "stdout", "stderr"})
        self.failureResultOf(d, ProcessTimeout)
        self.assertEqual(self.clock.seconds(), 5.5)
        self.assertNothingLeft()

    def test_unkillable_tool_is_given_up_on(self) -> None:
        d, proc = self.start(["cat", "/dev/stuck"], timeout=1.0)
        self.clock.advance(1.0)  # TERM
        self.clock.advance(5.0)  # KILL: still not reaped
        self.assertNoResult(d)
        self.clock.advance(5.0)
        f = self.failureResultOf(d, ProcessTimeout)
        self.assertIn("did not end after SIGKILL", str(f.value))
        self.assertEqual(f.value.result.exit_code, -1)
        self.assertNothingLeft()
        proc.exit(signal=9)  # reaped at last: nothing more happens
        self.flushLoggedErrors()

    def test_cancel_stops_the_group(self) -> None:
        d, proc = self.start(["sleep", "30"], timeout=60)
        self.groups.alive.add(proc.pid)
        d.cancel()
        self.failureResultOf(d, CancelledError)
        self.assertEqual(self.groups.sent, [(proc.pid, TERM)])
        proc.exit(signal=15)  # the tool went; something of its group not
        self.assertEqual(len(self.runner._runs), 1)
        self.clock.advance(1.0)
        self.assertEqual(self.groups.sent, [(proc.pid, TERM),
                                            (proc.pid, KILL)])
        self.assertNothingLeft()

    def test_a_group_of_zombies_is_not_waited_for(self) -> None:
        # after TERM everything died; an orphan of the group waits as a
        # zombie for whoever reaps orphans here: no SIGKILL, no grace
        live = {"yes": True}
        runner = ProcessRunner(self.reactor, self.clock, kill_grace=5.0,
                               cancel_grace=1.0, drain=1.0, setsid=SETSID,
                               kill_group=self.groups,
                               has_live_members=lambda pgid: live["yes"])
        d = runner.run(["sh", "-c", "sleep 30 & sleep 31"], timeout=60)
        proc = self.reactor.processes[-1]
        self.groups.alive.add(proc.pid)
        d.cancel()
        self.failureResultOf(d, CancelledError)
        stopped = runner.stop()
        live["yes"] = False          # only a zombie is left in the group
        proc.exit(signal=15)
        self.clock.advance(0.05)
        self.successResultOf(stopped)
        self.assertEqual(self.groups.sent, [(proc.pid, TERM)] * 2)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_zombies_in_proc(self) -> None:
        proc = self.mktemp()
        for pid, stat in (("10", "10 (a) S 1 10 10"), ("11", "11 (b) Z 1 7 7"),
                          ("12", "12 (x) y) R 1 8 8"), ("self", "")):
            os.makedirs(os.path.join(proc, pid))
            with open(os.path.join(proc, pid, "stat"), "w") as f:
                f.write(stat)
        from ipa_twisted.process import live_members_in_proc

        self.assertTrue(live_members_in_proc(10, proc))
        self.assertFalse(live_members_in_proc(7, proc))     # a zombie
        self.assertTrue(live_members_in_proc(8, proc))      # ")" in comm
        self.assertFalse(live_members_in_proc(99, proc))

    def test_cancel_after_a_timeout_shortens_the_grace(self) -> None:
        d, proc = self.start(["sleep", "30"], timeout=1)
        self.clock.advance(1)
        d.cancel()
        self.failureResultOf(d, CancelledError)
        self.clock.advance(1)
        self.assertEqual(self.groups.sent, [(proc.pid, TERM),
                                            (proc.pid, TERM),
                                            (proc.pid, KILL)])
        proc.exit(signal=9)
        self.assertNothingLeft()

    def test_straggler_after_exit_is_not_waited_for(self) -> None:
        # sh -c "sleep 30 &": sh exits 0 at once, sleep holds stdout
        d, proc = self.start(["sh", "-c", "sleep 30 &"], timeout=60)
        self.groups.alive.add(proc.pid)
        proc.proto.outReceived(b"started\n")
        proc.exit(0, pipes_held=True)
        self.assertNoResult(d)
        self.clock.advance(1.0)  # drain
        result = self.successResultOf(d)
        self.assertEqual((result.exit_code, result.out), (0, "started\n"))
        self.assertEqual(self.groups.sent, [(proc.pid, TERM)])
        self.assertEqual(len(self.runner._runs), 1)  # until it is gone
        self.clock.advance(5.0)
        self.assertEqual(self.groups.sent[-1], (proc.pid, KILL))
        self.assertNothingLeft()

    def test_stop_cancels_and_waits_for_every_run(self) -> None:
        d1, p1 = self.start(["sleep", "30"])
        d2, p2 = self.start(["sleep", "31"])
        self.groups.alive.add(p2.pid)
        done = self.runner.stop()
        self.failureResultOf(d1, CancelledError)
        self.failureResultOf(d2, CancelledError)
        self.assertEqual(sorted(self.groups.sent),
                         [(p1.pid, TERM), (p2.pid, TERM)])
        p1.exit(signal=15)
        p2.exit(signal=15)
        self.assertNoResult(done)  # p2's group is still there
        self.clock.advance(1.0)
        self.successResultOf(done)
        self.assertNothingLeft()
        self.successResultOf(self.runner.stop())

    def test_ended_waits_for_the_group_to_die_after_kill(self) -> None:
        d, proc = self.start(["sh", "-c", "sleep 30 & wait"], timeout=1)
        self.groups.alive.add(proc.pid)
        self.groups.dying = 3  # still there at the next three looks
        self.clock.advance(1)  # TERM
        self.clock.advance(5)  # KILL
        proc.exit(signal=9)
        self.failureResultOf(d, ProcessTimeout)
        self.assertEqual(len(self.runner._runs), 1)
        self.clock.pump([process.REAP_POLL] * 2)
        self.assertEqual(len(self.runner._runs), 1)
        self.clock.advance(process.REAP_POLL)
        self.assertNothingLeft()

    def test_a_group_that_outlives_kill_is_given_up_on(self) -> None:
        d, proc = self.start(["sh", "-c", "sleep 30 & wait"], timeout=1)
        self.groups.alive.add(proc.pid)
        self.groups.dying = 10 ** 6
        self.clock.advance(1)
        self.clock.advance(5)
        proc.exit(signal=9)
        self.failureResultOf(d, ProcessTimeout)
        self.clock.pump([process.REAP_POLL] * 99)
        self.assertEqual(len(self.runner._runs), 1)
        self.clock.pump([process.REAP_POLL] * 2)  # the grace is over
        self.assertNothingLeft()

    def test_without_setsid_only_the_tool_is_signalled(self) -> None:
        runner = ProcessRunner(self.reactor, self.clock, kill_grace=1.0,
                               setsid=None, kill_group=self.groups,
                               has_live_members=lambda pgid: True)
        d = runner.run(["sleep", "30"], timeout=1)
        proc = self.reactor.processes[-1]
        executable, args, _ = self.reactor.spawned[-1]
        self.assertTrue(executable.endswith("/sleep"))
        self.assertEqual(args, ["sleep", "30"])
        self.clock.advance(1)
        self.clock.advance(1)
        self.assertEqual(proc.signals, ["TERM", "KILL"])
        self.assertEqual(self.groups.sent, [])
        proc.exit(signal=9)
        self.failureResultOf(d, ProcessTimeout)

    def test_fake(self) -> None:
        fake = FakeProcessRunner()
        fake.add("lscpu", "Architecture: x86_64\n")
        result = self.successResultOf(fake.run(["lscpu"]))
        self.assertEqual(result.out, "Architecture: x86_64\n")
        self.failureResultOf(fake.run(["dmidecode"]), ToolNotFound)
        self.assertEqual(fake.calls, [("lscpu",), ("dmidecode",)])
        self.successResultOf(fake.stop())
