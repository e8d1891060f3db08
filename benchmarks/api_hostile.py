#!/usr/bin/env python3
"""Memory and responsiveness of the agent under a large unauthenticated
form POST (issue 12, item 1).

Run as root from the repository root, with the Python of the environment
whose agent is measured (its ``twistd`` is started):

    python benchmarks/api_hostile.py [--sizes-mib 200,20]

A standalone agent runs sandboxed (private network, PID and mount
namespaces; the only disk it can see is a small loop device made here).
For each size, one client sends ``POST /v1/commands/`` without a token,
``Content-Type: application/x-www-form-urlencoded``, and a body of that
many MiB (``a=1&a=1&...``) as fast as the agent takes it, while

- a sampler reads the agent's VmRSS every 20 ms (peak growth printed);
- a prober sends ``GET /v1/status`` (a new connection each time, 30 s
  timeout) back to back, from the start of the POST until 1 s after its
  end (worst and median latency printed).

Printed per size: the answer's status code and when it came (seconds from
the first byte sent; "-" if the agent closed without answering), how much
of the body the client could send before the agent closed (an agent that
answers early still reads and drops what comes for a short while), peak
RSS growth, /v1/status latency.  Run it once with the code before a change and once
after, on the same machine.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import sys
import threading
import time
import urllib.request

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                os.pardir))

from tests.integration import harness as h  # noqa: E402

TOKEN = "b" * 40
MiB = 1024 * 1024
PORT = 9999


def rss_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def hostile_post(netns: str, size: int) -> dict[str, object]:
    """Send the form POST; what came back and when."""
    head = (f"POST /v1/commands/ HTTP/1.1\r\nHost: 127.0.0.1:{PORT}\r\n"
            f"Content-Type: application/x-www-form-urlencoded\r\n"
            f"Content-Length: {size}\r\n\r\n").encode()
    chunk = b"a=1&" * (256 * 1024)           # 1 MiB
    answer: dict[str, object] = {"code": None, "answered_at": None}
    with h.in_netns(netns):
        sock = socket.create_connection(("127.0.0.1", PORT), timeout=300)
    start = time.monotonic()

    def read_answer() -> None:
        data = b""
        try:
            while b"\r\n" not in data:
                more = sock.recv(4096)
                if not more:
                    break
                data += more
        except OSError:
            pass
        if data.startswith(b"HTTP/1.1 "):
            answer["code"] = int(data[9:12])
            answer["answered_at"] = time.monotonic() - start

    reader = threading.Thread(target=read_answer)
    reader.start()
    sent = 0
    try:
        sock.sendall(head)
        while sent < size:
            piece = chunk[:min(len(chunk), size - sent)]
            sock.sendall(piece)
            sent += len(piece)
    except OSError:
        pass                                  # the agent closed: stop
    sent_for = time.monotonic() - start
    reader.join(timeout=300)
    sock.close()
    answer["sent_bytes"] = sent
    answer["sent_for"] = sent_for
    answer["done_at"] = time.monotonic() - start
    return answer


def measure(netns: str, pid: int, size: int) -> dict[str, object]:
    baseline = rss_kib(pid)
    peak = [baseline]
    latencies: list[float] = []
    failures: list[str] = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], rss_kib(pid))
            time.sleep(0.02)

    def probe() -> None:
        while not stop.is_set():
            t0 = time.monotonic()
            try:
                with h.in_netns(netns):
                    with urllib.request.urlopen(
                            f"http://127.0.0.1:{PORT}/v1/status",
                            timeout=30) as r:
                        r.read()
                latencies.append(time.monotonic() - t0)
            except OSError as e:
                failures.append(f"{type(e).__name__} after "
                                f"{time.monotonic() - t0:.1f} s")
            time.sleep(0.01)

    threads = [threading.Thread(target=sample), threading.Thread(target=probe)]
    for t in threads:
        t.start()
    try:
        answer = hostile_post(netns, size)
        time.sleep(1.0)
    finally:
        stop.set()
        for t in threads:
            t.join()
    answer["peak_rss_growth_mib"] = (peak[0] - baseline) / 1024
    answer["status_max_s"] = max(latencies) if latencies else None
    answer["status_median_s"] = (statistics.median(latencies)
                                 if latencies else None)
    answer["status_probes"] = len(latencies)
    answer["status_failures"] = failures
    return answer


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes-mib", default="200,20")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes_mib.split(",") if s]
    try:
        h.require_prerequisites()
    except h.Unavailable as e:
        print(f"benchmark cannot run here: {e}", file=sys.stderr)
        return 2
    cleanups = h.Cleanups()
    try:
        work = h.workdir(cleanups)
        netns = h.make_netns(cleanups)
        device = h.make_loop_device(cleanups, work, 64 * MiB)
        agent = h.Agent(cleanups, netns, work, device, None,
                        ["--standalone", "--agent-token", TOKEN,
                         "--listen-host", "127.0.0.1"])
        agent.wait_for_log("agent API listening", 60)
        pid = h.child_pid(agent.proc.pid)
        assert pid is not None
        print(f"agent pid {pid}, VmRSS {rss_kib(pid) / 1024:.0f} MiB at rest")
        for size_mib in sizes:
            result = measure(netns, pid, size_mib * MiB)
            code = result["code"] if result["code"] is not None else "-"
            at = (f"{result['answered_at']:.2f} s"
                  if result["answered_at"] is not None else "never")
            smax, smed = result["status_max_s"], result["status_median_s"]
            print(f"{size_mib:4d} MiB form POST, no token: answer {code} "
                  f"after {at}; client sent "
                  f"{int(result['sent_bytes']) / MiB:.1f} MiB in "  # type: ignore[call-overload]
                  f"{result['sent_for']:.2f} s; peak RSS "
                  f"+{result['peak_rss_growth_mib']:.0f} MiB; /v1/status "
                  f"max {smax if smax is None else f'{smax:.3f}'} s, "
                  f"median {smed if smed is None else f'{smed:.4f}'} s "
                  f"({result['status_probes']} probes, "
                  f"failed: {result['status_failures'] or 'none'})",
                  flush=True)
            if agent.proc.poll() is not None:
                print("the agent died", flush=True)
                return 1
        return 0
    finally:
        cleanups.run()


if __name__ == "__main__":
    sys.exit(main())
