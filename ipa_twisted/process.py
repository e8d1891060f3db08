"""The one way the agent runs external tools: ``runner.run(argv)``.

Every call has a timeout, captures stdout and stderr (bounded), and never
blocks the reactor.  A missing tool, a non-zero exit or a timeout come back
as typed errors so that callers can decide what is fatal.

Each tool runs in a session (and so a process group) of its own, so that
whatever it starts can be stopped with it:

- at the timeout the whole group gets ``SIGTERM``, and ``SIGKILL`` after
  the grace period; then our ends of its pipes are closed, so that a
  process that escaped the group and still holds its output cannot keep
  the caller waiting.  The wait is bounded by ``timeout + 2 x grace``
  (the second grace only for a tool that even ``SIGKILL`` cannot end, a
  process stuck in the kernel);
- cancelling the Deferred that ``run`` returned does the same (with a
  shorter grace) and fails it with ``CancelledError`` at once;
- a tool that exits but leaves a process of its group holding its output
  is not waited for beyond a short drain period: that process is stopped
  like a timed-out tool and the tool's own result is returned;
- ``stop()`` cancels every run in flight and fires once all have ended
  (the agent calls it when it stops).

How the session is made: ``spawnProcess`` has no ``preexec_fn``, and
calling ``setpgid`` from the parent races with the child's ``exec`` (with
``posix_spawn`` the child has usually exec'd already: ``EACCES``).  So the
tool is started through ``setsid(1)`` (util-linux; busybox has one too)
given the tool's absolute path.  A freshly spawned child is never a process
group leader (its pid differs from the group it inherits), so ``setsid``
calls ``setsid()`` and ``exec``s the tool in the same process: no fork, no
extra process, the tool's pid is the group's and the session's id, and its
exit status (or the signal that killed it) is ours unchanged.  A Python
wrapper would do the same at ~100 ms a tool; a subclass of Twisted's
``Process`` would depend on its private spawning code.  Without ``setsid``
on ``PATH`` tools run in the agent's group and only the tool itself is
signalled (logged once).
"""

from __future__ import annotations

import errno
import os
import shutil
import signal
from typing import Any, Callable, Mapping, Sequence

import attrs
from twisted.internet import error as ierror
from twisted.internet.defer import Deferred, DeferredList, fail, succeed
from twisted.internet.interfaces import (
    IDelayedCall,
    IReactorProcess,
    IReactorTime,
)
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import Interface, implementer

from ipa_twisted import tools

log = Logger()

#: Most output kept per stream; the rest is dropped (and said so).
MAX_OUTPUT = 16 * 1024 * 1024
#: After SIGKILL, how often to look whether the tool's group is gone.
REAP_POLL = 0.05


@attrs.frozen
class ProcessResult:
    argv: tuple[str, ...]
    #: the exit status, 128 + N when killed by signal N, -1 when the tool
    #: could not be reaped (it outlived ``SIGKILL``)
    exit_code: int
    stdout: bytes
    stderr: bytes

    @property
    def out(self) -> str:
        return self.stdout.decode("utf-8", "replace")

    @property
    def err(self) -> str:
        return self.stderr.decode("utf-8", "replace")


class ProcessError(Exception):
    """A tool could not be run, failed or timed out."""

    def __init__(self, argv: Sequence[str], reason: str,
                 result: ProcessResult | None = None) -> None:
        self.argv = tuple(argv)
        self.reason = reason
        self.result = result
        super().__init__(f"{' '.join(argv)}: {reason}")


class ToolNotFound(ProcessError):
    pass


class ProcessTimeout(ProcessError):
    pass


class ProcessFailed(ProcessError):
    """Non-zero exit (or killed by a signal)."""


class IProcessRunner(Interface):
    def run(
        argv: Sequence[str],
        timeout: float = 60.0,
        check: bool = True,
        stdin: bytes | None = None,
        env: Mapping[str, str] | None = None,
    ) -> "Deferred[ProcessResult]":
        """Run ``argv``; fire with a :class:`ProcessResult`.

        With ``check`` a non-zero exit fails with :class:`ProcessFailed`.
        A tool that is not on ``PATH`` fails with :class:`ToolNotFound`; one
        that outlives ``timeout`` seconds is killed with whatever it started
        (TERM, then KILL) and fails with :class:`ProcessTimeout`.
        Cancelling the Deferred kills them the same way and fails it with
        ``CancelledError``.
        """

    def stop() -> "Deferred[None]":
        """Cancel every run in flight; fire once they have all ended."""


def default_env() -> dict[str, str]:
    env = {
        # the tools the start-up warning found, wherever PATH leaves sbin
        "PATH": tools.search_path(),
        "LC_ALL": "C.UTF-8",
        "LANG": "C.UTF-8",
    }
    return env


def _exit_code(reason: Failure) -> int | None:
    value = reason.value
    if isinstance(value, ierror.ProcessDone):
        return 0
    if isinstance(value, ierror.ProcessTerminated):
        if value.exitCode is not None:
            return int(value.exitCode)
        return 128 + (value.signal or 0)
    return None


class _Run(ProcessProtocol):
    """One run of one tool: its output, its timers, and two Deferreds:
    ``result`` (what the caller waits for; cancellable) and ``ended``
    (fires once nothing of the run is left to stop)."""

    def __init__(self, runner: "ProcessRunner", argv: list[str],
                 timeout: float, check: bool, stdin: bytes | None) -> None:
        self._runner = runner
        self._clock = runner._clock
        self.argv = argv
        self._timeout = timeout
        self._check = check
        self._stdin = stdin
        self.out = bytearray()
        self.err = bytearray()
        self.truncated = False
        self.grouped = False
        self.pid: int | None = None
        self.exit_code: int | None = None
        self.exited = False
        self._pipes_closed = False
        self._gave_up = False
        self.why: str | None = None  # "timeout", "cancelled"
        self._grace = runner._kill_grace
        self._group_deadline = 0.0
        self._timers: dict[str, IDelayedCall] = {}
        self.result: Deferred[ProcessResult] = Deferred(self._cancel)
        self.ended: Deferred[None] = Deferred()

    # ------------------------------------------------------- the process

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.pid = getattr(self.transport, "pid", None)
        if self._stdin:
            self.transport.write(self._stdin)
        self.transport.closeStdin()

    def started(self) -> None:
        if not self.exited:
            self._later("timeout", self._timeout, self._timed_out)

    def _keep(self, buf: bytearray, data: bytes) -> None:
        room = MAX_OUTPUT - len(buf)
        if room < len(data):
            self.truncated = True
            data = data[: max(room, 0)]
        buf += data

    def outReceived(self, data: bytes) -> None:
        self._keep(self.out, data)

    def errReceived(self, data: bytes) -> None:
        self._keep(self.err, data)

    def processExited(self, reason: Failure) -> None:
        self.exited = True
        self.exit_code = _exit_code(reason)
        self._stop_timer("timeout")
        self._stop_timer("give up")
        if not self._pipes_closed and self.why is None:
            # something the tool started holds its output: give it a
            # moment to finish writing, then stop waiting for it
            self._later("drain", self._runner._drain, self._stragglers)

    def processEnded(self, reason: Failure) -> None:
        self.exited = True
        self._pipes_closed = True
        if self.exit_code is None:
            self.exit_code = _exit_code(reason)
        self._stop_timer("timeout")
        self._stop_timer("drain")
        self._stop_timer("give up")
        self._deliver()
        self._watch_group()
        self._maybe_ended()

    # ------------------------------------------------------------ timers

    def _later(self, name: str, delay: float, f: Callable[[], None]) -> None:
        def fire() -> None:
            del self._timers[name]
            f()
            self._maybe_ended()

        self._stop_timer(name)
        self._timers[name] = self._clock.callLater(delay, fire)

    def _stop_timer(self, name: str) -> None:
        call = self._timers.pop(name, None)
        if call is not None and call.active():
            call.cancel()

    def _timed_out(self) -> None:
        log.warn("{argv} ran for more than {timeout} s; stopping it and "
                 "what it started", argv=" ".join(self.argv),
                 timeout=self._timeout)
        self.why = "timeout"
        self._terminate(self._runner._kill_grace)

    def _cancel(self, _: Deferred[ProcessResult]) -> None:
        # Deferred.cancel then fails ``result`` with CancelledError
        self.why = "cancelled"
        self.terminate(self._runner._cancel_grace)

    def terminate(self, grace: float) -> None:
        """Stop the tool and its group (the caller's wait is over)."""
        log.info("{argv}: cancelled; stopping it and what it started",
                 argv=" ".join(self.argv))
        self._terminate(grace)

    def _stragglers(self) -> None:
        log.warn("{argv} exited {code} but left a process holding its "
                 "output; not waiting for it, stopping it",
                 argv=" ".join(self.argv), code=self.exit_code)
        self._terminate(self._runner._kill_grace)
        self._close_pipes()

    def _terminate(self, grace: float) -> None:
        """SIGTERM the group now, SIGKILL after ``grace`` (or sooner, if
        already planned)."""
        self._stop_timer("timeout")
        self._stop_timer("drain")
        if self.exited and self._pipes_closed and not self._group_alive():
            return
        self._signal("TERM")
        planned = self._timers.get("kill")
        if planned is not None and \
                planned.getTime() <= self._clock.seconds() + grace:
            return
        self._grace = grace
        self._later("kill", grace, self._kill)

    def _watch_group(self) -> None:
        """After SIGTERM, once the tool has ended: no SIGKILL (and no wait
        for it) as soon as its group is gone, which is usually at once."""
        if "kill" not in self._timers:
            return
        if not self._group_alive():
            self._stop_timer("kill")
            return
        self._later("term watch", REAP_POLL, self._watch_group)

    def _kill(self) -> None:
        self._stop_timer("term watch")
        self._signal("KILL")
        self._close_pipes()
        if not self.exited:
            # SIGKILL cannot be refused: give the kernel a moment
            self._later("give up", self._grace, self._give_up)
        # the group's other processes die (and are reaped) a moment
        # later: ``ended`` waits for that, a grace period at most
        self._group_deadline = self._clock.seconds() + self._grace
        self._wait_for_group()

    def _wait_for_group(self) -> None:
        if self._clock.seconds() >= self._group_deadline:
            if self._group_alive():
                log.warn("the process group {pid} of {argv} outlived "
                         "SIGKILL", pid=self.pid, argv=" ".join(self.argv))
            return
        if self._group_alive():
            self._later("group", REAP_POLL, self._wait_for_group)

    def _give_up(self) -> None:
        log.error("{argv} (pid {pid}) did not end after SIGKILL; not "
                  "waiting for it any longer", argv=" ".join(self.argv),
                  pid=self.pid)
        self._gave_up = True
        self._deliver()

    def _close_pipes(self) -> None:
        transport: Any = self.transport
        for close in ("closeStdin", "closeStdout", "closeStderr"):
            try:
                getattr(transport, close)()
            except Exception:
                pass

    def _signal(self, name: str) -> None:
        if self.pid is None:
            return
        if self.grouped:
            try:
                self._runner._kill_group(self.pid, getattr(signal, "SIG" + name))
            except ProcessLookupError:
                pass
            except OSError as e:
                log.warn("cannot signal the process group {pid}: {e}",
                         pid=self.pid, e=e)
            return
        transport: Any = self.transport
        try:
            transport.signalProcess(name)
        except (ierror.ProcessExitedAlready, OSError):
            pass

    def _group_alive(self) -> bool:
        """Is any process (zombies too) left in the tool's group?  (Asked
        once it was signalled; without a group of its own: no.)"""
        if not self.grouped or self.pid is None:
            return False
        try:
            self._runner._kill_group(self.pid, 0)
        except ProcessLookupError:
            return False
        except OSError as e:
            return e.errno != errno.ESRCH
        # zombies do not count: an orphan, killed, waits in its group
        # for whoever reaps orphans here, which may take a while
        return self._runner._has_live_members(self.pid)

    # ----------------------------------------------------------- results

    def _deliver(self) -> None:
        if self.result.called:
            return
        code = self.exit_code if self.exit_code is not None else -1
        result = ProcessResult(tuple(self.argv), code, bytes(self.out),
                               bytes(self.err))
        argv = self.argv
        if self.truncated:
            log.warn("{argv}: output beyond {n} bytes dropped",
                     argv=" ".join(argv), n=MAX_OUTPUT)
        if self.why == "timeout":
            reason = f"timed out after {self._timeout} s"
            if self._gave_up:
                reason += " (and did not end after SIGKILL)"
            self.result.errback(ProcessTimeout(argv, reason, result))
            return
        log.debug("{argv} exited {code}", argv=" ".join(argv), code=code)
        if self._check and code != 0:
            detail = result.err.strip().splitlines()[-1:] or [""]
            self.result.errback(ProcessFailed(
                argv, f"exit code {code}: {detail[0]}", result))
            return
        self.result.callback(result)

    def _maybe_ended(self) -> None:
        if self.ended.called or self._timers:
            return
        if (self.exited and self._pipes_closed) or self._gave_up:
            self.ended.callback(None)


def live_members_in_proc(pgid: int, proc: str = "/proc") -> bool:
    """Is a process of group ``pgid`` alive (not a zombie)?"""
    try:
        names = os.listdir(proc)
    except OSError:
        return True
    for name in names:
        if not name.isdigit():
            continue
        try:
            with open(f"{proc}/{name}/stat", "rb") as f:
                text = f.read()
        except OSError:
            continue
        # pid (comm) state ppid pgrp ...; comm may hold anything
        fields = text[text.rfind(b")") + 2:].split()
        if len(fields) > 2 and int(fields[2]) == pgid and fields[0] != b"Z":
            return True
    return False


@implementer(IProcessRunner)
@attrs.define
class ProcessRunner:
    """Runs tools with ``reactor.spawnProcess``, each in its own session
    (see the module's docstring)."""

    _reactor: IReactorProcess
    _clock: IReactorTime
    #: after SIGTERM (timeout), how long before SIGKILL
    _kill_grace: float = 5.0
    #: after SIGTERM (cancellation), how long before SIGKILL
    _cancel_grace: float = 1.0
    #: how long output is read after the tool exits, when something it
    #: started still holds its pipes
    _drain: float = 1.0
    #: ``setsid(1)``: by default the one on the tools' PATH
    _setsid: str | None = attrs.field(
        default=attrs.Factory(lambda: shutil.which(
            "setsid", path=default_env()["PATH"])))
    #: ``os.killpg`` (tests pass a fake)
    _kill_group: Callable[[int, int], None] = os.killpg
    #: does a process group that exists have a member that is not a
    #: zombie (tests pass a fake)?
    _has_live_members: Callable[[int], bool] = attrs.field(
        default=attrs.Factory(lambda: live_members_in_proc))
    _runs: set[_Run] = attrs.field(factory=set, init=False)
    _warned: bool = attrs.field(default=False, init=False)

    def run(
        self,
        argv: Sequence[str],
        timeout: float = 60.0,
        check: bool = True,
        stdin: bytes | None = None,
        env: Mapping[str, str] | None = None,
    ) -> "Deferred[ProcessResult]":
        argv = list(argv)
        full_env = default_env()
        if env:
            full_env.update(env)
        exe = argv[0]
        if "/" not in exe:
            found = shutil.which(exe, path=full_env["PATH"])
            if found is None:
                return fail(ToolNotFound(argv, "command not found"))
            exe = found
        if self._setsid is not None:
            spawn_exe, spawn_args = self._setsid, ["setsid", exe, *argv[1:]]
        else:
            if not self._warned:
                self._warned = True
                log.warn("setsid not found: tools run in the agent's "
                         "process group, and what they start is not "
                         "stopped with them")
            spawn_exe, spawn_args = exe, argv
        run = _Run(self, argv, timeout, check, stdin)
        run.grouped = self._setsid is not None
        self._runs.add(run)
        run.ended.addBoth(lambda _: self._runs.discard(run))
        try:
            self._reactor.spawnProcess(run, spawn_exe, spawn_args,
                                       env=full_env)
        except OSError as e:
            self._runs.discard(run)
            return fail(ToolNotFound(argv, e.strerror or str(e)))
        run.started()
        return run.result

    def stop(self) -> "Deferred[None]":
        """Cancel every run in flight; fires once they have all ended
        (at most the cancel grace, or twice it for an unkillable tool,
        after the call)."""
        runs = list(self._runs)
        if not runs:
            return succeed(None)
        for run in runs:
            if run.result.called:
                run.terminate(self._cancel_grace)  # what it left behind
            else:
                run.result.cancel()
        return DeferredList([r.ended for r in runs],
                            consumeErrors=True).addCallback(lambda _: None)
