#!/usr/bin/env python3
"""Agent start -> inspection data accepted by a real Ironic, with and
without LLDP.

Run as root from the repository root:

    python benchmarks/inspection.py [--lldp-timeout 10]

Three cases, each against a real Ironic 39.0.0 in inspect wait:

- collectors ``default`` (no LLDP);
- ``default,lldp`` with an LLDP neighbour (a frame sent on the peer of the
  node's veth every 0.5 s): the post waits only for the first frames;
- ``default,lldp`` without a neighbour: bounded by ``--lldp-timeout``.

The first case is the baseline; the others print their ratio to it.
"""

from __future__ import annotations

import argparse
import os
import socket
import struct
import sys
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                os.pardir))

from ipa_twisted.hardware import lldp  # noqa: E402
from tests.integration import harness as h  # noqa: E402
from tests.integration import scenarios  # noqa: E402


def neighbour(netns: str, stop: threading.Event) -> None:
    """A switch sending LLDP on the other end of the node's cable."""
    frame = (lldp.LLDP_MULTICAST + bytes.fromhex("020000aabbcc")
             + struct.pack("!H", 0x88CC) + lldp.build_lldpdu([
                 (1, b"\x04\x02\x00\x00\xaa\xbb\xcc"), (2, b"\x05swp1"),
                 (3, b"\x00\x78")]))
    with h.in_netns(netns):
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    sock.bind(("ipapeer", 0))
    try:
        while not stop.is_set():
            sock.send(frame)
            stop.wait(0.5)
    finally:
        sock.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lldp-timeout", type=float, default=10.0)
    args = parser.parse_args()
    try:
        h.require_prerequisites()
    except h.Unavailable as e:
        print(f"benchmark cannot run here: {e}", file=sys.stderr)
        return 2
    env = scenarios.Environment()
    results = {}
    try:
        # The other end of the node's "cable" goes to a switch namespace:
        # the node then has one NIC, as on real hardware.
        switch = f"{env.netns}-sw"
        h.run(["ip", "netns", "add", switch])
        env.cleanups.add("switch netns",
                         lambda: h.run(["ip", "netns", "del", switch]))
        h.run(["ip", "netns", "exec", env.netns, "ip", "link", "set",
               "ipapeer", "netns", switch])
        h.run(["ip", "netns", "exec", switch, "ip", "link", "set", "ipapeer",
               "up"])

        def run(label: str, collectors: str) -> None:
            r = scenarios.inspect(env, collectors, "manageable",
                                  lldp_timeout=args.lldp_timeout)
            results[label] = r["post_s"]

        run("no LLDP", "default")
        stop = threading.Event()
        sender = threading.Thread(target=neighbour, args=(switch, stop))
        sender.start()
        try:
            time.sleep(0.2)
            run("LLDP, neighbour present", "default,lldp")
        finally:
            stop.set()
            sender.join()
        run("LLDP, no neighbour", "default,lldp")
    finally:
        env.close()
    base = results["no LLDP"]
    print(f"agent start -> inspection data accepted (real Ironic), "
          f"lldp_timeout {args.lldp_timeout:.0f} s:")
    for label, seconds in results.items():
        print(f"  {label:26s} {seconds:6.2f} s  ({seconds / base:.2f}x the "
              f"no-LLDP time)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
