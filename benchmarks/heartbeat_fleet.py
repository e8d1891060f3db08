#!/usr/bin/env python3
"""Simulate a fleet of agents heartbeating through an Ironic outage.

10,000 agents (by default) heartbeat a single Ironic with
``heartbeat_timeout`` = 300 s.  Ironic is down for 5 minutes; every
heartbeat sent during the outage fails.  The simulation counts the requests
that reach Ironic in 10-second buckets, before, during and after the outage,
and prints the peak load relative to the steady state for:

- ironic-python-agent 13.0.0's schedule (a retry every 5-10 s), and
- ours (``ipa_twisted.heartbeat.next_heartbeat_delay``),

both driven by the same pure schedule interface and the same random seed,
in this one process.  The timing of a real request (a few ms) is neglected.

    python benchmarks/heartbeat_fleet.py [--agents N] [--outage S] [--seed N]
"""

from __future__ import annotations

import argparse
import heapq
import os
import random
import sys
from typing import Callable

sys.path.insert(0, os.path.join(os.path.dirname(__file__), os.pardir))

from ipa_twisted.heartbeat import (  # noqa: E402
    Outcome,
    ipa_heartbeat_delay,
    next_heartbeat_delay,
)

Schedule = Callable[[Outcome, int, float, random.Random], float]


def simulate(
    schedule: Schedule,
    agents: int,
    timeout: float,
    outage_start: float,
    outage_len: float,
    duration: float,
    bucket: float,
    seed: int,
) -> list[int]:
    rng = random.Random(seed)
    # Steady state before the outage: every agent is somewhere in its
    # success interval.
    heap = [(rng.uniform(0, 0.6 * timeout), i) for i in range(agents)]
    heapq.heapify(heap)
    errors = [0] * agents
    counts = [0] * int(duration / bucket + 1)
    outage_end = outage_start + outage_len
    while heap:
        t, i = heapq.heappop(heap)
        if t >= duration:
            break
        counts[int(t / bucket)] += 1
        if outage_start <= t < outage_end:
            errors[i] += 1
            delay = schedule(Outcome.ERROR, errors[i], timeout, rng)
        else:
            errors[i] = 0
            delay = schedule(Outcome.OK, 0, timeout, rng)
        heapq.heappush(heap, (t + delay, i))
    return counts


def report(name: str, counts: list[int], bucket: float,
           outage_start: float, outage_len: float, timeout: float) -> float:
    warm = int(timeout / bucket)  # skip the first interval (start-up)
    steady_buckets = counts[warm:int(outage_start / bucket)]
    steady = sum(steady_buckets) / len(steady_buckets)
    during = counts[int(outage_start / bucket):
                    int((outage_start + outage_len) / bucket)]
    after = counts[int((outage_start + outage_len) / bucket):
                   int((outage_start + outage_len + 60) / bucket)]
    peak = max(counts[warm:])
    print(f"{name:32s} steady {steady / bucket:7.1f} req/s | "
          f"peak {peak / bucket:7.1f} req/s = {peak / steady:5.2f}x steady | "
          f"outage mean {sum(during) / len(during) / steady:5.2f}x | "
          f"first minute after {max(after) / steady:5.2f}x")
    return peak / steady


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agents", type=int, default=10000)
    parser.add_argument("--timeout", type=float, default=300.0)
    parser.add_argument("--outage", type=float, default=300.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--bucket", type=float, default=10.0)
    args = parser.parse_args()
    start = 3 * args.timeout
    duration = start + args.outage + 3 * args.timeout
    print(f"{args.agents} agents, heartbeat_timeout {args.timeout:.0f} s, "
          f"Ironic down for {args.outage:.0f} s, {args.bucket:.0f}-s buckets")
    ratios = {}
    for name, schedule in [
        ("ironic-python-agent 13.0.0", ipa_heartbeat_delay),
        ("ipa-twisted", next_heartbeat_delay),
    ]:
        counts = simulate(schedule, args.agents, args.timeout, start,
                          args.outage, duration, args.bucket, args.seed)
        ratios[name] = report(name, counts, args.bucket, start, args.outage,
                              args.timeout)
    ours = ratios["ipa-twisted"]
    theirs = ratios["ironic-python-agent 13.0.0"]
    print(f"peak load: ipa-twisted {ours:.2f}x steady vs "
          f"ironic-python-agent {theirs:.2f}x ({theirs / ours:.1f} times "
          f"less at the peak)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
