"""Software RAID driven by a real Ironic 39 (RAID interface ``agent``) in
the UEFI test machine (its Debian kernel has md; this machine's has none),
proved by booting from either disk alone.

Two 5 GiB virtio disks (sparse files), both allow-listed; the agent runs
in the machine as a ramdisk would.  Ironic, with fast track on (one
ramdisk boot for the clean and the deploy):

1. manual cleaning with ``delete_configuration`` and
   ``create_configuration``: a RAID-1 of the two disks (IPA's layout:
   GPT, the RAID partition from 551 MiB), its root volume;
2. a deploy of a Debian partition image (with mdadm, as an installed
   RAID system has) in UEFI mode: written onto the array, then the
   image's GRUB with an ESP on each disk (a RAID-1 of ESP partitions,
   metadata 1.0) and a boot entry per disk;
3. the machine powered on from its NVRAM with disk A only, then with
   disk B only: the firmware starts that disk's entry, GRUB assembles the
   degraded array and runs the image's configuration (a line on the
   serial console, then halt);
4. after the node is torn down, manual cleaning with
   ``delete_configuration`` in a fresh ramdisk boot (the arrays of the
   previous boot assembled at start-up, then deleted): no superblock and
   no partition table left on either disk.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

from twisted.trial.unittest import SkipTest

from tests.integration import agent_api
from tests.integration import harness as h
from tests.integration import uefi_vm
from tests.integration.base import (
    IronicTestCase,
    SandboxTestCase,
    unavailable,
)

MiB = 1024 ** 2
GiB = 1024 ** 3
MARK = "ipa-twisted-raid-boot"
NAME = "raid-node"
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


def md_superblocks(path: str, starts: list[int]) -> list[int]:
    """Which of the partition starts (bytes) of the disk file ``path`` hold
    an md superblock (metadata 1.2: 4 KiB into the partition)."""
    found = []
    with open(path, "rb") as f:
        for start in starts:
            f.seek(start + 4096)
            if f.read(4) == MD_MAGIC:
                found.append(start)
    return found


class IronicRaidTests(IronicTestCase):
    environment = {"fast_track": True, "heartbeat_timeout": 20}

    def prerequisites(self) -> None:
        uefi_vm.require_qemu()
        uefi_vm.guest_kernel()
        h.debian_root_with_mdadm()

    def setUp(self) -> None:
        super().setUp()
        env = self.env
        self.disks = []
        for name in ("a", "b"):
            path = os.path.join(env.workdir, f"disk-{name}.img")
            with open(path, "wb") as f:
                f.truncate(5 * GiB)
            self.disks.append(path)
        self.www = os.path.join(env.workdir, "www")
        # the guest reaches the namespace's loopback as 10.0.2.2
        h.run(["ip", "netns", "exec", env.netns, "ip", "addr", "add",
               "10.0.2.2/32", "dev", "lo"])
        h.serve_http(env.cleanups, env.netns, 8090, argv=[
            sys.executable, "-m", "http.server", "--bind", "0.0.0.0",
            "8090", "--directory", self.www])
        self.machine = uefi_vm.UefiMachine(env.cleanups, env.workdir,
                                           self.disks[0], env.netns,
                                           more_disks=self.disks[1:])
        self.port = h.free_port()

    def ramdisk(self) -> None:
        uefi_vm.start_agent(self, self.machine, self.www,
                            ["--api-url", "http://10.0.2.2:6385",
                             "--advertise-host", "127.0.0.1",
                             "--advertise-port", str(self.port)],
                            self.port, restrict=False, wait=False,
                            setup=GUEST_SETUP,
                            allowlist="/dev/vda,/dev/vdb")

    def wait(self, states: set[str], timeout: float) -> dict[str, Any]:
        try:
            return self.env.api.wait_for_state(NAME, states, timeout)
        except RuntimeError:
            h.say(self.env.logs_tail())
            h.say(self.machine.read_serial()[-6000:])
            raise

    def test_raid1_create_deploy_boot_either_disk_delete(self) -> None:
        env, api = self.env, self.env.api
        _, fs_uuid = h.make_os_image(
            os.path.join(self.www, "root.img"), 700 * MiB, files=GRUB_FILES,
            root=h.debian_root_with_mdadm())
        # compressed: the machine's user network is slow under TCG (the
        # agent inflates it on the way)
        h.run(["gzip", "-1", os.path.join(self.www, "root.img")])
        digest = h.file_sha256(os.path.join(self.www, "root.img.gz"))
        env.ironic.enroll(NAME, {}, raid_interface="agent")
        api.call("PATCH", f"/v1/nodes/{NAME}", [
            {"op": "add", "path": "/properties/capabilities",
             "value": "boot_mode:uefi"}])
        api.call("PUT", f"/v1/nodes/{NAME}/states/raid", RAID1)
        api.provision(NAME, "manage")
        self.wait({"manageable"}, 60)

        # 1. the RAID, by manual cleaning
        start = time.monotonic()
        api.provision(NAME, "clean", clean_steps=[
            {"interface": "raid", "step": "delete_configuration"},
            {"interface": "raid", "step": "create_configuration"}])
        self.wait({"clean wait"}, 60)
        self.ramdisk()
        node = self.wait({"manageable"}, 600)
        h.say(f"RAID created by manual cleaning in "
              f"{time.monotonic() - start:.1f} s")
        self.assertEqual(node["raid_config"]["logical_disks"],
                         RAID1["logical_disks"])
        self.machine.wait_for_serial(r"software RAID /dev/md0: RAID-1 md0 "
                                     r"on /dev/vda1, /dev/vdb1", 5)

        # 2. the deploy onto it (the same ramdisk: fast track)
        api.provision(NAME, "provide")
        self.wait({"available"}, 120)
        api.call("PATCH", f"/v1/nodes/{NAME}", [
            {"op": "add", "path": "/instance_info", "value": {
                "image_source": "http://10.0.2.2:8090/root.img.gz",
                "image_os_hash_algo": "sha256",
                "image_os_hash_value": digest, "image_disk_format": "raw",
                "image_rootfs_uuid": fs_uuid, "root_gb": 1,
                "kernel": "http://10.0.2.2:8090/deploy.kernel",
                "ramdisk": "http://10.0.2.2:8090/deploy.initrd"}}])
        start = time.monotonic()
        api.provision(NAME, "active")
        node = self.wait({"active"}, 900)
        h.say(f"partition image deployed onto the RAID in "
              f"{time.monotonic() - start:.1f} s")
        self.assertIsNone(node["last_error"])
        self.machine.wait_for_serial("root device /dev/md0: the root volume "
                                     "of the RAID configuration", 5)
        self.machine.wait_for_serial("creating the RAID ESP /dev/md1 on "
                                     "/dev/vda2, /dev/vdb2", 5)
        self.machine.stop()  # the fake power interface does not

        # 3. either disk alone boots
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

        # 4. delete_configuration, in a new boot
        api.provision(NAME, "deleted")
        self.wait({"available"}, 300)
        api.provision(NAME, "manage")
        self.wait({"manageable"}, 60)
        api.provision(NAME, "clean", clean_steps=[
            {"interface": "raid", "step": "delete_configuration"}])
        self.wait({"clean wait"}, 60)
        self.ramdisk()
        node = self.wait({"manageable"}, 600)
        self.assertEqual(node["raid_config"], {})
        self.machine.wait_for_serial(r"software RAID arrays up: md\d+, "
                                     r"md\d+ ", 5)
        self.machine.wait_for_serial("deleting software RAID /dev/md0", 5)
        self.machine.stop()
        # the members' superblocks (RAID partitions at 551 MiB, the ESPs
        # at 1 MiB: metadata 1.0 puts theirs at the end) and the tables
        for disk in self.disks:
            self.assertEqual(md_superblocks(disk, [551 * MiB]), [])
            self.assertEqual(h.run(["blkid", "-p", "-o", "value", "-s",
                                    "PTTYPE", disk], check=False
                                   ).stdout.strip(), "")


#: BIOS: GRUB's console is the serial line (SeaBIOS boots to a VGA console
#: this machine has no display for)
BIOS_GRUB_FILES = {
    **GRUB_FILES,
    "/etc/default/grub": b"GRUB_TIMEOUT=3\nGRUB_DISTRIBUTOR=Debian\n"
                         b"GRUB_TERMINAL=serial\nGRUB_SERIAL_COMMAND="
                         b"\"serial --unit=0 --speed=115200\"\n"}
TOKEN = "r" * 40


class BiosRaidTests(SandboxTestCase):
    """The same in BIOS mode (QEMU's SeaBIOS), the agent driven as Ironic
    would (standalone): a RAID-1 of the two disks on msdos tables, a
    Debian partition image onto it, GRUB in each disk's boot sector; then
    powered on with disk A alone, then disk B alone: GRUB must come up from
    that disk and find its root on the degraded array.  About 4 minutes
    under TCG: run with IPA_TWISTED_BIOS_RAID=1 (the UEFI test above is
    the one CI runs)."""

    def setUp(self) -> None:
        if os.environ.get("IPA_TWISTED_BIOS_RAID") != "1":
            raise SkipTest("the BIOS software RAID boot test runs with "
                           "IPA_TWISTED_BIOS_RAID=1 (about 4 minutes)")
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
        self.machine = uefi_vm.UefiMachine(
            self.cleanups, self.workdir, self.disks[0], self.netns,
            more_disks=self.disks[1:], firmware="bios")

    def command(self, name: str, wait: bool = True, **params: Any) -> Any:
        status, _, body = agent_api.call(
            self.netns, "POST", f"/v1/commands/?wait={json.dumps(wait)}"
                                f"&agent_token={TOKEN}",
            {"name": name, "params": params}, port=self.port, timeout=900)
        self.assertEqual(status, 200, f"{name}: {body}")
        if wait:
            self.assertEqual(body["command_status"], "SUCCEEDED",
                             f"{name}: {body['command_error']}")
        return body

    def test_raid1_bios_boots_from_either_disk(self) -> None:
        digest, fs_uuid = h.make_os_image(
            os.path.join(self.www, "root.img"), 700 * MiB,
            files=BIOS_GRUB_FILES, root=h.debian_root_with_mdadm())
        uefi_vm.start_agent(self, self.machine, self.www,
                            ["--standalone", "--agent-token", TOKEN,
                             "--listen-host", "0.0.0.0"], self.port,
                            setup=GUEST_SETUP,
                            allowlist="/dev/vda,/dev/vdb")
        node = {"uuid": NAME, "target_raid_config": RAID1,
                "instance_info": {"deploy_boot_mode": "bios"},
                "properties": {}}
        self.command("poll.set_node_info", node_info={
            "node": node, "config": {"enable_bios_bootloader_install": True}})
        self.command("clean.execute_clean_step", node=node, ports=[],
                     step={"step": "create_configuration",
                           "interface": "raid", "priority": 0})
        self.machine.wait_for_serial("creating software RAID on /dev/vda, "
                                     "/dev/vdb \\(bios, msdos partition "
                                     "tables\\)", 5)
        self.command("standby.prepare_image", image_info={
            "id": "root.img", "urls": ["http://127.0.0.1:8080/root.img"],
            "os_hash_algo": "sha256", "os_hash_value": digest,
            "disk_format": "raw", "image_type": "partition",
            "root_mb": 800, "swap_mb": 0, "ephemeral_mb": 0,
            "ephemeral_format": "ext4", "deploy_boot_mode": "bios",
            "preserve_ephemeral": False})
        uuids = self.command("standby.get_partition_uuids")["command_result"]
        self.assertEqual(uuids["root uuid"], fs_uuid)
        self.command("image.install_bootloader", root_uuid=fs_uuid,
                     target_boot_mode="bios")
        for disk in ("/dev/vda", "/dev/vdb"):
            self.machine.wait_for_serial(f"installing grub on {disk} "
                                         f"\\(BIOS\\)", 5)
        self.command("standby.power_off", wait=False)
        self.assertEqual(self.machine.wait_for_exit(120), 0)
        for disk in self.disks:
            self.machine.boot_disk([disk])
            said = self.machine.wait_for_serial(
                rf"{MARK}: ([^\r\n]+)[\r\n]", 240).group(1)
            h.say(f"BIOS: booted from {os.path.basename(disk)} alone: "
                  f"{said}")
            self.assertRegex(said, r"root=mduuid/[0-9a-f]{32},1")
            self.machine.stop()
