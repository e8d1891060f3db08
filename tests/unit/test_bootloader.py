"""Which UEFI boot loaders install_bootloader registers, from an ESP tree.

The trees are built here; the BOOTX64.CSV layout (UTF-16, "loader,label,
options,description") is the one shim's fallback loader documents.
"""

from __future__ import annotations

import os
import shutil
import tempfile

from twisted.trial.unittest import SynchronousTestCase

from ipa_twisted.commands.image import efi_path, find_loaders


class FindLoadersTests(SynchronousTestCase):
    def esp(self, files: dict[str, bytes]) -> str:
        root = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, root)
        for name, content in files.items():
            path = os.path.join(root, name)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "wb") as f:
                f.write(content)
        return root

    def test_csv_entries_come_first(self) -> None:
        csv = "shimx64.efi,debian,,This is the boot entry for debian\n"
        esp = self.esp({
            "EFI/debian/BOOTX64.CSV": csv.encode("utf-16"),
            "EFI/debian/shimx64.efi": b"MZ",
            "EFI/debian/grubx64.efi": b"MZ",
            "EFI/BOOT/BOOTX64.EFI": b"MZ",
        })
        self.assertEqual(find_loaders(esp),
                         [("EFI/debian/shimx64.efi", "debian")])

    def test_shim_before_grub_before_removable_path(self) -> None:
        both = self.esp({"EFI/fedora/grubx64.efi": b"MZ",
                         "EFI/fedora/shimx64.efi": b"MZ",
                         "EFI/BOOT/BOOTX64.EFI": b"MZ"})
        self.assertEqual(find_loaders(both),
                         [("EFI/fedora/shimx64.efi", "fedora")])
        grub = self.esp({"EFI/ubuntu/grubx64.efi": b"MZ",
                         "EFI/BOOT/BOOTX64.EFI": b"MZ"})
        self.assertEqual(find_loaders(grub),
                         [("EFI/ubuntu/grubx64.efi", "ubuntu")])
        removable = self.esp({"EFI/BOOT/BOOTX64.EFI": b"MZ"})
        self.assertEqual(find_loaders(removable),
                         [("EFI/BOOT/BOOTX64.EFI", "ironic")])

    def test_architecture_selects_the_loader(self) -> None:
        esp = self.esp({"EFI/debian/grubaa64.efi": b"MZ",
                        "EFI/debian/grubx64.efi": b"MZ"})
        self.assertEqual(find_loaders(esp, "aa64"),
                         [("EFI/debian/grubaa64.efi", "debian")])

    def test_nothing_to_boot(self) -> None:
        self.assertEqual(find_loaders(self.esp({})), [])
        self.assertEqual(find_loaders(self.esp({"EFI/debian/README": b""})),
                         [])

    def test_efi_path_uses_backslashes(self) -> None:
        self.assertEqual(efi_path("EFI/debian/shimx64.efi"),
                         "\\EFI\\debian\\shimx64.efi")
