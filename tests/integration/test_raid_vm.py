"""Software RAID in the UEFI test machine (its Debian kernel has md; this
machine's has none), proved by booting from either disk alone.

Two 5 GiB virtio disks (sparse files).  The agent runs in the machine as
a ramdisk would, both disks allow-listed; it builds a RAID-1 of them
(IPA's layout: GPT, the RAID partition from 551 MiB), writes a Debian
partition image (with mdadm, as an installed RAID system has) onto the
array, and installs the image's GRUB with an ESP on each disk (a RAID-1
of ESP partitions, metadata 1.0) and a boot entry per disk.  Then the
machine is powered on from its NVRAM with disk A only, then with disk B
only: GRUB must start from that disk's ESP, assemble the degraded array
and run the image's configuration (which prints a line and halts).
"""

from __future__ import annotations

import json
import os
import re
import time
from typing import Any

from tests.integration import agent_api
from tests.integration import harness as h
from tests.integration import uefi_vm
from tests.integration.base import SandboxTestCase, unavailable

MiB = 1024 ** 2
GiB = 1024 ** 3
TOKEN = "r" * 40
MARK = "ipa-twisted-raid-boot"
NODE_UUID = "7d7d5d2e-55a5-4d64-9d8a-3a2f3c0d1e71"
RAID1 = {"logical_disks": [{"size_gb": "MAX", "raid_level": "1",
                            "controller": "software",
                            "is_root_volume": True}]}
#: the image's GRUB configuration: say where it found its root, halt
GRUB_FILES = {
    "/etc/default/grub": b"GRUB_TIMEOUT=3\nGRUB_DISTRIBUTOR=Debian\n"
                         b"GRUB_TERMINAL=console\n",
    "/boot/grub/custom.cfg":
        f'echo "{MARK}: root=$root prefix=$prefix"\nsleep 1\nhalt\n'
        .encode()}
MD_MAGIC = b"\xfc\x4e\x2b\xa9"       # 0xa92b4efc, little-endian
#: the guest's kernel: md, and the arrays' initial resync throttled (under
#: TCG it would take the CPU the deploy needs; what is written goes to
#: both members anyway, the resync only copies what was there before)
GUEST_SETUP = ("modprobe -a md_mod raid1\n"
               "echo 5000 > /proc/sys/dev/raid/speed_limit_max\n")


def boots_from(test: Any, machine: uefi_vm.UefiMachine, disk: str) -> str:
    """Power on with ``disk`` only; the entry the firmware started and what
    GRUB said."""
    machine.boot_disk([disk], bootindex=False)
    started = machine.wait_for_serial(r'BdsDxe: starting Boot[0-9A-F]{4} '
                                      r'"([^"]+)"', 180)
    said = machine.wait_for_serial(rf"{MARK}: ([^\r\n]+)[\r\n]", 180)
    test.assertEqual(machine.wait_for_exit(60), 0)
    return f"{started.group(1)}: {said.group(1)}"


class RaidMachineCase(SandboxTestCase):
    def setUp(self) -> None:
        super().setUp()
        try:
            uefi_vm.require_qemu()
            uefi_vm.guest_kernel()
            h.debian_root_with_mdadm()
        except h.Unavailable as e:
            unavailable(e)
        self.disks = []
        for name in ("a", "b"):
            path = os.path.join(self.workdir, f"disk-{name}.img")
            with open(path, "wb") as f:
                f.truncate(5 * GiB)
            self.disks.append(path)
        self.www = os.path.join(self.workdir, "www")
        os.makedirs(self.www)
        self.port = h.free_port()
        self.machine = uefi_vm.UefiMachine(self.cleanups, self.workdir,
                                           self.disks[0], self.netns,
                                           more_disks=self.disks[1:])


class StandaloneRaidTests(RaidMachineCase):
    def command(self, name: str, wait: bool = True, **params: Any) -> Any:
        status, _, body = agent_api.call(
            self.netns, "POST", f"/v1/commands/?wait={json.dumps(wait)}"
                                f"&agent_token={TOKEN}",
            {"name": name, "params": params}, port=self.port, timeout=900)
        self.assertEqual(status, 200, f"{name}: {body}")
        return body

    def test_raid1_deploy_boots_from_either_disk(self) -> None:
        digest, fs_uuid = h.make_os_image(
            os.path.join(self.www, "root.img"), 700 * MiB, files=GRUB_FILES,
            root=h.debian_root_with_mdadm())
        uefi_vm.start_agent(self, self.machine, self.www,
                            ["--standalone", "--agent-token", TOKEN,
                             "--listen-host", "0.0.0.0"], self.port,
                            setup=GUEST_SETUP,
                            allowlist="/dev/vda,/dev/vdb")
        node = {"uuid": NODE_UUID, "target_raid_config": RAID1,
                "instance_info": {"deploy_boot_mode": "uefi"},
                "properties": {}}
        body = self.command("clean.execute_clean_step", node=node, ports=[],
                            step={"step": "create_configuration",
                                  "interface": "raid", "priority": 0})
        self.assertEqual(body["command_status"], "SUCCEEDED", body)
        self.assertEqual(body["command_result"]["clean_result"], RAID1)
        start = time.monotonic()
        body = self.command("standby.prepare_image", image_info={
            "id": "root.img", "urls": ["http://127.0.0.1:8080/root.img"],
            "os_hash_algo": "sha256", "os_hash_value": digest,
            "disk_format": "raw", "image_type": "partition",
            "root_mb": 800, "swap_mb": 0, "ephemeral_mb": 0,
            "ephemeral_format": "ext4", "deploy_boot_mode": "uefi",
            "preserve_ephemeral": False})
        self.assertEqual(body["command_status"], "SUCCEEDED", body)
        h.say(f"RAID guest: partition image written in "
              f"{time.monotonic() - start:.1f} s")
        uuids = self.command("standby.get_partition_uuids")["command_result"]
        self.assertEqual(uuids["root uuid"], fs_uuid)
        start = time.monotonic()
        body = self.command("image.install_bootloader", root_uuid=fs_uuid,
                            efi_system_part_uuid=uuids[
                                "efi system partition uuid"],
                            target_boot_mode="uefi")
        h.say(f"RAID guest: install_bootloader took "
              f"{time.monotonic() - start:.1f} s")
        self.assertEqual(body["command_status"], "SUCCEEDED",
                         body["command_error"] or
                         self.machine.read_serial()[-4000:])
        self.machine.wait_for_serial("creating the RAID ESP /dev/md1 on "
                                     "/dev/vda2, /dev/vdb2", 5)
        self.command("standby.power_off", wait=False)
        self.assertEqual(self.machine.wait_for_exit(120), 0)

        order, entries = uefi_vm.boot_entries(self.machine.vars)
        labels = sorted(name for name, _ in entries.values()
                        if "RAID" in name)
        self.assertEqual(labels, ["debian (RAID, part0)",
                                  "debian (RAID, part1)"])
        for number, disk in enumerate(self.disks):
            said = boots_from(self, self.machine, disk)
            h.say(f"booted from {os.path.basename(disk)} alone: {said}")
            self.assertRegex(said, rf"^debian \(RAID, part{number}\): "
                                   rf"root=mduuid/[0-9a-f]{{32}},2")
