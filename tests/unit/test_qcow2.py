"""The streaming qcow2 reader against qemu-img's own conversion, on images
that qemu-img makes here (plain, compressed zlib/zstd, 512-byte clusters,
version 2, grown with its L1 table moved behind the data, zero clusters),
fed in chunks of many sizes."""

from __future__ import annotations

import os
import shutil
import subprocess

from twisted.trial.unittest import SynchronousTestCase

from ipa_twisted.image import qcow2
from tests.integration import harness as h
from tests.integration.base import unavailable

MiB = 1024 * 1024


def qemu_img(*args: str) -> None:
    subprocess.run(["qemu-img", *args], check=True, capture_output=True)


class Images:
    """Made once per process (qemu-img takes a moment)."""

    dir: str | None = None

    @classmethod
    def make(cls) -> str:
        if cls.dir is not None:
            return cls.dir
        if shutil.which("qemu-img") is None or shutil.which("qemu-io") is None:
            unavailable(h.Unavailable("needs qemu-img and qemu-io "
                                      "(qemu-utils)"))
        import tempfile

        d = tempfile.mkdtemp(prefix="ipa-qcow2-")
        raw = os.path.join(d, "base.raw")
        with open(raw, "wb") as f:
            f.write(os.urandom(3 * MiB))
            f.write(bytes(2 * MiB))
            f.write(os.urandom(1234567))
            f.truncate(8 * MiB + 4096)
        j = os.path.join
        # the conversions run side by side
        converting = [subprocess.Popen(
            ["qemu-img", "convert", *options, "-f", "raw", "-O", "qcow2",
             raw, j(d, name)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            for name, options in (
                ("plain", []), ("zlib", ["-c"]),
                ("zstd", ["-c", "-o", "compression_type=zstd"]),
                ("small", ["-o", "cluster_size=512"]),
                ("v2", ["-o", "compat=0.10"]))]
        for process in converting:
            _, err = process.communicate()
            if process.returncode:
                raise subprocess.CalledProcessError(
                    process.returncode, process.args, stderr=err)
        shutil.copy(j(d, "plain"), j(d, "grown"))
        qemu_img("resize", j(d, "grown"), "+4G")
        subprocess.run(["qemu-io", "-c", "write -P 7 4G 64k", "-c",
                        "write -z 0 64k", j(d, "grown")], check=True,
                       capture_output=True)
        qemu_img("create", "-f", "qcow2", "-b", j(d, "plain"), "-F", "qcow2",
                 j(d, "backed"))
        cls.dir = d
        return d


class Qcow2StreamTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.dir = Images.make()

    def convert(self, name: str, chunk: int) -> tuple[str, qcow2.Qcow2Stream]:
        src = os.path.join(self.dir, name)
        out = os.path.abspath(self.mktemp())
        fd = os.open(out, os.O_RDWR | os.O_CREAT)
        self.addCleanup(os.close, fd)

        def emit(offset: int, data: bytes) -> None:
            os.pwrite(fd, data, offset)

        stream = qcow2.Qcow2Stream(emit)
        with open(src, "rb") as f:
            while True:
                data = f.read(chunk)
                if not data:
                    break
                stream.feed(data)
            stream.end()
            self.first_pass = [m.kind for m in stream.missed]
            while stream.missed:
                for missed in stream.take_missed():
                    f.seek(missed.host)
                    stream.refetched(missed, f.read(missed.length))
            self.assertTrue(stream.complete)
        assert stream.header is not None
        os.ftruncate(fd, stream.header.size)
        return out, stream

    def same_as_qemu(self, name: str, out: str) -> None:
        result = subprocess.run(
            ["qemu-img", "compare", "-f", "raw", "-F", "qcow2", out,
             os.path.join(self.dir, name)], capture_output=True, text=True)
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)

    def test_moved_l1_needs_a_second_pass(self) -> None:
        out, stream = self.convert("grown", 65536)
        # the L2 tables came before the (moved) L1 table
        self.assertTrue(self.first_pass)
        self.assertEqual(set(self.first_pass), {"l2"})
        self.same_as_qemu("grown", out)

    def test_unwritten_ranges(self) -> None:
        _, stream = self.convert("plain", 1 << 20)
        # 3 MiB of data, 2 MiB of zeros, 1234567 bytes of data (to the
        # end of their 64 KiB cluster), zeros up to 8 MiB + 4 KiB
        end_of_data = -(-(5 * MiB + 1234567) // 65536) * 65536
        self.assertEqual(list(stream.unwritten_ranges()), [
            (3 * MiB, 2 * MiB),
            (end_of_data, 8 * MiB + 4096 - end_of_data)])

    def test_refusals(self) -> None:
        with open(os.path.join(self.dir, "backed"), "rb") as f:
            head = f.read(4096)
        with self.assertRaises(qcow2.Qcow2Error) as cm:
            qcow2.parse_header(head)
        self.assertIn("backing file", str(cm.exception))
        with self.assertRaises(qcow2.Qcow2Error):
            qcow2.parse_header(b"QFI\xfb" + bytes(100))  # version 0
        with self.assertRaises(qcow2.Qcow2Error):
            qcow2.parse_header(b"not qcow2" + bytes(100))
