"""Partition images and config drives, written by a sandboxed agent onto
loop devices (512-byte and 4 KiB sectors), checked with the system's own
tools (blkid, parted, bsdtar, mtools).  (A UEFI partition image whose
/boot/efi links out is tested in the UEFI test machine, whose kernel can
mount the ESP: test_uefi_bootloader.EspLinkingOutTests.)"""

from __future__ import annotations

import base64
import gzip
import os
import time
from typing import Any


from tests.integration import agent_api
from tests.integration import harness as h
from tests.integration.base import SandboxTestCase, unavailable

MiB = 1024 * 1024
TOKEN = "p" * 40
META = {"uuid": "5a3c0b6e-6e04-4c3c-8a6e-2f4d1c9f7e11", "name": "e2e"}


class _Sandbox(SandboxTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.www = os.path.join(self.workdir, "www")
        os.makedirs(self.www)
        h.serve_http(self.cleanups, self.netns, 8091, self.www)

    def loop(self, sector: int = 512) -> str:
        backing = os.path.join(self.workdir, f"disk-{sector}.img")
        with open(backing, "wb") as f:
            f.truncate(5 << 30)
        dev = h.run(["losetup", "--find", "--show", "--partscan",
                     "--sector-size", str(sector), backing]).stdout.strip()
        self.cleanups.add(f"loop {dev}", lambda: h.run(["losetup", "-d",
                                                        dev]))
        return dev

    def agent(self, device: str, node: dict[str, Any] | None = None) -> Any:
        agent = h.Agent(self.cleanups, self.netns, self.workdir, device, None,
                        ["--standalone", "--agent-token", TOKEN,
                         "--listen-host", "127.0.0.1"],
                        name=f"agent-{os.path.basename(device)}")
        agent.wait_for_log("agent API listening", 30)
        if node is not None:
            body = agent_api.command(self.netns, TOKEN, "poll.set_node_info",
                                     node_info={"node": node})
            self.assertEqual(body["command_status"], "SUCCEEDED", body)
        return agent

    def prepare(self, info: dict[str, Any], configdrive: str | None = None
                ) -> dict[str, Any]:
        result = agent_api.command(self.netns, TOKEN, "standby.prepare_image",
                                   image_info=info, configdrive=configdrive)
        return result

    def partition_info(self, name: str, digest: str, **extra: Any
                       ) -> dict[str, Any]:
        info = {"id": name, "urls": [f"http://127.0.0.1:8091/{name}"],
                "os_hash_algo": "sha256", "os_hash_value": digest,
                "disk_format": "raw", "image_type": "partition",
                "root_mb": 300, "swap_mb": 64, "ephemeral_mb": 128,
                "ephemeral_format": "ext4", "preserve_ephemeral": False}
        info.update(extra)
        return info



class PartitionImageTests(_Sandbox):
    def test_bios_mbr_partition_image_with_config_drive(self) -> None:
        device = self.loop()
        digest, fs_uuid = h.make_fs_image(os.path.join(self.www, "root.img"),
                                          200 * MiB)
        self.agent(device)
        drive = h.make_config_drive(self.workdir, META)
        result = self.prepare(self.partition_info("root.img", digest), drive)
        self.assertEqual(result["command_status"], "SUCCEEDED", result)
        self.assertIn(f"root_uuid={fs_uuid}",
                      result["command_result"]["result"])
        uuids = agent_api.command(self.netns, TOKEN,
                                  "standby.get_partition_uuids"
                                  )["command_result"]
        p = uuids["partitions"]
        self.assertEqual(sorted(p), ["configdrive", "ephemeral", "root",
                                     "swap"])
        self.assertEqual(uuids["root uuid"], fs_uuid)
        self.assertIsNone(uuids["efi system partition uuid"])
        self.assertEqual(h.blkid(device, "PTTYPE"), "dos")
        # order: ephemeral, swap, config drive, root (last, for growroot)
        self.assertEqual([p["ephemeral"], p["swap"], p["configdrive"],
                          p["root"]],
                         [f"{device}p{n}" for n in (1, 2, 3, 4)])
        self.assertEqual(h.blkid(p["swap"], "TYPE"), "swap")
        self.assertEqual(h.blkid(p["swap"], "LABEL"), "swap1")
        self.assertEqual(h.blkid(p["ephemeral"], "TYPE"), "ext4")
        self.assertEqual(h.blkid(p["ephemeral"], "LABEL"), "ephemeral0")
        self.assertEqual(h.blkid(p["configdrive"], "TYPE"), "iso9660")
        self.assertEqual(h.blkid(p["configdrive"], "LABEL"), "config-2")
        self.assertEqual(h.device_sha256(p["root"], 200 * MiB), digest)
        parted = h.run(["parted", "-s", "-m", device, "unit", "MiB",
                        "print"]).stdout
        self.assertIn("4:", parted)
        self.assertRegex(parted, r"4:\d+MiB:\d+MiB:300MiB:ext4::boot;")

    def test_uefi_gpt_partition_image(self) -> None:
        device = self.loop()
        digest, fs_uuid = h.make_fs_image(os.path.join(self.www, "root.img"),
                                          100 * MiB)
        self.agent(device, {"uuid": "n", "instance_info": {
            "deploy_boot_mode": "uefi"}})
        result = self.prepare(self.partition_info(
            "root.img", digest, swap_mb=0, ephemeral_mb=0,
            deploy_boot_mode="uefi", root_mb=150))
        self.assertEqual(result["command_status"], "SUCCEEDED", result)
        uuids = agent_api.command(self.netns, TOKEN,
                                  "standby.get_partition_uuids"
                                  )["command_result"]
        esp = uuids["partitions"]["efi system partition"]
        self.assertEqual(h.blkid(device, "PTTYPE"), "gpt")
        self.assertEqual(h.blkid(esp, "TYPE"), "vfat")
        self.assertEqual(h.blkid(esp, "LABEL"), "efi-part")
        self.assertEqual(uuids["efi system partition uuid"],
                         h.blkid(esp, "UUID"))
        self.assertIn("efi_system_partition_uuid=",
                      result["command_result"]["result"])
        self.assertEqual(uuids["root uuid"], fs_uuid)

    def test_bios_gpt_partition_image_has_bios_boot(self) -> None:
        device = self.loop()
        digest, _ = h.make_fs_image(os.path.join(self.www, "root.img"),
                                    64 * MiB)
        self.agent(device, {"uuid": "n", "properties": {
            "capabilities": "disk_label:gpt,boot_mode:bios"}})
        result = self.prepare(self.partition_info(
            "root.img", digest, swap_mb=0, ephemeral_mb=0, root_mb=100))
        self.assertEqual(result["command_status"], "SUCCEEDED", result)
        uuids = agent_api.command(self.netns, TOKEN,
                                  "standby.get_partition_uuids"
                                  )["command_result"]
        self.assertEqual(sorted(uuids["partitions"]),
                         ["BIOS Boot partition", "root"])
        sgdisk = h.run(["sgdisk", "-i", "1", device]).stdout
        self.assertIn("21686148-6449-6E6F-744E-656564454649", sgdisk)

    def test_whole_disk_images_get_a_config_drive(self) -> None:
        for table in ("msdos", "gpt"):
            device = self.loop()
            image = os.path.join(self.www, f"disk-{table}.img")
            with open(image, "wb") as f:
                f.truncate(64 * MiB)
            h.run(["parted", "-s", image, "mklabel", table, "mkpart",
                   "primary", "ext4", "1MiB", "60MiB"])
            digest = h.file_sha256(image)
            self.agent(device)
            drive = h.make_config_drive(self.workdir, META)
            result = self.prepare({
                "id": f"disk-{table}.img",
                "urls": [f"http://127.0.0.1:8091/disk-{table}.img"],
                "os_hash_algo": "sha256", "os_hash_value": digest,
                "disk_format": "raw"}, drive)
            self.assertEqual(result["command_status"], "SUCCEEDED", result)
            part = f"{device}p2"
            self.assertEqual(h.blkid(part, "LABEL"), "config-2", table)
            size = int(h.run(["blockdev", "--getsize64", part]).stdout)
            self.assertTrue(63 * MiB <= size <= 66 * MiB, size)
            # at the end of the disk
            parted = h.run(["parted", "-s", "-m", device, "unit", "MiB",
                            "print"]).stdout
            self.assertRegex(parted, r"\n2:\d+MiB:51\d\dMiB:")
            agent_api.call(self.netns, "GET", "/v1/status")
            h.run(["pkill", "-f", f"agent-{os.path.basename(device)}"],
                  check=False)
            time.sleep(0.5)

    def test_config_drive_on_4k_sectors_is_rebuilt_as_fat(self) -> None:
        device = self.loop(4096)
        digest, _ = h.make_fs_image(os.path.join(self.www, "root.img"),
                                    64 * MiB)
        self.agent(device)
        drive = h.make_config_drive(self.workdir, META)
        result = self.prepare(self.partition_info(
            "root.img", digest, swap_mb=0, ephemeral_mb=0, root_mb=100),
            drive)
        self.assertEqual(result["command_status"], "SUCCEEDED", result)
        part = agent_api.command(self.netns, TOKEN,
                                 "standby.get_partition_uuids"
                                 )["command_result"]["partitions"][
                                     "configdrive"]
        self.assertEqual(h.blkid(part, "TYPE"), "vfat")
        self.assertEqual(h.blkid(part, "LABEL"), "CONFIG-2")
        listing = h.run(["mdir", "-i", part, "-b", "-/", "::"]).stdout
        self.assertIn("meta_data.json", listing)
        meta = h.run(["mtype", "-i", part,
                      "::/openstack/latest/meta_data.json"]).stdout
        self.assertIn(META["uuid"], meta)

    def test_4k_config_drive_linking_out_is_refused(self) -> None:
        # mcopy follows links: a drive with a link to /proc/cmdline used to
        # put the ramdisk's kernel command line on the deployed disk
        device = self.loop(4096)
        digest, _ = h.make_fs_image(os.path.join(self.www, "root.img"),
                                    64 * MiB)
        self.agent(device)
        tree = os.path.join(self.workdir, "hostile-cd")
        latest = os.path.join(tree, "openstack", "latest")
        os.makedirs(latest)
        with open(os.path.join(latest, "meta_data.json"), "w") as f:
            f.write('{"uuid": "x"}')
        os.symlink("/proc/cmdline", os.path.join(latest, "user_data"))
        iso = os.path.join(self.workdir, "hostile.iso")
        h.run(["genisoimage", "-o", iso, "-quiet", "-J", "-r", "-V",
               "config-2", tree])
        with open(iso, "rb") as f:
            drive = base64.b64encode(gzip.compress(f.read())).decode()
        result = self.prepare(self.partition_info(
            "root.img", digest, swap_mb=0, ephemeral_mb=0, root_mb=100),
            drive)
        self.assertEqual(result["command_status"], "FAILED", result)
        self.assertIn("refusing the config drive: /openstack/latest/"
                      "user_data links to '/proc/cmdline', outside the "
                      "config drive", result["command_error"]["details"])


class BootloaderTests(_Sandbox):
    """install_bootloader, BIOS: a real Debian root filesystem (debootstrap)
    deployed as a partition image, then GRUB installed from inside it."""

    def test_bios_grub_in_a_chroot(self) -> None:
        # GRUB 2.06 learns where a partition starts from HDIO_GETGEO (or
        # device-mapper); the loop driver does not answer it and this kernel
        # has no device-mapper.  A preload shim answers from sysfs as a disk
        # driver would (tests/integration/shims/loop_geometry.c).  It lives
        # in the test's OS image only (/etc/ld.so.preload), so it affects
        # grub-install in the chroot and nothing of the agent's own.
        #
        # The image's /etc/default/grub (grub-mkconfig sources it, as root,
        # in the chroot) probes what it can reach: another disk (a decoy
        # loop device with a marker), by its node, by a node it makes, or
        # through the agent's root in /proc; it writes what it saw into
        # the image.
        decoy, marker = self.decoy()
        major, minor = os.major(os.stat(decoy).st_rdev), \
            os.minor(os.stat(decoy).st_rdev)
        probe = f"""
set +e
{{
echo "== dev"; ls -1A /dev
echo "== mapper"; ls -1A /dev/mapper
echo "== decoy"; head -c 64 {decoy}
echo "== mknod"; mknod /tmp/decoy b {major} {minor} && head -c 64 /tmp/decoy
rm -f /tmp/decoy
echo "== proc"; head -c 64 /proc/1/root{decoy}
echo "== env"; echo "os-prober: ${{GRUB_DISABLE_OS_PROBER-unset}}"
}} > /root/probe.txt 2>&1
set -e
""".encode()
        try:
            shim = h.build_loop_geometry_shim(self.workdir)
            with open(shim, "rb") as f:
                library = f.read()
            digest, fs_uuid = h.make_os_image(
                os.path.join(self.www, "debian.img"), 700 * MiB,
                files={"/usr/local/lib/loop_geometry.so": library,
                       "/etc/ld.so.preload":
                           b"/usr/local/lib/loop_geometry.so\n",
                       "/etc/default/grub": probe})
        except h.Unavailable as e:
            unavailable(e)
        device = self.loop()
        self.agent(device)
        info = self.partition_info("debian.img", digest, swap_mb=0,
                                   ephemeral_mb=0, root_mb=800)
        result = self.prepare(info)
        self.assertEqual(result["command_status"], "SUCCEEDED", result)
        params = {"root_uuid": fs_uuid, "efi_system_part_uuid": None,
                  "prep_boot_part_uuid": None, "target_boot_mode": "bios"}
        # Ironic has not allowed BIOS bootloader installs: refused, as IPA
        refused = agent_api.command(self.netns, TOKEN,
                                    "image.install_bootloader", **params)
        self.assertEqual(refused["command_status"], "FAILED")
        self.assertEqual(refused["command_error"]["type"], "InvalidImage")
        body = agent_api.command(self.netns, TOKEN, "poll.set_node_info",
                                 node_info={"node": {"uuid": "n"}, "config": {
                                     "enable_bios_bootloader_install": True}})
        self.assertEqual(body["command_status"], "SUCCEEDED")
        done = agent_api.command(self.netns, TOKEN,
                                 "image.install_bootloader", **params)
        self.assertEqual(done["command_status"], "SUCCEEDED", done)
        with open(device, "rb") as f:
            mbr = f.read(512)
        self.assertIn(b"GRUB", mbr)          # GRUB's boot code in the MBR
        self.assertEqual(mbr[510:512], b"\x55\xaa")
        root = f"{device}p1"
        listing = h.run(["debugfs", "-R", "ls -l /boot/grub", root]).stdout
        self.assertIn("grub.cfg", listing)
        self.assertIn("i386-pc", listing)
        seen = h.run(["debugfs", "-R", "cat /root/probe.txt", root]).stdout
        self.assertNotIn(marker, seen)
        sections = dict(part.split("\n", 1) for part in
                        seen.split("== ")[1:])
        name = os.path.basename(device)
        # GRUB's device-mapper library makes /dev/mapper (empty: it cannot
        # make device nodes)
        self.assertEqual(sorted(set(sections["dev"].split()) - {"mapper"}),
                         sorted([
            "disk", "fd", "full", name, f"{name}p1", "null", "random",
            "shm", "stderr", "stdin", "stdout", "tty", "urandom", "zero"]))
        self.assertNotIn("control", sections["mapper"])
        self.assertIn("No such file", sections["decoy"])
        self.assertIn("Operation not permitted", sections["mknod"])
        self.assertIn("Permission denied", sections["proc"])
        self.assertIn("os-prober: true", sections["env"])

    def decoy(self) -> tuple[str, str]:
        """Another disk on this machine, with a marker in its first
        bytes: the agent's sandbox hides it, the image must not see it."""
        marker = f"DECOY-{os.urandom(8).hex()}"
        backing = os.path.join(self.workdir, "decoy.img")
        with open(backing, "wb") as f:
            f.write(marker.encode().ljust(4096, b"\0"))
            f.truncate(1 * MiB)
        dev = h.run(["losetup", "--find", "--show", backing]).stdout.strip()
        self.cleanups.add(f"loop {dev}", lambda: h.run(["losetup", "-d",
                                                        dev]))
        return dev, marker
