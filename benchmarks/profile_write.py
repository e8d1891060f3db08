#!/usr/bin/env python3
"""Where our agent's time goes when it writes an image: a profile of
``standby.prepare_image``, raw and qcow2, through the API.

Run as root from the repository root (py-spy from PyPI in the same
environment, ``pip install py-spy``; without it the sampling part is
left out):

    python benchmarks/profile_write.py [--size-mib 1024] [--rounds 1]

The set-up is the deploy benchmark's (benchmarks/deploy.py: nginx with
sendfile, a GPT image and its qcow2, a loop device, our agent sandboxed),
with counters put into the agent (benchmarks/profile_probe.py, loaded as
``sitecustomize``: the agent's code is not changed).  Per image kind:

1. a timeline of one command, sampled every 5 ms from /proc: bytes the
   device received (its sysfs stat), CPU per thread, the tools it ran (start, end,
   argv): the write phase and each step after it, timed;
2. the counters of the same command: socket reads and their sizes,
   ``callFromThread`` by function (hand-offs from threads to the reactor),
   hand-offs to the thread pool, pauses of the download and their length,
   writes by thread;
3. a py-spy sample of another command (``--threads --nonblocking``): the
   top functions of each thread, and each thread's share of the time.

Prints a report (the numbers of docs/performance.md come from it).  The
machine may be shared: compare within one run.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from typing import Any

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                os.pardir))

from benchmarks import agents  # noqa: E402
from benchmarks.agents import GiB, MiB  # noqa: E402
from tests.integration import harness as h  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
PORT_HTTP = 8089
PORT_OURS = 9999


def sectors_written(device: str) -> int:
    """Bytes written to ``device`` since it exists (its sysfs stat)."""
    with open(f"/sys/block/{os.path.basename(device)}/stat") as f:
        return int(f.read().split()[6]) * 512


def ns_tid(pid: int, tid: str) -> str:
    """A host thread id as the agent's PID namespace numbers it (the
    probe and py-spy name threads by that number)."""
    try:
        with open(f"/proc/{pid}/task/{tid}/status") as f:
            for line in f:
                if line.startswith("NSpid:"):
                    return line.split()[-1]
    except OSError:
        pass
    return tid


def thread_cpu(pid: int) -> dict[str, float]:
    out = {}
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                text = f.read()
        except OSError:
            continue
        fields = text[text.rindex(")") + 2:].split()
        out[ns_tid(pid, tid)] = (int(fields[11]) + int(fields[12])) \
            / agents.CLK_TCK
    return out


class Timeline:
    """/proc samples of one agent command, every ``period`` seconds."""

    def __init__(self, pid: int, device: str, period: float = 0.005
                 ) -> None:
        self.pid = pid
        self.device = device
        self.period = period
        self.samples: list[tuple[float, int]] = []  # (t, bytes written)
        self.tools: dict[int, list[Any]] = {}        # pid -> [t0, t1, argv]
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "Timeline":
        self.cpu_before = thread_cpu(self.pid)
        self._process_before = agents.cpu_seconds(self.pid)[0]
        self.t0 = time.monotonic()
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.t_end = time.monotonic() - self.t0
        self._done.set()
        self._thread.join()
        self.cpu_after = thread_cpu(self.pid)
        self.process_cpu = agents.cpu_seconds(self.pid)[0] - \
            self._process_before

    def _run(self) -> None:
        while not self._done.is_set():
            t = time.monotonic() - self.t0
            self.samples.append((t, sectors_written(self.device)))
            for child in agents.descendants(self.pid)[1:]:
                entry = self.tools.get(child)
                if entry is None:
                    try:
                        with open(f"/proc/{child}/cmdline", "rb") as f:
                            argv = f.read().split(b"\0")
                    except OSError:
                        continue
                    text = " ".join(a.decode(errors="replace")
                                    for a in argv if a)
                    if not text or "twistd" in text:
                        continue  # between fork and exec
                    self.tools[child] = [t, t, text]
                else:
                    entry[1] = t
            time.sleep(self.period)

    def phases(self, size: int) -> dict[str, float]:
        """When the first and the last byte of the image reached the
        device (the last: when ``size`` bytes had; the GPT work after it
        writes a little more)."""
        base = self.samples[0][1]
        first = next((t for t, w in self.samples if w > base), 0.0)
        last = next((t for t, w in self.samples if w - base >= size),
                    self.samples[-1][0])
        return {"first_write": first, "last_write": last,
                "end": self.t_end, "written": self.samples[-1][1] - base}


def py_spy() -> str | None:
    return shutil.which("py-spy") or (
        os.path.join(os.path.dirname(sys.executable), "py-spy")
        if os.path.exists(os.path.join(os.path.dirname(sys.executable),
                                       "py-spy")) else None)


def _source_line(frame: str) -> str:
    """The source text of a py-spy frame ``func (path:line)``."""
    import linecache
    import sysconfig

    where = frame.rpartition("(")[2].rstrip(")")
    path, _, line = where.rpartition(":")
    if not line.isdigit():
        return ""
    for top in (os.path.join(HERE, os.pardir),
                sysconfig.get_paths()["purelib"],
                sysconfig.get_paths()["stdlib"], ""):
        text = linecache.getline(os.path.join(top, path), int(line))
        if text:
            return text.strip()
    return ""


#: what a waiting thread's top frame looks like (py-spy cannot tell idle
#: threads here: the agent is in another PID namespace)
IDLE = (".get(", ".wait(", "doPoll", "self._poller.poll", "sleep(")


def idle(frame: str) -> bool:
    if frame.startswith(("EPollReactor.doPoll", "Condition.wait",
                         "Queue.get", "Event.wait")):
        return True
    text = _source_line(frame)
    return any(marker in text for marker in IDLE)


def summarize_spy(path: str, names: dict[str, str], seconds: float,
                  rate: int, top: int = 8) -> list[str]:
    """Per thread: its busy samples (waiting ones left out: a blocking
    ``get``, ``wait`` or the reactor's poll), and the functions seen most
    at the top of its stack (self) and anywhere in it (total)."""
    per_thread: dict[str, collections.Counter[str]] = \
        collections.defaultdict(collections.Counter)
    total_in: dict[str, collections.Counter[str]] = \
        collections.defaultdict(collections.Counter)
    count: collections.Counter[str] = collections.Counter()
    with open(path) as f:
        for line in f:
            line = line.rstrip("\n")
            if not line:
                continue
            stack, _, n = line.rpartition(" ")
            frames = stack.split(";")
            thread = frames[0]
            tid = thread.split("(")[-1].rstrip(")").strip()
            # py-spy prints the thread id in hex or decimal
            try:
                key = str(int(tid, 16)) if tid.startswith("0x") else tid
            except ValueError:
                key = tid
            name = names.get(key, thread.partition(": ")[2] or thread)
            samples = int(n)
            leaf = frames[-1] if len(frames) > 1 else "?"
            if idle(leaf):
                continue
            count[name] += samples
            per_thread[name][leaf] += samples
            for frame in set(frames[1:]):
                total_in[name][frame] += samples
    lines = []
    for name, n in count.most_common():
        lines.append(f"  thread {name}: busy {n} samples = "
                     f"{n / rate:.2f} s of {seconds:.2f} s "
                     f"({100 * n / rate / seconds:.0f} %)")
        for frame, m in per_thread[name].most_common(top):
            lines.append(f"      self {100 * m / n:5.1f} %  {frame}")
        for frame, m in total_in[name].most_common(top):
            lines.append(f"     total {100 * m / n:5.1f} %  {frame}")
    return lines


def probe(pid: int, out: str) -> dict[str, Any]:
    if os.path.exists(out):
        os.unlink(out)
    os.kill(pid, signal.SIGUSR2)
    deadline = time.monotonic() + 10
    while not os.path.exists(out):
        if time.monotonic() > deadline:
            raise RuntimeError("the probe wrote no counters (is it loaded?)")
        time.sleep(0.05)
    with open(out) as f:
        result: dict[str, Any] = json.load(f)
    return result


def command(agent: agents.OurAgent, url: str, digest: str, kind: str
            ) -> None:
    agents.run_command(agent.netns, agent.port, "standby.prepare_image", {
        "image_info": {"id": f"profile-{kind}-{time.monotonic_ns()}",
                       "urls": [url], "disk_format": kind,
                       "os_hash_algo": "sha256", "os_hash_value": digest}})


def report_timeline(tl: Timeline, counters: dict[str, Any], size: int
                    ) -> list[str]:
    p = tl.phases(size)
    mib = p["written"] / MiB or 1
    lines = [
        f"  whole command {p['end']:.3f} s = {size / p['end'] / 1e6:.0f} "
        f"MB/s; first byte on the disk at {p['first_write']:.3f} s, last "
        f"at {p['last_write']:.3f} s (write phase "
        f"{p['last_write'] - p['first_write']:.3f} s = "
        f"{size / max(p['last_write'] - p['first_write'], 1e-9) / 1e6:.0f}"
        f" MB/s; {p['written'] / MiB:.0f} MiB reached the device in all); "
        f"after the last byte: {p['end'] - p['last_write']:.3f} s"]
    lines.append("  tools run (start-end, s from the request; sampled "
                 "every 5 ms: shorter runs may be missed):")
    for t0, t1, argv in sorted(tl.tools.values()):
        lines.append(f"    {t0:7.3f}-{t1:7.3f} ({(t1 - t0) * 1000:5.0f} ms)"
                     f"  {argv[:110]}")
    names = counters.get("threads", {})
    whole = tl.process_cpu
    lines.append(f"  CPU seconds of the agent during the command: "
                 f"{whole:.2f} s ({whole / (size / GiB):.2f} s per GiB); by "
                 f"thread:")
    alive = 0.0
    for tid, after in sorted(tl.cpu_after.items(),
                             key=lambda kv: -(kv[1] - tl.cpu_before.get(
                                 kv[0], 0.0))):
        used = after - tl.cpu_before.get(tid, 0.0)
        alive += used
        if used >= 0.01:
            lines.append(f"    {used:6.2f} s  {names.get(tid, tid)}")
    gone = sorted(names[t] for t in set(names) - set(tl.cpu_after))
    if gone:
        lines.append(f"    {whole - alive:6.2f} s  threads that ended "
                     f"before the end: {', '.join(sorted(set(gone)))}")
    reads = counters["reads"]
    lines.append(f"  socket reads delivered to the protocol: {reads} "
                 f"({reads / mib:.1f} per MiB), mean "
                 f"{counters['read_bytes'] / max(reads, 1) / 1024:.1f} KiB;"
                 f" sizes (up to): " + ", ".join(
                     f"{int(k) // 1024} KiB x{v}" for k, v in sorted(
                         counters["read_sizes"].items(),
                         key=lambda kv: int(kv[0]))))
    cft = counters["call_from_thread"]
    lines.append(f"  callFromThread: {sum(cft.values())} "
                 f"({sum(cft.values()) / mib:.2f} per MiB): " + ", ".join(
                     f"{k} x{v}" for k, v in sorted(
                         cft.items(), key=lambda kv: -kv[1])))
    tt = counters["to_thread"]
    lines.append(f"  to the thread pool: {sum(tt.values())}: " + ", ".join(
        f"{k} x{v}" for k, v in sorted(tt.items(), key=lambda kv: -kv[1])))
    lines.append(f"  download paused {counters['pauses']} times "
                 f"({counters['pauses'] / mib:.2f} per MiB), "
                 f"{counters['paused_s']:.3f} s in all, longest "
                 f"{counters['max_pause_s'] * 1000:.1f} ms")
    writes = counters["writes"]
    lines.append("  writes: " + "; ".join(
        f"{k}: {v} calls, {counters['write_bytes'][k] / MiB:.1f} MiB"
        for k, v in sorted(writes.items(), key=lambda kv: -kv[1])))
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--rate", type=int, default=250,
                        help="py-spy samples per second")
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()
    try:
        h.require_prerequisites()
    except h.Unavailable as e:
        print(f"cannot profile here: {e}", file=sys.stderr)
        return 2
    size = args.size_mib * MiB
    spy = py_spy()
    cleanups = h.Cleanups()
    try:
        work = h.workdir(cleanups, keep=args.keep)
        netns = h.make_netns(cleanups)
        device = h.make_loop_device(cleanups, work, 5 * GiB)
        stubs = os.path.join(work, "stubs")
        h.make_stubs(stubs)
        www = os.path.join(work, "www")
        os.makedirs(www)
        raw = os.path.join(www, "disk.img")
        raw_digest, _ = agents.make_gpt_image(raw, size)
        qcow = os.path.join(www, "disk.qcow2")
        h.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", raw, qcow])
        qcow_digest = h.file_sha256(qcow)
        h.file_sha256(raw)
        agents.serve_nginx(cleanups, netns, PORT_HTTP, www, work)
        base = f"http://127.0.0.1:{PORT_HTTP}/"
        probe_dir = os.path.join(work, "probe")
        os.makedirs(probe_dir)
        shutil.copy(os.path.join(HERE, "profile_probe.py"),
                    os.path.join(probe_dir, "sitecustomize.py"))
        out = os.path.join(work, "probe.json")
        agent = agents.OurAgent(cleanups, netns, work, device, PORT_OURS,
                                env={"PYTHONPATH": probe_dir,
                                     "IPA_PROBE_OUT": out})
        print(f"profile of standby.prepare_image, {args.size_mib} MiB GPT "
              f"image (qcow2 {os.path.getsize(qcow) // MiB} MiB) from nginx "
              f"to {device}; agent pid {agent.pid}; "
              f"{time.strftime('%Y-%m-%d %H:%M')}; {os.cpu_count()} CPUs",
              flush=True)
        # unmeasured: allocate the loop device's backing file, warm up
        command(agent, base + "disk.img", raw_digest, "raw")
        probe(agent.pid, out)
        for kind, url, digest in (("raw", "disk.img", raw_digest),
                                  ("qcow2", "disk.qcow2", qcow_digest)):
            for n in range(args.rounds):
                print(f"{kind}, round {n + 1}: timeline and counters",
                      flush=True)
                with Timeline(agent.pid, device) as tl:
                    command(agent, base + url, digest, kind)
                counters = probe(agent.pid, out)
                for line in report_timeline(tl, counters, size):
                    print(line, flush=True)
            if spy is None:
                print("  (no py-spy: pip install py-spy for the sampling "
                      "profile)")
                continue
            print(f"{kind}: py-spy, {args.rate} samples/s, all threads",
                  flush=True)
            raw_out = os.path.join(work, f"py-spy-{kind}.txt")
            sampler = subprocess.Popen(
                [spy, "record", "--pid", str(agent.pid), "--threads",
                 "--nonblocking", "--rate", str(args.rate), "--format",
                 "raw", "--output", raw_out],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(1.0)  # py-spy attaches
            started = time.monotonic()
            command(agent, base + url, digest, kind)
            took = time.monotonic() - started
            sampler.send_signal(signal.SIGINT)
            sampler.wait(60)
            names = probe(agent.pid, out).get("threads", {})
            print(f"  (the command took {took:.2f} s under py-spy)")
            for line in summarize_spy(raw_out, names, took, args.rate):
                print(line)
            if args.keep:
                print(f"  raw samples: {raw_out}")
    finally:
        cleanups.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
