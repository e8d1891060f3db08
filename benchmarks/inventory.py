#!/usr/bin/env python3
"""Inventory speed, and what LLDP costs the start-up.

Run as root from the repository root:

    python benchmarks/inventory.py [--rounds 5]

1. Time to a complete inventory (no LLDP) on this machine: our generic
   manager against ironic-python-agent 13.0.0's (installed from PyPI into a
   cached virtualenv), both measured inside their own process around the
   collection call only, and as whole commands; interleaved rounds, in the
   same network namespace and disk-masking sandbox (the only disk is a loop
   device).
2. Agent start -> lookup answered by a real Ironic, with LLDP enabled
   (``--collect-lldp``, ``--lldp-timeout 30``, no LLDP neighbour) against
   without: lookup must not wait for LLDP.

Prints the medians and the ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                os.pardir))

from tests.integration import harness as h  # noqa: E402
from tests.integration import scenarios  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))

OURS = """
import json, sys, time
from twisted.internet.defer import ensureDeferred
from twisted.internet.task import react
from ipa_twisted.config import load_config
from ipa_twisted.inventory_cli import collect

config = load_config({"device_allowlist": sys.argv[1]}, cmdline="")

async def main(reactor):
    start = time.monotonic()
    inventory = await collect(reactor, config)
    took = time.monotonic() - start
    print(json.dumps({"seconds": took, "disks": len(inventory["disks"]),
                      "interfaces": len(inventory["interfaces"])}))

react(lambda r: ensureDeferred(main(r)))
"""

THEIRS = """
import json, sys, time
from ironic_python_agent import config
config.populate_config()
config.CONF([], project="ironic-python-agent")
from ironic_python_agent import hardware
start = time.monotonic()
managers = hardware.get_managers()
inventory = hardware.dispatch_to_managers("list_hardware_info")
took = time.monotonic() - start
print(json.dumps({"seconds": took, "disks": len(inventory["disks"]),
                  "interfaces": len(inventory["interfaces"])}))
"""


def timed(netns: str, device: str, stubs: str, argv: list[str]
          ) -> tuple[float, float]:
    start = time.monotonic()
    out = h.sandboxed(netns, device, stubs, argv).stdout
    whole = time.monotonic() - start
    inner = json.loads(out.strip().splitlines()[-1])["seconds"]
    return inner, whole


def inventory_benchmark(rounds: int) -> None:
    ipa = h.ipa_venv()
    cleanups = h.Cleanups()
    try:
        work = h.workdir(cleanups)
        netns = h.make_netns(cleanups)
        device = h.make_loop_device(cleanups, work, 1 << 30)
        stubs = os.path.join(work, "stubs")
        ours_py = os.path.join(work, "ours.py")
        theirs_py = os.path.join(work, "theirs.py")
        with open(ours_py, "w") as f:
            f.write(OURS)
        with open(theirs_py, "w") as f:
            f.write(THEIRS)
        ours: list[tuple[float, float]] = []
        theirs: list[tuple[float, float]] = []
        for _ in range(rounds):
            ours.append(timed(netns, device, stubs,
                              [sys.executable, ours_py, device]))
            theirs.append(timed(netns, device, stubs,
                                [os.path.join(ipa, "bin", "python"),
                                 theirs_py]))
        o_in = statistics.median(t[0] for t in ours)
        t_in = statistics.median(t[0] for t in theirs)
        o_all = statistics.median(t[1] for t in ours)
        t_all = statistics.median(t[1] for t in theirs)
        print(f"inventory (no LLDP), median of {rounds}:")
        print(f"  collection only: ipa-twisted {o_in * 1000:.0f} ms, "
              f"ironic-python-agent {t_in * 1000:.0f} ms "
              f"-> {t_in / o_in:.1f}x faster")
        print(f"  whole command:   ipa-twisted {o_all * 1000:.0f} ms, "
              f"ironic-python-agent {t_all * 1000:.0f} ms "
              f"-> {t_all / o_all:.1f}x faster")
    finally:
        cleanups.run()


def lookup_benchmark(rounds: int) -> None:
    # Fast track: a manageable node may be looked up, and heartbeats only
    # get recorded, so every agent of the benchmark meets the same Ironic.
    env = scenarios.Environment(fast_track=True)
    try:
        env.ironic.enroll("bench", {"name": env.device})
        api = env.api
        api.provision("bench", "manage")
        api.wait_for_state("bench", {"manageable"}, 60)
        with_lldp: list[float] = []
        without: list[float] = []
        variants = [(["--collect-lldp", "--lldp-timeout", "30"], with_lldp),
                    ([], without)]
        for n in range(rounds):
            # alternate which goes first, so that order does not bias
            for flags, times in (variants if n % 2 == 0 else variants[::-1]):
                agent = env.agent(f"lookup-{n}-{len(flags)}",
                                  flags + ["--no-auto-tls"])
                times.append(agent.wait_for_log("lookup found node", 60))
                agent.stop()
        a, b = statistics.median(with_lldp), statistics.median(without)
        print(f"agent start -> lookup answered (real Ironic), median of "
              f"{rounds}: with LLDP listening (30 s timeout, no neighbour) "
              f"{a * 1000:.0f} ms, without {b * 1000:.0f} ms, "
              f"ratio {a / b:.2f}")
    finally:
        env.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    try:
        h.require_prerequisites()
    except h.Unavailable as e:
        print(f"benchmark cannot run here: {e}", file=sys.stderr)
        return 2
    inventory_benchmark(args.rounds)
    lookup_benchmark(args.rounds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
