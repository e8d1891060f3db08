"""A real Ironic 39.0.0 deploys partition images through our agent: one
with a config drive, swap and ephemeral (no OS in it, so Ironic runs with
manage_agent_boot = false and skips the bootloader step), and a Debian root
filesystem into which Ironic has the agent install GRUB (BIOS)."""

from __future__ import annotations

from tests.integration import harness as h
from tests.integration import scenarios
from tests.integration.base import IronicTestCase, unavailable

MiB = 1024 * 1024


class PartitionDeployTests(IronicTestCase):
    environment = {"manage_agent_boot": False}

    def test_partition_image_with_config_drive(self) -> None:
        result = scenarios.deploy_partition_image(self.env)
        self.assertEqual(result["node"]["provision_state"], "active")
        dev = self.env.device
        self.assertEqual(h.blkid(dev, "PTTYPE"), "dos")
        # ephemeral (1 GiB), swap, config drive, root (1 GiB) last
        self.assertEqual(h.blkid(f"{dev}p1", "LABEL"), "ephemeral0")
        self.assertEqual(h.blkid(f"{dev}p2", "TYPE"), "swap")
        self.assertEqual(h.blkid(f"{dev}p3", "LABEL"), "config-2")
        self.assertEqual(h.blkid(f"{dev}p4", "UUID"), result["fs_uuid"])
        self.assertEqual(h.device_sha256(f"{dev}p4", 256 * MiB),
                         result["digest"])
        # Ironic recorded the root partition's UUID from get_partition_uuids
        internal = result["node"]["driver_internal_info"]
        self.assertEqual(internal.get("root_uuid_or_disk_id"),
                         result["fs_uuid"])
        self.assertIn("running command standby.get_partition_uuids",
                      result["agent_log"])


class BootablePartitionDeployTests(IronicTestCase):
    def test_ironic_has_grub_installed(self) -> None:
        try:
            result = scenarios.deploy_bootable_partition_image(self.env)
        except h.Unavailable as e:
            unavailable(e)
        self.assertEqual(result["node"]["provision_state"], "active")
        dev = self.env.device
        self.assertEqual(h.blkid(f"{dev}p1", "UUID"), result["fs_uuid"])
        self.assertIn("running command image.install_bootloader",
                      result["agent_log"])
        with open(dev, "rb") as f:
            mbr = f.read(512)
        self.assertIn(b"GRUB", mbr)
        listing = h.run(["debugfs", "-R", "ls -l /boot/grub",
                         f"{dev}p1"]).stdout
        self.assertIn("grub.cfg", listing)
        cfg = h.run(["debugfs", "-R", "cat /boot/grub/grub.cfg",
                     f"{dev}p1"]).stdout
        self.assertIn(result["fs_uuid"], cfg)
