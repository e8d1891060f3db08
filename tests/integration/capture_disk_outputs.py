"""Capture the disk tools' real outputs in the test machine, as fixtures.

    python -m tests.integration.capture_disk_outputs tests/fixtures/erase

Boots the UEFI test machine (uefi_vm.py) with QEMU's emulated NVMe
controller and an AHCI SATA disk (both backed by files in a work
directory), runs ``nvme``, ``hdparm`` and ``smartctl`` in it as the agent
runs them (and through the erase state changes: a format, a security
password set and an erase where the device offers them), and writes each
output to OUTDIR with a header naming where it came from.  The outputs
come back over the serial console in base64; nothing is edited.
"""

from __future__ import annotations

import base64
import os
import re
import subprocess
import sys
import time

from tests.integration import harness as h
from tests.integration import uefi_vm

MiB = 1024 ** 2

# (fixture name, shell command run in the guest)
COMMANDS = [
    ("nvme-version", "nvme version"),
    ("nvme-id-ctrl-qemu.json", "nvme id-ctrl /dev/nvme0 -o json"),
    ("nvme-id-ns-qemu.json", "nvme id-ns /dev/nvme0n1 -o json"),
    ("nvme-sanitize-log-qemu.json", "nvme sanitize-log /dev/nvme0 -o json"),
    ("nvme-list-subsys-qemu.json", "nvme list-subsys -o json"),
    ("lsblk-discard-qemu.txt", "lsblk -D -b -o NAME,DISC-ALN,DISC-GRAN,"
     "DISC-MAX,DISC-ZERO,RO,TYPE,TRAN"),
    ("sysfs-queue-qemu.txt", "for d in nvme0n1 sda vda; do for a in "
     "discard_max_bytes discard_granularity write_zeroes_max_bytes "
     "logical_block_size; do echo \"$d $a $(cat /sys/block/$d/queue/$a)\";"
     " done; done"),
    ("hdparm-I-qemu-ahci.txt", "hdparm -I /dev/sda"),
    ("smartctl-d-ata-g-security-qemu-ahci.txt",
     "smartctl -d ata -g security /dev/sda"),
    ("smartctl-d-ata-i-g-security-qemu-ahci.txt",
     "smartctl -d ata -i -g security /dev/sda"),
    ("smartctl-x-qemu-ahci.txt", "smartctl -x /dev/sda"),
    ("smartctl-x-qemu-nvme.txt", "smartctl -x /dev/nvme0"),
    ("hdparm-I-qemu-virtio.txt", "hdparm -I /dev/vda"),
    ("smartctl-d-ata-g-security-qemu-virtio.txt",
     "smartctl -d ata -g security /dev/vda"),
    # the erase itself, as the agent runs it
    ("nvme-format-ses1-qemu.txt", "nvme format /dev/nvme0n1 --ses=1 "
     "--force"),
    ("nvme-format-ses2-qemu.txt", "nvme format /dev/nvme0n1 --ses=2 "
     "--force"),
    ("nvme-id-ns-after-format-qemu.json", "nvme id-ns /dev/nvme0n1 -o json"),
    ("nvme-sanitize-crypto-qemu.txt", "nvme sanitize /dev/nvme0 --sanact=4"),
    ("nvme-sanitize-log-after-qemu.json",
     "nvme sanitize-log /dev/nvme0 -o json"),
    ("hdparm-security-set-pass-qemu-ahci.txt",
     "hdparm --user-master u --security-set-pass NULL /dev/sda"),
    ("hdparm-I-after-set-pass-qemu-ahci.txt", "hdparm -I /dev/sda"),
    ("hdparm-sanitize-status-qemu-ahci.txt",
     "hdparm --sanitize-status /dev/sda"),
]

GUEST = """#!/bin/sh
mods=$(sed -n 's/.*ipa_guest_modules=\\([^ ]*\\).*/\\1/p' /proc/cmdline)
mkdir -p /lib/modules && mount --bind "$mods/lib/modules" /lib/modules
dmesg -n 1
modprobe -a virtio_blk nvme ahci sd_mod
mount -t tmpfs tmpfs /run
sleep 3
echo "guest: disks: $(ls /sys/block)"
{commands}
echo "guest: capture done"
echo o > /proc/sysrq-trigger
sleep 30
"""

STEP = """echo "=== BEGIN {name}"
( {command} ) > /tmp/out 2>&1; rc=$?
base64 -w 0 /tmp/out; echo
echo "=== END {name} rc=$rc"
"""


def capture(outdir: str) -> None:
    cleanups = h.Cleanups()
    try:
        workdir = h.workdir(cleanups)
        netns = h.make_netns(cleanups)
        files = {}
        for name, size in (("boot", 16 * MiB), ("nvme", 256 * MiB),
                           ("sata", 256 * MiB)):
            files[name] = os.path.join(workdir, f"{name}.img")
            with open(files[name], "wb") as f:
                f.truncate(size)
        devices = [
            "-drive", f"if=none,id=nvm0,format=raw,discard=unmap,"
                      f"file={files['nvme']}",
            "-device", "nvme,serial=IPATWNVME0001,drive=nvm0",
            "-drive", f"if=none,id=sata0,format=raw,discard=unmap,"
                      f"file={files['sata']}",
            "-device", "ahci,id=ahci",
            "-device", "ide-hd,bus=ahci.0,drive=sata0,serial=IPATWSATA0001",
        ]
        machine = uefi_vm.UefiMachine(cleanups, workdir, files["boot"],
                                      netns, devices=devices)
        script = os.path.join(workdir, "guest.sh")
        with open(script, "w") as f:
            f.write(GUEST.format(commands="".join(
                STEP.format(name=n, command=c) for n, c in COMMANDS)))
        machine.boot_ramdisk(script, h.free_port())
        machine.wait_for_serial("guest: capture done", 600)
        serial = machine.read_serial()
        qemu = subprocess.run(["qemu-system-x86_64", "--version"],
                              capture_output=True, text=True
                              ).stdout.splitlines()[0]
        kernel = re.search(r"Linux version (\S+)", serial)
        date = time.strftime("%Y-%m-%d")
        os.makedirs(outdir, exist_ok=True)
        for name, command in COMMANDS:
            found = re.search(rf"=== BEGIN {re.escape(name)}\r?\n(\S*)\r?\n"
                              rf"=== END {re.escape(name)} rc=(\d+)", serial)
            if not found:
                h.say(f"{name}: not in the serial log")
                continue
            body = base64.b64decode(found.group(1))
            header = (
                f"# source: captured {date} by tests/integration/"
                f"capture_disk_outputs.py in the test machine: {qemu}, "
                f"guest kernel {kernel.group(1) if kernel else '?'}; "
                f"NVMe: -device nvme,serial=IPATWNVME0001 (256 MiB file); "
                f"SATA: -device ahci + ide-hd,serial=IPATWSATA0001 "
                f"(256 MiB file); virtio: virtio-blk-pci (16 MiB file)\n"
                f"# command: {command}\n"
                f"# exit code: {found.group(2)}\n")
            with open(os.path.join(outdir, name), "wb") as f:
                f.write(header.encode() + body)
            h.say(f"{name}: {len(body)} bytes, exit {found.group(2)}")
    finally:
        cleanups.run()


if __name__ == "__main__":
    capture(sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures/erase")
