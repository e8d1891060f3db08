"""The streaming qcow2 reader against crafted hostile files (issue #12 item
4): memory stays bounded by the disk, never by what the file claims.

The files are written field by field (tests/hostile_images.py); memory is
measured with tracemalloc (the reader's allocations are Python's)."""

from __future__ import annotations

import os
import threading
from typing import Any

from twisted.internet import reactor
from twisted.trial.unittest import SynchronousTestCase, TestCase

from ipa_twisted import errors
from ipa_twisted.image import qcow2
from ipa_twisted.image.pipeline import Qcow2Target
from ipa_twisted.image.sink import Device
from tests import hostile_images as hi

MiB = 1024 * 1024


class Sizes:
    """An emit that keeps only sizes."""

    def __init__(self) -> None:
        self.writes: list[tuple[int, int]] = []

    def __call__(self, offset: int, data: Any) -> None:
        self.writes.append((offset, len(data)))

    @property
    def total(self) -> int:
        return sum(n for _, n in self.writes)


def feed(data: bytes, max_size: int | None = None, chunk: int = 65536
         ) -> tuple[qcow2.Qcow2Stream, Sizes]:
    emit = Sizes()
    stream = qcow2.Qcow2Stream(emit, max_size=max_size)
    for i in range(0, len(data), chunk):
        stream.feed(data[i:i + chunk])
    stream.end()
    return stream, emit


class HeaderTests(SynchronousTestCase):
    def test_l1_table_larger_than_qemu_allows(self) -> None:
        head = hi.header(cluster_bits=16, size=1 << 40,
                         l1_size=4 * MiB + 1, l1_offset=65536)
        with self.assertRaises(qcow2.Qcow2Error) as cm:
            qcow2.parse_header(head)
        self.assertIn("larger than 32 MiB", str(cm.exception))

    def test_l1_table_too_small_for_the_virtual_size(self) -> None:
        # 1 GiB of 64 KiB clusters needs 2 L1 entries (512 MiB each)
        head = hi.header(cluster_bits=16, size=1 << 30, l1_size=1,
                         l1_offset=65536)
        with self.assertRaises(qcow2.Qcow2Error) as cm:
            qcow2.parse_header(head)
        self.assertIn("too small for the virtual size", str(cm.exception))

    def test_unaligned_tables(self) -> None:
        with self.assertRaises(qcow2.Qcow2Error):
            qcow2.parse_header(hi.header(cluster_bits=16, size=MiB,
                                         l1_size=1, l1_offset=65536 + 512))
        cb, cluster = 16, 65536
        image = hi.image(
            hi.header(cluster_bits=cb, size=MiB, l1_size=1,
                      l1_offset=cluster),
            {cluster: hi.table({0: 2 * cluster + 512}, 1)})
        with self.assertRaises(qcow2.Qcow2Error) as cm:
            feed(image)
        self.assertIn("not aligned", str(cm.exception))

    def test_shared_clusters_are_refused(self) -> None:
        cb, cluster = 16, 65536
        l2 = hi.table({0: hi.data_entry(3 * cluster),
                       1: hi.data_entry(3 * cluster)}, cluster // 8)
        image = hi.image(hi.header(cluster_bits=cb, size=MiB, l1_size=1,
                                   l1_offset=cluster),
                         {cluster: hi.table({0: 2 * cluster}, 1),
                          2 * cluster: l2, 3 * cluster: b"d" * cluster})
        with self.assertRaises(qcow2.Qcow2Error) as cm:
            feed(image)
        self.assertIn("share the data cluster", str(cm.exception))


class MemoryTests(SynchronousTestCase):
    def test_zstd_cluster_inflates_to_one_cluster_at_most(self) -> None:
        image = hi.qcow2_zstd_bomb(inflated=256 * MiB)
        self.assertLess(len(image), 300 * 1024)
        peak, outcome = hi.peak_of(lambda: feed(image))
        self.assertIsInstance(outcome, tuple, type(outcome))
        stream, emit = outcome
        self.assertEqual(emit.writes, [(0, 65536)])
        self.assertTrue(stream.complete)
        self.assertLess(peak, 16 * MiB)

    def test_overlapping_compressed_clusters(self) -> None:
        # 2048 extents one byte apart, each as long as the format allows
        image = hi.qcow2_overlapping_compressed(count=2048)
        peak, outcome = hi.peak_of(lambda: feed(image))
        self.assertIsInstance(outcome, qcow2.Qcow2Error, type(outcome))
        self.assertIn("overlap", str(outcome))
        self.assertLess(peak, 16 * MiB)

    def test_virtual_size_is_checked_before_anything_is_sized(self) -> None:
        # 1 TiB of 4 KiB clusters: a 32 MiB bitmap
        image = hi.qcow2_huge_bitmap(size=1 << 40, cb=12)
        peak, outcome = hi.peak_of(lambda: feed(image, max_size=5 << 30))
        self.assertIsInstance(outcome, qcow2.Qcow2Error, type(outcome))
        self.assertIn("is larger than the device (5368709120 bytes)",
                      str(outcome))
        self.assertLess(peak, MiB)

    def test_clusters_past_what_a_bitmap_may_track(self) -> None:
        # 4 KiB clusters and 8 TiB: 2^31 clusters, a 256 MiB bitmap
        size = 1 << 43
        head = hi.header(cluster_bits=12, size=size,
                         l1_size=size // (4096 * 512), l1_offset=4096)
        peak, outcome = hi.peak_of(lambda: feed(head.ljust(4096, b"\0")))
        self.assertIsInstance(outcome, qcow2.Qcow2Error, type(outcome))
        self.assertIn("more than this agent can track", str(outcome))
        self.assertLess(peak, MiB)

    def test_pending_entries_are_capped(self) -> None:
        self.patch(qcow2, "MAX_PENDING", 5000)
        image = hi.qcow2_many_pending(tables=1)  # 8192 clusters far away
        with self.assertRaises(qcow2.Qcow2Error) as cm:
            feed(image)
        self.assertIn("more than 5000 table entries wait", str(cm.exception))

    def test_writes_stop_at_the_virtual_size(self) -> None:
        # 1000 bytes of 512-byte clusters: the second cluster is cut
        cb, cluster = 9, 512
        l2 = hi.table({0: hi.data_entry(3 * cluster),
                       1: hi.data_entry(4 * cluster)}, cluster // 8)
        image = hi.image(hi.header(cluster_bits=cb, size=1000, l1_size=1,
                                   l1_offset=cluster),
                         {cluster: hi.table({0: 2 * cluster}, 1),
                          2 * cluster: l2,
                          3 * cluster: b"a" * cluster,
                          4 * cluster: b"b" * cluster})
        stream, emit = feed(image, chunk=100)
        self.assertTrue(stream.complete)
        self.assertEqual(sum(n for o, n in emit.writes if o < 512), 512)
        self.assertEqual(max(o + n for o, n in emit.writes), 1000)


class UnwrittenRangesTests(SynchronousTestCase):
    def ranges(self, written: set[int], clusters: int, size: int
               ) -> list[tuple[int, int]]:
        stream = qcow2.Qcow2Stream(lambda o, d: None)
        stream._start(hi.header(cluster_bits=9, size=size,
                                l1_size=-(-size // (512 * 64)),
                                l1_offset=512))
        for n in written:
            stream._mark(n * 512)
        return list(stream.unwritten_ranges())

    def test_runs(self) -> None:
        self.assertEqual(self.ranges(set(), 20, 20 * 512 - 100),
                         [(0, 20 * 512 - 100)])
        self.assertEqual(self.ranges(set(range(20)), 20, 20 * 512), [])
        written = {0, 1, 2, 9, 17, 18}
        self.assertEqual(self.ranges(written, 20, 20 * 512 - 1), [
            (3 * 512, 6 * 512), (10 * 512, 7 * 512),
            (19 * 512, 512 - 1)])

    def test_large_bitmap_is_quick(self) -> None:
        # 2^24 clusters, every 1000th written: found in C, not bit by bit
        stream = qcow2.Qcow2Stream(lambda o, d: None)
        size = (1 << 24) * 512
        stream._start(hi.header(cluster_bits=9, size=size,
                                l1_size=size // (512 * 64), l1_offset=512))
        stream._written[:] = b"\xff" * len(stream._written)
        stream._written[1000] = 0xFE
        self.assertEqual(list(stream.unwritten_ranges()),
                         [(8000 * 512, 512)])


class Qcow2TargetTests(TestCase):
    """The pipeline's qcow2 target: the device check comes first, and the
    unwritten ranges are found off the reactor."""

    def disk(self, size: int) -> str:
        path = os.path.abspath(self.mktemp())
        with open(path, "wb") as f:
            f.truncate(size)
        return path

    async def test_virtual_size_checked_before_the_bitmap(self) -> None:
        target = Qcow2Target(reactor, Device.open(self.disk(64 * MiB)), None)
        image = hi.qcow2_huge_bitmap(size=1 << 40, cb=12)  # 32 MiB bitmap
        peak, outcome = hi.peak_of(lambda: target.write(image))
        await target.abort()
        self.assertIsInstance(outcome, errors.InvalidImage, type(outcome))
        self.assertIn("larger than the device", str(outcome))
        self.assertLess(peak, 8 * MiB)

    async def test_unwritten_ranges_are_found_off_the_reactor(self) -> None:
        cb, cluster = 16, 65536
        image = hi.image(
            hi.header(cluster_bits=cb, size=MiB, l1_size=1,
                      l1_offset=cluster),
            {cluster: hi.table({0: 2 * cluster}, 1),
             2 * cluster: hi.table({0: hi.data_entry(3 * cluster)},
                                   cluster // 8),
             3 * cluster: b"q" * cluster})
        path = self.disk(MiB)
        with open(path, "r+b") as f:
            f.write(b"\xee" * MiB)  # old data: to be zeroed
        target = Qcow2Target(reactor, Device.open(path), "sha256")
        threads: list[str] = []
        ranges = target.stream.unwritten_ranges

        def recording() -> Any:
            for item in ranges():
                threads.append(threading.current_thread().name)
                yield item

        target.stream.unwritten_ranges = recording  # type: ignore
        target.write(image)
        await target.finish()
        await target.finalize()
        self.assertEqual(len(threads), 1)
        self.assertNotEqual(threads[0], threading.main_thread().name)
        with open(path, "rb") as f:
            self.assertEqual(f.read(cluster), b"q" * cluster)
            self.assertEqual(f.read(), bytes(MiB - cluster))
