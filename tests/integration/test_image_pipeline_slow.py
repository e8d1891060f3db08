"""The image pipeline tests that need real time or real CPU, moved out of
the unit suite (tests/unit/test_image_pipeline.py, whose loopback server
and set-up they share): every compression format on 8 MiB of random data
(compressing it takes seconds), and a stall cut by the real watchdog
after the connection timeout (2 s).  No root needed."""

from __future__ import annotations

import bz2
import gzip
import hashlib
import lzma

import zstandard

from tests.unit.test_image_pipeline import RAW, MiB, _PipelineBase


class SlowPipelineTests(_PipelineBase):
    async def test_compressed_raw(self) -> None:
        packed = {
            "gzip": gzip.compress(RAW[:3 * MiB]) + gzip.compress(RAW[3 * MiB:]),
            "xz": lzma.compress(RAW),
            "bzip2": bz2.compress(RAW),
            "zstd": zstandard.ZstdCompressor().compress(RAW),
        }
        for kind, data in packed.items():
            with open(self.disk, "r+b") as f:
                f.write(bytes(len(RAW)))
            result = await self.write(self.serve(f"disk.{kind}", data))
            self.assertEqual(result.detected, kind)
            # the checksum is the compressed file's
            self.assertEqual(result.digest, hashlib.sha256(data).hexdigest())
            self.assertEqual(result.written, len(RAW), kind)
            self.assertEqual(self.disk_bytes(len(RAW)), RAW, kind)

    async def test_stall_is_cut_and_resumed(self) -> None:
        result = await self.write(self.serve("disk.img", RAW,
                                             stall_at=1 * MiB))
        self.assertEqual(result.attempts, 2)
        self.assertEqual(self.disk_bytes(len(RAW)), RAW)
        self.flushLoggedErrors()
