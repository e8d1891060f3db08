"""A streaming qcow2 reader: one sequential pass over the file, no staging.

The qcow2 file arrives in order (an HTTP body).  The header gives the L1
table's place; the L1 table gives the L2 tables' places; each L2 table maps
guest clusters to host clusters.  As the bytes go by, every data cluster
whose L2 entry is already known is emitted as ``(guest offset, bytes)``;
compressed clusters (zlib, or zstd when the ``zstandard`` package is
there) are inflated first.  Images written by ``qemu-img`` keep each L2
table ahead of its data, so one pass is enough; whatever went by before its
mapping was known is listed in :attr:`Qcow2Stream.missed` for a second
fetch (HTTP ranges).  Unallocated and zero clusters are never emitted: the
caller zeroes the guest ranges that nothing wrote
(:meth:`Qcow2Stream.unwritten_ranges`).

Refused (a :class:`Qcow2Error`): backing files (a "raw" image pointing at a
host file is a classic attack), encryption, external data files, extended
L2 entries, images marked corrupt, unknown incompatible features.
"""

from __future__ import annotations

import struct
import zlib
from typing import Any, Callable, Iterator

import attrs

MAGIC = b"QFI\xfb"
HEADER_V2 = 72
L1_OFFSET_MASK = 0x00FFFFFFFFFFFE00
L2_OFFSET_MASK = 0x00FFFFFFFFFFFE00
COMPRESSED = 1 << 62
ZERO = 1
INCOMPAT_DIRTY = 1 << 0
INCOMPAT_CORRUPT = 1 << 1
INCOMPAT_DATA_FILE = 1 << 2
INCOMPAT_COMPRESSION = 1 << 3
INCOMPAT_EXTL2 = 1 << 4
KNOWN_INCOMPAT = (INCOMPAT_DIRTY | INCOMPAT_CORRUPT | INCOMPAT_DATA_FILE
                  | INCOMPAT_COMPRESSION | INCOMPAT_EXTL2)


class Qcow2Error(ValueError):
    """Not a qcow2 image we can (or may) write."""


@attrs.frozen
class Header:
    version: int
    cluster_bits: int
    size: int
    l1_size: int
    l1_offset: int
    compression_type: int = 0

    @property
    def cluster_size(self) -> int:
        return 1 << self.cluster_bits

    @property
    def l2_entries(self) -> int:
        return self.cluster_size // 8


def parse_header(data: bytes) -> Header:
    if len(data) < HEADER_V2 or data[:4] != MAGIC:
        raise Qcow2Error("not a qcow2 image")
    (version, backing_offset, backing_size, cluster_bits, size, crypt,
     l1_size, l1_offset) = struct.unpack_from(">IQIIQIIQ", data, 4)
    if version not in (2, 3):
        raise Qcow2Error(f"qcow2 version {version} is not supported")
    if backing_offset or backing_size:
        raise Qcow2Error("the image has a backing file: refused")
    if crypt:
        raise Qcow2Error("encrypted qcow2 images are not supported")
    if not 9 <= cluster_bits <= 21:
        raise Qcow2Error(f"bad cluster size 2^{cluster_bits}")
    compression = 0
    if version == 3:
        if len(data) < 104:
            raise Qcow2Error("truncated qcow2 v3 header")
        incompat = struct.unpack_from(">Q", data, 72)[0]
        if incompat & ~KNOWN_INCOMPAT:
            raise Qcow2Error(f"unknown incompatible features "
                             f"{incompat & ~KNOWN_INCOMPAT:#x}")
        if incompat & INCOMPAT_CORRUPT:
            raise Qcow2Error("the image is marked corrupt")
        if incompat & INCOMPAT_DATA_FILE:
            raise Qcow2Error("qcow2 images with an external data file are "
                             "refused")
        if incompat & INCOMPAT_EXTL2:
            raise Qcow2Error("qcow2 images with extended L2 entries "
                             "(subclusters) are not supported")
        header_length = struct.unpack_from(">I", data, 100)[0]
        if incompat & INCOMPAT_COMPRESSION and header_length > 104 \
                and len(data) > 104:
            compression = data[104]
        if compression not in (0, 1):
            raise Qcow2Error(f"unknown compression type {compression}")
    return Header(version, cluster_bits, size, l1_size, l1_offset,
                  compression)


def _inflater(compression: int) -> Callable[[bytes, int], bytes]:
    if compression == 0:
        def inflate(data: bytes, size: int) -> bytes:
            return zlib.decompressobj(-12).decompress(data, size)

        return inflate
    try:
        import zstandard
    except ImportError:
        raise Qcow2Error("zstd-compressed qcow2 needs the zstandard "
                         "package") from None

    def inflate_zstd(data: bytes, size: int) -> bytes:
        out = zstandard.ZstdDecompressor().decompressobj().decompress(data)
        return out[:size]

    return inflate_zstd


Emit = Callable[[int, bytes], None]


@attrs.frozen
class Missed:
    """Something that went by before it was known to be needed."""

    kind: str          # "l2", "data" or "compressed"
    host: int          # file offset
    length: int
    target: int        # L1 index (l2) or guest offset (data, compressed)


class Qcow2Stream:
    """Feed the file's bytes in order with :meth:`feed`; writes come out
    through ``emit(guest_offset, data)``."""

    HEAD = 4096

    def __init__(self, emit: Emit) -> None:
        self._emit = emit
        self.pos = 0                      # bytes of the file scanned
        self.header: Header | None = None
        self._head = bytearray()
        self._l1_buf = bytearray()
        self._l1_loaded = False
        #: L2 tables still to come: host offset -> (L1 index, buffer)
        self._l2_wanted: dict[int, tuple[int, bytearray]] = {}
        #: known data clusters still to come: host cluster offset -> guest
        self._data: dict[int, int] = {}
        #: compressed extents still to come: host start -> (end, guest, buf)
        self._compressed: dict[int, tuple[int, int, bytearray]] = {}
        self._written = bytearray()
        self.missed: list[Missed] = []
        self._inflate: Callable[[bytes, int], bytes] | None = None
        self.clusters_written = 0

    # --------------------------------------------------------------- feed

    def feed(self, data: bytes) -> None:
        if self.header is None:
            self._head += data
            if len(self._head) < self.HEAD:
                return
            data, self._head = bytes(self._head), bytearray()
            self._start(data[:self.HEAD])
        self._scan_all(memoryview(data))

    def end(self) -> None:
        """The file ended (a file shorter than 4 KiB is handled here)."""
        if self.header is None:
            data, self._head = bytes(self._head), bytearray()
            self._start(data)
            self._scan_all(memoryview(data))

    def _start(self, head: bytes) -> None:
        self.header = parse_header(head)
        h = self.header
        clusters = (h.size + h.cluster_size - 1) // h.cluster_size
        self._written = bytearray((clusters + 7) // 8)
        self._inflate = _inflater(h.compression_type)

    def _scan_all(self, view: memoryview) -> None:
        assert self.header is not None
        cluster = self.header.cluster_size
        while view:
            # one piece per cluster, so that each piece is in one cluster
            # (pieces are views: the data is copied once, by the writer)
            take = min(len(view), cluster - (self.pos % cluster))
            self._scan(self.pos, view[:take])
            self.pos += take
            view = view[take:]

    def _scan(self, start: int, piece: Any) -> None:
        """Handle the file bytes [start, start + len(piece)), all within one
        cluster."""
        h = self.header
        assert h is not None
        end = start + len(piece)
        cluster_start = start - start % h.cluster_size
        if not self._l1_loaded:
            l1_end = h.l1_offset + h.l1_size * 8
            lo, hi = max(start, h.l1_offset), min(end, l1_end)
            if lo < hi:
                self._l1_buf += piece[lo - start:hi - start]
            if end >= l1_end:
                self._load_l1(bytes(self._l1_buf), end)
        wanted = self._l2_wanted.get(cluster_start)
        if wanted is not None:
            index, buf = wanted
            buf += piece
            if len(buf) >= h.cluster_size:
                del self._l2_wanted[cluster_start]
                self._load_l2(index, bytes(buf[:h.cluster_size]), end)
        guest = self._data.get(cluster_start)
        if guest is not None:
            self._emit(guest + (start - cluster_start), piece)
            if end - cluster_start >= h.cluster_size:
                del self._data[cluster_start]
                self._mark(guest)
        if self._compressed:
            self._feed_compressed(start, piece)

    def _feed_compressed(self, start: int, piece: Any) -> None:
        end = start + len(piece)
        done = []
        for host, (stop, guest, buf) in self._compressed.items():
            lo, hi = max(start, host), min(end, stop)
            if lo >= hi:
                continue
            buf += piece[lo - start:hi - start]
            if len(buf) >= stop - host:
                done.append(host)
        for host in done:
            stop, guest, buf = self._compressed.pop(host)
            self._emit_compressed(guest, bytes(buf))

    def _emit_compressed(self, guest: int, data: bytes) -> None:
        assert self.header is not None and self._inflate is not None
        size = self.header.cluster_size
        try:
            out = self._inflate(data, size)
        except Exception as e:
            raise Qcow2Error(f"cannot inflate a compressed cluster: {e}") \
                from None
        if len(out) < size:
            out += bytes(size - len(out))
        self._emit(guest, out)
        self._mark(guest)

    # ------------------------------------------------------------ tables

    def _load_l1(self, raw: bytes, scanned: int) -> None:
        h = self.header
        assert h is not None
        self._l1_loaded = True
        for index in range(h.l1_size):
            offset = struct.unpack_from(">Q", raw, index * 8)[0] \
                & L1_OFFSET_MASK
            if not offset:
                continue
            if offset < scanned - (scanned % h.cluster_size) or \
                    offset + h.cluster_size <= scanned:
                self.missed.append(Missed("l2", offset, h.cluster_size,
                                          index))
            else:
                self._l2_wanted[offset] = (index, bytearray())

    def _load_l2(self, index: int, raw: bytes, scanned: int) -> None:
        h = self.header
        assert h is not None
        base = index * h.l2_entries * h.cluster_size
        x = 62 - (h.cluster_bits - 8)
        for j, entry in enumerate(struct.unpack(f">{h.l2_entries}Q", raw)):
            guest = base + j * h.cluster_size
            if guest >= h.size:
                break
            if entry & COMPRESSED:
                host = entry & ((1 << x) - 1)
                sectors = ((entry >> x) & ((1 << (62 - x)) - 1)) + 1
                length = sectors * 512 - (host & 511)
                if host < scanned:
                    self.missed.append(Missed("compressed", host, length,
                                              guest))
                else:
                    self._compressed[host] = (host + length, guest,
                                              bytearray())
                continue
            offset = entry & L2_OFFSET_MASK
            if entry & ZERO or not offset:
                continue
            if offset < scanned:
                self.missed.append(Missed("data", offset, h.cluster_size,
                                          guest))
            else:
                self._data[offset] = guest

    def take_missed(self) -> list[Missed]:
        """What must be fetched again (and forget it); refetching an L2
        table may add its data clusters: call again until empty."""
        missed, self.missed = self.missed, []
        return missed

    def refetched(self, missed: Missed, data: bytes) -> None:
        """Something listed in :attr:`missed`, fetched again."""
        if missed.kind == "l2":
            self._load_l2(missed.target, data, self.pos)
        elif missed.kind == "compressed":
            self._emit_compressed(missed.target, data)
        else:
            self._emit(missed.target, data)
            self._mark(missed.target)

    # ------------------------------------------------------------ results

    def _mark(self, guest: int) -> None:
        assert self.header is not None
        n = guest >> self.header.cluster_bits
        self._written[n // 8] |= 1 << (n % 8)
        self.clusters_written += 1

    @property
    def complete(self) -> bool:
        """Everything mapped was emitted (nothing pending, nothing missed)."""
        return (self._l1_loaded and not self._l2_wanted and not self._data
                and not self._compressed and not self.missed)

    def unwritten_ranges(self) -> Iterator[tuple[int, int]]:
        """Guest (offset, length) ranges no data was written to."""
        h = self.header
        assert h is not None
        clusters = (h.size + h.cluster_size - 1) // h.cluster_size
        n = 0
        while n < clusters:
            if self._written[n // 8] & (1 << (n % 8)):
                n += 1
                continue
            first = n
            while n < clusters and not self._written[n // 8] & (1 << (n % 8)):
                n += 1
            start = first * h.cluster_size
            yield start, min(n * h.cluster_size, h.size) - start

    def state(self) -> dict[str, Any]:
        return {"pos": self.pos, "pending_l2": len(self._l2_wanted),
                "pending_data": len(self._data),
                "pending_compressed": len(self._compressed),
                "missed": len(self.missed)}
