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

Memory is bounded by the disk, never by what the file claims: the virtual
size is checked against the disk before anything is sized from it; the L1
table must fit the virtual size and 32 MiB (as in qemu); tables, clusters
and extents must be aligned; a compressed cluster inflates to one cluster
at most (zlib and zstd alike, zstd with a bounded window); at most
:data:`MAX_PENDING` table entries may wait for their bytes; compressed
extents may not pile up on each other.  Anything else is a
:class:`Qcow2Error`.
"""

from __future__ import annotations

import heapq
import re
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
MiB = 1024 * 1024
#: The largest L1 table (qemu's QCOW_MAX_L1_SIZE).
MAX_L1_BYTES = 32 * MiB
#: Table entries (L2 tables, data and compressed clusters) known but not
#: reached yet, plus those to fetch again.  qemu-img's files keep each L2
#: table just ahead of its data (a few thousand waiting at most); each
#: entry costs ~100 bytes.
MAX_PENDING = 1 << 20
#: The bitmap of written clusters (one bit each): 512 Mi clusters.
MAX_BITMAP_BYTES = 64 * MiB
#: Compressed extents begun but not ended at once (qemu packs them end to
#: end, so only a few share a sector).
MAX_OPEN_EXTENTS = 256
#: The window a zstd cluster may use (qemu compresses one cluster of at
#: most 2 MiB per frame).
ZSTD_MAX_WINDOW = 8 * MiB


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

    @property
    def clusters(self) -> int:
        """Guest clusters in the virtual size."""
        return -(-self.size // self.cluster_size)

    @property
    def l1_used(self) -> int:
        """L1 entries that map the virtual size (any more are unused)."""
        return -(-self.size // (self.cluster_size * self.l2_entries))


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
    cluster = 1 << cluster_bits
    if l1_size * 8 > MAX_L1_BYTES:
        raise Qcow2Error(f"the L1 table ({l1_size} entries) is larger than "
                         f"{MAX_L1_BYTES // MiB} MiB")
    needed = -(-size // (cluster * (cluster // 8)))
    if l1_size < needed:
        raise Qcow2Error(f"the L1 table ({l1_size} entries) is too small for "
                         f"the virtual size ({size} bytes: {needed} entries)")
    if l1_offset % cluster:
        raise Qcow2Error(f"the L1 table offset {l1_offset:#x} is not "
                         f"aligned to a cluster")
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
    """``inflate(data, size)``: at most ``size`` bytes out, whatever the
    data says."""
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
        reader = zstandard.ZstdDecompressor(
            max_window_size=ZSTD_MAX_WINDOW).stream_reader(data)
        out = bytearray()
        while len(out) < size:
            chunk = reader.read(size - len(out))
            if not chunk:
                break
            out += chunk
        return bytes(out)

    return inflate_zstd


Emit = Callable[[int, bytes], None]
#: ``emit_compressed(guest offset, compressed bytes, inflate)``:
#: ``inflate(compressed bytes)`` gives the cluster's bytes (or raises
#: Qcow2Error); the caller runs it where it likes (a thread).
EmitCompressed = Callable[[int, bytes, Callable[[bytes], bytes]], None]


@attrs.frozen
class Missed:
    """Something that went by before it was known to be needed."""

    kind: str          # "l2", "data" or "compressed"
    host: int          # file offset
    length: int
    target: int        # L1 index (l2) or guest offset (data, compressed)


_SET_BYTE = re.compile(rb"[^\x00]")      # a byte with a bit set
_CLEAR_BYTE = re.compile(rb"[^\xff]")    # a byte with a bit clear


def _next_bit(bits: bytes | bytearray, n: int, total: int, value: int
              ) -> int:
    """The first cluster index >= ``n`` whose bit is ``value``, else
    ``total`` (bytes with nothing to find are skipped by a regex, in C)."""
    skip = _CLEAR_BYTE if value == 0 else _SET_BYTE
    while n < total:
        i = n >> 3
        byte = bits[i]
        for k in range(n & 7, 8):
            if (byte >> k) & 1 == value:
                return min((i << 3) + k, total)
        m = skip.search(bits, i + 1)
        if m is None:
            return total
        n = m.start() << 3
    return total


class Qcow2Stream:
    """Feed the file's bytes in order with :meth:`feed`; writes come out
    through ``emit(guest_offset, data)``.

    ``max_size`` is the disk's size: a larger virtual size is refused
    before anything is sized from it.  Compressed clusters are inflated
    here unless ``emit_compressed`` is given: then they go out compressed,
    with the function that inflates them (a CPU cost kept off the caller's
    thread).
    """

    HEAD = 4096

    def __init__(self, emit: Emit, max_size: int | None = None,
                 emit_compressed: EmitCompressed | None = None) -> None:
        self._emit_raw = emit
        self._emit_compressed_raw = emit_compressed
        self._max_size = max_size
        self.pos = 0                      # bytes of the file scanned
        self.header: Header | None = None
        self._head = bytearray()
        self._l1_buf = bytearray()
        self._l1_loaded = False
        #: L2 tables still to come: host offset -> L1 index
        self._l2_wanted: dict[int, int] = {}
        #: the L2 table being received: (host offset, bytes so far)
        self._l2_partial: tuple[int, bytearray] | None = None
        #: known data clusters still to come: host cluster offset -> guest
        self._data: dict[int, int] = {}
        #: compressed extents still to come: (host start, end, guest)
        self._compressed: list[tuple[int, int, int]] = []
        #: compressed extents begun: [host start, end, guest, bytes so far]
        self._open: list[list[Any]] = []
        self._open_bytes = 0
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
        h = parse_header(head)
        if self._max_size is not None and h.size > self._max_size:
            raise Qcow2Error(
                f"the image's virtual size ({h.size} bytes) is larger than "
                f"the device ({self._max_size} bytes)")
        if (h.clusters + 7) // 8 > MAX_BITMAP_BYTES:
            raise Qcow2Error(
                f"the image has {h.clusters} clusters of {h.cluster_size} "
                f"bytes: more than this agent can track (use larger "
                f"clusters)")
        self._inflate = _inflater(h.compression_type)
        self._written = bytearray((h.clusters + 7) // 8)
        self.header = h

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
            l1_end = h.l1_offset + h.l1_used * 8
            lo, hi = max(start, h.l1_offset), min(end, l1_end)
            if lo < hi:
                self._l1_buf += piece[lo - start:hi - start]
            if end >= l1_end:
                raw, self._l1_buf = bytes(self._l1_buf), bytearray()
                self._load_l1(raw, end)
        if self._l2_partial is None and cluster_start == start:
            index = self._l2_wanted.pop(cluster_start, None)
            if index is not None:
                self._l2_partial = (index, bytearray())
        if self._l2_partial is not None:
            index, buf = self._l2_partial
            buf += piece
            if len(buf) >= h.cluster_size:
                self._l2_partial = None
                self._load_l2(index, bytes(buf), end)
        guest = self._data.get(cluster_start)
        if guest is not None:
            self._emit(guest + (start - cluster_start), piece)
            if end - cluster_start >= h.cluster_size:
                del self._data[cluster_start]
                self._mark(guest)
        if self._compressed or self._open:
            self._feed_compressed(start, piece)

    def _feed_compressed(self, start: int, piece: Any) -> None:
        assert self.header is not None
        end = start + len(piece)
        while self._compressed and self._compressed[0][0] < end:
            host, stop, guest = heapq.heappop(self._compressed)
            if len(self._open) >= MAX_OPEN_EXTENTS:
                raise Qcow2Error(
                    f"more than {MAX_OPEN_EXTENTS} compressed clusters "
                    f"overlap at byte {host}")
            self._open.append([host, stop, guest, bytearray()])
        cap = 4 * self.header.cluster_size + MiB
        still = []
        for extent in self._open:
            host, stop, guest, buf = extent
            lo, hi = max(start, host), min(end, stop)
            if lo < hi:
                buf += piece[lo - start:hi - start]
                self._open_bytes += hi - lo
                if self._open_bytes > cap:
                    raise Qcow2Error(
                        f"compressed clusters overlap at byte {host}: more "
                        f"than {cap} bytes of them at once")
            if end >= stop:
                self._open_bytes -= len(buf)
                self._emit_compressed(guest, bytes(buf))
            else:
                still.append(extent)
        self._open = still

    def _emit_compressed(self, guest: int, data: bytes) -> None:
        assert self.header is not None
        self._mark(guest)
        if guest >= self.header.size:
            return
        if self._emit_compressed_raw is not None:
            self._emit_compressed_raw(guest, data, self._inflater_for(guest))
        else:
            self._emit(guest, self._inflater_for(guest)(data))

    def _inflater_for(self, guest: int) -> Callable[[bytes], bytes]:
        """``inflate(data)``: the cluster at ``guest``, padded to a whole
        cluster and cut at the virtual size."""
        assert self.header is not None and self._inflate is not None
        size = self.header.cluster_size
        room = min(size, self.header.size - guest)
        inflate = self._inflate

        def run(data: bytes) -> bytes:
            try:
                out = inflate(data, size)
            except Exception as e:
                raise Qcow2Error(f"cannot inflate a compressed cluster: "
                                 f"{e}") from None
            if len(out) < size:
                out += bytes(size - len(out))
            return out[:room]

        return run

    def _emit(self, guest: int, data: Any) -> None:
        """Write ``data`` at ``guest``, no further than the virtual size."""
        assert self.header is not None
        room = self.header.size - guest
        if room <= 0:
            return
        if len(data) > room:
            data = data[:room]
        self._emit_raw(guest, data)

    # ------------------------------------------------------------ tables

    def _pending(self) -> int:
        return (len(self._l2_wanted) + len(self._data)
                + len(self._compressed) + len(self.missed))

    def _add_pending(self) -> None:
        if self._pending() >= MAX_PENDING:
            raise Qcow2Error(
                f"more than {MAX_PENDING} table entries wait for data "
                f"further on in the file (at byte {self.pos}): this image "
                f"cannot be streamed (rewrite it with qemu-img convert)")

    def _load_l1(self, raw: bytes, scanned: int) -> None:
        h = self.header
        assert h is not None
        self._l1_loaded = True
        for index, (entry,) in enumerate(struct.iter_unpack(">Q", raw)):
            offset = entry & L1_OFFSET_MASK
            if not offset:
                continue
            if offset % h.cluster_size:
                raise Qcow2Error(f"L2 table offset {offset:#x} is not "
                                 f"aligned to a cluster")
            self._add_pending()
            if offset < scanned:
                self.missed.append(Missed("l2", offset, h.cluster_size,
                                          index))
            elif offset in self._l2_wanted:
                raise Qcow2Error(f"two L1 entries name the L2 table at "
                                 f"{offset:#x}")
            else:
                self._l2_wanted[offset] = index

    def _load_l2(self, index: int, raw: bytes, scanned: int) -> None:
        h = self.header
        assert h is not None
        if len(raw) != h.cluster_size:
            raise Qcow2Error(f"the L2 table for L1 entry {index} is "
                             f"truncated ({len(raw)} bytes)")
        base = index * h.l2_entries * h.cluster_size
        x = 62 - (h.cluster_bits - 8)
        for j, (entry,) in enumerate(struct.iter_unpack(">Q", raw)):
            guest = base + j * h.cluster_size
            if guest >= h.size:
                break
            if entry & COMPRESSED:
                host = entry & ((1 << x) - 1)
                sectors = ((entry >> x) & ((1 << (62 - x)) - 1)) + 1
                length = sectors * 512 - (host & 511)
                self._add_pending()
                if host < scanned:
                    self.missed.append(Missed("compressed", host, length,
                                              guest))
                else:
                    heapq.heappush(self._compressed,
                                   (host, host + length, guest))
                continue
            offset = entry & L2_OFFSET_MASK
            if entry & ZERO or not offset:
                continue
            if offset % h.cluster_size:
                raise Qcow2Error(f"data cluster offset {offset:#x} is not "
                                 f"aligned to a cluster")
            self._add_pending()
            if offset < scanned:
                self.missed.append(Missed("data", offset, h.cluster_size,
                                          guest))
            elif offset in self._data:
                raise Qcow2Error(f"two guest clusters share the data "
                                 f"cluster at {offset:#x}")
            else:
                self._data[offset] = guest

    def take_missed(self) -> list[Missed]:
        """What must be fetched again (and forget it); refetching an L2
        table may add its data clusters: call again until empty."""
        missed, self.missed = self.missed, []
        return missed

    def refetched(self, missed: Missed, data: bytes) -> None:
        """Something listed in :attr:`missed`, fetched again (shorter
        where the file ends: as in qemu, what lies past the end reads as
        zeros)."""
        assert self.header is not None
        data = bytes(data[:missed.length])
        if len(data) < missed.length and missed.kind != "compressed":
            data += bytes(missed.length - len(data))
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
        if n >= self.header.clusters:
            return
        self._written[n // 8] |= 1 << (n % 8)
        self.clusters_written += 1

    @property
    def complete(self) -> bool:
        """Everything mapped was emitted (nothing pending, nothing missed)."""
        return (self._l1_loaded and not self._l2_wanted
                and self._l2_partial is None and not self._data
                and not self._compressed and not self._open
                and not self.missed)

    def unwritten_ranges(self) -> Iterator[tuple[int, int]]:
        """Guest (offset, length) ranges no data was written to (a
        generator: the disk writer's thread runs it)."""
        h = self.header
        assert h is not None
        bits, total = self._written, h.clusters
        n = 0
        while n < total:
            first = _next_bit(bits, n, total, 0)
            if first >= total:
                return
            n = _next_bit(bits, first, total, 1)
            start = first * h.cluster_size
            yield start, min(n * h.cluster_size, h.size) - start

    def state(self) -> dict[str, Any]:
        return {"pos": self.pos, "pending_l2": len(self._l2_wanted)
                + (self._l2_partial is not None),
                "pending_data": len(self._data),
                "pending_compressed": len(self._compressed) + len(self._open),
                "missed": len(self.missed)}
