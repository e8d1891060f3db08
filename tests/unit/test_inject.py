"""The inject_files step: its checks, where a file goes and how it is
written into a (hostile) deployed filesystem.

Filesystems are directory trees here; ``mount`` is faked by a link from
the mount point to the tree (what the agent sees through it is the same);
``blkid`` answers from a table (test data, not captures).  The real
thing, on a loop device with ext4 filesystems, is
tests/integration/test_inject_files.py.
"""

from __future__ import annotations

import base64
import os
import stat
from typing import Any, Sequence

from twisted.internet.defer import ensureDeferred
from twisted.trial.unittest import SynchronousTestCase

from ipa_twisted import errors
from ipa_twisted.config import load_config
from ipa_twisted.context import RunningAgent
from ipa_twisted.hardware import disks, inject
from ipa_twisted.hardware.disks import DeviceGuard
from ipa_twisted.hardware.generic import GenericHardwareManager
from ipa_twisted.hardware.manager import HardwareManagers
from ipa_twisted.hardware.partinfo import Partition
from ipa_twisted.process import ProcessResult
from ipa_twisted.testing import FakeHardwareManager, FakeProcessRunner
from tests.unit.test_bootloader import ThreadsAtOnce, fake_sys_block


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


class ValidateTests(SynchronousTestCase):
    def test_properties_first_then_args(self) -> None:
        a = {"path": "/etc/a", "content": b64(b"a")}
        b = {"path": "/etc/b", "deleted": True}
        self.assertEqual(inject.validate_files([a], [b]), [a, b])

    def test_every_problem_is_named(self) -> None:
        with self.assertRaises(errors.InvalidCommandParamsError) as e:
            inject.validate_files([], [
                {"path": "/etc/x", "content": "aGk=", "colour": 1},
                {"content": "aGk="},
                {"path": "/top", "content": "aGk="},
                {"path": "/etc/dir/", "content": "aGk="},
                {"path": "/etc/y", "content": "aGk=", "deleted": True},
                {"path": "/etc/z", "content": "not base64!"},
                {"path": "/etc/m", "content": "aGk=", "mode": "0644"},
                {"path": "/etc/n"},
                "not an object"])
        text = str(e.exception)
        for expected in ("unexpected fields", "colour", "expected a path",
                         'root directory requires "partition"',
                         "directories not supported",
                         "content cannot be used with deleted",
                         "neither base64 nor a URL",
                         "mode must be a number",
                         "content (base64 or a URL) expected",
                         "must be an object"):
            self.assertIn(expected, text)

    def test_not_lists(self) -> None:
        self.assertRaises(errors.InvalidCommandParamsError,
                          inject.validate_files, {}, [])
        self.assertRaises(errors.InvalidCommandParamsError,
                          inject.validate_files, [], "x")


class UrlTests(SynchronousTestCase):
    def test_items_of_node_and_ports(self) -> None:
        self.assertEqual(inject.expand_url(
            "http://h/{node[uuid]}/{ports[0][address]}/{node[extra][k]}",
            {"uuid": "u1", "extra": {"k": "v"}}, [{"address": "aa"}]),
            "http://h/u1/aa/v")

    def test_attributes_and_other_names_are_refused(self) -> None:
        for template in ("http://h/{node.__class__}",
                         "http://h/{node[uuid].__class__.__init__}",
                         "http://h/{config}", "http://h/{0}",
                         "http://h/{node[missing]}"):
            self.assertRaises(errors.InvalidCommandParamsError,
                              inject.expand_url, template, {"uuid": "u"}, [])


PARTS = [Partition("vda1", 1, uuid="AAAA-BBBB", partuuid="p-1",
                   label="EFI", partlabel="efi", fstype="vfat"),
         Partition("vda2", 2, uuid="1111-2222", partuuid="p-2",
                   label="root", partlabel="root", fstype="ext4"),
         Partition("vda3", 3, uuid="", partuuid="p-3", fstype="swap")]


class FindPartitionTests(SynchronousTestCase):
    def test_each_kind_of_specifier(self) -> None:
        for spec, name in ((2, "vda2"), ("1", "vda1"), ("/dev/vda2", "vda2"),
                           ("LABEL=root", "vda2"), ("UUID=aaaa-bbbb", "vda1"),
                           ("PARTUUID=p-3", "vda3"),
                           ('PARTLABEL="efi"', "vda1")):
            self.assertEqual(inject.find_partition(PARTS, spec,
                                                   "/dev/vda").name, name,
                             spec)

    def test_nothing_or_another_disk(self) -> None:
        for spec in (9, "LABEL=nope", "/dev/sdb1"):
            self.assertRaises(errors.DeviceNotFound, inject.find_partition,
                              PARTS, spec, "/dev/vda")
        self.assertRaises(errors.InvalidCommandParamsError,
                          inject.find_partition, PARTS, "root", "/dev/vda")


class ApplyTests(SynchronousTestCase):
    """apply_file on a real tree standing for the mounted filesystem."""

    def setUp(self) -> None:
        self.root = os.path.realpath(self.mktemp())
        os.makedirs(os.path.join(self.root, "etc"))
        self.outside = os.path.realpath(self.mktemp())
        os.makedirs(self.outside)

    def read(self, rel: str) -> bytes:
        with open(os.path.join(self.root, rel), "rb") as f:
            return f.read()

    def test_write_with_modes_and_new_directories(self) -> None:
        line = inject.apply_file(self.root, {
            "path": "/etc/new/deep/f.conf", "mode": 0o600,
            "dirmode": 0o700, "owner": os.getuid(), "group": os.getgid()},
            b"x=1\n")
        self.assertEqual(line, "/etc/new/deep/f.conf: 4 bytes written")
        self.assertEqual(self.read("etc/new/deep/f.conf"), b"x=1\n")
        mode = os.stat(os.path.join(self.root, "etc/new/deep/f.conf"))
        self.assertEqual(stat.S_IMODE(mode.st_mode), 0o600)
        leaf = os.stat(os.path.join(self.root, "etc/new/deep"))
        self.assertEqual(stat.S_IMODE(leaf.st_mode), 0o700)
        # an existing file is replaced whole; an existing leaf keeps its mode
        inject.apply_file(self.root, {"path": "/etc/new/deep/f.conf",
                                      "dirmode": 0o755}, b"y")
        self.assertEqual(self.read("etc/new/deep/f.conf"), b"y")
        self.assertEqual(stat.S_IMODE(os.stat(os.path.join(
            self.root, "etc/new/deep")).st_mode), 0o700)

    def test_links_resolve_inside_the_filesystem(self) -> None:
        victim = os.path.join(self.outside, "shadow")
        with open(victim, "w") as f:
            f.write("ramdisk's\n")
        # an absolute link: the image's own /etc/shadow, never the ramdisk's
        os.symlink(victim, os.path.join(self.root, "etc", "hijack"))
        os.symlink("/etc", os.path.join(self.root, "conf"))
        inject.apply_file(self.root, {"path": "/etc/hijack"}, b"image's")
        inject.apply_file(self.root, {"path": "/conf/via-link"}, b"z")
        with open(victim) as f:
            self.assertEqual(f.read(), "ramdisk's\n")
        self.assertEqual(self.read(victim.lstrip("/")), b"image's")
        self.assertEqual(self.read("etc/via-link"), b"z")

    def test_dotdot_and_special_files_are_refused(self) -> None:
        os.symlink("../../../..", os.path.join(self.root, "etc", "up"))
        os.mkfifo(os.path.join(self.root, "etc", "fifo"))
        for path in ("/../../x", "/etc/up/x"):
            try:
                inject.apply_file(self.root, {"path": path}, b"no")
            except inject.InjectError:
                pass
            # wherever .. leads, it is inside the tree
            self.assertEqual(os.listdir(self.outside), [])
        with self.assertRaises(inject.InjectError) as e:
            inject.apply_file(self.root, {"path": "/etc/fifo"}, b"no")
        self.assertIn("/etc/fifo", str(e.exception))
        with self.assertRaises(inject.InjectError):
            inject.apply_file(self.root, {"path": "/etc"}, b"no")

    def test_delete(self) -> None:
        inject.apply_file(self.root, {"path": "/etc/gone"}, b"1")
        self.assertEqual(inject.apply_file(
            self.root, {"path": "/etc/gone", "deleted": True}, None),
            "/etc/gone: deleted")
        self.assertFalse(os.path.exists(os.path.join(self.root,
                                                     "etc/gone")))
        self.assertIn("nothing to delete", inject.apply_file(
            self.root, {"path": "/etc/gone", "deleted": True}, None))
        self.assertRaises(inject.InjectError, inject.apply_file, self.root,
                          {"path": "/etc", "deleted": True}, None)


class FakeMounts:
    """``mount`` links the mount point to a tree; ``blkid`` from a table."""

    def __init__(self, runner: FakeProcessRunner,
                 trees: dict[str, str], blkid: dict[str, str],
                 failing: Sequence[str] = ()) -> None:
        self.trees, self.blkid_out, self.failing = trees, blkid, failing
        self.mounted: list[str] = []
        for tool in ("mount", "umount", "blkid"):
            runner.handlers[tool] = getattr(self, tool)

    def mount(self, argv: Sequence[str]) -> ProcessResult:
        assert argv[1:3] == ["-o", "nodev,nosuid,noexec"], argv
        device, where = argv[3], argv[4]
        if device in self.failing:
            return ProcessResult(tuple(argv), 32, b"",
                                 b"mount: wrong fs type\n")
        os.rmdir(where)
        os.symlink(self.trees[device], where)
        self.mounted.append(device)
        return ProcessResult(tuple(argv), 0, b"", b"")

    def umount(self, argv: Sequence[str]) -> ProcessResult:
        os.unlink(argv[-1])
        os.mkdir(argv[-1])
        return ProcessResult(tuple(argv), 0, b"", b"")

    def blkid(self, argv: Sequence[str]) -> ProcessResult:
        return ProcessResult(tuple(argv), 0,
                             self.blkid_out[argv[-1]].encode(), b"")


class InjectStepTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.sys_block = fake_sys_block(self, {"vda": ["vda1", "vda2",
                                                       "vda3"],
                                               "vdb": ["vdb1"]})
        self.patch(disks, "SYS_BLOCK", self.sys_block)
        self.trees = {}
        for part in ("vda1", "vda2", "vda3", "vdb1"):
            tree = os.path.realpath(self.mktemp())
            os.makedirs(tree)
            self.trees[f"/dev/{part}"] = tree
        os.makedirs(os.path.join(self.trees["/dev/vda2"], "etc"))
        os.makedirs(os.path.join(self.trees["/dev/vda1"], "EFI"))
        os.makedirs(os.path.join(self.trees["/dev/vdb1"], "etc"))
        self.process = FakeProcessRunner()
        self.mounts = FakeMounts(self.process, self.trees, {
            "/dev/vda1": "TYPE=vfat\nLABEL=EFI\nPART_ENTRY_NUMBER=1\n",
            "/dev/vda2": "UUID=1111\nTYPE=ext4\nLABEL=root\n"
                         "PART_ENTRY_NUMBER=2\n",
            "/dev/vda3": "TYPE=swap\nPART_ENTRY_NUMBER=3\n",
            "/dev/vdb1": "TYPE=ext4\nLABEL=root\nPART_ENTRY_NUMBER=1\n"})
        self.context = RunningAgent(
            config=load_config({}), reactor=ThreadsAtOnce(), disk_threads=ThreadsAtOnce(),
            process=self.process, guard=DeviceGuard(["/dev/vda"],
                                                    self.sys_block))
        self.context.hardware = HardwareManagers([
            FakeHardwareManager(root_device="/dev/vda")])

    def run_step(self, files: Any, node: Any = None) -> Any:
        return ensureDeferred(inject.inject_files(
            self.context, node or {"uuid": "n1", "properties": {}}, [],
            files))

    def test_by_path_search_skips_what_is_no_filesystem(self) -> None:
        lines = self.successResultOf(self.run_step([
            {"path": "/etc/hostname", "content": b64(b"node-1\n")},
            {"path": "/EFI/x.cfg", "content": b64(b"efi")}]))
        self.assertEqual(lines, [
            "/etc/hostname: 7 bytes written on /dev/vda2",
            "/EFI/x.cfg: 3 bytes written on /dev/vda1"])
        with open(os.path.join(self.trees["/dev/vda2"], "etc",
                               "hostname")) as f:
            self.assertEqual(f.read(), "node-1\n")
        # swap is never mounted, nor the other disk
        self.assertNotIn("/dev/vda3", self.mounts.mounted)
        self.assertNotIn("/dev/vdb1", self.mounts.mounted)
        self.assertEqual(os.listdir(os.path.join(self.trees["/dev/vdb1"],
                                                 "etc")), [])

    def test_by_label_and_from_node_properties(self) -> None:
        node = {"uuid": "n1", "properties": {"inject_files": [
            {"path": "/motd", "partition": "LABEL=root",
             "content": b64(b"hi")}]}}
        lines = self.successResultOf(self.run_step([], node))
        self.assertEqual(lines, ["/motd: 2 bytes written on /dev/vda2"])
        self.assertEqual(self.mounts.mounted, ["/dev/vda2"])

    def test_a_path_on_no_partition(self) -> None:
        failure = self.failureResultOf(self.run_step([
            {"path": "/srv/x", "content": b64(b"x")}]))
        self.assertIsInstance(failure.value, errors.DeviceNotFound)
        self.assertIn("No partition found with path /srv, scanned: vda1, "
                      "vda2, vda3", str(failure.value))

    def test_an_unmountable_partition_is_passed_over(self) -> None:
        self.mounts.failing = ["/dev/vda1"]
        lines = self.successResultOf(self.run_step([
            {"path": "/etc/a", "content": b64(b"a")}]))
        self.assertEqual(lines, ["/etc/a: 1 bytes written on /dev/vda2"])
        failure = self.failureResultOf(self.run_step([
            {"path": "/x", "partition": 1, "content": b64(b"a")}]))
        self.assertIsInstance(failure.value, inject.InjectError)
        self.assertIn("mount /dev/vda1: mount: wrong fs type",
                      str(failure.value))

    def test_a_root_device_off_the_allow_list_is_refused(self) -> None:
        self.context.hardware = HardwareManagers([
            FakeHardwareManager(root_device="/dev/vdb")])
        failure = self.failureResultOf(self.run_step([
            {"path": "/etc/a", "content": b64(b"a")}]))
        self.assertIsInstance(failure.value, errors.DeviceNotAllowed)
        self.assertEqual(self.process.calls, [])

    def test_nothing_to_inject(self) -> None:
        self.assertEqual(self.successResultOf(self.run_step(None)), [])
        self.assertEqual(self.process.calls, [])


class StepCatalogueTests(SynchronousTestCase):
    def test_inject_files_priority_from_the_configuration(self) -> None:
        manager = GenericHardwareManager()
        steps = {s["step"]: s for s in manager.get_deploy_steps({}, [])}
        self.assertEqual(steps["inject_files"]["priority"], 0)
        self.assertEqual(steps["inject_files"]["argsinfo"], inject.ARGSINFO)
        manager.agent = RunningAgent(
            config=load_config({"inject_files_priority": "55"}),
            reactor=None, process=FakeProcessRunner(),
            guard=DeviceGuard(None))
        for kind in ("deploy", "service"):
            steps = {s["step"]: s for s in getattr(
                manager, f"get_{kind}_steps")({}, [])}
            self.assertEqual(steps["inject_files"]["priority"], 55)
