#!/usr/bin/env python3
"""Erase throughput per method against ``dd if=/dev/zero oflag=direct``.

Run as root from the repository root:

    python benchmarks/erase.py [--size-mib 1024] [--rounds 3]

One loop device (created here) is the only disk a sandboxed standalone
agent sees.  Each round, on that same device:

- ``dd if=/dev/zero of=DEV bs=4M oflag=direct`` (sandboxed like the agent):
  the baseline, one pass of zeroes; and the same ``dd`` from a file of
  random bytes in the page cache (a disk may take zeroes faster than other
  data: thin or compressing storage under this machine's disk does);
- ``erase_devices`` with Ironic's defaults: a discard here (a loop device's
  discarded blocks read back as zeroes);
- ``erase_devices`` with discards forbidden: the overwrite (what IPA runs
  ``shred`` for), one random pass and one pass of zeroes (IPA's default),
  and zeroes only (``agent_erase_devices_iterations`` 0).

For each agent run the rate is the bytes the method covers (overwrite:
every pass) over the method's own time in the erase report, and over the
whole step (probe, markers, method, read-back check) as seen by the API
client.  The device is filled with data before each run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from typing import Any

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                os.pardir))

from tests.integration import agent_api  # noqa: E402
from tests.integration import harness as h  # noqa: E402

TOKEN = "b" * 40
MiB = 1024 * 1024

RUNS = {
    "discard (defaults)": {},
    "overwrite 1 random + zeroes": {"agent_enable_discard_erase": False},
    "overwrite zeroes only": {"agent_enable_discard_erase": False,
                              "agent_erase_devices_iterations": 0},
    "overwrite random only": {"agent_enable_discard_erase": False,
                              "agent_erase_devices_zeroize": False},
}


def fill(device: str, size: int) -> None:
    block = os.urandom(4 * MiB)
    with open(device, "r+b") as f:
        for i in range(size // len(block)):
            f.write(i.to_bytes(8, "little") + block[8:])
        os.fsync(f.fileno())


def erase(netns: str, info: dict[str, Any]) -> tuple[dict[str, Any], float]:
    t0 = time.monotonic()
    body = agent_api.command(netns, TOKEN, "clean.execute_clean_step",
                             step={"step": "erase_devices",
                                   "interface": "deploy"},
                             node={"driver_internal_info": info}, ports=[])
    took = time.monotonic() - t0
    if body["command_status"] != "SUCCEEDED":
        raise RuntimeError(f"erase failed: {body}")
    (report,) = body["command_result"]["clean_result"].values()
    return report, took


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    size = args.size_mib * MiB
    cleanups = h.Cleanups()
    try:
        h.require_prerequisites()
        workdir = h.workdir(cleanups)
        netns = h.make_netns(cleanups)
        device = h.make_loop_device(cleanups, workdir, size)
        stubs = os.path.join(workdir, "stubs")
        agent = h.Agent(cleanups, netns, workdir, device, None,
                        ["--standalone", "--agent-token", TOKEN,
                         "--listen-host", "127.0.0.1"])
        agent.wait_for_log("agent API listening", 60)
        rates: dict[str, list[float]] = {"dd oflag=direct (zeroes)": [],
                                         "dd oflag=direct (random)": []}
        noise = os.path.join(workdir, "random.bin")
        with open(noise, "wb") as f:
            for _ in range(size // (4 * MiB)):
                f.write(os.urandom(4 * MiB))
        steps: dict[str, list[float]] = {}
        for name in RUNS:
            rates[name] = []
            steps[name] = []
        for round_ in range(args.rounds + 1):
            fill(device, size)
            t0 = time.monotonic()
            h.sandboxed(netns, device, stubs, [
                "dd", "if=/dev/zero", f"of={device}", "bs=4M",
                f"count={size // (4 * MiB)}", "oflag=direct",
                "status=none"], timeout=3600)
            dd = size / (time.monotonic() - t0) / MiB
            if round_:
                rates["dd oflag=direct (zeroes)"].append(dd)
            t0 = time.monotonic()
            h.sandboxed(netns, device, stubs, [
                "dd", f"if={noise}", f"of={device}", "bs=4M",
                "iflag=fullblock", "oflag=direct", "status=none"],
                timeout=3600)
            if round_:
                rates["dd oflag=direct (random)"].append(
                    size / (time.monotonic() - t0) / MiB)
            for name, info in RUNS.items():
                fill(device, size)
                report, took = erase(netns, info)
                (attempt,) = [a for a in report["attempts"]
                              if a["method"] == report["method"]]
                method_rate = report["bytes_covered"] / max(
                    attempt["seconds"], 1e-6) / MiB
                if round_:
                    rates[name].append(method_rate)
                    steps[name].append(took)
                h.say(f"round {round_}{' (warm-up)' if not round_ else ''}"
                      f" {name}: {report['method']} "
                      f"{report['bytes_covered'] // MiB} MiB in "
                      f"{attempt['seconds']} s = {method_rate:.0f} MiB/s; "
                      f"whole step {took:.2f} s; read-back "
                      f"{report['verification']['passed']}")
        base = statistics.median(rates["dd oflag=direct (zeroes)"])
        print(f"\nerase throughput on a {args.size_mib} MiB loop device "
              f"(median of {args.rounds}; MiB/s of bytes covered):")
        for name, values in rates.items():
            median = statistics.median(values)
            line = f"  {name:28s} {median:8.0f} MiB/s  ({median / base:.2f}" \
                   f" x dd)"
            if name in steps:
                line += f"; whole step {statistics.median(steps[name]):.2f} s"
            print(line)
        print(json.dumps({k: [round(v) for v in vs]
                          for k, vs in rates.items()}))
        return 0
    except h.Unavailable as e:
        print(f"skipped: {e}", file=sys.stderr)
        return 0
    finally:
        cleanups.run()


if __name__ == "__main__":
    sys.exit(main())
