#!/usr/bin/env python3
"""Image write speed and memory: ours against ironic-python-agent 13.0.0
and against ``curl | dd``.

Run as root from the repository root:

    python benchmarks/deploy.py [--size-mib 2048] [--rounds 2]

A ``--size-mib`` incompressible raw image (MBR + one partition) and its
qcow2 conversion are served from the page cache by ``python -m
http.server`` inside a private network namespace; the only disk anyone can
see is a 5 GiB loop device created here.  Interleaved, each round:

- raw:   ``curl URL | dd of=DEV bs=4M iflag=fullblock oflag=direct``;
         IPA 13.0.0's own raw streaming write
         (``StandbyExtension._stream_raw_image_onto_device``);
         our agent's ``standby.prepare_image`` (sha256 verified);
- qcow2: IPA 13.0.0's own path (download to a temporary file, verify,
         ``qemu-img convert`` onto the device); ours (streamed).

Every writer runs in the same disk-masking sandbox.  MB/s are image bytes
over wall time from the start of the request to the end (IPA: of the
function call).  Peak RSS growth: ours, sampled from the agent's
/proc/PID/status during the write; IPA, from getrusage (itself and its
children: qemu-img).  IPA's qcow2 path also needs the whole image as a
temporary file (RAM in a ramdisk): printed too.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import threading
import time
import urllib.request

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                os.pardir))

from tests.integration import harness as h  # noqa: E402

TOKEN = "d" * 40
MiB = 1024 * 1024

IPA_SCRIPT = r"""
import json, os, resource, sys, time
from ironic_python_agent import config
config.populate_config()
config.CONF([], project="ironic-python-agent")
from ironic_python_agent.extensions import standby

url, digest, device, kind = sys.argv[1:5]
info = {"id": f"bench-{time.time()}", "urls": [url], "os_hash_algo": "sha256",
        "os_hash_value": digest, "disk_format": kind,
        "stream_raw_images": kind == "raw"}
ext = standby.StandbyExtension()
ext.partition_uuids = {}  # what prepare_image sets before streaming

def rss_kib():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])

before = rss_kib()
start = time.monotonic()
if kind == "raw":
    ext._stream_raw_image_onto_device(info, device)
else:
    ext._cache_and_write_image(info, device)
took = time.monotonic() - start
staged = os.path.join(os.environ.get("TMPDIR", "/tmp"), info["id"])
print(json.dumps({
    "seconds": took,
    "rss_growth_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    - before,
    "child_max_rss_kib":
        resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss,
    "staged_bytes": os.path.getsize(staged) if os.path.exists(staged) else 0,
}))
"""


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def ours(netns: str, pid: int, url: str, digest: str, kind: str
         ) -> tuple[float, int]:
    body = json.dumps({"name": "standby.prepare_image", "params": {
        "image_info": {"id": f"bench-{time.monotonic()}", "urls": [url],
                       "os_hash_algo": "sha256", "os_hash_value": digest,
                       "disk_format": kind}}}).encode()
    request = urllib.request.Request(
        f"http://127.0.0.1:9999/v1/commands/?wait=true&agent_token={TOKEN}",
        data=body, method="POST")
    baseline = rss_kib(pid)
    peak = [baseline]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], rss_kib(pid))
            time.sleep(0.02)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        with h.in_netns(netns):
            start = time.monotonic()
            with urllib.request.urlopen(request, timeout=900) as response:
                answer = json.loads(response.read())
            took = time.monotonic() - start
    finally:
        done.set()
        sampler.join()
    if answer["command_status"] != "SUCCEEDED":
        raise RuntimeError(f"prepare_image failed: {answer['command_error']}")
    return took, peak[0] - baseline


def curl_dd(netns: str, device: str, stubs: str, url: str) -> float:
    script = (f"curl -sf {url} | dd of={device} bs=4M iflag=fullblock "
              f"oflag=direct status=none && sync")
    start = time.monotonic()
    h.sandboxed(netns, device, stubs, ["sh", "-c", script], timeout=900)
    return time.monotonic() - start


def ipa(netns: str, device: str, stubs: str, venv: str, script: str,
        tmpdir: str, url: str, digest: str, kind: str) -> dict:
    out = h.sandboxed(netns, device, stubs,
                      ["env", f"TMPDIR={tmpdir}",
                       os.path.join(venv, "bin", "python"), script, url,
                       digest, device, kind], timeout=1800).stdout
    result: dict = json.loads(out.strip().splitlines()[-1])
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=2048)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    try:
        h.require_prerequisites()
        venv = h.ipa_venv()
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
        raw = os.path.join(www, "disk.img")
        raw_digest = h.make_disk_image(raw, size)
        qcow = os.path.join(www, "disk.qcow2")
        h.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", raw, qcow])
        qcow_digest = h.file_sha256(qcow)
        for path in (raw, qcow):        # warm the page cache
            with open(path, "rb") as f:
                while f.read(16 * MiB):
                    pass
        h.serve_http(cleanups, netns, 8089, www)
        base = "http://127.0.0.1:8089/"
        agent = h.Agent(cleanups, netns, work, device, None,
                        ["--standalone", "--agent-token", TOKEN,
                         "--listen-host", "127.0.0.1"])
        agent.wait_for_log("agent API listening", 30)
        pid = h.child_pid(agent.proc.pid)
        assert pid is not None
        stubs = os.path.join(work, "stubs")
        script = os.path.join(work, "ipa_write.py")
        with open(script, "w") as f:
            f.write(IPA_SCRIPT)
        tmpdir = os.path.join(work, "ipa-tmp")
        os.makedirs(tmpdir)
        print(f"image {args.size_mib} MiB raw (qcow2 "
              f"{os.path.getsize(qcow) // MiB} MiB), loop device {device}, "
              f"{args.rounds} rounds, interleaved")
        rows: dict[str, list[tuple[float, float | None]]] = {}

        def add(name: str, seconds: float, rss_mib: float | None) -> None:
            rows.setdefault(name, []).append((size / seconds / 1e6, rss_mib))
            print(f"  {name:24s} {size / seconds / 1e6:7.0f} MB/s"
                  + (f", peak RSS +{rss_mib:.0f} MiB" if rss_mib is not None
                     else ""), flush=True)

        staged = 0
        # unmeasured: the first writes allocate the sparse backing file
        curl_dd(netns, device, stubs, base + "disk.img")
        for n in range(1, args.rounds + 1):
            print(f"round {n}:")
            add("raw: curl | dd", curl_dd(netns, device, stubs,
                                          base + "disk.img"), None)
            r = ipa(netns, device, stubs, venv, script, tmpdir,
                    base + "disk.img", raw_digest, "raw")
            add("raw: ironic-python-agent", r["seconds"],
                r["rss_growth_kib"] / 1024)
            t, rss = ours(netns, pid, base + "disk.img", raw_digest, "raw")
            add("raw: ipa-twisted", t, rss / 1024)
            r = ipa(netns, device, stubs, venv, script, tmpdir,
                    base + "disk.qcow2", qcow_digest, "qcow2")
            staged = r["staged_bytes"]
            add("qcow2: ironic-python-agent", r["seconds"],
                max(r["rss_growth_kib"], r["child_max_rss_kib"]) / 1024)
            for name in os.listdir(tmpdir):
                os.unlink(os.path.join(tmpdir, name))
            t, rss = ours(netns, pid, base + "disk.qcow2", qcow_digest,
                          "qcow2")
            add("qcow2: ipa-twisted", t, rss / 1024)
        ok = h.device_sha256(device, size) == raw_digest
        print(f"disk holds the image after the last write: {ok}")

        def med(name: str) -> float:
            return statistics.median(v for v, _ in rows[name])

        def peak(name: str) -> float:
            return max((r for _, r in rows[name] if r is not None),
                       default=0.0)

        print("medians:")
        print(f"  raw:   ipa-twisted {med('raw: ipa-twisted'):.0f} MB/s = "
              f"{med('raw: ipa-twisted') / med('raw: ironic-python-agent'):.2f}"
              f"x ironic-python-agent, "
              f"{med('raw: ipa-twisted') / med('raw: curl | dd'):.2f}x "
              f"curl | dd; peak RSS +{peak('raw: ipa-twisted'):.0f} MiB")
        print(f"  qcow2: ipa-twisted {med('qcow2: ipa-twisted'):.0f} MB/s = "
              f"{med('qcow2: ipa-twisted') / med('qcow2: ironic-python-agent'):.2f}"
              f"x ironic-python-agent; peak RSS +"
              f"{peak('qcow2: ipa-twisted'):.0f} MiB (IPA +"
              f"{peak('qcow2: ironic-python-agent'):.0f} MiB and a "
              f"{staged // MiB} MiB temporary file)")
        return 0 if ok else 1
    finally:
        cleanups.run()


if __name__ == "__main__":
    sys.exit(main())
