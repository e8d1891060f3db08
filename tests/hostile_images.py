"""Small hostile inputs for the image pipeline, made on the spot.

Each builder returns the bytes a hostile image server (or conductor) would
send: crafted qcow2 files (written field by field from the qcow2
specification, so that any layout can be made), compression bombs, config
drives that inflate to far more than the 64 MiB a config drive may hold.
The unit tests and ``benchmarks/hostile_inputs.py`` share them.
"""

from __future__ import annotations

import base64
import functools
import gzip
import lzma
import struct
import tracemalloc
import zlib
from typing import Any, Callable, Mapping

MiB = 1024 * 1024
MAGIC = b"QFI\xfb"
COPIED = 1 << 63
COMPRESSED = 1 << 62


def peak_of(func: Callable[[], Any]) -> tuple[int, Any]:
    """(peak bytes allocated while ``func`` ran, what it returned or
    raised)."""
    tracemalloc.start()
    try:
        try:
            outcome: Any = func()
        except Exception as e:
            outcome = e
        return tracemalloc.get_traced_memory()[1], outcome
    finally:
        tracemalloc.stop()


def header(*, cluster_bits: int, size: int, l1_size: int, l1_offset: int,
           version: int = 3, compression_type: int = 0,
           incompatible: int = 0) -> bytes:
    """A qcow2 header (no backing file, no encryption, no snapshots)."""
    head = MAGIC + struct.pack(
        ">IQIIQIIQQIIQ", version, 0, 0, cluster_bits, size, 0, l1_size,
        l1_offset, 0, 0, 0, 0)
    if version == 2:
        return head
    if compression_type:
        incompatible |= 1 << 3
    head += struct.pack(">QQQII", incompatible, 0, 0, 4, 112)
    return head + bytes([compression_type]) + bytes(7)


def data_entry(host: int) -> int:
    """An L2 entry: a standard cluster at ``host``."""
    return host | COPIED


def compressed_entry(host: int, length: int, cluster_bits: int) -> int:
    """An L2 entry: a compressed cluster of ``length`` bytes at ``host``."""
    x = 62 - (cluster_bits - 8)
    extra = (host + length - 1) // 512 - host // 512
    if extra >= 1 << (cluster_bits - 8):
        raise ValueError("a compressed cluster may span 2 clusters at most")
    return COMPRESSED | extra << x | host


def table(entries: Mapping[int, int], count: int) -> bytes:
    """An L1 or L2 table of ``count`` big-endian entries."""
    out = bytearray(8 * count)
    for index, value in entries.items():
        struct.pack_into(">Q", out, 8 * index, value)
    return bytes(out)


def image(head: bytes, places: Mapping[int, bytes]) -> bytes:
    """The file: ``head`` at 0 and each blob at its offset (to a whole
    number of sectors, as qemu's files are)."""
    end = max([len(head)] + [at + len(b) for at, b in places.items()])
    end = -(-end // 512) * 512
    out = bytearray(end)
    out[:len(head)] = head
    for at, blob in places.items():
        out[at:at + len(blob)] = blob
    return bytes(out)


def deflate_raw(data: bytes) -> bytes:
    """What qemu stores for a zlib-compressed cluster (raw deflate)."""
    c = zlib.compressobj(9, zlib.DEFLATED, -12)
    return c.compress(data) + c.flush()


# ------------------------------------------------------------ qcow2 cases


def qcow2_zstd_bomb(inflated: int = 1536 * MiB, clusters: int = 1) -> bytes:
    """64 KiB clusters, zstd: each compressed cluster is one zstd frame of
    ``inflated`` zero bytes (tens of KB) although a cluster holds 64 KiB."""
    import zstandard

    cb = 16
    cluster = 1 << cb
    frame = zstandard.ZstdCompressor(level=1).compress(bytes(inflated))
    l1_at, l2_at, data_at = cluster, 2 * cluster, 3 * cluster
    entries = {}
    places: dict[int, bytes] = {}
    at = data_at
    for i in range(clusters):
        entries[i] = compressed_entry(at, len(frame), cb)
        places[at] = frame
        at += -(-len(frame) // 512) * 512
    places[l1_at] = table({0: l2_at}, 1)
    places[l2_at] = table(entries, cluster // 8)
    return image(header(cluster_bits=cb, size=clusters * cluster, l1_size=1,
                        l1_offset=l1_at, compression_type=1), places)


def qcow2_overlapping_compressed(count: int = 8192) -> bytes:
    """64 KiB clusters, zlib: ``count`` compressed clusters that start one
    byte apart and each claims the longest extent (2 clusters), so that
    they all overlap: a reader that buffers each one separately holds
    ``count`` x 128 KiB."""
    cb = 16
    cluster = 1 << cb
    l1_at, l2_at, data_at = cluster, 2 * cluster, 3 * cluster
    x = 62 - (cb - 8)
    # the most sectors the entry can name: 2 clusters from its start
    entries = {i: COMPRESSED | ((1 << (cb - 8)) - 1) << x | (data_at + i)
               for i in range(count)}
    head = header(cluster_bits=cb, size=count * cluster, l1_size=1,
                  l1_offset=l1_at)
    body = deflate_raw(bytes(cluster))
    return image(head, {l1_at: table({0: l2_at}, 1),
                        l2_at: table(entries, cluster // 8),
                        data_at: body.ljust(2 * cluster + count, b"\0")})


def qcow2_huge_bitmap(size: int = 1 << 43, cb: int = 9) -> bytes:
    """Small clusters (512 bytes) and a large virtual size (8 TiB), in one
    4 KiB header: a reader that sizes its bitmap before checking the
    disk's size allocates size / cluster / 8 bytes (2 GiB)."""
    l1_size = -(-size // ((1 << cb) * (1 << cb) // 8))
    return header(cluster_bits=cb, size=size, l1_size=l1_size,
                  l1_offset=1 << 20).ljust(4096, b"\0")


def qcow2_many_pending(tables: int = 64, cb: int = 16) -> bytes:
    """L2 tables full of data clusters that lie far beyond the end of the
    file: every entry waits (``tables`` x 8192 entries at 64 KiB)."""
    cluster = 1 << cb
    per = cluster // 8
    l1_at = cluster
    l1_entries = -(-tables * 8 // cluster)
    first_l2 = l1_at + l1_entries * cluster
    far = 1 << 50
    places: dict[int, bytes] = {}
    l1 = {}
    for t in range(tables):
        at = first_l2 + t * cluster
        l1[t] = at
        places[at] = table({j: data_entry(far + (t * per + j) * cluster)
                            for j in range(per)}, per)
    places[l1_at] = table(l1, tables)
    size = tables * per * cluster
    return image(header(cluster_bits=cb, size=size, l1_size=tables,
                        l1_offset=l1_at), places)


# -------------------------------------------------------- other payloads


#: zeros per deflate segment of a bomb (each ends byte-aligned with the
#: compressor's state reset, so the segments of zeros are all alike)
BOMB_SEGMENT = 4 * MiB


@functools.lru_cache(maxsize=4)
def _zeros_deflated(n: int) -> bytes:
    """Raw deflate blocks of ``n`` zero bytes, not final, ending with a
    full flush: they can follow any such blocks, and be repeated."""
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    return c.compress(bytes(n)) + c.flush(zlib.Z_FULL_FLUSH)


@functools.lru_cache(maxsize=8)
def gzip_bomb(inflated: int, tail: bytes = b"") -> bytes:
    """gzip of ``inflated`` zero bytes (then ``tail``), about 1/1000 of
    that: one gzip member, its deflate stream the same segment of zeros
    compressed once and repeated (compressing 1 GiB of zeros at level 9
    takes seconds, which a test asking for a bomb should not wait for)."""
    whole, rest = divmod(inflated, BOMB_SEGMENT)
    crc = 0
    if whole:
        zeros = bytes(BOMB_SEGMENT)
        segment_crc = zlib.crc32(zeros)
        for _ in range(whole):
            crc = zlib.crc32(zeros, crc) if crc else segment_crc
    crc = zlib.crc32(bytes(rest) + tail, crc)
    last = zlib.compressobj(9, zlib.DEFLATED, -15)
    body = [_zeros_deflated(BOMB_SEGMENT)] * whole + [
        last.compress(bytes(rest) + tail) + last.flush()]
    # the gzip header: deflate, no name, no time, best compression, any OS
    head = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff"
    size = (inflated + len(tail)) & 0xFFFFFFFF
    return head + b"".join(body) + struct.pack("<II", crc, size)


def xz_asking_for(dict_size: int, data: bytes) -> bytes:
    """An xz stream of ``data`` whose header says its dictionary is
    ``dict_size`` bytes (a decoder allocates what the header says).

    Compressing with a dictionary that large makes the encoder allocate
    and clear it (256 MiB: a third of a second); the data is compressed
    with a small one instead, and the LZMA2 filter's property in the
    block header then set to ``dict_size`` (its CRC32 made again).  Any
    dictionary at least as large as the encoder's decodes the data."""
    props = [p for p in range(41)
             if (2 | (p & 1)) << (p // 2 + 11) == dict_size]
    if not props:
        raise ValueError(f"no LZMA2 dictionary is {dict_size} bytes")
    out = bytearray(lzma.compress(data, filters=[
        {"id": lzma.FILTER_LZMA2, "dict_size": 1024 * 1024}]))
    start = 12  # after the stream header
    end = start + (out[start] + 1) * 4  # the block header, its CRC last
    flags = out[start + 1]
    at = start + 2

    def vli() -> int:
        nonlocal at
        value = shift = 0
        while True:
            byte = out[at]
            at += 1
            value |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                return value

    if flags & 0x40:  # compressed size
        vli()
    if flags & 0x80:  # uncompressed size
        vli()
    if (flags & 3, vli(), vli()) != (0, lzma.FILTER_LZMA2, 1):
        raise ValueError("not a single LZMA2 filter")
    out[at] = props[0]
    out[end - 4:end] = struct.pack("<I", zlib.crc32(out[start:end - 4]))
    return bytes(out)


def config_drive_bomb(inflated: int = 1024 * MiB) -> str:
    """A config drive as the conductor sends one (base64 of gzip) that
    inflates to ``inflated`` bytes: 1 GiB in 1.4 MB."""
    return base64.b64encode(gzip_bomb(inflated)).decode("ascii")


def gzip_of(data: bytes) -> bytes:
    return gzip.compress(data, 6)
