#!/usr/bin/env python3
"""Deploy speed, CPU and memory: our agent against ironic-python-agent
13.0.0 and against ``curl | dd``, each through what Ironic waits for.

Run as root from the repository root:

    python benchmarks/deploy.py [--size-mib 1024] [--rounds 3]

A ``--size-mib`` incompressible whole-disk image with a GPT (the common
case: after the write, the backup GPT header is moved to the end of the
disk and the partitions are re-read) and its qcow2 conversion are served
from the page cache by nginx (``nginx-light``, one worker, ``sendfile on``:
as Ironic deployments serve images) on loopback inside a private network
namespace; the only disk anyone can see is a 5 GiB loop device made here.
Both agents run as processes behind their own API, sandboxed alike
(benchmarks/agents.py).  Interleaved, each round:

- raw:   ``curl URL | dd of=DEV bs=4M iflag=fullblock oflag=direct``;
         ``standby.prepare_image`` on IPA 13.0.0 (``stream_raw_images``,
         as Ironic sends it) and on ours;
- qcow2: ``standby.prepare_image`` on IPA 13.0.0 (it stages the file,
         then ``qemu-img convert``) and on ours (streamed).

Every command is ``POST /v1/commands/?wait=true`` with a sha256
``os_hash_value``; the time is the whole call, from the request to the
answer (download, checksum, write, sync, GPT work, partition checks), as
the conductor waits for it.  Before each write some of the image's place
on the disk is zeroed; after it, the disk's data is checked against the
image (read past the page cache).

Printed per writer: MB/s (image bytes / seconds, 1 MB = 10^6 bytes);
CPU seconds per GiB written, of the agent process (all its threads:
utime + stime from /proc/PID/stat before and after) and of the tools it
ran (cutime + cstime: qemu-img, sgdisk...); peak RSS growth of the agent
process (VmHWM, reset before each command through /proc/PID/clear_refs,
and sampled every 20 ms) and the peak PSS growth of its process tree
(sampled every 100 ms: PSS, as a child just forked shares its parent's
pages); for IPA's
qcow2 path the most bytes it staged in its temporary directory (RAM, in a
ramdisk).  The medians of ``--rounds`` and the ratios follow.  The machine
may be shared: compare numbers within one run only.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from typing import Any

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                os.pardir))

from benchmarks import agents  # noqa: E402
from benchmarks.agents import GiB, MiB  # noqa: E402
from tests.integration import harness as h  # noqa: E402

PORT_HTTP = 8089
PORT_OURS = 9999
PORT_IPA = 9998


class Row:
    def __init__(self) -> None:
        self.mbs: list[float] = []
        self.cpu: list[float] = []        # agent process, s per GiB
        self.cpu_tools: list[float] = []  # its children, s per GiB
        self.rss: list[float] = []        # MiB
        self.tree: list[float] = []       # MiB
        self.staged: list[float] = []     # MiB


def curl_dd(netns: str, device: str, stubs: str, url: str
            ) -> tuple[float, float]:
    script = (f"curl -sf {url} | dd of={device} bs=4M iflag=fullblock "
              f"oflag=direct status=none && sync")
    with agents.ChildrenCPU() as cpu:
        start = time.monotonic()
        h.sandboxed(netns, device, stubs, ["sh", "-c", script], timeout=900)
        took = time.monotonic() - start
    return took, cpu.cpu


def prepare_image(agent: Any, url: str, digest: str, kind: str,
                  staging: str | None = None) -> agents.Watch:
    image_info = {
        "id": f"bench-{kind}-{time.monotonic_ns()}", "urls": [url],
        "disk_format": kind, "container_format": "bare",
        "os_hash_algo": "sha256", "os_hash_value": digest,
        "checksum": None, "stream_raw_images": True,
        "image_type": "whole-disk",
    }
    with agents.Watch(agent.pid, staging) as watch:
        agents.run_command(agent.netns, agent.port, "standby.prepare_image",
                           {"image_info": image_info})
    return watch


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--keep", action="store_true",
                        help="keep the work directory (agents' logs)")
    args = parser.parse_args()
    try:
        h.require_prerequisites()
        h.ipa_venv()
    except h.Unavailable as e:
        print(f"benchmark cannot run here: {e}", file=sys.stderr)
        return 2
    size = args.size_mib * MiB
    gib = size / GiB
    cleanups = h.Cleanups()
    rows: dict[str, Row] = {}
    ok = True
    try:
        work = h.workdir(cleanups, keep=args.keep)
        if args.keep:
            print(f"work directory (kept): {work}")
        netns = h.make_netns(cleanups)
        device = h.make_loop_device(cleanups, work, 5 * GiB)
        stubs = os.path.join(work, "stubs")
        h.make_stubs(stubs)
        www = os.path.join(work, "www")
        os.makedirs(www)
        raw = os.path.join(www, "disk.img")
        raw_digest, data_digest = agents.make_gpt_image(raw, size)
        qcow = os.path.join(www, "disk.qcow2")
        h.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", raw, qcow])
        qcow_digest = h.file_sha256(qcow)  # also warms the page cache
        h.file_sha256(raw)
        nginx = agents.serve_nginx(cleanups, netns, PORT_HTTP, www, work)
        base = f"http://127.0.0.1:{PORT_HTTP}/"
        tmpdir = os.path.join(work, "ipa-tmp")
        os.makedirs(tmpdir)
        ours = agents.OurAgent(cleanups, netns, work, device, PORT_OURS)
        ipa = agents.IPAAgent(cleanups, netns, work, device, PORT_IPA, tmpdir)
        print("load average at the start: %.2f %.2f %.2f (2 CPUs are "
              "shared: a run under load says little)" % os.getloadavg())
        print(f"image {args.size_mib} MiB raw GPT (qcow2 "
              f"{os.path.getsize(qcow) // MiB} MiB), served by nginx "
              f"(sendfile); loop device {device}; {args.rounds} rounds, "
              f"interleaved; agents: ours pid {ours.pid}, IPA pid "
              f"{ipa.pid}", flush=True)

        def check(name: str) -> None:
            nonlocal ok
            good = agents.data_sha256(device, size) == data_digest
            if not good:
                ok = False
                print(f"  !! {name}: the disk does not hold the image",
                      flush=True)

        def add(name: str, seconds: float, cpu: float,
                watch: agents.Watch | None = None) -> None:
            row = rows.setdefault(name, Row())
            row.mbs.append(size / seconds / 1e6)
            row.cpu.append(cpu / gib)
            text = (f"  {name:28s} {size / seconds / 1e6:6.0f} MB/s "
                    f"({seconds:5.2f} s), CPU {cpu / gib:5.2f} s/GiB")
            if watch is not None:
                row.cpu_tools.append(watch.cpu_children / gib)
                row.rss.append(watch.growth_mib)
                row.tree.append(watch.tree_growth_mib)
                row.staged.append(watch.staged / MiB)
                text += (f" (+{watch.cpu_children / gib:.2f} tools), peak "
                         f"RSS +{watch.growth_mib:.0f} MiB (tree PSS "
                         f"+{watch.tree_growth_mib:.0f})")
                if watch.staged:
                    text += f", staged {watch.staged / MiB:.0f} MiB"
            print(text, flush=True)

        def spoil() -> None:
            agents.spoil(device, size)

        # unmeasured: the first writes allocate the sparse backing file
        curl_dd(netns, device, stubs, base + "disk.img")
        for n in range(1, args.rounds + 1):
            print(f"round {n}:", flush=True)
            server_cpu = agents.cpu_seconds(nginx)[0]
            spoil()
            took, cpu = curl_dd(netns, device, stubs, base + "disk.img")
            add("raw: curl | dd", took, cpu)
            check("curl | dd")
            for agent, kind, url, digest in (
                    (ipa, "raw", "disk.img", raw_digest),
                    (ours, "raw", "disk.img", raw_digest),
                    (ipa, "qcow2", "disk.qcow2", qcow_digest),
                    (ours, "qcow2", "disk.qcow2", qcow_digest)):
                spoil()
                watch = prepare_image(agent, base + url, digest, kind,
                                      tmpdir if agent is ipa else None)
                add(f"{kind}: {agent.name}", watch.seconds, watch.cpu,
                    watch)
                check(f"{kind}: {agent.name}")
                for name in os.listdir(tmpdir):
                    os.unlink(os.path.join(tmpdir, name))
            used = agents.cpu_seconds(nginx)[0] - server_cpu
            print(f"  (nginx: {used / (gib * 5):.2f} CPU s per GiB "
                  f"served)", flush=True)
    finally:
        cleanups.run()

    def med(name: str, field: str = "mbs") -> float:
        return statistics.median(getattr(rows[name], field))

    def peak(name: str, field: str) -> float:
        return max(getattr(rows[name], field), default=0.0)

    curl = med("raw: curl | dd")
    print(f"medians of {args.rounds} rounds (one run; the machine may be "
          f"shared: compare within a run only):")
    print(f"  {'writer':28s} {'MB/s':>6s} {'/curl|dd':>8s} {'/IPA':>6s} "
          f"{'CPU s/GiB':>10s} {'tools':>6s} {'peak RSS':>9s} "
          f"{'tree PSS':>8s}")
    for kind in ("raw", "qcow2"):
        names = [f"{kind}: curl | dd"] if kind == "raw" else []
        names += [f"{kind}: ironic-python-agent", f"{kind}: ipa-twisted"]
        theirs = med(f"{kind}: ironic-python-agent")
        for name in names:
            row = rows[name]
            mbs = med(name)
            line = (f"  {name:28s} {mbs:6.0f} {mbs / curl:7.2f}x "
                    f"{mbs / theirs:5.2f}x {med(name, 'cpu'):10.2f}")
            if row.rss:
                line += (f" {med(name, 'cpu_tools'):6.2f} "
                         f"{'+%.0f MiB' % peak(name, 'rss'):>9s} "
                         f"{'+%.0f' % peak(name, 'tree'):>8s}")
                if peak(name, "staged"):
                    line += (f"  (+ {peak(name, 'staged'):.0f} MiB staged "
                             f"on disk: RAM in a ramdisk)")
            print(line)
    print(f"  ratios: raw ours/curl|dd "
          f"{med('raw: ipa-twisted') / curl:.2f}x (goal >= 0.9), "
          f"raw ours/IPA "
          f"{med('raw: ipa-twisted') / med('raw: ironic-python-agent'):.2f}x"
          f" (goal >= 2), qcow2 ours/IPA "
          f"{med('qcow2: ipa-twisted') / med('qcow2: ironic-python-agent'):.2f}"
          f"x (goal >= 2.5)")
    print("load average at the end: %.2f %.2f %.2f" % os.getloadavg())
    print(f"every disk checked after its write holds the image: {ok}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
