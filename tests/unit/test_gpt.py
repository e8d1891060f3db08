"""Moving the backup GPT ourselves, compared byte for byte with what
``sgdisk -e`` made of the same tables (tests/fixtures/gpt, made by
tests/fixtures/gpt/make.py with real sgdisk runs)."""

from __future__ import annotations

import base64
import glob
import json
import os
import struct
import zlib
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from ipa_twisted.image import gpt

HERE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))), "fixtures", "gpt")
BLOCK = 4096


def cases() -> dict[str, dict[str, Any]]:
    found = {}
    for path in sorted(glob.glob(os.path.join(HERE, "*.json"))):
        with open(path) as f:
            found[os.path.basename(path)[:-5]] = json.load(f)
    return found


def unpack(blocks: dict[str, str]) -> dict[int, bytes]:
    return {int(k): zlib.decompress(base64.b64decode(v))
            for k, v in blocks.items()}


class RelocateTests(SynchronousTestCase):
    def disk(self, case: dict[str, Any], size: int | None = None) -> str:
        """A sparse file of the case's disk size holding its image."""
        path = os.path.abspath(self.mktemp())
        with open(path, "wb") as f:
            f.truncate(size or case["disk_size"])
            for offset, data in unpack(case["image"]).items():
                f.seek(offset)
                f.write(data)
            f.truncate(size or case["disk_size"])  # (a smaller disk)
        return path

    def blocks(self, path: str) -> dict[int, bytes]:
        """The file's non-zero 4 KiB blocks."""
        out = {}
        with open(path, "rb") as f:
            fd = f.fileno()
            size = os.fstat(fd).st_size
            pos = 0
            while pos < size:
                try:
                    start = os.lseek(fd, pos, os.SEEK_DATA)
                except OSError:
                    break
                end = os.lseek(fd, start, os.SEEK_HOLE)
                for offset in range(start - start % BLOCK, end, BLOCK):
                    data = os.pread(fd, BLOCK, offset)
                    if data.strip(b"\0"):
                        out[offset] = data
                pos = end
        return out

    def relocate(self, path: str, sector: int) -> str:
        fd = os.open(path, os.O_RDWR)
        try:
            return gpt.relocate_backup(fd, os.fstat(fd).st_size, sector)
        finally:
            os.close(fd)

    def test_same_bytes_as_sgdisk(self) -> None:
        found = cases()
        self.assertGreaterEqual(len(found), 6)
        for name, case in found.items():
            path = self.disk(case)
            self.assertEqual(self.relocate(path, case["sector_size"]),
                             gpt.MOVED, name)
            expected = unpack(case["after"])
            got = self.blocks(path)
            self.assertEqual(sorted(got), sorted(expected), name)
            for offset in expected:
                self.assertEqual(got[offset], expected[offset],
                                 f"{name}: block at {offset}")
            # a second time: nothing left to do
            self.assertEqual(self.relocate(path, case["sector_size"]),
                             gpt.IN_PLACE, name)
            self.assertEqual(self.blocks(path), expected, name)

    def test_hybrid_mbr_is_left_alone(self) -> None:
        case = cases()["hybrid-mbr"]
        mbr = unpack(case["image"])[0][:512]
        types = [mbr[446 + 16 * i + 4] for i in range(4)]
        self.assertEqual(sorted(t for t in types if t),
                         [0x07, gpt.PROTECTIVE])  # a real hybrid
        path = self.disk(case)
        self.relocate(path, 512)
        with open(path, "rb") as f:
            self.assertEqual(f.read(512), mbr)

    def test_disk_of_the_image_size(self) -> None:
        case = cases()["two-partitions"]
        path = self.disk(case, case["image_size"])
        before = self.blocks(path)
        self.assertEqual(self.relocate(path, 512), gpt.IN_PLACE)
        self.assertEqual(self.blocks(path), before)

    def test_no_gpt(self) -> None:
        path = os.path.abspath(self.mktemp())
        with open(path, "wb") as f:
            f.write(b"\0" * 440 + b"\x12\x34\x56\x78" + bytes(66) + b"\x55\xaa")
            f.truncate(8 << 20)
        self.assertEqual(self.relocate(path, 512), gpt.NO_GPT)

    def refused(self, case: dict[str, Any], writes: list[tuple[int, bytes]],
                sector: int = 512, size: int | None = None) -> str:
        path = self.disk(case, size)
        with open(path, "r+b") as f:
            for offset, data in writes:
                f.seek(offset)
                f.write(data)
        before = self.blocks(path)
        with self.assertRaises(gpt.GPTError) as caught:
            self.relocate(path, sector)
        self.assertEqual(self.blocks(path), before, "nothing written")
        return str(caught.exception)

    def test_refusals(self) -> None:
        found = cases()
        case = found["two-partitions"]
        self.assertIn("header's CRC32",
                      self.refused(case, [(512 + 40, b"\x01")]))
        self.assertIn("entries' CRC32",
                      self.refused(case, [(1024 + 60, b"x")]))
        self.assertIn("for 4096-byte sectors",
                      self.refused(found["4096-byte-sectors"], []))
        self.assertIn("does not fit a disk",
                      self.refused(case, [], size=2 << 20))

    def test_hostile_header_fields(self) -> None:
        """Fields that would make it read or write far away are refused
        (the header's CRC made valid again, as an attacker would)."""
        case = cases()["two-partitions"]
        header = bytearray(unpack(case["image"])[0][512:1024])
        for field, value, message in (
                (80, 1 << 30, "GPT entries of"),       # entries
                (84, 100, "entry size"),               # entry size
                (72, 5000, "overlap the usable"),      # entries LBA
                (24, 7, "says it is at LBA 7"),        # my LBA
                (12, 600, "header size")):
            bad = bytearray(header)
            fmt = "<I" if field in (80, 84, 12) else "<Q"
            struct.pack_into(fmt, bad, field, value)
            size = min(struct.unpack_from("<I", bad, 12)[0], 92)
            bad[16:20] = bytes(4)
            struct.pack_into("<I", bad, 16, zlib.crc32(bytes(bad[:size])))
            self.assertIn(message, self.refused(case, [(512, bytes(bad))]),
                          field)

    def test_partitions(self) -> None:
        found = cases()
        for name, sector, expected in (
                ("two-partitions", 512, [(1, 2048, 4095), (2, 4096, 8158)]),
                ("4096-byte-sectors", 4096, [(1, 256, 767),
                                             (2, 768, 2042)])):
            path = self.disk(found[name], found[name]["image_size"])
            fd = os.open(path, os.O_RDONLY)
            try:
                self.assertEqual(gpt.partitions(fd, sector), expected, name)
            finally:
                os.close(fd)

    def test_chs(self) -> None:
        self.assertEqual(gpt.chs(0), b"\x00\x01\x00")
        self.assertEqual(gpt.chs(1), b"\x00\x02\x00")
        self.assertEqual(gpt.chs(255 * 63 * 1024), b"\xff\xff\xff")
