"""Capture mdadm's (and friends') real outputs in the test machine, as
fixtures of the software RAID code.

    python -m tests.integration.capture_raid_outputs tests/fixtures/raid

Boots the UEFI test machine (uefi_vm.py; its Debian kernel has md) with
two 1 GiB virtio disks (files in a work directory), builds a software
RAID as the agent does (IPA's layout: GPT, the RAID partition from
551 MiB; a RAID-1 ESP of 550 MiB partitions with metadata 1.0 in the
space before it), and runs the commands whose outputs the agent reads,
through stopping, assembling and deleting the arrays.  Each output is
written to OUTDIR with a header naming its source and command; they come
back over the serial console in base64; nothing is edited.
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
from tests.integration.capture_disk_outputs import STEP

MiB = 1024 ** 2
COLUMNS = "KNAME,MODEL,SIZE,ROTA,TYPE,UUID,PARTUUID,SERIAL,WWN,LOG-SEC," \
          "PHY-SEC,TRAN,PKNAME"

# (fixture name or None: run, not kept; shell command run in the guest)
COMMANDS: list[tuple[str | None, str]] = [
    (None, "mdadm --version"),
    (None, "parted -s /dev/vda -- mklabel gpt && "
           "parted -s /dev/vdb -- mklabel gpt"),
    (None, "parted -s -a optimal /dev/vda -- mkpart primary 551MiB -1 && "
           "parted -s -a optimal /dev/vdb -- mkpart primary 551MiB -1"),
    ("mdadm-create-md0-raid1.txt",
     "mdadm --create /dev/md0 --force --run --metadata=1 --level 1 "
     "--name md0 --raid-devices 2 /dev/vda1 /dev/vdb1"),
    (None, "LC_ALL=C mdadm --detail /dev/md0"),
    ("mdadm-detail-export-md0.txt", "mdadm --detail --export /dev/md0"),
    (None, "LC_ALL=C mdadm --examine /dev/vda1"),
    ("mdadm-examine-export-vda1.txt", "mdadm --examine --export /dev/vda1"),
    (None,
     "LC_ALL=C mdadm --examine /dev/vda"),
    ("mdadm-examine-export-vda-no-superblock.txt",
     "mdadm --examine --export /dev/vda"),
    (None, "for f in slaves/* md/level md/raid_disks "
                      "md/metadata_version md/array_state; do "
                      "echo \"$f $(cat /sys/block/md0/$f 2>/dev/null)\"; "
                      "done; ls /sys/block/md0/slaves"),
    ("sgdisk-F-vda.txt", "sgdisk -F /dev/vda"),
    (None, "sgdisk -n 0:2048:+550MiB -t 0:ef00 -c 0:uefi-holder-0 /dev/vda"
           " && sgdisk -n 0:2048:+550MiB -t 0:ef00 -c 0:uefi-holder-1 "
           "/dev/vdb && partprobe /dev/vda /dev/vdb"),
    ("blkid-p-vda2-esp-holder.txt", "blkid -p -o export /dev/vda2"),
    (None,
     "mdadm --create /dev/md1 --force --run --metadata=1.0 --level 1 "
     "--name esp --raid-devices 2 /dev/vda2 /dev/vdb2"),
    (None, "LC_ALL=C mdadm --detail /dev/md1"),
    (None, "mkfs.vfat -n EFI /dev/md1 >/dev/null && "
           "parted -s /dev/md0 -- mklabel gpt mkpart p1 1MiB 64MiB "
           "mkpart p2 64MiB 200MiB && partprobe /dev/md0"),
    ("lsblk-raid.json", f"lsblk -bia --json -l -o {COLUMNS}"),
    (None, "cat /proc/mdstat"),
    (None, "LC_ALL=C mdadm --detail /dev/md0p2"),
    (None,
     "LC_ALL=C mdadm --examine /dev/vda2"),
    ("blkid-p-md1.txt", "blkid -p -o export /dev/md1"),
    # a new boot of the ramdisk: nothing assembled, then assembled from
    # the allowed disks only
    ("mdadm-stop-md0.txt", "mdadm --stop /dev/md0"),
    (None, "mdadm --stop /dev/md1"),
    ("mdadm-assemble-scan-config.txt",
     "printf 'DEVICE /dev/vda* /dev/vdb*\\n' > /tmp/md.conf && "
     "LC_ALL=C mdadm --assemble --scan --config=/tmp/md.conf"),
    (None, "mdadm --detail --scan"),
    (None, "cat /proc/mdstat"),
    # a degraded array: one member missing
    (None, "mdadm --stop /dev/md0"),
    (None,
     "LC_ALL=C mdadm --assemble --run /dev/md0 /dev/vda1"),
    (None, "LC_ALL=C mdadm --detail /dev/md0"),
    # deleting, as delete_configuration does
    (None, "mdadm --stop /dev/md0 && mdadm --assemble /dev/md0 /dev/vda1 "
           "/dev/vdb1"),
    ("wipefs-af-md0.txt", "wipefs -af /dev/md0"),
    (None, "mdadm --stop /dev/md0"),
    (None, "mdadm --zero-superblock /dev/vda1"),
    (None,
     "LC_ALL=C mdadm --examine /dev/vda1"),
    ("mdadm-zero-superblock-vda-none.txt",
     "mdadm --zero-superblock /dev/vda"),
    # other levels IPA supports, over three partitions of the two disks
    (None, "mdadm --stop --scan; mdadm --zero-superblock /dev/vdb1 "
           "/dev/vda2 /dev/vdb2; wipefs -aq /dev/vda /dev/vdb; "
           "parted -s /dev/vda -- mklabel gpt mkpart p 8MiB 300MiB "
           "mkpart p 300MiB 600MiB; parted -s /dev/vdb -- mklabel gpt "
           "mkpart p 8MiB 300MiB mkpart p 300MiB 600MiB; "
           "partprobe /dev/vda /dev/vdb"),
    (None,
     "mdadm --create /dev/md2 --force --run --metadata=1 --level 0 "
     "--name data --raid-devices 2 /dev/vda1 /dev/vdb1"),
    (None, "LC_ALL=C mdadm --detail /dev/md2"),
    (None,
     "mdadm --create /dev/md3 --force --run --metadata=1 --level 5 "
     "--name r5 --raid-devices 3 /dev/vda2 /dev/vdb2 missing"),
    (None, "LC_ALL=C mdadm --detail /dev/md3"),
]

GUEST = """#!/bin/sh
mods=$(sed -n 's/.*ipa_guest_modules=\\([^ ]*\\).*/\\1/p' /proc/cmdline)
mkdir -p /lib/modules && mount --bind "$mods/lib/modules" /lib/modules
dmesg -n 1
modprobe -a virtio_blk md_mod raid0 raid1 raid456 vfat
mount -t tmpfs tmpfs /run
sleep 2
echo "guest: disks: $(ls /sys/block)"
{commands}
echo "guest: capture done"
echo o > /proc/sysrq-trigger
sleep 30
"""


def capture(outdir: str) -> None:
    cleanups = h.Cleanups()
    try:
        workdir = h.workdir(cleanups)
        netns = h.make_netns(cleanups)
        files = []
        for name in (None, "b"):
            path = os.path.join(workdir, f"{name}.img")
            with open(path, "wb") as f:
                f.truncate(1024 * MiB)
            files.append(path)
        devices = ["-drive", f"if=none,id=disk1,format=raw,file={files[1]}",
                   "-device", "virtio-blk-pci,drive=disk1"]
        machine = uefi_vm.UefiMachine(cleanups, workdir, files[0], netns,
                                      devices=devices)
        steps = []
        for i, (name, command) in enumerate(COMMANDS):
            steps.append(STEP.format(name=name or f"step-{i}",
                                     command=command))
        script = os.path.join(workdir, "guest.sh")
        with open(script, "w") as f:
            f.write(GUEST.format(commands="".join(steps)))
        machine.boot_ramdisk(script, h.free_port())
        machine.wait_for_serial("guest: capture done", 600)
        serial = machine.read_serial()
        qemu = subprocess.run(["qemu-system-x86_64", "--version"],
                              capture_output=True, text=True
                              ).stdout.splitlines()[0]
        kernel = re.search(r"Linux version (\S+)", serial)
        date = time.strftime("%Y-%m-%d")
        os.makedirs(outdir, exist_ok=True)
        for i, (name, command) in enumerate(COMMANDS):
            key = name or f"step-{i}"
            found = re.search(rf"=== BEGIN {re.escape(key)}\r?\n(\S*)\r?\n"
                              rf"=== END {re.escape(key)} rc=(\d+)", serial)
            if not found:
                h.say(f"{key}: not in the serial log")
                continue
            body = base64.b64decode(found.group(1))
            if name is None:
                h.say(f"{key}: exit {found.group(2)} "
                      f"{body.decode(errors='replace').strip()[:200]}")
                continue
            header = (
                f"# source: captured {date} by tests/integration/"
                f"capture_raid_outputs.py in the test machine: {qemu}, "
                f"guest kernel {kernel.group(1) if kernel else '?'}; "
                f"two virtio-blk disks of 1 GiB (files), vda and vdb\n"
                f"# command: {command}\n"
                f"# exit code: {found.group(2)}\n")
            with open(os.path.join(outdir, name), "wb") as f:
                f.write(header.encode() + body)
            h.say(f"{name}: {len(body)} bytes, exit {found.group(2)}")
    finally:
        cleanups.run()


if __name__ == "__main__":
    capture(sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures/raid")
