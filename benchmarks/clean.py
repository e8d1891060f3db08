#!/usr/bin/env python3
"""The time of a full clean of a 1 GiB disk: ours against
ironic-python-agent 13.0.0, in the same run, on the same loop device.

Run as root from the repository root:

    python benchmarks/clean.py [--size-mib 1024] [--rounds 3]

A full clean is what a real Ironic runs with its defaults on a node it
tears down (automated cleaning): ``erase_devices_metadata`` (priority 99)
then ``erase_devices`` (10), with Ironic's default clean parameters in
``driver_internal_info`` (one random pass and zeroes, secure erase where
the disk has it, no shred fallback after a failed secure erase).  Both
agents run sandboxed, standalone, behind their own API (benchmarks/
agents.py); the clock is the API client's, from the first step's POST to
the second's answer (``?wait=true``).  The device is filled with data
before each clean and must read back as zeroes after it (checked outside
the time).

A loop device has no ATA or NVMe erase, so IPA 13.0.0 shreds it (its
generic manager lists no loop devices: a hardware manager of the
benchmark lists this one and nothing else, IPA's own code does the
rest).  Ours, by Ironic's defaults, discards it (a loop device's discarded
blocks read back as zeroes, which it checks), and is also timed with
discards forbidden (``agent_enable_discard_erase``: false): the same work
as IPA's shred, one random pass and one of zeroes.
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

from benchmarks import agents  # noqa: E402
from tests.integration import harness as h  # noqa: E402

MiB = 1024 * 1024

#: Ironic 39's default clean parameters (deploy_utils.agent_add_clean_params
#: with its default configuration)
IRONIC_DEFAULTS = {
    "agent_erase_devices_iterations": 1,
    "agent_erase_devices_zeroize": True,
    "agent_continue_if_secure_erase_failed": False,
    "agent_continue_if_ata_erase_failed": False,
    "agent_enable_nvme_secure_erase": True,
    "agent_enable_ata_secure_erase": True,
    "disk_erasure_concurrency": 4,
    "agent_erase_skip_read_only": False,
}

#: For IPA: its generic manager with the benchmark's loop device as its
#: only disk (it never lists loop devices itself).
IPA_CLEAN_MANAGER = """\
import os

from ironic_python_agent import hardware


class BenchDisk(hardware.GenericHardwareManager):
    HARDWARE_MANAGER_NAME = "bench_disk"
    HARDWARE_MANAGER_VERSION = "1"

    def evaluate_hardware_support(self):
        return hardware.HardwareSupport.SERVICE_PROVIDER

    def get_os_install_device(self, permit_refresh=False):
        return os.environ["IPA_BENCH_DEVICE"]

    def list_block_devices(self, include_partitions=False,
                           all_serial_and_wwn=False):
        name = os.environ["IPA_BENCH_DEVICE"]
        with open("/sys/class/block/%s/size" % os.path.basename(name)) as f:
            size = int(f.read()) * 512
        return [hardware.BlockDevice(name=name, model="loop", size=size,
                                     rotational=False)]
"""


def fill(device: str, size: int) -> None:
    block = os.urandom(4 * MiB)
    with open(device, "r+b") as f:
        for i in range(size // len(block)):
            f.write(i.to_bytes(8, "little") + block[8:])
        os.fsync(f.fileno())
    h.run(["sgdisk", "-n", "1:2048:+16M", device])


def reads_zero(device: str, size: int) -> bool:
    zero = bytes(8 * MiB)
    with open(device, "rb") as f:
        for _ in range(size // len(zero)):
            if f.read(len(zero)) != zero:
                return False
    return True


def full_clean(netns: str, port: int, info: dict[str, object]) -> float:
    node = {"uuid": "bench-node", "driver_internal_info": info,
            "properties": {}, "instance_info": {}}
    t0 = time.monotonic()
    for step in ("erase_devices_metadata", "erase_devices"):
        agents.run_command(netns, port, "clean.execute_clean_step", {
            "step": {"step": step, "interface": "deploy"},
            "node": node, "ports": []})
    return time.monotonic() - t0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    size = args.size_mib * MiB
    cleanups = h.Cleanups()
    try:
        h.require_prerequisites()
        work = h.workdir(cleanups)
        netns = h.make_netns(cleanups)
        device = h.make_loop_device(cleanups, work, size)
        tmp = os.path.join(work, "tmp")
        os.makedirs(tmp)
        ours = agents.OurAgent(cleanups, netns, work, device, 9101)
        ipa = agents.IPAAgent(cleanups, netns, work, device, 9102, tmp,
                              manager=IPA_CLEAN_MANAGER)
        runs = {
            "ours, Ironic's defaults": (ours.port, IRONIC_DEFAULTS),
            "ours, no discard (1 random pass + zeroes)": (
                ours.port, {**IRONIC_DEFAULTS,
                            "agent_enable_discard_erase": False}),
            "IPA 13.0.0, Ironic's defaults (shred)": (ipa.port,
                                                      IRONIC_DEFAULTS),
        }
        times: dict[str, list[float]] = {name: [] for name in runs}
        for round_ in range(args.rounds):
            for name, (port, info) in runs.items():
                fill(device, size)
                took = full_clean(netns, port, info)
                if not reads_zero(device, size):
                    raise RuntimeError(f"{name}: the disk does not read "
                                       f"back as zeroes after the clean")
                times[name].append(took)
                h.say(f"round {round_ + 1} {name}: {took:.2f} s")
        print(f"\nfull clean (erase_devices_metadata + erase_devices) of a "
              f"{args.size_mib} MiB loop device, median of {args.rounds}:")
        base = statistics.median(times["IPA 13.0.0, Ironic's defaults "
                                       "(shred)"])
        for name, values in times.items():
            median = statistics.median(values)
            print(f"  {name:44s} {median:7.2f} s  ({median / base:.2f} x "
                  f"IPA)")
        print(json.dumps({k: [round(v, 2) for v in vs]
                          for k, vs in times.items()}))
        return 0
    except h.Unavailable as e:
        print(f"skipped: {e}", file=sys.stderr)
        return 0
    finally:
        cleanups.run()


if __name__ == "__main__":
    sys.exit(main())
