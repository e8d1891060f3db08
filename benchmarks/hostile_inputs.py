#!/usr/bin/env python3
"""Peak memory and outcome of a standalone agent fed hostile images and
config drives (issue #12 items 4-8).

Run as root from the repository root:

    python benchmarks/hostile_inputs.py [--code DIR] [--cases a,b] [--hang-after S]

``--code`` is the checkout whose ``ipa_twisted`` the agent runs (put first
on ``PYTHONPATH``; default: this one), so that one script measures two
commits:

    git worktree add /tmp/image-base bf227ac
    python benchmarks/hostile_inputs.py --code /tmp/image-base
    python benchmarks/hostile_inputs.py

Each case gets a fresh sandboxed agent (``--standalone``) on a 5 GiB loop
device in a private network namespace, and images served by ``python -m
http.server`` (which ignores ``Range``).  One ``standby.prepare_image`` is
sent; the command is polled until it ends, or declared hung after
``--hang-after`` seconds; then the agent's peak resident memory (VmHWM of
its process) is read, and whether it still accepts a command (a
``standby.get_partition_uuids``, which a busy agent answers with 409).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any, Callable

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                os.pardir))

from tests import hostile_images as hi  # noqa: E402
from tests.integration import agent_api  # noqa: E402
from tests.integration import harness as h  # noqa: E402

TOKEN = "e" * 40
MiB = 1024 * 1024
DISK = 5120 * MiB  # the agent wants 4 GiB at least
PORT = 8093


def status_kib(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


class Case:
    def __init__(self, name: str, what: str,
                 make: Callable[[str], dict[str, Any]]) -> None:
        self.name = name
        self.what = what
        self.make = make  # (www dir) -> prepare_image params


def _write(www: str, name: str, data: bytes) -> int:
    with open(os.path.join(www, name), "wb") as f:
        f.write(data)
    return len(data)


def _info(name: str, digest: str = "0" * 64, fmt: str = "qcow2",
          **extra: Any) -> dict[str, Any]:
    return {"image_info": {"id": name,
                           "urls": [f"http://127.0.0.1:{PORT}/{name}"],
                           "os_hash_algo": "sha256", "os_hash_value": digest,
                           "disk_format": fmt, **extra}}


def qcow2_case(name: str, data: Callable[[], bytes]) -> Callable[[str],
                                                                 dict]:
    def make(www: str) -> dict[str, Any]:
        size = _write(www, name, data())
        print(f"    {name}: {size} bytes on the wire", flush=True)
        return _info(name)
    return make


def range_ignored(www: str) -> dict[str, Any]:
    """A real 400 MiB qcow2 (qemu-img) grown past 512 MiB so that its L1
    table moves behind its L2 tables: they must be fetched again by range,
    and http.server ignores Range."""
    raw = os.path.join(www, "big.raw")
    name = "grown.qcow2"
    path = os.path.join(www, name)
    with open(raw, "wb") as f:
        for _ in range(100):
            f.write(os.urandom(4 * MiB))
    h.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", raw, path])
    os.unlink(raw)
    h.run(["qemu-img", "resize", path, "+1G"])
    h.run(["qemu-io", "-c", "write -P 9 900M 64k", path])
    print(f"    {name}: {os.path.getsize(path)} bytes", flush=True)
    return _info(name, h.file_sha256(path))


def config_drive(www: str) -> dict[str, Any]:
    digest = h.make_disk_image(os.path.join(www, "small.img"), 8 * MiB)
    drive = hi.config_drive_bomb(1024 * MiB)
    print(f"    config drive: {len(drive)} bytes of base64", flush=True)
    params = _info("small.img", digest, "raw")
    params["configdrive"] = drive
    return params


def expands_past_disk(www: str) -> dict[str, Any]:
    data = hi.gzip_bomb(DISK + 512 * MiB)
    _write(www, "big.gz", data)
    import hashlib
    print(f"    big.gz: {len(data)} bytes, inflates to "
          f"{(DISK + 512 * MiB) // MiB} MiB on a {DISK // MiB} MiB disk",
          flush=True)
    return _info("big.gz", hashlib.sha256(data).hexdigest(), "raw")


def shake(www: str) -> dict[str, Any]:
    digest = h.make_disk_image(os.path.join(www, "small.img"), 8 * MiB)
    params = _info("small.img", digest, "raw")
    params["image_info"]["os_hash_algo"] = "shake_128"
    params["image_info"]["os_hash_value"] = "0" * 64
    return params


CASES = [
    Case("qcow2-zstd-bomb", "one zstd cluster inflating to 1.5 GiB",
         qcow2_case("zstd.qcow2", hi.qcow2_zstd_bomb)),
    Case("qcow2-overlap", "8192 overlapping compressed clusters",
         qcow2_case("overlap.qcow2", hi.qcow2_overlapping_compressed)),
    Case("qcow2-bitmap", "8 TiB of 512-byte clusters in a 4 KiB header",
         qcow2_case("bitmap.qcow2", hi.qcow2_huge_bitmap)),
    Case("qcow2-range-ignored", "400 MiB qcow2, tables behind data, no "
         "Range support", range_ignored),
    Case("configdrive-bomb", "1.4 MB config drive inflating to 1 GiB",
         config_drive),
    Case("gzip-past-disk", "gzip image inflating past the disk's end",
         expands_past_disk),
    Case("shake_128", "os_hash_algo shake_128", shake),
]


def run_case(case: Case, code: str, hang_after: float) -> dict[str, Any]:
    cleanups = h.Cleanups()
    try:
        work = h.workdir(cleanups)
        netns = h.make_netns(cleanups)
        device = h.make_loop_device(cleanups, work, DISK)
        www = os.path.join(work, "www")
        os.makedirs(www)
        params = case.make(www)
        h.serve_http(cleanups, netns, PORT, www)
        agent = h.Agent(cleanups, netns, work, device, None,
                        ["--standalone", "--agent-token", TOKEN,
                         "--listen-host", "127.0.0.1",
                         "--image-download-connection-retries", "1",
                         "--image-download-connection-retry-interval", "0"],
                        env={"PYTHONPATH": code})
        agent.wait_for_log("agent API listening", 60)
        pid = h.child_pid(agent.proc.pid)
        assert pid is not None
        idle = status_kib(pid, "VmRSS")
        started = time.monotonic()
        status, _, body = agent_api.call(
            netns, "POST", f"/v1/commands/?agent_token={TOKEN}",
            {"name": "standby.prepare_image", "params": params}, timeout=600)
        outcome = f"HTTP {status}"
        if status == 200:
            command = body["id"]
            while True:
                _, _, body = agent_api.call(
                    netns, "GET",
                    f"/v1/commands/{command}?agent_token={TOKEN}",
                    timeout=600)
                if body["command_status"] != "RUNNING":
                    error = body.get("command_error") or {}
                    outcome = (f"{body['command_status']} "
                               f"{error.get('type', '')}: "
                               f"{str(error.get('details', ''))[:90]}")
                    break
                if time.monotonic() - started > hang_after:
                    outcome = f"still RUNNING after {hang_after:.0f} s (hung)"
                    break
                time.sleep(0.5)
        elif isinstance(body, dict):
            outcome += f": {str(body.get('faultstring') or body)[:90]}"
        took = time.monotonic() - started
        peak = status_kib(pid, "VmHWM")
        next_status, _, _ = agent_api.call(
            netns, "POST", f"/v1/commands/?wait=true&agent_token={TOKEN}",
            {"name": "standby.get_partition_uuids", "params": {}})
        return {"case": case.name, "what": case.what, "outcome": outcome,
                "seconds": round(took, 1), "idle_rss_mib": idle // 1024,
                "peak_rss_mib": peak // 1024,
                "next_command": next_status}
    finally:
        cleanups.run()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--code", default=os.path.abspath(
        os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir)))
    parser.add_argument("--cases", default="")
    parser.add_argument("--hang-after", type=float, default=60.0)
    args = parser.parse_args()
    try:
        h.require_prerequisites()
    except h.Unavailable as e:
        print(f"benchmark cannot run here: {e}", file=sys.stderr)
        return 2
    wanted = set(filter(None, args.cases.split(",")))
    import subprocess
    where = subprocess.run(
        [sys.executable, "-c", "import ipa_twisted; print(ipa_twisted.__file__)"],
        cwd="/", env={**os.environ, "PYTHONPATH": args.code},
        capture_output=True, text=True).stdout.strip()
    print(f"agent code: {where}")
    rows = []
    for case in CASES:
        if wanted and case.name not in wanted:
            continue
        print(f"{case.name}: {case.what}", flush=True)
        row = run_case(case, args.code, args.hang_after)
        rows.append(row)
        print(f"    peak RSS {row['peak_rss_mib']} MiB (idle "
              f"{row['idle_rss_mib']} MiB), {row['seconds']} s, "
              f"{row['outcome']}; next command: HTTP {row['next_command']}",
              flush=True)
    print(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
