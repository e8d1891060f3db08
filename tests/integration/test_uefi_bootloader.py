"""image.install_bootloader on a UEFI machine, proved by booting.

The agent runs inside a QEMU/OVMF guest (tests/integration/uefi_vm.py) with
its own NVRAM and a loop device of this machine as its only disk.  After
the deploy the NVRAM file is read (BootOrder, Boot#### entries), and the
same machine is powered on with no kernel: the firmware must start the
entry the agent made, and the GRUB it names must run its configuration
(which prints a line and halts the machine).

- a partition image of a real Debian root: the agent makes the ESP, installs
  the image's own GRUB into it (chroot) and registers it;
- a whole-disk UEFI image (ESP with a BOOTX64.CSV, as cloud images ship),
  deployed by a real Ironic 39 in UEFI boot mode: the agent registers the
  entry the CSV names;
- a tiny partition image whose /boot/efi links to the ramdisk's kernel
  command line and to a ramdisk file: refused, nothing of them on the ESP
  (here because mounting the ESP needs vfat, which the guest's kernel has).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from typing import Any


from tests.integration import agent_api
from tests.integration import harness as h
from tests.integration import uefi_vm
from tests.integration.base import IronicTestCase, unavailable

MiB = 1024 ** 2
TOKEN = "u" * 40
MARK = "ipa-twisted-uefi-boot"

def assert_boots(test: Any, machine: uefi_vm.UefiMachine, label: str,
                 path: str) -> str:
    """The machine's NVRAM has one entry ``label`` for ``path``, first in
    BootOrder; powered on with no kernel, the firmware starts it and the
    loader prints MARK and halts.  Returns what followed MARK."""
    order, entries = uefi_vm.boot_entries(machine.vars)
    ours = [n for n, (name, _) in entries.items() if name == label]
    test.assertEqual(len(ours), 1, entries)
    test.assertEqual(order[0], ours[0], (order, entries))
    test.assertEqual(entries[ours[0]][1], path)
    machine.boot_disk()
    machine.wait_for_serial(
        rf'BdsDxe: starting Boot{ours[0]:04X} "{re.escape(label)}"', 180)
    match = machine.wait_for_serial(rf"{MARK}: ([^\r\n]+)[\r\n]", 180)
    test.assertEqual(machine.wait_for_exit(60), 0)
    return match.group(1)


def blocks_holding(device: str, offset: int, length: int,
                   marks: list[bytes]) -> list[bytes]:
    """Which of ``marks`` the ``length`` bytes of ``device`` from
    ``offset`` hold (read a MiB at a time)."""
    found: set[bytes] = set()
    overlap = max(len(m) for m in marks) - 1
    tail = b""
    with open(device, "rb") as f:
        f.seek(offset)
        while length > 0:
            chunk = f.read(min(MiB, length))
            if not chunk:
                break
            length -= len(chunk)
            window = tail + chunk
            found.update(m for m in marks if m in window)
            tail = window[-overlap:]
    return [m for m in marks if m in found]


class _StandaloneAgent(uefi_vm.MachineTestCase):
    """The agent in the test machine, driven by the test as Ironic would."""

    needs_debian_root = True

    def command(self, name: str, wait: bool = True, **params: Any) -> Any:
        status, _, body = agent_api.call(
            self.netns, "POST", f"/v1/commands/?wait={json.dumps(wait)}"
                                f"&agent_token={TOKEN}",
            {"name": name, "params": params}, port=self.port, timeout=600)
        self.assertEqual(status, 200, f"{name}: {body}")
        return body

    def deploy_partition_image(self, files: dict[str, bytes],
                               setup: str = "") -> tuple[str, str]:
        """Boot the machine, have its agent write a Debian partition image
        (with ``files``) in UEFI mode: (root fs UUID, ESP UUID)."""
        digest, fs_uuid = h.make_os_image(
            os.path.join(self.www, "root.img"), 700 * MiB, files=files)
        return self.deploy_root_img(digest, fs_uuid, 800, setup)

    def deploy_root_img(self, digest: str, fs_uuid: str, root_mb: int,
                        setup: str = "") -> tuple[str, str]:
        """Boot the machine, have its agent write ``self.www``/root.img
        as a partition image in UEFI mode: (root fs UUID, ESP UUID)."""
        self.start_agent(["--standalone", "--agent-token", TOKEN,
                          "--listen-host", "0.0.0.0"], setup=setup)
        body = self.command("poll.set_node_info", node_info={"node": {
            "uuid": "uefi-node", "instance_info": {
                "deploy_boot_mode": "uefi"}}})
        self.assertEqual(body["command_status"], "SUCCEEDED", body)
        start = time.monotonic()
        body = self.command("standby.prepare_image", image_info={
            "id": "root.img", "urls": ["http://127.0.0.1:8080/root.img"],
            "os_hash_algo": "sha256", "os_hash_value": digest,
            "disk_format": "raw", "image_type": "partition",
            "root_mb": root_mb, "swap_mb": 0, "ephemeral_mb": 0,
            "ephemeral_format": "ext4", "deploy_boot_mode": "uefi",
            "preserve_ephemeral": False})
        self.assertEqual(body["command_status"], "SUCCEEDED", body)
        h.say(f"UEFI guest: partition image written in "
              f"{time.monotonic() - start:.1f} s")
        uuids = self.command("standby.get_partition_uuids")["command_result"]
        self.assertEqual(uuids["root uuid"], fs_uuid)
        efi_uuid = uuids["efi system partition uuid"]
        self.assertTrue(efi_uuid, uuids)
        return fs_uuid, efi_uuid


class StandaloneUefiTests(_StandaloneAgent):
    def test_partition_image_grub_registered_and_booted(self) -> None:
        fs_uuid, efi_uuid = self.deploy_partition_image({
            "/etc/default/grub": b"GRUB_TIMEOUT=3\n"
                                 b"GRUB_DISTRIBUTOR=Debian\n"
                                 b"GRUB_TERMINAL=console\n",
            "/boot/grub/custom.cfg":
                f'echo "{MARK}: root=$root prefix=$prefix"\n'
                f'sleep 1\nhalt\n'.encode()})
        machine = self.machine
        for attempt in (1, 2):  # a second run replaces, never duplicates
            start = time.monotonic()
            body = self.command("image.install_bootloader",
                                root_uuid=fs_uuid,
                                efi_system_part_uuid=efi_uuid,
                                target_boot_mode="uefi")
            self.assertEqual(body["command_status"], "SUCCEEDED", body)
            h.say(f"UEFI guest: install_bootloader #{attempt} took "
                  f"{time.monotonic() - start:.1f} s")
        machine.wait_for_serial("installing grub for UEFI on /dev/vda1", 5)
        machine.wait_for_serial(r"UEFI boot entry debian -> "
                                r"EFI/debian/grubx64\.efi", 5)
        # as Ironic does: no waiting for the result of a power off
        self.command("standby.power_off", wait=False)
        self.assertEqual(machine.wait_for_exit(120), 0)

        # the ESP (partition 1) holds GRUB twice: the registered path and
        # the removable-media fallback
        start = int(h.run(["partx", "-g", "-o", "START", "-n", "1",
                           self.device]).stdout)
        esp = f"{self.device}@@{start * 512}"
        for folder, loader in (("::/EFI/debian", "grubx64.efi"),
                               ("::/EFI/BOOT", "BOOTX64.EFI")):
            listing = h.run(["mdir", "-b", "-i", esp, folder]).stdout
            self.assertIn(f"{folder[2:]}/{loader}", listing)
        # power on with no kernel: the firmware must start our entry, and
        # GRUB must find the root partition by itself
        said = assert_boots(self, machine, "debian",
                            "\\EFI\\debian\\grubx64.efi")
        self.assertRegex(said, r"^root=hd0,gpt\d+ "
                               r"prefix=\(hd0,gpt\d+\)/boot/grub$")


class EspLinkingOutTests(_StandaloneAgent):
    """A partition image whose /boot/efi links to the ramdisk's kernel
    command line and to a ramdisk file: the agent must refuse to copy them
    onto the ESP it made (``cp -rL`` once did).  In the test machine
    because the agent mounts the ESP and this machine's kernel may have no
    vfat (the guest's Debian kernel has it).  One boot, no Debian root (a
    tiny ext4 image does); the ESP is read afterwards from this machine
    with mtools, which need no kernel FAT."""

    needs_debian_root = False

    def test_esp_content_linking_out_is_refused(self) -> None:
        secret = f"RAMDISK-SECRET-{os.urandom(8).hex()}"
        # what the guest's /proc/cmdline holds (uefi_vm.boot_ramdisk)
        cmdline_mark = b"ipa_guest_script="
        tree = os.path.join(self.workdir, "root-tree")
        boot = os.path.join(tree, "boot", "efi", "EFI", "BOOT")
        os.makedirs(boot)
        with open(os.path.join(boot, "BOOTX64.EFI"), "wb") as f:
            f.write(b"MZ not really a loader")
        os.symlink("/proc/cmdline", os.path.join(boot, "cmdline"))
        os.symlink("/run/ipa-ramdisk-secret", os.path.join(boot, "secret"))
        image = os.path.join(self.www, "root.img")
        with open(image, "wb") as f:
            f.truncate(16 * MiB)
        h.run(["mkfs.ext4", "-q", "-F", "-L", "root", "-d", tree, image])
        fs_uuid = h.run(["blkid", "-o", "value", "-s", "UUID",
                         image]).stdout.strip()
        start = time.monotonic()
        fs_uuid, efi_uuid = self.deploy_root_img(
            h.file_sha256(image), fs_uuid, 32,
            # a file of the ramdisk, not of the image
            setup=f"echo {secret} > /run/ipa-ramdisk-secret\n")
        refused = "the image's /boot/efi cannot be copied: " \
                  "/boot/efi/EFI/BOOT/cmdline links to '/proc/cmdline'"
        results = []
        # twice: the failed copy left nothing behind that the second
        # try would take for an installed loader, and the agent is free
        for _ in (1, 2):
            body = self.command("image.install_bootloader",
                                root_uuid=fs_uuid,
                                efi_system_part_uuid=efi_uuid,
                                target_boot_mode="uefi")
            results.append(body)
        body = self.command("standby.get_partition_uuids")
        self.assertEqual(body["command_status"], "SUCCEEDED", body)
        self.command("standby.power_off", wait=False)
        self.assertEqual(self.machine.wait_for_exit(120), 0)
        h.say(f"UEFI guest: {time.monotonic() - start:.1f} s from power on "
              f"to power off")

        first, size = (int(n) for n in h.run(
            ["partx", "-g", "-o", "START,SECTORS", "-n", "1",
             self.device]).stdout.split())
        esp = f"{self.device}@@{first * 512}"
        h.run(["minfo", "-i", esp, "::"])  # a FAT filesystem mtools reads
        listing = h.run(["mdir", "-/", "-b", "-i", esp, "::"], check=False)
        if listing.returncode != 0:  # mdir's word for an empty root
            self.assertIn('"::" not found', listing.stderr)
        files = [line.strip() for line in listing.stdout.splitlines()
                 if line.strip() and not line.strip().endswith("/")]
        contents = b"".join(subprocess.run(
            ["mtype", "-i", esp, name], capture_output=True, check=True
        ).stdout for name in files)
        marks = {cmdline_mark: "the ramdisk's kernel command line",
                 secret.encode(): "the ramdisk's file"}
        leaks = [f"a file of the ESP holds {what}"
                 for mark, what in marks.items() if mark in contents]
        # nor any block of it (a file written, then removed)
        leaks += [f"a block of the ESP holds {marks[mark]}" for mark in
                  blocks_holding(self.device, first * 512, size * 512,
                                 list(marks))]
        self.assertEqual(leaks, [])
        for body in results:
            self.assertEqual(body["command_status"], "FAILED", body)
            self.assertIn(refused, body["command_error"]["details"])
        self.assertEqual(listing.stdout.strip(), "",
                         "the failed copy left files on the ESP")


class IronicUefiDeployTests(IronicTestCase):
    """A real Ironic deploys a whole-disk image to the UEFI guest."""

    def prerequisites(self) -> None:
        uefi_vm.require_qemu()
        uefi_vm.guest_kernel()
        h.debian_root()

    def test_whole_disk_image_entry_from_csv_boots(self) -> None:
        env, api = self.env, self.env.api
        label = "Debian from CSV"
        www = os.path.join(env.workdir, "www")
        digest = uefi_vm.make_uefi_disk_image(
            os.path.join(www, "uefi.img"), 256 * MiB, label,
            f'echo "{MARK}: $cmdpath"\nsleep 1\nhalt\n')
        # The guest reaches the namespace's loopback as 10.0.2.2; give the
        # namespace that address too, so that one image URL works for both
        # Ironic and the agent.
        h.run(["ip", "netns", "exec", env.netns, "ip", "addr", "add",
               "10.0.2.2/32", "dev", "lo"])
        h.serve_http(env.cleanups, env.netns, 8090, argv=[
            sys.executable, "-m", "http.server", "--bind", "0.0.0.0", "8090",
            "--directory", www])
        env.ironic.enroll("uefi-node", {"name": "/dev/vda"})
        api.call("PATCH", "/v1/nodes/uefi-node", [
            {"op": "add", "path": "/properties/capabilities",
             "value": "boot_mode:uefi"}])
        api.make_available("uefi-node")
        api.call("PATCH", "/v1/nodes/uefi-node", [
            {"op": "add", "path": "/instance_info", "value": {
                "image_source": "http://10.0.2.2:8090/uefi.img",
                "image_os_hash_algo": "sha256",
                "image_os_hash_value": digest, "image_disk_format": "raw"}}])
        start = time.monotonic()
        api.provision("uefi-node", "active")
        api.wait_for_state("uefi-node", {"wait call-back"}, 60)

        machine = uefi_vm.UefiMachine(env.cleanups, env.workdir, env.device,
                                      env.netns)
        port = h.free_port()
        uefi_vm.start_agent(self, machine, www,
                    ["--api-url", "http://10.0.2.2:6385",
                     "--advertise-host", "127.0.0.1",
                     "--advertise-port", str(port)], port, restrict=False,
                    wait=False)  # Ironic has it use TLS: Ironic waits
        try:
            node = api.wait_for_state("uefi-node", {"active"}, 600)
        except RuntimeError:
            h.say(env.logs_tail())
            h.say(machine.read_serial()[-4000:])
            raise
        h.say(f"UEFI guest: node active {time.monotonic() - start:.1f} s "
              f"after the deploy request")
        self.assertEqual(node["provision_state"], "active")
        machine.wait_for_serial("running command image.install_bootloader", 5)
        machine.wait_for_serial(rf"UEFI boot entry {re.escape(label)} -> "
                                rf"EFI/debian/grubx64\.efi", 5)
        machine.stop()  # the fake power interface does not power it off

        said = assert_boots(self, machine, label,
                            "\\EFI\\debian\\grubx64.efi")
        self.assertRegex(said, r"^\(hd0[^)]*\)/EFI/debian$")


class SecureBootTests(_StandaloneAgent):
    """Secure Boot on (OVMF with Microsoft's keys): the ramdisk itself comes
    up through Debian's signed shim, GRUB and kernel; the image ships
    Debian's signed shim and GRUB in /boot/efi with a BOOTX64.CSV, as an
    installed Debian does; the firmware must start the shim entry the
    agent made and the chain must reach the image's root partition."""

    secure_boot = True

    def setUp(self) -> None:
        super().setUp()
        try:
            self.shim, self.grub = uefi_vm.signed_loaders()
        except h.Unavailable as e:
            unavailable(e)

    def test_shim_entry_from_the_images_csv_boots(self) -> None:
        with open(self.shim, "rb") as f:
            shim = f.read()
        with open(self.grub, "rb") as f:
            grub = f.read()
        label = "debian (shim)"
        fs_uuid, efi_uuid = self.deploy_partition_image({
            "/boot/efi/EFI/debian/shimx64.efi": shim,
            "/boot/efi/EFI/debian/grubx64.efi": grub,
            "/boot/efi/EFI/debian/BOOTX64.CSV":
                f"shimx64.efi,{label},,This is the boot entry for "
                f"debian\n".encode("utf-16"),
            # what grub-install writes beside a signed GRUB: find the root
            # filesystem, read its configuration
            "/boot/efi/EFI/debian/grub.cfg":
                b"search --no-floppy --set=root --file "
                b"/boot/grub/ipa-twisted-sb.cfg\n"
                b"source ($root)/boot/grub/ipa-twisted-sb.cfg\n",
            "/boot/grub/ipa-twisted-sb.cfg":
                f'echo "{MARK}: secure root=$root"\nsleep 1\nhalt\n'
                .encode()},
            setup="echo \"secure boot: $(od -An -t u1 /sys/firmware/efi/"
                  "efivars/SecureBoot-8be4df61-93ca-11d2-aa0d-00e098032b8c)"
                  "\"\n")
        machine = self.machine
        # the ramdisk ran with Secure Boot on (attributes 6, value 1)
        machine.wait_for_serial(r"secure boot: +6 +0 +0 +0 +1\b", 5)
        body = self.command("image.install_bootloader", root_uuid=fs_uuid,
                            efi_system_part_uuid=efi_uuid,
                            target_boot_mode="uefi")
        self.assertEqual(body["command_status"], "SUCCEEDED", body)
        machine.wait_for_serial("copying the image's /boot/efi onto "
                                "/dev/vda1", 5)
        machine.wait_for_serial(rf"UEFI boot entry {re.escape(label)} -> "
                                r"EFI/debian/shimx64\.efi", 5)
        self.command("standby.power_off", wait=False)
        self.assertEqual(machine.wait_for_exit(120), 0)
        said = assert_boots(self, machine, label,
                            "\\EFI\\debian\\shimx64.efi")
        self.assertRegex(said, r"^secure root=hd0,gpt\d+$")
