"""image.install_bootloader on a UEFI machine, proved by booting.

The agent runs inside a QEMU/OVMF guest (tests/integration/uefi_vm.py) with
its own NVRAM and a loop device of this machine as its only disk.  It
writes a real Debian partition image, installs the image's GRUB into the
ESP it made and registers it with efibootmgr; then the same machine is
powered on with no kernel, and the firmware must start that entry, and
GRUB must read the grub.cfg that grub-mkconfig wrote on the root
partition (a custom.cfg there prints a line and halts the machine).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
import urllib.error
import urllib.request
from typing import Any

from tests.integration import harness as h
from tests.integration import uefi_vm
from tests.integration.base import SandboxTestCase, unavailable

MiB = 1024 ** 2
TOKEN = "u" * 40
MARK = "ipa-twisted-uefi-boot"

GUEST = """#!/bin/sh
# The test UEFI guest's init: the agent, like a ramdisk would run it.
mods=$(sed -n 's/.*ipa_guest_modules=\\([^ ]*\\).*/\\1/p' /proc/cmdline)
mkdir -p /lib/modules && mount --bind "$mods/lib/modules" /lib/modules
modprobe -a virtio_blk virtio_net efivarfs vfat nls_cp437 nls_ascii ext4
mount -t efivarfs efivarfs /sys/firmware/efi/efivars
mount -t tmpfs tmpfs /run
ip link set lo up && ip link set eth0 up
ip addr add 10.0.2.15/24 dev eth0
echo "guest: disks: $(ls /sys/block)"
cd /tmp
{python} -m http.server --bind 127.0.0.1 --directory {www} 8080 \\
    >/dev/null 2>&1 &
: > /tmp/cmdline
{twistd} --nodaemon --pidfile= --logfile=- ipa --standalone \\
    --agent-token {token} --listen-host 0.0.0.0 \\
    --device-allowlist /dev/vda --cmdline-file /tmp/cmdline \\
    --disk-wait-attempts 2 --disk-wait-delay 1
echo "guest: the agent exited ($?)"
echo o > /proc/sysrq-trigger
sleep 30
"""


class GuestAgent:
    """The agent API of the guest, through QEMU's forwarded port."""

    def __init__(self, port: int) -> None:
        self.port = port

    def call(self, method: str, path: str, body: Any = None,
             timeout: float = 600) -> tuple[int, Any]:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}",
                                     data=data, method=method)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return r.status, json.loads(r.read() or b"null")
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"null")

    def wait_up(self, machine: uefi_vm.UefiMachine, timeout: float) -> float:
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            if machine.proc is not None and machine.proc.poll() is not None:
                break
            try:
                status, _ = self.call("GET", "/v1/status", timeout=5)
                if status == 200:
                    return time.monotonic() - start
            except (OSError, ValueError):
                pass
            time.sleep(1)
        raise AssertionError(f"the guest's agent did not answer within "
                             f"{timeout:.0f} s; serial:\n"
                             f"{machine.read_serial()[-3000:]}")

    def command(self, name: str, wait: bool = True, **params: Any) -> Any:
        status, body = self.call(
            "POST", f"/v1/commands/?wait={str(wait).lower()}"
                    f"&agent_token={TOKEN}",
            {"name": name, "params": params})
        if status != 200:
            raise AssertionError(f"{name}: HTTP {status}: {body}")
        return body


class UefiBootloaderTests(SandboxTestCase):
    disk_size = 5 * 1024 * MiB  # the agent ignores disks under 4 GiB

    def setUp(self) -> None:
        super().setUp()
        try:
            uefi_vm.require_qemu()
            uefi_vm.guest_kernel()
            h.debian_root()
        except h.Unavailable as e:
            unavailable(e)
        self.www = os.path.join(self.workdir, "www")
        os.makedirs(self.www)

    def guest(self, machine: uefi_vm.UefiMachine) -> GuestAgent:
        script = os.path.join(self.workdir, "guest.sh")
        bindir = os.path.dirname(sys.executable)
        with open(script, "w") as f:
            f.write(GUEST.format(python=sys.executable, www=self.www,
                                 twistd=os.path.join(bindir, "twistd"),
                                 token=TOKEN))
        port = h.free_port()
        machine.boot_ramdisk(script, port)
        agent = GuestAgent(port)
        took = agent.wait_up(machine, 300)
        h.say(f"UEFI guest: agent API up {took:.1f} s after power on")
        return agent

    def test_partition_image_grub_registered_and_booted(self) -> None:
        digest, fs_uuid = h.make_os_image(
            os.path.join(self.www, "root.img"), 700 * MiB, files={
                "/etc/default/grub": b"GRUB_TIMEOUT=3\n"
                                     b"GRUB_DISTRIBUTOR=Debian\n"
                                     b"GRUB_TERMINAL=console\n",
                "/boot/grub/custom.cfg":
                    f'echo "{MARK}: root=$root prefix=$prefix"\n'
                    f'sleep 1\nhalt\n'.encode()})
        machine = uefi_vm.UefiMachine(self.cleanups, self.workdir,
                                      self.device)
        agent = self.guest(machine)
        body = agent.command("poll.set_node_info", node_info={"node": {
            "uuid": "uefi-node", "instance_info": {
                "deploy_boot_mode": "uefi"}}})
        self.assertEqual(body["command_status"], "SUCCEEDED", body)
        start = time.monotonic()
        body = agent.command("standby.prepare_image", image_info={
            "id": "root.img", "urls": ["http://127.0.0.1:8080/root.img"],
            "os_hash_algo": "sha256", "os_hash_value": digest,
            "disk_format": "raw", "image_type": "partition",
            "root_mb": 800, "swap_mb": 0, "ephemeral_mb": 0,
            "ephemeral_format": "ext4",
            "deploy_boot_mode": "uefi", "preserve_ephemeral": False})
        self.assertEqual(body["command_status"], "SUCCEEDED", body)
        h.say(f"UEFI guest: partition image written in "
              f"{time.monotonic() - start:.1f} s")
        uuids = agent.command("standby.get_partition_uuids")[
            "command_result"]
        self.assertEqual(uuids["root uuid"], fs_uuid)
        efi_uuid = uuids["efi system partition uuid"]
        self.assertTrue(efi_uuid, uuids)
        start = time.monotonic()
        body = agent.command("image.install_bootloader", root_uuid=fs_uuid,
                             efi_system_part_uuid=efi_uuid,
                             target_boot_mode="uefi")
        self.assertEqual(body["command_status"], "SUCCEEDED", body)
        h.say(f"UEFI guest: install_bootloader took "
              f"{time.monotonic() - start:.1f} s")
        log = machine.read_serial()
        self.assertRegex(log, r"UEFI boot entry debian -> "
                              r"EFI/debian/grubx64\.efi")
        # as Ironic does: no waiting for the result of a power off
        agent.command("standby.power_off", wait=False)
        machine.wait_for_exit(120)

        # power on again with no kernel: the firmware's boot manager must
        # start our entry, GRUB must find the root partition by itself
        machine.boot_disk()
        machine.wait_for_serial(r'BdsDxe: starting Boot[0-9A-F]{4} "debian"',
                                180)
        match = machine.wait_for_serial(rf"{MARK}: root=(\S+)", 180)
        self.assertIn("gpt", match.group(1))
        self.assertEqual(machine.wait_for_exit(60), 0)
        if shutil.which("sgdisk"):
            table = h.run(["sgdisk", "-p", self.device]).stdout
            self.assertIn("EF00", table)
