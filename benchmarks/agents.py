"""What the benchmarks that race our agent against ironic-python-agent
13.0.0 share: both agents as real processes behind their own API, an nginx
image server, GPT test images, and readings of a process from /proc.

Both agents run the same way: inside the benchmark's network namespace, in
the disk-masking sandbox of the integration tests (a private PID and mount
namespace in which every block device but the benchmark's loop device is
/dev/null), listening on loopback.  Ours is ``twistd ipa --standalone``
(with ``--device-allowlist``); IPA is its own ``ironic-python-agent``
entry point with no Ironic API URL (no lookup, no heartbeat: it serves its
API at once), the same token on both.  Given an ``api_url`` (idle_memory.py
does), both look up and heartbeat there instead.

Blocking code (subprocess, urllib, threads): it drives real processes.
"""

from __future__ import annotations

import hashlib
import json
import os
import resource
import subprocess
import threading
import time
import urllib.error
import urllib.request
from typing import Any, Callable

from tests.integration import harness as h

MiB = 1024 * 1024
GiB = 1024 * MiB
TOKEN = "d" * 40
CLK_TCK = os.sysconf("SC_CLK_TCK")

# ------------------------------------------------------------- /proc


def status_kib(pid: int, key: str) -> int:
    """A ``kB`` field of /proc/PID/status (VmRSS, VmHWM...), 0 if gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def cpu_seconds(pid: int) -> tuple[float, float]:
    """(CPU seconds of the process, all its threads included: utime +
    stime; CPU seconds of its children it has waited for: cutime +
    cstime), from /proc/PID/stat."""
    with open(f"/proc/{pid}/stat") as f:
        text = f.read()
    # the command name is in parentheses and may hold spaces
    fields = text[text.rindex(")") + 2:].split()
    # fields[0] is the state (field 3 of proc(5)); utime is field 14
    utime, stime, cutime, cstime = (int(x) for x in fields[11:15])
    return (utime + stime) / CLK_TCK, (cutime + cstime) / CLK_TCK


def reset_peak(pid: int) -> bool:
    """Reset the process's VmHWM to its current RSS (Linux >= 4.0)."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


descendants = h.descendants


def pss_kib(pid: int) -> int:
    """Proportional set size: shared pages split among their users (a
    child just forked shares its parent's pages, and RSS would count
    them twice)."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def tree_pss_kib(pid: int) -> int:
    return sum(pss_kib(p) for p in descendants(pid))


def dir_bytes(path: str) -> int:
    total = 0
    for base, _, files in os.walk(path):
        for name in files:
            try:
                total += os.stat(os.path.join(base, name)).st_blocks * 512
            except OSError:
                pass
    return total


class Watch:
    """Around one command of an agent: CPU seconds used (the process and
    the tools it ran), the peak RSS of the process (VmHWM after a reset,
    and sampled every 20 ms), the peak PSS of its whole tree (sampled
    every 100 ms: tools such as qemu-img count), and the most bytes staged
    in ``staging`` (a directory)."""

    def __init__(self, pid: int, staging: str | None = None) -> None:
        self.pid = pid
        self.staging = staging
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self) -> "Watch":
        self.rss_before = status_kib(self.pid, "VmRSS")
        self.tree_before = tree_pss_kib(self.pid)
        self.hwm_reset = reset_peak(self.pid)
        self.peak_rss = self.rss_before
        self.peak_tree = self.tree_before
        self.staged = 0
        self.cpu_before = cpu_seconds(self.pid)
        self.started = time.monotonic()
        self._thread.start()
        return self

    def _sample(self) -> None:
        n = 0
        while not self._done.is_set():
            self.peak_rss = max(self.peak_rss, status_kib(self.pid, "VmRSS"))
            if n % 5 == 0:
                self.peak_tree = max(self.peak_tree, tree_pss_kib(self.pid))
                if self.staging is not None:
                    self.staged = max(self.staged, dir_bytes(self.staging))
            n += 1
            time.sleep(0.02)

    def __exit__(self, *exc: Any) -> None:
        self.seconds = time.monotonic() - self.started
        self._done.set()
        self._thread.join()
        own, children = cpu_seconds(self.pid)
        self.cpu = own - self.cpu_before[0]
        self.cpu_children = children - self.cpu_before[1]
        hwm = status_kib(self.pid, "VmHWM")
        if self.hwm_reset:
            self.peak_rss = max(self.peak_rss, hwm)

    @property
    def growth_mib(self) -> float:
        """Peak RSS growth of the process, MiB."""
        return (self.peak_rss - self.rss_before) / 1024

    @property
    def tree_growth_mib(self) -> float:
        """Peak PSS growth of the process with its children, MiB."""
        return (self.peak_tree - self.tree_before) / 1024


class ChildrenCPU:
    """CPU seconds of the processes this one ran and waited for in the
    body (``curl | dd``: curl, dd and the shell)."""

    def __enter__(self) -> "ChildrenCPU":
        r = resource.getrusage(resource.RUSAGE_CHILDREN)
        self._before = r.ru_utime + r.ru_stime
        return self

    def __exit__(self, *exc: Any) -> None:
        r = resource.getrusage(resource.RUSAGE_CHILDREN)
        self.cpu = r.ru_utime + r.ru_stime - self._before


# ------------------------------------------------------------- images


def make_gpt_image(path: str, size: int) -> tuple[str, str]:
    """A raw whole-disk image with a GPT (one partition from 1 MiB to the
    end) holding incompressible data.  Returns (sha256 of the file, sha256
    of its bytes [1 MiB, size - 1 MiB)): the GPT work after a write
    (``sgdisk -e``) rewrites the headers and the protective MBR, so a disk
    that holds the image is checked on the data between them."""
    with open(path, "wb") as f:
        f.truncate(size)
    h.run(["sgdisk", "-n", "1:2048:0", "-t", "1:8300", path])
    whole = hashlib.sha256()
    data = hashlib.sha256()
    block = os.urandom(4 * MiB)
    with open(path, "r+b") as f:
        head = f.read(MiB)
        whole.update(head)
        offset = MiB
        counter = 0
        while offset < size - MiB:
            counter += 1
            # vary every block so that nothing dedups or compresses
            length = min(len(block), size - MiB - offset)
            chunk = (counter.to_bytes(8, "little") + block[8:])[:length]
            f.seek(offset)
            f.write(chunk)
            whole.update(chunk)
            data.update(chunk)
            offset += length
        f.seek(size - MiB)
        whole.update(f.read())
    return whole.hexdigest(), data.hexdigest()


def data_sha256(device: str, size: int) -> str:
    """sha256 of ``device``'s bytes [1 MiB, size - 1 MiB) (read past the
    page cache)."""
    digest = hashlib.sha256()
    fd = os.open(device, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        offset = MiB
        while offset < size - MiB:
            chunk = os.pread(fd, min(8 * MiB, size - MiB - offset), offset)
            if not chunk:
                break
            digest.update(chunk)
            offset += len(chunk)
    finally:
        os.close(fd)
    return digest.hexdigest()


def spoil(device: str, size: int, pieces: int = 16) -> None:
    """Zero the first MiB and ``pieces`` MiB spread over the image's
    place on ``device``, so that a writer that skipped some of the image
    cannot pass the check afterwards on what the last writer left."""
    fd = os.open(device, os.O_WRONLY)
    try:
        zeros = bytes(MiB)
        os.pwrite(fd, zeros, 0)
        for i in range(1, pieces + 1):
            offset = (size // (pieces + 1) * i) // MiB * MiB
            os.pwrite(fd, zeros, offset)
        os.fsync(fd)
    finally:
        os.close(fd)


# ------------------------------------------------------------- servers

serve_nginx = h.serve_nginx


# --------------------------------------------------------------- agents


class OurAgent:
    """Our agent, sandboxed, standalone, on 127.0.0.1:``port``: started by
    ``twistd ipa`` (the integration tests' way, :class:`harness.Agent`)
    or by ``ipa-twisted-agent`` (the console script, which skips twistd's
    plugin scan)."""

    name = "ipa-twisted"

    def __init__(self, cleanups: h.Cleanups, netns: str, work: str,
                 device: str, port: int,
                 env: dict[str, str] | None = None,
                 entry: str = "twistd", api_url: str | None = None,
                 script: str | None = None) -> None:
        self.netns = netns
        self.port = port
        # with ``api_url``: lookup and heartbeats (then auto-TLS if that
        # Ironic is new enough); without: standalone
        flags = (["--api-url", api_url] if api_url else ["--standalone"]) + [
            "--agent-token", TOKEN,
            "--listen-host", "127.0.0.1", "--listen-port", str(port)]
        for old in ("ours.log", "ours.stderr"):  # an earlier run's
            if os.path.exists(os.path.join(work, old)):
                os.unlink(os.path.join(work, old))
        if entry == "twistd":
            self.agent = h.Agent(cleanups, netns, work, device, None, flags,
                                 name="ours", env=env)
        else:
            self.agent = _ConsoleAgent(cleanups, netns, work, device, flags,
                                       env, script)
        self.agent.wait_for_log("agent API listening", 60)
        pid = None
        deadline = time.monotonic() + 10
        while pid is None:
            # ip netns exec -> unshare (forks) -> sandbox.sh exec the agent
            pid = h.child_pid(self.agent.proc.pid)
            if pid is None and time.monotonic() > deadline:
                raise RuntimeError("no agent process under unshare")
            time.sleep(0.05)
        self.pid = pid
        self.ready_after = time.monotonic() - self.agent.started

    def stop(self) -> None:
        self.agent.stop()


class _ConsoleAgent(h.Agent):
    """:class:`harness.Agent`'s sandbox and flags, started by the
    ``ipa-twisted-agent`` console script (its log is its standard
    output)."""

    def __init__(self, cleanups: h.Cleanups, netns: str, work: str,
                 device: str, flags: list[str],
                 env: dict[str, str] | None,
                 script: str | None = None) -> None:
        self.workdir = work
        self.log = os.path.join(work, "ours.log")
        stubs = os.path.join(work, "stubs")
        h.make_stubs(stubs)
        cmdline = os.path.join(work, "cmdline")
        with open(cmdline, "w") as f:
            f.write("\n")
        # another build's console script (another environment), or ours
        script = script or os.path.join(os.path.dirname(h.twistd()),
                                        "ipa-twisted-agent")
        argv = ["ip", "netns", "exec", netns,
                "unshare", "--pid", "--mount", "--fork", "--mount-proc",
                "--kill-child=SIGTERM", h.SANDBOX, device, stubs, "--",
                script, "--device-allowlist", device,
                "--cmdline-file", cmdline,
                "--run-dir", os.path.join(work, "ours-run"),
                "--power-off-command", "true", "--reboot-command", "true",
                "--no-sysrq-fallback", "--disk-wait-attempts", "2",
                "--disk-wait-delay", "1"] + flags
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            argv, stdout=open(self.log, "w"),
            stderr=open(os.path.join(work, "ours.stderr"), "w"),
            start_new_session=True, env={**os.environ, **(env or {})})
        cleanups.add("ipa-twisted-agent", self.stop)


#: IPA picks its install disk among what it lists as disks, and it never
#: lists loop devices: a hardware manager of our own (IPA's way to extend
#: it, found through its entry point) names the benchmark's loop device;
#: every other method is left to IPA's generic manager.
IPA_MANAGER = """\
import os

from ironic_python_agent import hardware


class BenchDisk(hardware.HardwareManager):
    HARDWARE_MANAGER_NAME = "bench_disk"
    HARDWARE_MANAGER_VERSION = "1"

    def evaluate_hardware_support(self):
        return hardware.HardwareSupport.SERVICE_PROVIDER

    def get_os_install_device(self, permit_refresh=False):
        return os.environ["IPA_BENCH_DEVICE"]
"""


def ipa_manager(work: str, code: str = IPA_MANAGER) -> str:
    """A directory for PYTHONPATH holding that manager (or ``code`` with a
    ``BenchDisk`` class) as an installed distribution (its entry point is
    how IPA finds it)."""
    top = os.path.join(work, "ipa-manager")
    info = os.path.join(top, "ipa_bench_disk-1.0.dist-info")
    os.makedirs(info, exist_ok=True)
    with open(os.path.join(top, "ipa_bench_disk.py"), "w") as f:
        f.write(code)
    with open(os.path.join(info, "METADATA"), "w") as f:
        f.write("Metadata-Version: 2.1\nName: ipa-bench-disk\n"
                "Version: 1.0\n")
    with open(os.path.join(info, "entry_points.txt"), "w") as f:
        f.write("[ironic_python_agent.hardware_managers]\n"
                "bench_disk = ipa_bench_disk:BenchDisk\n")
    return top


class IPAAgent:
    """ironic-python-agent 13.0.0, its own entry point, sandboxed the same
    way, on 127.0.0.1:``port``: by default no Ironic API URL, so no lookup
    and no heartbeat; it serves its API at once (with ``api_url`` it looks
    up and heartbeats, and ``ready`` says when it is up).  Its install
    disk is the loop device (:data:`IPA_MANAGER`)."""

    name = "ironic-python-agent"

    def __init__(self, cleanups: h.Cleanups, netns: str, work: str,
                 device: str, port: int, tmpdir: str,
                 manager: str = IPA_MANAGER, api_url: str | None = None,
                 ready: Callable[[], bool] | None = None) -> None:
        venv = h.ipa_venv()
        stubs = os.path.join(work, "stubs")
        h.make_stubs(stubs)
        self.netns = netns
        self.port = port
        self.log = os.path.join(work, "ipa.log")
        conf = os.path.join(work, "ipa.conf")
        with open(conf, "w") as f:
            # nothing from /etc, no vmedia config, quick disk waits
            f.write("[DEFAULT]\n")
        argv = ["ip", "netns", "exec", netns,
                "unshare", "--pid", "--mount", "--fork", "--mount-proc",
                "--kill-child=SIGTERM", h.SANDBOX, device, stubs, "--",
                "env", f"TMPDIR={tmpdir}",
                f"PYTHONPATH={ipa_manager(work, manager)}",
                f"IPA_BENCH_DEVICE={device}",
                os.path.join(venv, "bin", "ironic-python-agent"),
                "--config-file", conf,
                "--listen_host", "127.0.0.1", "--listen_port", str(port),
                "--agent_token", TOKEN,
                "--disk_wait_attempts", "2", "--disk_wait_delay", "1",
                "--log-file", self.log]
        if api_url:
            argv += ["--api_url", api_url]
        started = time.monotonic()
        self.proc = subprocess.Popen(
            argv, stdout=subprocess.DEVNULL,
            stderr=open(os.path.join(work, "ipa.stderr"), "w"),
            start_new_session=True)
        cleanups.add("ironic-python-agent", lambda: h.stop_process(self.proc))
        deadline = time.monotonic() + 120
        while True:
            try:
                if ready is not None:
                    # after a lookup its API may serve https (auto-TLS):
                    # the caller says when it is up
                    if ready():
                        break
                    raise RuntimeError("not ready")
                call(netns, port, "GET", "/v1/status", timeout=2)
                break
            except (OSError, RuntimeError):
                if self.proc.poll() is not None:
                    raise RuntimeError(f"ironic-python-agent exited: see "
                                       f"{self.log}")
                if time.monotonic() > deadline:
                    raise RuntimeError("ironic-python-agent API not up")
                time.sleep(0.1)
        self.ready_after = time.monotonic() - started
        pid = h.child_pid(self.proc.pid)
        # sandbox.sh exec env exec python: the child of unshare
        assert pid is not None
        self.pid = pid

    def stop(self) -> None:
        h.stop_process(self.proc)


def call(netns: str, port: int, method: str, path: str,
         body: Any = None, timeout: float = 900) -> Any:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}", data=data, method=method,
        headers={"Content-Type": "application/json"})
    with h.in_netns(netns):
        try:
            with urllib.request.urlopen(request, timeout=timeout) as r:
                return json.loads(r.read() or b"null")
        except urllib.error.HTTPError as e:
            raise RuntimeError(f"{method} {path} -> {e.code}: "
                               f"{e.read()[:500]!r}") from None


def run_command(netns: str, port: int, name: str, params: dict[str, Any],
                timeout: float = 1800) -> dict[str, Any]:
    """POST the command with ``?wait=true`` (as the conductor does for
    ``prepare_image`` when it waits) and return the finished result; fail
    unless it SUCCEEDED."""
    answer: dict[str, Any] = call(
        netns, port, "POST",
        f"/v1/commands/?wait=true&agent_token={TOKEN}",
        {"name": name, "params": params}, timeout=timeout)
    if answer.get("command_status") != "SUCCEEDED":
        raise RuntimeError(f"{name} did not succeed: "
                           f"{json.dumps(answer)[:2000]}")
    return answer


def idle_rss(pid: int, settle: float = 5.0, samples: int = 5
             ) -> tuple[int, int]:
    """(VmRSS, PSS) in KiB of an agent left alone ``settle`` seconds (the
    last of ``samples`` readings one second apart: start-up work such as
    inventory threads is over by then)."""
    time.sleep(settle)
    rss = pss = 0
    for _ in range(samples):
        rss = status_kib(pid, "VmRSS")
        pss = 0
        try:
            with open(f"/proc/{pid}/smaps_rollup") as f:
                for line in f:
                    if line.startswith("Pss:"):
                        pss = int(line.split()[1])
        except OSError:
            pass
        time.sleep(1.0)
    return rss, pss
