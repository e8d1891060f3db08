"""ramdisk/iso.py: the ISO's command line and boot loader configs (the ISO
itself is made and booted, BIOS and UEFI, by tests/vm/test_ramdisk_net)."""

from __future__ import annotations

import os
import sys

from twisted.trial.unittest import SynchronousTestCase

TOP = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(TOP, "ramdisk"))
import iso  # noqa: E402


class CommandLineTests(SynchronousTestCase):

    def test_consoles_then_the_params(self) -> None:
        self.assertEqual(
            iso.command_line(" ipa-api-url=http://192.0.2.1:6385\n"
                             "  ipa-insecure=1 "),
            "console=tty0 console=ttyS0,115200n8 "
            "ipa-api-url=http://192.0.2.1:6385 ipa-insecure=1")
        self.assertEqual(iso.command_line(""), iso.CONSOLE)
        # what Ironic-style parameters hold
        iso.command_line("BOOTIF=52:54:00:a1:b2:c4 ip=:::::eth0:dhcp "
                         "ipa-api-url=https://[fd00:ab::1]:6385 "
                         "ipa-global-request-id=req-5f0c-1")

    def test_boot_loader_syntax_is_refused(self) -> None:
        for bad in ('ipa-api-url="http://x"', "a;reboot", "x=$root",
                    "x={y}", "a\\b", "a'b"):
            with self.assertRaises(ValueError) as e:
                iso.command_line(bad)
            self.assertIn("--iso-params", str(e.exception))


class FilesTests(SynchronousTestCase):

    def test_both_loaders_get_the_same_command_line(self) -> None:
        files = iso.files("ipa-api-url=http://192.0.2.1:6385", 1767225600)
        line = ("console=tty0 console=ttyS0,115200n8 "
                "ipa-api-url=http://192.0.2.1:6385")
        self.assertIn(f"  APPEND {line}\n", files["isolinux.cfg"])
        self.assertIn("  KERNEL /ipa-twisted.kernel\n", files["isolinux.cfg"])
        self.assertIn(f"  linux /ipa-twisted.kernel {line}\n",
                      files["grub.cfg"])
        self.assertIn("  initrd /ipa-twisted.initramfs\n", files["grub.cfg"])
        # GRUB's own image finds the ISO by the kernel's path
        self.assertIn("--file /ipa-twisted.kernel", files["embedded.cfg"])
        # every date the script sets is the build's epoch
        self.assertIn("SOURCE_DATE_EPOCH=1767225600", files["build.sh"])
        self.assertIn("touch -h -d @1767225600", files["build.sh"])
