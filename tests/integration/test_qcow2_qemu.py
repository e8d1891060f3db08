"""The streaming qcow2 reader against qemu-img, in chunks of every size
(byte by byte included): tens of seconds of CPU and qemu-img runs, so not
in the unit suite (tests/unit/test_qcow2.py, whose images and helpers
this uses).  No root needed."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from tests.unit import test_qcow2


class Qcow2ChunkSizeTests(SynchronousTestCase):
    setUp = test_qcow2.Qcow2StreamTests.setUp
    convert = test_qcow2.Qcow2StreamTests.convert
    same_as_qemu = test_qcow2.Qcow2StreamTests.same_as_qemu

    def test_images_in_many_chunk_sizes(self) -> None:
        for name in ("plain", "zlib", "zstd", "small", "v2"):
            for chunk in (7, 511, 4096, 65536 + 17, 1 << 20):
                if chunk < 512 and name != "small":
                    continue  # (byte by byte is slow; small covers it)
                out, stream = self.convert(name, chunk)
                self.same_as_qemu(name, out)
                self.assertEqual(self.first_pass, [], (name, chunk))
