#!/usr/bin/env python3
"""Raw image write throughput: our agent against ``curl URL | dd``.

Run as root from the repository root (``tox -e bench`` runs it too):

    python benchmarks/image_write.py [--size-mib 1024] [--rounds 3]

(one unmeasured warm-up round of each comes first)

A 5 GiB loop device (created here) is the only disk the agent can see; a
``--size-mib`` incompressible raw image (with an MBR partition table) is
served from the page cache by ``python -m http.server`` inside a private
network namespace.  Each round, in turn:

- ``curl -s URL | dd of=DEV bs=4M iflag=fullblock oflag=direct``
  (sandboxed like the agent), and
- our agent (standalone, sandboxed): ``POST standby.prepare_image?wait=true``
  with the image's sha256, timed from the request to the answer (download,
  hashing, writing, fsync, checksum check, partition re-read).

It prints MB/s for both and their ratio.  Everything is removed at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import urllib.request

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                os.pardir))

from tests.integration import harness as h  # noqa: E402

TOKEN = "b" * 40
MiB = 1024 * 1024


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    try:
        h.require_prerequisites()
    except h.Unavailable as e:
        print(f"benchmark cannot run here: {e}", file=sys.stderr)
        return 2
    size = args.size_mib * MiB
    cleanups = h.Cleanups()
    try:
        work = h.workdir(cleanups)
        netns = h.make_netns(cleanups)
        device = h.make_loop_device(cleanups, work, 5 * 1024 * MiB)
        www = os.path.join(work, "www")
        os.makedirs(www)
        image = os.path.join(www, "disk.img")
        digest = h.make_disk_image(image, size)
        with open(image, "rb") as f:   # warm the page cache
            while f.read(16 * MiB):
                pass
        port = 8089
        h.serve_http(cleanups, netns, port, www)
        url = f"http://127.0.0.1:{port}/disk.img"
        agent = h.Agent(cleanups, netns, work, device, None,
                        ["--standalone", "--agent-token", TOKEN,
                         "--listen-host", "127.0.0.1"])
        agent.wait_for_log("agent API listening", 30)
        stubs = os.path.join(work, "stubs")
        print(f"image {args.size_mib} MiB, loop device {device}, "
              f"{args.rounds} rounds, interleaved")
        results: dict[str, list[float]] = {"curl | dd": [], "ipa-twisted": []}
        # One unmeasured round of each first: the first writes to the
        # sparse backing file allocate it.
        time_curl_dd(netns, device, stubs, url)
        time_agent(netns, url, digest)
        for n in range(1, args.rounds + 1):
            t = time_curl_dd(netns, device, stubs, url)
            results["curl | dd"].append(size / t / 1e6)
            t = time_agent(netns, url, digest)
            results["ipa-twisted"].append(size / t / 1e6)
            print(f"round {n}: curl|dd {results['curl | dd'][-1]:7.0f} MB/s, "
                  f"ipa-twisted {results['ipa-twisted'][-1]:7.0f} MB/s")
        ok = h.device_sha256(device, size) == digest
        print(f"disk holds the image: {ok}")
        base = statistics.median(results["curl | dd"])
        ours = statistics.median(results["ipa-twisted"])
        print(f"median: curl|dd {base:.0f} MB/s, ipa-twisted {ours:.0f} MB/s, "
              f"ratio {ours / base:.2f}")
        return 0 if ok else 1
    finally:
        cleanups.run()


def time_curl_dd(netns: str, device: str, stubs: str, url: str) -> float:
    script = (f"curl -sf {url} | dd of={device} bs=4M iflag=fullblock "
              f"oflag=direct status=none && sync")
    argv = ["ip", "netns", "exec", netns, "unshare", "--pid", "--mount",
            "--fork", "--mount-proc", h.SANDBOX, device, stubs, "--",
            "sh", "-c", script]
    start = time.monotonic()
    subprocess.run(argv, check=True, stderr=subprocess.DEVNULL)
    return time.monotonic() - start


def time_agent(netns: str, url: str, digest: str) -> float:
    body = json.dumps({"name": "standby.prepare_image", "params": {
        "image_info": {"id": f"bench-{time.monotonic()}", "urls": [url],
                       "os_hash_algo": "sha256", "os_hash_value": digest,
                       "disk_format": "raw"}}}).encode()
    request = urllib.request.Request(
        f"http://127.0.0.1:9999/v1/commands/?wait=true&agent_token={TOKEN}",
        data=body, method="POST")
    with h.in_netns(netns):
        start = time.monotonic()
        with urllib.request.urlopen(request, timeout=600) as response:
            answer = json.loads(response.read())
        took = time.monotonic() - start
    if answer["command_status"] != "SUCCEEDED":
        raise RuntimeError(f"prepare_image failed: {answer['command_error']}")
    return took


if __name__ == "__main__":
    sys.exit(main())
