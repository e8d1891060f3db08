"""Links in an image or a config drive are resolved by the agent, inside
the tree, never followed out of it by a tool (issue 12, item 10)."""

from __future__ import annotations

import os
from typing import Any, Sequence

from twisted.internet.defer import ensureDeferred
from twisted.trial.unittest import SynchronousTestCase

from ipa_twisted import errors
from ipa_twisted.config import load_config
from ipa_twisted.confined import (
    OutsideTree,
    check_extracted,
    copy_from_image,
    resolve_in,
)
from ipa_twisted.context import RunningAgent
from ipa_twisted.hardware.disks import DeviceGuard
from ipa_twisted.image import configdrive
from ipa_twisted.process import ProcessResult
from ipa_twisted.testing import FakeProcessRunner
from tests.unit.test_bootloader import ThreadsAtOnce


def tree(top: str, entries: dict[str, Any]) -> str:
    """Files (bytes), links (str) and FIFOs (None) under ``top``."""
    for name, value in entries.items():
        path = os.path.join(top, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        if isinstance(value, bytes):
            with open(path, "wb") as f:
                f.write(value)
        elif isinstance(value, str):
            os.symlink(value, path)
        else:
            os.mkfifo(path)
    return top


class ResolveInTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.root = tree(self.mktemp(), {
            "usr/lib/x.efi": b"x", "boot/efi/a": "/usr/lib/x.efi",
            "boot/efi/b": "../../usr/lib/x.efi", "boot/up": "../../../..",
            "loop1": "loop2", "loop2": "loop1", "etc/os": "/usr"})

    def test_links_resolve_in_the_image(self) -> None:
        want = os.path.join(self.root, "usr/lib/x.efi")
        self.assertEqual(resolve_in(self.root, "boot/efi/a"), want)
        self.assertEqual(resolve_in(self.root, "/boot/efi/b"), want)
        self.assertEqual(resolve_in(self.root, "etc/os/lib/x.efi"), want)
        self.assertEqual(resolve_in(self.root, "no/such"),
                         os.path.join(self.root, "no/such"))

    def test_climbing_out_or_looping_is_refused(self) -> None:
        for path in ("boot/up", "boot/up/etc/passwd", "../etc", "loop1",
                     "no/../../x"):
            self.assertRaises(OutsideTree, resolve_in, self.root, path)


class CopyFromImageTests(SynchronousTestCase):
    def copy(self, entries: dict[str, Any]) -> tuple[str, str]:
        root = tree(self.mktemp(), entries)
        out = self.mktemp()
        os.makedirs(out)
        return root, out

    def test_a_fifo_or_a_cycle_is_refused(self) -> None:
        for entries in ({"boot/efi/EFI/pipe": None},
                        {"boot/efi/EFI/x": b"x", "boot/efi/EFI/self": "."},
                        {"boot/efi/EFI/dev": "/dev/null",
                         "dev/null": "/proc/self/fd/0"}):
            root, out = self.copy(entries)
            self.assertRaises(OutsideTree, copy_from_image, root,
                              "boot/efi", out)

    def test_another_filesystem_is_refused(self) -> None:
        # /proc of the machine mounted in the image (as a chroot has it)
        root, out = self.copy({"boot/efi/cmdline": "/proc/cmdline"})
        os.symlink("/proc", os.path.join(root, "proc"))
        with self.assertRaises(OutsideTree):
            copy_from_image(root, "boot/efi", out)
        self.assertEqual(os.listdir(out), [])

    def test_files_and_directories_are_copied(self) -> None:
        root, out = self.copy({"boot/efi/EFI/d/x": b"x",
                               "boot/efi/EFI/l": "/usr/share/shim",
                               "usr/share/shim/s.efi": b"s"})
        self.assertEqual(copy_from_image(root, "/boot/efi", out),
                         ["EFI", "EFI/d", "EFI/d/x", "EFI/l", "EFI/l/s.efi"])
        with open(os.path.join(out, "EFI/l/s.efi"), "rb") as f:
            self.assertEqual(f.read(), b"s")
        self.assertFalse(os.path.islink(os.path.join(out, "EFI/l")))


class ConfigDriveTreeTests(SynchronousTestCase):
    def test_links_inside_become_copies(self) -> None:
        top = tree(self.mktemp(), {
            "openstack/latest/meta_data.json": b"{}",
            "openstack/2012-08-10/meta_data.json": "../latest/meta_data.json"})
        check_extracted(top)
        path = os.path.join(top, "openstack/2012-08-10/meta_data.json")
        self.assertFalse(os.path.islink(path))
        with open(path, "rb") as f:
            self.assertEqual(f.read(), b"{}")

    def test_links_out_and_specials_are_refused(self) -> None:
        secret = os.path.abspath(self.mktemp())
        with open(secret, "w") as f:
            f.write("agent key")
        for entries, why in (
                ({"openstack/latest/key": secret}, "outside the config"),
                ({"cmdline": "/proc/cmdline"}, "outside the config"),
                ({"x": "../.."}, "outside the config"),
                ({"pipe": None}, "device, FIFO or socket"),
                ({"d/x": b"x", "dirlink": "d"}, "not a regular file"),
                ({"dangling": "nothing-here"}, "not in the config drive")):
            top = tree(self.mktemp(), entries)
            with self.assertRaises(OutsideTree) as cm:
                check_extracted(top)
            self.assertIn(why, str(cm.exception))


class RebuildAsFatTests(SynchronousTestCase):
    """On 4 KiB sectors the drive is rebuilt with mcopy, which follows
    links: a drive whose files link out of it is refused before mcopy."""

    def rebuild(self, entries: dict[str, Any]) -> tuple[Any, list[Any]]:
        process = FakeProcessRunner()

        def bsdtar(argv: Sequence[str]) -> ProcessResult:
            tree(argv[argv.index("-C") + 1], entries)
            return ProcessResult(tuple(argv), 0, b"", b"")

        process.handlers["bsdtar"] = bsdtar
        process.add("mkfs.vfat")
        process.add("mcopy")
        context = RunningAgent(config=load_config({}),
                               reactor=ThreadsAtOnce(), process=process,
                               disk_threads=ThreadsAtOnce(),
                               guard=DeviceGuard(None))
        d = ensureDeferred(configdrive._rebuild_as_fat(
            context, "/dev/fake4k1", b"iso"))
        return d, [c for c in process.calls if c[0] == "mcopy"]

    def test_a_link_out_of_the_drive_is_refused(self) -> None:
        d, mcopy = self.rebuild({"openstack/latest/meta_data.json": b"{}",
                                 "openstack/latest/vendor_data.json":
                                     "/proc/cmdline"})
        failure = self.failureResultOf(d, errors.DeploymentError)
        self.assertIn("refusing the config drive: /openstack/latest/"
                      "vendor_data.json links to '/proc/cmdline', outside "
                      "the config drive", str(failure.value))
        self.assertEqual(mcopy, [])

    def test_a_plain_drive_is_copied(self) -> None:
        d, mcopy = self.rebuild({"openstack/latest/meta_data.json": b"{}"})
        self.successResultOf(d)
        self.assertEqual(len(mcopy), 1)
