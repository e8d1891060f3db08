"""The one way the agent runs external tools: ``runner.run(argv)``.

Every call has a timeout, captures stdout and stderr (bounded), and never
blocks the reactor.  A missing tool, a non-zero exit or a timeout come back
as typed errors so that callers can decide what is fatal.
"""

from __future__ import annotations

import os
import shutil
from typing import Mapping, Sequence

import attrs
from twisted.internet import error as ierror
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorProcess, IReactorTime
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import Interface, implementer

log = Logger()

#: Most output kept per stream; the rest is dropped (and said so).
MAX_OUTPUT = 16 * 1024 * 1024


@attrs.frozen
class ProcessResult:
    argv: tuple[str, ...]
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
        that outlives ``timeout`` seconds is killed (TERM, then KILL) and
        fails with :class:`ProcessTimeout`.
        """


class _Collector(ProcessProtocol):
    def __init__(self, stdin: bytes | None) -> None:
        self.done: Deferred[int] = Deferred()
        self.out = bytearray()
        self.err = bytearray()
        self.truncated = False
        self._stdin = stdin

    def connectionMade(self) -> None:
        assert self.transport is not None
        if self._stdin:
            self.transport.write(self._stdin)
        self.transport.closeStdin()

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

    def processEnded(self, reason: Failure) -> None:
        value = reason.value
        if isinstance(value, ierror.ProcessDone):
            self.done.callback(0)
        elif isinstance(value, ierror.ProcessTerminated):
            code = value.exitCode
            if code is None:
                code = 128 + (value.signal or 0)
            self.done.callback(code)
        else:
            self.done.errback(reason)


def default_env() -> dict[str, str]:
    env = {
        "PATH": os.environ.get(
            "PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
        ),
        "LC_ALL": "C.UTF-8",
        "LANG": "C.UTF-8",
    }
    return env


@implementer(IProcessRunner)
@attrs.define
class ProcessRunner:
    """Runs tools with ``reactor.spawnProcess``."""

    _reactor: IReactorProcess
    _clock: IReactorTime
    _kill_grace: float = 5.0

    def run(
        self,
        argv: Sequence[str],
        timeout: float = 60.0,
        check: bool = True,
        stdin: bytes | None = None,
        env: Mapping[str, str] | None = None,
    ) -> "Deferred[ProcessResult]":
        return Deferred.fromCoroutine(
            self._run(list(argv), timeout, check, stdin, env)
        )

    async def _run(
        self,
        argv: list[str],
        timeout: float,
        check: bool,
        stdin: bytes | None,
        env: Mapping[str, str] | None,
    ) -> ProcessResult:
        full_env = default_env()
        if env:
            full_env.update(env)
        exe = argv[0]
        if "/" not in exe:
            found = shutil.which(exe, path=full_env["PATH"])
            if found is None:
                raise ToolNotFound(argv, "command not found")
            exe = found
        proto = _Collector(stdin)
        try:
            transport = self._reactor.spawnProcess(
                proto, exe, argv, env=full_env
            )
        except OSError as e:
            raise ToolNotFound(argv, e.strerror or str(e)) from None
        timed_out = []

        def on_timeout() -> None:
            timed_out.append(True)
            log.warn("{argv} ran for more than {timeout} s; killing it",
                     argv=" ".join(argv), timeout=timeout)
            try:
                transport.signalProcess("TERM")
            except ierror.ProcessExitedAlready:
                return
            kill_later.append(
                self._clock.callLater(self._kill_grace, kill_hard)
            )

        def kill_hard() -> None:
            try:
                transport.signalProcess("KILL")
            except ierror.ProcessExitedAlready:
                pass

        kill_later: list = []
        timer = self._clock.callLater(timeout, on_timeout)
        try:
            code = await proto.done
        finally:
            if timer.active():
                timer.cancel()
            for call in kill_later:
                if call.active():
                    call.cancel()
        result = ProcessResult(tuple(argv), code, bytes(proto.out),
                               bytes(proto.err))
        log.debug("{argv} exited {code}", argv=" ".join(argv), code=code)
        if timed_out:
            raise ProcessTimeout(argv, f"timed out after {timeout} s", result)
        if check and code != 0:
            detail = result.err.strip().splitlines()[-1:] or [""]
            raise ProcessFailed(
                argv, f"exit code {code}: {detail[0]}", result
            )
        return result
