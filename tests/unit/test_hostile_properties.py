"""Property-based tests (hypothesis) of the readers that take hostile
bytes, on mutated real inputs: the qcow2 reader (files made here by
qemu-img), the config-drive decoder (a drive made as Ironic makes one:
genisoimage, gzip, base64) and the partition-table reader (the format
gate's detection, blockio's GPT/MBR probes and the ``parted -m`` parser,
on disk images partitioned here by parted, GPT and MBR).

Whatever the mutation, each reader ends with a result or the agent's own
error (never another exception), and its memory stays under a bound
(tracemalloc peak)."""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import tempfile
import tracemalloc
from typing import Any, Callable

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from ipa_twisted import errors
from ipa_twisted.config import load_config
from ipa_twisted.context import RunningAgent
from ipa_twisted.hardware import blockio
from ipa_twisted.hardware.disks import DeviceGuard
from ipa_twisted.image import configdrive, formats, qcow2
from ipa_twisted.testing import FakeProcessRunner
from tests import hostile_images as hi
from tests.integration import harness as h
from tests.integration.base import unavailable
from tests.properties import examples

MiB = 1024 * 1024
#: (how many examples: tests/properties.py; the full counts in CI)
SETTINGS = settings(max_examples=examples(60), deadline=None,
                    suppress_health_check=[HealthCheck.too_slow,
                                           HealthCheck.data_too_large])


def bounded(test: SynchronousTestCase, limit: int,
            func: Callable[[], Any], allowed: type | tuple[type, ...]
            ) -> Any:
    """Run ``func``: it may raise only ``allowed``, and may allocate at
    most ``limit`` bytes at its peak."""
    tracemalloc.start()
    try:
        try:
            return func()
        except allowed as e:
            return e
        finally:
            peak = tracemalloc.get_traced_memory()[1]
            test.assertLess(peak, limit, "peak memory")
    finally:
        tracemalloc.stop()


def tool(name: str) -> None:
    if shutil.which(name) is None:
        unavailable(h.Unavailable(f"needs {name}"))


def mutate(data: bytes, writes: list[tuple[int, bytes]],
           cut: int | None) -> bytes:
    out = bytearray(data)
    for at, blob in writes:
        at %= max(len(out), 1)
        out[at:at + len(blob)] = blob
    return bytes(out[:cut] if cut is not None else out)


# 64-bit values that break arithmetic: zero, one, high bits, all bits
EXTREMES = st.sampled_from([0, 1, 511, 512, 1 << 30, 1 << 40, 1 << 56,
                            (1 << 62) | 7, (1 << 63) | 512, (1 << 64) - 1])


# ------------------------------------------------------------------ qcow2

#: Where the qcow2 header's fields start: version, backing file, cluster
#: bits, size, encryption, L1 size and offset, refcount table, snapshots,
#: features, header length, compression type.
HEADER_FIELDS = [4, 8, 16, 20, 24, 32, 36, 40, 48, 56, 60, 64, 72, 80, 88,
                 96, 100, 104]


class Qcow2Files:
    """Small qcow2 files made by qemu-img (once per process), and where
    their metadata lies."""

    made: dict[str, bytes] | None = None

    @classmethod
    def get(cls) -> dict[str, bytes]:
        if cls.made is not None:
            return cls.made
        tool("qemu-img")
        d = tempfile.mkdtemp(prefix="ipa-qcow2-prop-")
        try:
            raw = os.path.join(d, "raw")
            with open(raw, "wb") as f:
                f.write(os.urandom(40000))
                f.write(bytes(100000))
                f.write(b"pattern!" * 12000)
                f.truncate(256 * 1024)
            made = {}
            # the four conversions run side by side
            running = {name: subprocess.Popen(
                ["qemu-img", "convert", "-f", "raw", "-O", "qcow2",
                 *options, raw, os.path.join(d, name)],
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
                for name, options in (
                    ("plain", ["-o", "cluster_size=4096"]),
                    ("zlib", ["-c", "-o", "cluster_size=4096"]),
                    ("zstd", ["-c", "-o",
                              "cluster_size=4096,compression_type=zstd"]),
                    ("v2", ["-o", "compat=0.10,cluster_size=512"]))}
            for name, process in running.items():
                _, err = process.communicate()
                if process.returncode:
                    raise subprocess.CalledProcessError(
                        process.returncode, process.args, stderr=err)
                with open(os.path.join(d, name), "rb") as f:
                    made[name] = f.read()
        finally:
            shutil.rmtree(d, ignore_errors=True)
        cls.made = made
        return made

    @staticmethod
    def metadata_offsets(data: bytes) -> list[int]:
        """Offsets of the header's fields and of every L1 and L2 entry."""
        h = qcow2.parse_header(data[:4096])
        offsets = list(range(0, 112, 4))
        l2s = []
        for i in range(h.l1_size):
            at = h.l1_offset + 8 * i
            offsets.append(at)
            entry = struct.unpack_from(">Q", data, at)[0] & qcow2.L1_OFFSET_MASK
            if entry:
                l2s.append(entry)
        for l2 in l2s:
            offsets.extend(range(l2, l2 + h.cluster_size, 8))
        return offsets


def run_qcow2(data: bytes, chunk: int, max_size: int) -> qcow2.Qcow2Stream:
    """The pipeline's use of the reader: feed, end, fetch again what was
    missed (from the same bytes), zero what nothing wrote."""
    stream: qcow2.Qcow2Stream

    def emit(offset: int, piece: Any) -> None:
        assert stream.header is not None
        assert 0 <= offset and offset + len(piece) <= stream.header.size
        assert len(piece) <= stream.header.cluster_size

    stream = qcow2.Qcow2Stream(emit, max_size=max_size)
    for i in range(0, len(data), chunk):
        stream.feed(data[i:i + chunk])
    stream.end()
    for _ in range(4):
        missed = stream.take_missed()
        if not missed:
            break
        for item in missed:
            stream.refetched(item, data[item.host:item.host + item.length])
    if stream.complete:
        for start, length in stream.unwritten_ranges():
            assert start >= 0 and length > 0
    return stream


class Qcow2Properties(SynchronousTestCase):
    @settings(SETTINGS, max_examples=examples(120))
    @given(st.data())
    def test_mutated_images(self, data: st.DataObject) -> None:
        files = Qcow2Files.get()
        name = data.draw(st.sampled_from(sorted(files)))
        image = files[name]
        interesting = Qcow2Files.metadata_offsets(image)
        anywhere = st.integers(0, len(image) - 1)
        where = st.one_of(st.sampled_from(HEADER_FIELDS),
                          st.sampled_from(interesting), anywhere)
        blob = st.one_of(
            st.binary(min_size=1, max_size=8),
            EXTREMES.map(lambda v: struct.pack(">Q", v)),
            st.integers(0, 255).map(lambda b: bytes([b])))
        writes = data.draw(st.lists(st.tuples(where, blob), max_size=6))
        cut = data.draw(st.none() | st.integers(0, len(image)))
        mutated = mutate(image, writes, cut)
        chunk = data.draw(st.sampled_from([509, 4096, 65537, 1 << 20]))
        max_size = data.draw(st.sampled_from([0, 300 * 1024, 64 * MiB,
                                              1 << 40]))
        bounded(self, 100 * MiB,
                lambda: run_qcow2(mutated, chunk, max_size), qcow2.Qcow2Error)

    @settings(max_examples=40, deadline=None)
    @given(st.sampled_from(["plain", "zlib", "zstd", "v2"]),
           st.sampled_from([509, 4096, 65537]))
    def test_real_images_are_read_whole(self, name: str, chunk: int) -> None:
        image = Qcow2Files.get()[name]
        stream = run_qcow2(image, chunk, 256 * 1024)
        self.assertTrue(stream.complete)
        self.assertEqual(stream.missed, [])


# ------------------------------------------------------------ config drive


class ConfigDriveProperties(SynchronousTestCase):
    drive: str | None = None

    @classmethod
    def real(cls) -> str:
        if cls.drive is None:
            tool("genisoimage")
            d = tempfile.mkdtemp(prefix="ipa-cd-prop-")
            try:
                cls.drive = h.make_config_drive(
                    d, {"uuid": "9a0b", "hostname": "node-1",
                        "public_keys": {"k": "ssh-ed25519 AAAA x"}})
            finally:
                shutil.rmtree(d, ignore_errors=True)
        return cls.drive

    def check(self, value: bytes | str) -> None:
        size = len(value)
        out = bounded(self, 3 * size + configdrive.MAX_BYTES + 8 * MiB,
                      lambda: configdrive.decode(value),
                      errors.DeploymentError)
        if isinstance(out, bytes):
            self.assertLessEqual(len(out), configdrive.MAX_BYTES)

    @SETTINGS
    @given(st.data())
    def test_mutated_base64(self, data: st.DataObject) -> None:
        text = self.real()
        alphabet = st.sampled_from(
            "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
            "+/=\n -_!\u00e9")
        edits = data.draw(st.lists(st.tuples(
            st.integers(0, len(text)), alphabet,
            st.sampled_from(["replace", "insert", "delete"])), max_size=8))
        chars = list(text)
        for at, c, how in edits:
            at = min(at, len(chars))
            if how == "insert":
                chars.insert(at, c)
            elif chars:
                at = min(at, len(chars) - 1)
                if how == "replace":
                    chars[at] = c
                else:
                    del chars[at]
        self.check("".join(chars))

    @SETTINGS
    @given(st.data())
    def test_mutated_gzip_and_iso(self, data: st.DataObject) -> None:
        import base64

        packed = base64.b64decode(self.real())
        writes = data.draw(st.lists(st.tuples(
            st.integers(0, len(packed)), st.binary(min_size=1, max_size=4)),
            max_size=6))
        cut = data.draw(st.none() | st.integers(0, len(packed)))
        mutated = mutate(packed, writes, cut)
        as_text = data.draw(st.booleans())
        # from the conductor (base64 text) or from a URL (bytes: base64,
        # or the raw image)
        if as_text:
            self.check(base64.b64encode(mutated).decode())
        else:
            raw = data.draw(st.booleans())
            self.check(mutated if raw else base64.b64encode(mutated))

    @settings(max_examples=4, deadline=None)
    @given(st.sampled_from([configdrive.MAX_BYTES + 1, 128 * MiB]),
           st.booleans())
    def test_bombs(self, inflated: int, as_text: bool) -> None:
        drive = hi.config_drive_bomb(inflated)
        out = bounded(self, configdrive.MAX_BYTES + 16 * MiB,
                      lambda: configdrive.decode(
                          drive if as_text else drive.encode()),
                      errors.DeploymentError)
        self.assertIsInstance(out, errors.DeploymentError)


# --------------------------------------------------------- partition tables


class Disks:
    """8 MiB disk images partitioned by parted (GPT and MBR), and
    parted's own reading of each (``parted -s -m ... print``)."""

    made: dict[str, tuple[bytes, bytes, str]] | None = None
    SIZE = 8 * MiB

    @classmethod
    def get(cls) -> dict[str, tuple[bytes, bytes, str]]:
        """name -> (first 64 KiB, last 64 KiB, parted -m output)."""
        if cls.made is not None:
            return cls.made
        tool("parted")
        d = tempfile.mkdtemp(prefix="ipa-disk-prop-")
        made = {}
        try:
            for name, argv in (
                    # (not sgdisk: it syncs every file system and then
                    # sleeps a second after writing a table)
                    ("gpt", [["parted", "-s", "{}", "mklabel", "gpt",
                              "mkpart", "EFI", "fat32", "1MiB", "3MiB",
                              "set", "1", "esp", "on",
                              "mkpart", "config-2", "3MiB", "100%"]]),
                    ("mbr", [["parted", "-s", "{}", "mklabel", "msdos",
                              "mkpart", "primary", "ext4", "1MiB", "4MiB",
                              "mkpart", "primary", "fat32", "4MiB",
                              "100%", "set", "1", "boot", "on"]])):
                path = os.path.join(d, name)
                with open(path, "wb") as f:
                    f.truncate(cls.SIZE)
                for cmd in argv:
                    cmd = [path if c == "{}" else c for c in cmd]
                    subprocess.run(cmd, check=True, capture_output=True)
                listing = subprocess.run(
                    ["parted", "-s", "-m", path, "unit", "MiB", "print"],
                    check=True, capture_output=True, text=True).stdout
                with open(path, "rb") as f:
                    head = f.read(formats.HEAD_SIZE)
                    f.seek(cls.SIZE - 65536)
                    tail = f.read()
                made[name] = (head, tail, listing)
        finally:
            shutil.rmtree(d, ignore_errors=True)
        cls.made = made
        return made


KNOWN_FORMATS = {"qcow2", "gzip", "xz", "zstd", "bzip2", "vmdk", "vhdx",
                 "qed", "luks", "vdi", "vpc", "iso", "gpt", "raw"}


class PartitionTableProperties(SynchronousTestCase):
    def setUp(self) -> None:
        self.disks = Disks.get()
        self.path = os.path.abspath(self.mktemp())
        with open(self.path, "wb") as f:
            f.truncate(Disks.SIZE)

    @SETTINGS
    @given(st.data())
    def test_mutated_tables(self, data: st.DataObject) -> None:
        name = data.draw(st.sampled_from(sorted(self.disks)))
        head, tail, _ = self.disks[name]
        # the MBR, the GPT header and its entries; or anywhere
        where = st.one_of(st.integers(0, 512 + 92), st.integers(1024, 2048),
                          st.integers(0, len(head) - 1))
        writes = data.draw(st.lists(st.tuples(
            where, st.one_of(st.binary(min_size=1, max_size=8),
                             st.sampled_from([b"EFI PART", b"\x55\xaa",
                                              b"CD001", b"QFI\xfb"]))),
            max_size=6))
        cut = data.draw(st.none() | st.integers(0, len(head)))
        mutated = mutate(head, writes, cut)
        detected = formats.detect(mutated)
        self.assertIn(detected, KNOWN_FORMATS)
        for claimed in (None, "raw", "qcow2"):
            try:
                formats.check(claimed, detected, formats.DEFAULT_PERMITTED)
            except errors.InvalidImage:
                pass
        with open(self.path, "r+b") as f:
            f.write(mutated.ljust(len(head), b"\0"))
            f.seek(Disks.SIZE - len(tail))
            f.write(mutate(tail, writes, None))
        self.assertIsInstance(blockio.has_gpt(self.path), bool)
        self.assertRegex(blockio.disk_identifier(self.path),
                         r"^0x[0-9a-f]{8}$")

    @SETTINGS
    @given(st.data())
    def test_mutated_parted_listing(self, data: st.DataObject) -> None:
        name = data.draw(st.sampled_from(sorted(self.disks)))
        listing = self.disks[name][2]
        edits = data.draw(st.lists(st.tuples(
            st.integers(0, len(listing)),
            st.text(alphabet=":;\n 0123456789.MiBxyz-", max_size=6)),
            max_size=6))
        text = listing
        for at, insert in edits:
            text = text[:at] + insert + text[at + len(insert):]
        runner = FakeProcessRunner()
        runner.add("parted", text)
        context = RunningAgent(config=load_config({}), reactor=Clock(),
                               process=runner, guard=DeviceGuard(None))
        numbers = self.successResultOf(defer.ensureDeferred(
            configdrive.partition_numbers(context, "/dev/sdz")))
        self.assertTrue(all(isinstance(n, int) and n >= 0
                            for n in numbers))

    def test_real_listings(self) -> None:
        """parted's own reading of the real disks, through our parser."""
        for name, expected in (("gpt", {1, 2}), ("mbr", {1, 2})):
            runner = FakeProcessRunner()
            runner.add("parted", self.disks[name][2])
            context = RunningAgent(config=load_config({}), reactor=Clock(),
                                   process=runner, guard=DeviceGuard(None))
            self.assertEqual(self.successResultOf(defer.ensureDeferred(
                configdrive.partition_numbers(context, "/dev/sdz"))),
                expected)
        self.assertEqual(formats.detect(self.disks["gpt"][0]), "gpt")
        self.assertEqual(formats.detect(self.disks["mbr"][0]), "raw")
