"""Burn-in steps: stress the CPUs, memory, disks, network and GPUs.

The same steps, node keys, defaults and tool invocations as
ironic-python-agent 13.0.0 (its ``burnin.py``), run our way: every tool
through the agent's process runner (its own process group, a deadline
derived from the run's own duration, killed with the step when the step is
cancelled), progress in the command's status and the heartbeat, the tool's
summary in the logs, and a FAILED step that says which tool failed and
what it printed last.

What each step reads from the node's ``driver_info`` (IPA's names):

- ``burnin_cpu``: ``agent_burnin_cpu_cpu`` (workers, 0 = one per CPU),
  ``agent_burnin_cpu_timeout`` (86400 s), ``agent_burnin_cpu_outputfile``;
  ``stress-ng --cpu N --timeout T --metrics-brief [--log-file F]``.
- ``burnin_memory``: ``agent_burnin_vm_vm`` (workers),
  ``agent_burnin_vm_vm-bytes`` (98%), ``agent_burnin_vm_timeout``,
  ``agent_burnin_vm_outputfile``; ``stress-ng --vm N ... --vm-bytes B``.
- ``burnin_disk``: ``agent_burnin_fio_disk_loops`` (4),
  ``agent_burnin_fio_disk_runtime`` (0: the loops decide),
  ``agent_burnin_fio_disk_outputfile`` (fio's JSON report),
  ``agent_burnin_fio_disk_smart_test`` (a SMART long self-test after);
  one fio job per disk (a verified 4 KiB read/write run).  Beyond IPA:
  only the disks the agent may touch (the device allow-list) and not
  those of ``properties.skip_block_devices``; each path is checked by the
  device guard right before fio starts.
- ``burnin_network``: ``agent_burnin_fio_network_runtime`` (21600 s),
  ``agent_burnin_fio_network_outputfile``, and either a static
  ``agent_burnin_fio_network_config`` (``{"role": "writer"|"reader",
  "partner": host}``) or dynamic pairing through a tooz coordination
  backend: ``agent_burnin_fio_network_pairing_backend_url``,
  ``..._pairing_group_name`` (``ironic.network-burnin``),
  ``..._pairing_timeout`` (900 s).  fio's net engine on port 9000, once
  in each direction (the roles swap).  Beyond IPA: a reader that finds
  only some of the writer's 16 ports listening runs again for the rest
  (IPA's reader gave up, and its writer waited on for the rest).
- ``burnin_gpu``: ``agent_burnin_gpu_install_dir`` (/opt/gpu-burn),
  ``agent_burnin_gpu_timeout`` (86400), ``agent_burnin_gpu_memory``
  (95%), ``agent_burnin_gpu_count`` (0: not checked); ``gpu_burn -l``
  then ``gpu_burn -m M T``, run in the install directory.

Values are checked before any tool runs (a number where a number is
meant; nothing that a tool would read as an option of its own).
"""

from __future__ import annotations

import json
import os
import re
import socket
import threading
import time
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

from twisted.internet.defer import CancelledError
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater
from twisted.logger import Logger

from ipa_twisted import errors
from ipa_twisted.hardware.disks import BlockDevice
from ipa_twisted.process import ProcessError, ProcessFailed, ProcessResult

if TYPE_CHECKING:
    from ipa_twisted.context import RunningAgent

log = Logger()

DAY = 86400
#: beyond the run's own duration, how long a tool may take before it is
#: killed (start-up, reporting; stress-ng waits for its workers)
GRACE = 600.0
#: fio disk runs without a runtime: the slowest rate allowed over
#: (loops x (write + verify read)) of the biggest disk
SLOWEST = 5 * 1024 * 1024
NETWORK_PORT = "9000"
NETWORK_ROLES = ("writer", "reader")
#: fio jobs per direction: each its own TCP stream, on the ports from
#: NETWORK_PORT up (the writer listens on each, once)
NETWORK_STREAMS = 16
#: the reader's wait between connection attempts when none of its
#: streams found the writer listening (as IPA)
READER_RETRY = 30.0
#: before each direction, the reader gives the writer this long to start
#: listening on all its ports (both sides start at about the same time)
READER_SETTLE = 2.0
#: the reader's wait before connecting the streams that were refused
#: while others connected (the writer is up, some of its jobs were not)
READER_REST_RETRY = 1.0
#: connect()'s errors when nothing listens (yet, or any more)
_NOT_LISTENING = frozenset({110, 111})      # ETIMEDOUT, ECONNREFUSED
#: "fio: pid=N, err=111/file:engines/net.c:800, func=connect, ..."
_JOB_FAILED = re.compile(r"^fio: pid=\d+, err=(\d+)/[^,]*, func=(\w+)",
                         re.MULTILINE)
SMART_POLL = 30.0
#: a SMART long self-test of a big disk takes hours; past this, it failed
SMART_DEADLINE = 2 * DAY
#: how many lines of a failed tool's output the error carries
ERROR_LINES = 5

_DURATION = re.compile(r"^(\d+)([smhdy]?)$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": DAY, "y": 365 * DAY}
_VM_BYTES = re.compile(r"^\d+(\.\d+)?[%bBkKmMgGtT]?$")
_GPU_MEMORY = re.compile(r"^\d+%?$")
_HOST = re.compile(r"^[A-Za-z0-9_.:\[\]-]+$")


class BurninError(errors.CommandExecutionError):
    """A burn-in tool failed (on the wire a CommandExecutionError, as
    IPA's); ``exit_code`` is the tool's (None: not run, or timed out)."""

    def __init__(self, details: str, exit_code: int | None = None,
                 result: ProcessResult | None = None) -> None:
        super().__init__(details)
        self.exit_code = exit_code
        #: what the tool printed, when it ran to its end
        self.result = result

    @property
    def type(self) -> str:
        return "CommandExecutionError"


# ------------------------------------------------------------ values


def _bad(key: str, value: Any, what: str) -> errors.CleaningError:
    return errors.CleaningError(
        f"driver_info {key}={value!r} is not {what}")


def duration(info: Mapping[str, Any], key: str, default: int) -> tuple[
        str, int]:
    """``(as given to the tool, seconds)`` of a stress-ng/fio duration
    (seconds, or a number with an s/m/h/d/y suffix)."""
    value = info.get(key, default)
    match = _DURATION.match(str(value).strip()) if not isinstance(
        value, bool) else None
    if match is None:
        raise _bad(key, value, "a duration (seconds, or 10m, 2h, 1d)")
    return match.group(0), int(match.group(1)) * _UNITS[match.group(2)]


def count(info: Mapping[str, Any], key: str, default: int,
          least: int = 0) -> int:
    value = info.get(key, default)
    try:
        number = int(str(value).strip()) if not isinstance(
            value, (bool, float)) else None
    except ValueError:
        number = None
    if number is None or number < least:
        raise _bad(key, value, f"a whole number >= {least}")
    return number


def _text(info: Mapping[str, Any], key: str, default: str | None,
          pattern: re.Pattern[str] | None, what: str) -> str | None:
    value = info.get(key, default)
    if value is None:
        return None
    text = str(value).strip() if isinstance(value, (str, int)) else None
    if not text or text.startswith("-") or "\x00" in text or (
            pattern is not None and not pattern.match(text)):
        raise _bad(key, value, what)
    return text


#: where a burn-in's output file may never go: a tool would write its
#: report over a disk (or into the kernel's files), past the allow-list
NOT_OUTPUT = ("/dev", "/proc", "/sys")


def outputfile(info: Mapping[str, Any], key: str) -> str | None:
    """A file the tool writes its report to: a regular file (or none yet)
    outside /dev, /proc and /sys, wherever links lead."""
    path = _text(info, key, None, None, "a file name")
    if path is None:
        return None
    real = os.path.realpath(path)
    if any(real == top or real.startswith(top + "/") for top in NOT_OUTPUT
    ) or (os.path.exists(real) and not os.path.isfile(real)):
        raise _bad(key, path, "a regular file outside /dev, /proc and /sys")
    return path


def driver_info(node: Any) -> Mapping[str, Any]:
    info = (node or {}).get("driver_info") or {}
    if not isinstance(info, Mapping):
        raise errors.CleaningError("the node's driver_info is not an object")
    return info


# ---------------------------------------------------------- progress


class BurninProgress:
    """What a running burn-in shows (the command's status, the heartbeat's
    agent_status_message), and at its end the outcome."""

    def __init__(self, clock: IReactorTime, step: str,
                 planned: float | None) -> None:
        self._clock = clock
        self.step = step
        self.planned = planned
        self.started = clock.seconds()
        self.phase = "starting"
        self.agent_status = "start"
        self.outcome: str | None = None

    def elapsed(self) -> float:
        return self._clock.seconds() - self.started

    def snapshot(self) -> dict[str, Any]:
        return {"step": self.step, "phase": self.phase,
                "elapsed_s": round(self.elapsed(), 1),
                "planned_s": self.planned, "outcome": self.outcome}

    def text(self) -> str:
        if self.outcome is not None:
            return f"{self.step} {self.outcome}"
        planned = f" of ~{int(self.planned)} s" if self.planned else ""
        return (f"{self.step}: {self.phase}, {int(self.elapsed())} s"
                f"{planned}")

    def end(self, outcome: str) -> None:
        self.agent_status = "end"
        self.outcome = outcome


def _tail(result: ProcessResult | None) -> str:
    """A failed tool's last words: its error output, and the lines of its
    report that speak of an error (fio), else the report's end."""
    if result is None:
        return ""
    said = [line.strip() for line in result.err.splitlines()
            if line.strip()]
    said += [line.strip() for line in result.out.splitlines()
             if "error" in line.lower()]
    if not said:
        said = [line.strip() for line in result.out.splitlines()
                if line.strip()]
    unique = list(dict.fromkeys(said))
    return " | ".join(unique[-ERROR_LINES:])


def _log_output(step: str, text: str) -> None:
    for line in text.splitlines():
        if line.strip():
            log.info("{step}: {line}", step=step, line=line.rstrip())


# ------------------------------------------------------------- runner


class Burnin:
    """Runs one burn-in step for ``agent`` (the RunningAgent)."""

    def __init__(self, agent: RunningAgent, step: str,
                 planned: float | None) -> None:
        self.agent = agent
        self.step = step
        self.progress = BurninProgress(agent.reactor, step, planned)

    async def __call__(self, work: Callable[["Burnin"], Any]) -> Any:
        self.agent.report_progress(self.progress)
        try:
            result = await work(self)
        except CancelledError:
            self.progress.end("cancelled")
            self.agent.report_progress(self.progress)
            raise
        except Exception as e:
            self.progress.end(f"FAILED: {e}")
            self.agent.report_progress(self.progress)
            log.error("{step} failed: {e}", step=self.step, e=e)
            raise
        self.progress.end(f"passed in {int(self.progress.elapsed())} s")
        self.agent.report_progress(self.progress)
        log.info("{step} passed", step=self.step)
        return result

    def phase(self, text: str) -> None:
        self.progress.phase = text
        self.agent.report_progress(self.progress)

    async def run(self, what: str, argv: Sequence[str], timeout: float,
                  check: bool = True) -> ProcessResult:
        """Run a tool; a failure (not found, non-zero, timed out) is a
        :class:`BurninError` naming ``what`` and the tool's last words."""
        self.phase(f"{what} running")
        log.info("{step}: {argv} (deadline {t} s)", step=self.step,
                 argv=" ".join(argv), t=int(timeout))
        try:
            result = await self.agent.process.run(list(argv),
                                                  timeout=timeout,
                                                  check=check)
        except ProcessError as e:
            tail = _tail(e.result)
            if e.result is not None:
                _log_output(self.step, e.result.err + e.result.out)
            code = e.result.exit_code if isinstance(e, ProcessFailed) \
                and e.result is not None else None
            reason = f"exit code {code}" if code is not None else e.reason
            raise BurninError(f"{what} failed: {reason}"
                              + (f": {tail}" if tail else ""),
                              exit_code=code, result=e.result) from None
        _log_output(self.step, result.err + result.out)
        return result

    async def sleep(self, seconds: float) -> None:
        await deferLater(self.agent.reactor, seconds)


# ------------------------------------------------------- stress-ng


def stress_ng_argv(info: Mapping[str, Any], stressor: str) -> tuple[
        list[str], int]:
    """stress-ng's argv for the ``cpu`` or ``vm`` stressor, and the run's
    length in seconds."""
    workers = count(info, f"agent_burnin_{stressor}_{stressor}", 0)
    given, seconds = duration(info, f"agent_burnin_{stressor}_timeout", DAY)
    argv = ["stress-ng", f"--{stressor}", str(workers), "--timeout", given]
    if stressor == "vm":
        argv += ["--vm-bytes", _text(
            info, "agent_burnin_vm_vm-bytes", "98%", _VM_BYTES,
            "an amount of memory (98%, 512M, 4G)") or "98%"]
    argv.append("--metrics-brief")
    logfile = outputfile(info, f"agent_burnin_{stressor}_outputfile")
    if logfile:
        argv += ["--log-file", logfile]
    return argv, seconds


_METRIC = re.compile(r"^stress-ng: metrc: \[\d+\]\s+(\S+)\s+(\d+)\s+"
                     r"([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)")


def stress_ng_metrics(stderr: str) -> dict[str, dict[str, float]]:
    """``--metrics-brief``'s table: per stressor its bogo ops, run time
    and bogo ops per second (stress-ng reports on stderr)."""
    found = {}
    for line in stderr.splitlines():
        match = _METRIC.match(line)
        if match:
            found[match.group(1)] = {
                "bogo_ops": int(match.group(2)),
                "real_time_s": float(match.group(3)),
                "bogo_ops_per_s": float(match.group(6))}
    return found


async def stress_ng(agent: RunningAgent, node: Any, step: str,
                    stressor: str) -> dict[str, Any]:
    argv, seconds = stress_ng_argv(driver_info(node), stressor)

    async def work(b: Burnin) -> dict[str, Any]:
        result = await b.run(f"stress-ng ({stressor})", argv,
                             timeout=seconds + GRACE)
        return {"tool": "stress-ng", "metrics":
                stress_ng_metrics(result.err)}

    return await Burnin(agent, step, seconds)(work)  # type: ignore[no-any-return]


# ------------------------------------------------------------ fio disk


def fio_disk_argv(info: Mapping[str, Any], devices: Sequence[str]
                  ) -> tuple[list[str], int | None]:
    """fio's argv (one job per device) and the runtime (None: the loops
    decide)."""
    loops = count(info, "agent_burnin_fio_disk_loops", 4, least=1)
    given, seconds = duration(info, "agent_burnin_fio_disk_runtime", 0)
    argv = ["fio", "--rw", "readwrite", "--bs", "4k", "--direct", "1",
            "--ioengine", "libaio", "--iodepth", "32", "--verify", "crc32c",
            "--verify_dump", "1", "--continue_on_error", "verify",
            "--loops", str(loops), "--runtime", given, "--time_based"]
    report = outputfile(info, "agent_burnin_fio_disk_outputfile")
    if report:
        argv += ["--output-format", "json", "--output", report]
    for device in devices:
        # the job's name is its device (as IPA); the file is said too
        argv += ["--name", device, "--filename", device]
    return argv, seconds or None


_JOB = re.compile(r"^(\S.*?): \(groupid=\d+, jobs=\d+\): err=\s*(\d+)")
_IO = re.compile(r"^\s+(read|write): (IOPS=[^,]+, BW=\S+)")
_ERRORS = re.compile(r"^\s+errors\s*: total=(\d+)")


def fio_jobs(stdout: str) -> dict[str, dict[str, Any]]:
    """Per fio job (fio's normal output): its error code, the I/O errors
    it counted (``continue_on_error``), and its read/write rates."""
    jobs: dict[str, dict[str, Any]] = {}
    current: dict[str, Any] | None = None
    for line in stdout.splitlines():
        match = _JOB.match(line)
        if match:
            current = jobs.setdefault(match.group(1), {
                "err": int(match.group(2)), "io_errors": 0})
            continue
        if current is None:
            continue
        io = _IO.match(line)
        if io:
            current[io.group(1)] = io.group(2)
        errs = _ERRORS.match(line)
        if errs:
            current["io_errors"] = int(errs.group(1))
    return jobs


def fio_json_jobs(report: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The same from fio's JSON report (``--output-format json``)."""
    jobs = {}
    for job in report.get("jobs") or []:
        entry: dict[str, Any] = {"err": int(job.get("error", 0)),
                                 "io_errors": int(job.get("total_err", 0))}
        for way in ("read", "write"):
            stats = job.get(way) or {}
            if stats.get("io_bytes"):
                entry[way] = (f"IOPS={stats.get('iops', 0):.0f}, "
                              f"BW={stats.get('bw_bytes', 0)}B/s")
        jobs[str(job.get("jobname"))] = entry
    return jobs


def _read_json(path: str, limit: int = 16 * 1024 * 1024) -> Any:
    with open(path, "rb") as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise ValueError(f"{path} is bigger than {limit} bytes")
    # fio may print notes before the JSON document
    start = data.find(b"{")
    return json.loads(data[start:] if start >= 0 else data)


async def fio_disk(agent: RunningAgent, node: Any,
                   disks: Sequence[BlockDevice]) -> dict[str, Any]:
    info = driver_info(node)
    names = [d.name for d in disks]
    argv, runtime = fio_disk_argv(info, names)
    smart = bool(info.get("agent_burnin_fio_disk_smart_test", False))
    if runtime:
        limit = runtime + GRACE
    else:
        loops = count(info, "agent_burnin_fio_disk_loops", 4, least=1)
        biggest = max((d.size for d in disks), default=0)
        limit = max(3600.0, 3 * loops * biggest / SLOWEST) + GRACE
    report = outputfile(info, "agent_burnin_fio_disk_outputfile")

    async def work(b: Burnin) -> dict[str, Any]:
        if not names:
            log.warn("burnin_disk: no disks to burn in")
            return {}
        for name in names:
            agent.guard.check(name)     # right before the tool
        result = await b.run("fio (disk)", argv, timeout=limit)
        if report:
            jobs = fio_json_jobs(await agent.in_thread(_read_json, report))
        else:
            jobs = fio_jobs(result.out)
        bad = {name: job for name, job in jobs.items()
               if job["err"] or job["io_errors"]}
        missing = sorted(set(names) - set(jobs))
        if bad or missing:
            raise BurninError(
                "fio (disk) reported errors: " + "; ".join(
                    [f"{n}: err={j['err']}, {j['io_errors']} I/O errors"
                     for n, j in sorted(bad.items())]
                    + [f"{n}: no result" for n in missing]))
        if smart:
            await smart_self_test(b, names)
        return {"tool": "fio", "devices": jobs}

    return await Burnin(agent, "burnin_disk", runtime)(work)  # type: ignore[no-any-return]


# ----------------------------------------------------------- SMART


def smart_self_test_status(out: str) -> str | None:
    """The self-test status string of ``smartctl -ja`` (None when the
    device has no ATA self-test log: not tested, as IPA)."""
    try:
        data = json.loads(out)
        status = data["ata_smart_data"]["self_test"]["status"]["string"]
    except (ValueError, KeyError, TypeError):
        return None
    return status if isinstance(status, str) else None


async def smart_self_test(b: Burnin, devices: Sequence[str]) -> None:
    """Start a long SMART self-test on every device and wait for them all;
    fail if one cannot start or does not complete without error."""
    failed = []
    for device in devices:
        b.agent.guard.check(device)
        try:
            await b.run(f"smartctl (start a self-test on {device})",
                        ["smartctl", "-t", "long", device], timeout=120.0)
        except BurninError as e:
            log.error("{e}", e=e)
            failed.append(device)
    if failed:
        raise BurninError("fio (disk) could not start a SMART self-test "
                          "on " + ", ".join(failed))
    waiting = list(devices)
    deadline = b.agent.reactor.seconds() + SMART_DEADLINE
    while True:
        for device in list(waiting):
            result = await b.run(f"smartctl (status of {device})",
                                 ["smartctl", "-ja", device],
                                 timeout=120.0, check=False)
            status = smart_self_test_status(result.out)
            if status is None:
                log.warn("{dev}: no SMART self-test status; not checked",
                         dev=device)
                waiting.remove(device)
            elif "in progress" in status:
                continue
            elif "completed without error" in status:
                log.info("{dev} passed its SMART self-test", dev=device)
                waiting.remove(device)
            else:
                log.warn("{dev} failed its SMART self-test: {s}",
                         dev=device, s=status)
                failed.append(f"{device} ({status})")
                waiting.remove(device)
        if not waiting:
            break
        if b.agent.reactor.seconds() > deadline:
            failed += [f"{d} (still running after {SMART_DEADLINE} s)"
                       for d in waiting]
            break
        b.phase("SMART self-test running on " + ", ".join(waiting))
        await b.sleep(SMART_POLL)
    if failed:
        raise BurninError("fio (disk) SMART self-test failed: "
                          + ", ".join(failed))


# --------------------------------------------------------- fio network


def fio_network_argv(writer: bool, runtime: str, partner: str,
                     output: str | None) -> list[str]:
    argv = ["fio", "--ioengine", "net", "--port", NETWORK_PORT,
            "--fill_device", "1", "--group_reporting", "--gtod_reduce", "1",
            "--numjobs", str(NETWORK_STREAMS)]
    if writer:
        argv += ["--name", "writer", "--rw", "write", "--runtime", runtime,
                 "--time_based", "--listen"]
    else:
        argv += ["--name", "reader", "--rw", "read", "--hostname", partner]
    if output:
        argv += ["--output-format", "json", "--output", output]
    return argv


def unconnected_streams(error: BurninError, report: str | None
                        ) -> int | None:
    """How many of a failed reader's streams found no writer listening
    (fio's exit status counts its failed jobs), or None when a failure
    was something else.  ``report``: the run's JSON report file, where
    fio then says what failed instead of on its output."""
    code = error.exit_code
    if code is None or not 0 < code <= NETWORK_STREAMS:
        return None
    if report is not None:
        try:
            jobs = _read_json(report).get("jobs") or []
            found = {int(job.get("error", 0)) for job in jobs}
        except (OSError, ValueError, AttributeError, TypeError):
            return None
        return code if found and found <= _NOT_LISTENING else None
    out = error.result.out if error.result is not None else ""
    failed = _JOB_FAILED.findall(out)
    if len(failed) != code or any(
            func != "connect" or int(errno) not in _NOT_LISTENING
            for errno, func in failed):
        return None
    return code


class Pairing:
    """Finds the partner and role of a network burn-in through a tooz
    coordination backend (in a thread: tooz's API blocks)."""

    def __init__(self, backend_url: str, group: str, timeout: float,
                 member: str | None = None,
                 coordinator_factory: Callable[[str, bytes], Any] | None
                 = None, sleep: Callable[[float], None] = time.sleep,
                 now: Callable[[], float] = time.monotonic) -> None:
        self.backend_url = backend_url
        self.group = group
        self.timeout = timeout
        self.member = member or socket.gethostname()
        self._factory = coordinator_factory
        self._sleep = sleep
        self._now = now
        #: set to give up (the step was cancelled)
        self.stopped = threading.Event()

    def _coordinator(self) -> Any:
        if self._factory is not None:
            return self._factory(self.backend_url, self.member.encode())
        try:
            from tooz import coordination  # type: ignore[import-not-found]
        except ImportError:
            raise errors.CleaningError(
                "fio (network): dynamic pairing needs the tooz library, "
                "which this agent's ramdisk does not have; set "
                "agent_burnin_fio_network_config instead") from None
        return coordination.get_coordinator(self.backend_url,
                                            self.member.encode())

    def _wait(self, seconds: float) -> None:
        if self.stopped.is_set():
            raise CancelledError()
        self._sleep(seconds)

    def find(self) -> tuple[str, str]:
        """``(partner, role)``: the first of two nodes in the group writes
        first, the second reads first.  A lock lets one pair form at a
        time: the first node releases it once it is in the group; the
        second keeps it until the first has left, then leaves too."""
        coordinator = self._coordinator()
        coordinator.start(start_heart=True)
        group = self.group.encode()
        try:
            try:
                coordinator.create_group(group).get()
            except Exception as e:      # tooz's GroupAlreadyExist
                if type(e).__name__ != "GroupAlreadyExist":
                    raise
            lock = coordinator.get_lock(b"group_lock")
            deadline = self._now() + self.timeout
            while not lock.acquire(blocking=False):
                if self._now() > deadline:
                    raise errors.CleaningError(
                        "fio (network) timed out to find partner")
                self._wait(1.0)
            held = True
            try:
                before = set(coordinator.get_members(group).get())
                coordinator.join_group(group).get()
                if not before:
                    lock.release()      # let the second node in
                    held = False
                    while True:
                        members = set(coordinator.get_members(group).get())
                        others = members - {self.member.encode()}
                        if others:
                            partner = sorted(others)[0].decode()
                            coordinator.leave_group(group).get()
                            return partner, "writer"
                        if self._now() > deadline:
                            coordinator.leave_group(group).get()
                            raise errors.CleaningError(
                                "fio (network) timed out to find partner")
                        self._wait(1.0)
                others = before - {self.member.encode()}
                if len(others) != 1:
                    coordinator.leave_group(group).get()
                    raise errors.CleaningError(
                        "fio (network) found no single partner to pair "
                        f"with in {self.group}: {sorted(others)}")
                partner = others.pop().decode()
                while len(coordinator.get_members(group).get()) >= 2:
                    if self._now() > deadline:
                        break
                    self._wait(0.2)
                coordinator.leave_group(group).get()
                return partner, "reader"
            finally:
                if held:
                    lock.release()
        finally:
            coordinator.stop()


def _network_roles(info: Mapping[str, Any]) -> tuple[str, str, str] | None:
    """``(role, partner, "static")`` from a static config, else None."""
    config = info.get("agent_burnin_fio_network_config")
    if not config:
        return None
    if not isinstance(config, Mapping):
        raise _bad("agent_burnin_fio_network_config", config,
                   'an object {"role": ..., "partner": ...}')
    role = config.get("role")
    if role not in NETWORK_ROLES:
        raise errors.CleaningError(
            f"fio (network) found an unknown role: {role}")
    partner = config.get("partner")
    if not partner or not isinstance(partner, str) or partner.startswith(
            "-") or not _HOST.match(partner):
        raise errors.CleaningError("fio (network) failed to find partner")
    return role, partner, "static"


async def fio_network(agent: RunningAgent, node: Any, step: str,
                      pairing_factory: Callable[..., Pairing] = Pairing
                      ) -> dict[str, Any]:
    info = driver_info(node)
    given, runtime = duration(info, "agent_burnin_fio_network_runtime",
                              21600)
    output = outputfile(info, "agent_burnin_fio_network_outputfile")
    _, pairing_timeout = duration(
        info, "agent_burnin_fio_network_pairing_timeout", 900)
    static = _network_roles(info)
    pairing: Pairing | None = None
    if static is None:
        backend = _text(info, "agent_burnin_fio_network_pairing_backend_url",
                        None, None, "a tooz backend URL")
        if not backend:
            raise errors.CleaningError(
                "fio (network): dynamic pairing config is missing "
                "agent_burnin_fio_network_pairing_backend_url")
        group = _text(info, "agent_burnin_fio_network_pairing_group_name",
                      "ironic.network-burnin", None, "a group name")
        pairing = pairing_factory(backend, group or "ironic.network-burnin",
                                  pairing_timeout)

    async def write(b: Burnin, partner: str) -> Any:
        path = f"{output}.writer" if output else None
        # the writer waits for its reader to connect: that wait is bounded
        # by the pairing timeout; a reader whose streams came in two goes
        # makes the writer's run twice as long
        result = await b.run("fio (network, writer)",
                             fio_network_argv(True, given, partner, path),
                             timeout=2 * runtime + GRACE + pairing_timeout)
        return {"output": path} if path else fio_jobs(result.out)

    async def read(b: Burnin, partner: str) -> Any:
        """Connects all the writer's streams.  The writer starts its
        listening jobs one by one: a reader that comes early finds some
        ports listening and others not (fio fails on the latter, the
        writer's jobs on the former run).  Each writer job serves one
        connection, then its port closes: the reader runs again until
        every stream has connected once (upstream, the reader gave up,
        and the writer waited for the rest until it was killed)."""
        b.phase(f"reader waiting for {partner}")
        await b.sleep(READER_SETTLE)
        deadline = agent.reactor.seconds() + pairing_timeout
        #: (streams connected, the run's report or jobs) of each run that
        #: connected any
        runs: list[tuple[int, Any]] = []
        while True:
            path = None
            if output:
                path = f"{output}.reader" + (f".{len(runs) + 1}"
                                             if runs else "")
            try:
                result = await b.run(
                    "fio (network, reader)",
                    fio_network_argv(False, given, partner, path),
                    timeout=runtime + GRACE)
            except BurninError as e:
                missing = unconnected_streams(e, path)
                if missing is None:
                    raise
                error: BurninError | None = e
                said = e.result.out if e.result is not None else ""
            else:
                missing, error, said = 0, None, result.out
            if missing < NETWORK_STREAMS:
                runs.append((NETWORK_STREAMS - missing,
                             path or fio_jobs(said)))
            connected = sum(n for n, _ in runs)
            if connected >= NETWORK_STREAMS:
                break
            assert error is not None        # a run without one connects all
            if agent.reactor.seconds() > deadline:
                if not connected:
                    raise error
                raise BurninError(
                    f"fio (network, reader) failed: {connected} of "
                    f"{NETWORK_STREAMS} streams connected to {partner} "
                    f"before the pairing timeout: {error.details}",
                    exit_code=error.exit_code, result=error.result)
            if missing == NETWORK_STREAMS:
                log.info("fio (network): reader retrying in {t} s ...",
                         t=READER_RETRY)
                b.phase(f"reader waiting for {partner}")
                await b.sleep(READER_RETRY)
            else:
                rest = NETWORK_STREAMS - connected
                log.info("fio (network): {n} of {all} streams connected "
                         "to {p}; connecting the other {rest}",
                         n=connected, all=NETWORK_STREAMS, p=partner,
                         rest=rest)
                b.phase(f"reader connecting {rest} more streams to "
                        f"{partner}")
                await b.sleep(READER_REST_RETRY)
        if len(runs) == 1:
            only = runs[0][1]
            return {"output": only} if output else only
        if output:
            return {"outputs": [p for _, p in runs]}
        jobs = [job for _, found in runs for job in found.values()]
        return {"reader": {
            "err": 0,
            "io_errors": sum(job.get("io_errors", 0) for job in jobs),
            "read": "; ".join(
                f"{n} streams: {found.get('reader', {}).get('read')}"
                for n, found in runs),
            "runs": len(runs)}}

    async def work(b: Burnin) -> dict[str, Any]:
        if static is not None:
            role, partner, how = static
        else:
            assert pairing is not None
            b.phase("pairing")
            try:
                partner, role = await agent.in_thread(pairing.find)
            except CancelledError:
                pairing.stopped.set()
                raise
            how = "paired"
        log.info("fio (network): partner {p}, role is {r} ({how})",
                 p=partner, r=role, how=how)
        first = await (write if role == "writer" else read)(b, partner)
        log.info("fio (network): first direction done, swapping roles ...")
        second = await (read if role == "writer" else write)(b, partner)
        return {"tool": "fio", "partner": partner, "role": role,
                "first": first, "second": second}

    return await Burnin(agent, step, 2 * runtime)(work)  # type: ignore[no-any-return]


# ----------------------------------------------------------------- GPU


async def gpu_burn(agent: RunningAgent, node: Any, step: str
                   ) -> dict[str, Any]:
    info = driver_info(node)
    install_dir = _text(info, "agent_burnin_gpu_install_dir",
                        "/opt/gpu-burn", re.compile(r"^/"),
                        "an absolute directory") or "/opt/gpu-burn"
    given, seconds = duration(info, "agent_burnin_gpu_timeout", DAY)
    memory = _text(info, "agent_burnin_gpu_memory", "95%", _GPU_MEMORY,
                   "a share of GPU memory (95%) or MiB (1024)") or "95%"
    expected = count(info, "agent_burnin_gpu_count", 0)
    # gpu_burn reads its kernel (compare.ptx) from its working directory
    here = ["env", f"--chdir={install_dir}", "./gpu_burn"]

    async def work(b: Burnin) -> dict[str, Any]:
        found = None
        if expected > 0:
            listing = await b.run("gpu-burn (list)", here + ["-l"],
                                  timeout=300.0)
            found = len([line for line in listing.out.splitlines()
                         if line.startswith("ID")])
            if found != expected:
                raise errors.CleaningError(
                    f"gpu-burn failed to find the correct number of gpus. "
                    f"{found} found but {expected} expected.")
        else:
            log.info("burnin_gpu: not checking the number of GPUs "
                     "(agent_burnin_gpu_count is 0)")
        await b.run("gpu-burn", here + ["-m", memory, given],
                    timeout=seconds + GRACE)
        return {"tool": "gpu_burn", "gpus": found}

    return await Burnin(agent, step, seconds)(work)  # type: ignore[no-any-return]
