"""The read-back check of an erase (blocking: run it in a thread).

Before the erase, a marker is written at sampled positions spread over the
whole device: the first and the last block, and one block at a random
place in each of the equal stripes between them.  Each marker names its
offset and a random token of this erase, so it cannot be confused with
anything a disk could hold by chance.  After the erase every sample is read
back with ``O_DIRECT`` (past any cache) and must no longer hold its marker,
not even one 4 KiB part of it; for the methods that promise zeroes it must
read as zeroes.  A device that says it erased itself but still returns a
marker has not erased that place: the check fails.

Every marker is read back once written: a device that acknowledges
writes it does not keep (a dm ``flakey`` target with ``drop_writes``
does it on purpose) would otherwise pass a
check that only asks "is the marker gone?".  When the markers cannot be
written (a drive that refuses writes) or do not read back, the samples
are read before the erase instead and compared by digest afterwards: a
sample that was not all zeroes must have changed.
"""

from __future__ import annotations

import functools
import hashlib
import mmap
import os
import random
from typing import Any, Sequence

import attrs

from ipa_twisted.hardware.disks import DeviceGuard

SAMPLE = 64 * 1024
CHUNK = 4096
SAMPLES = 64
MAGIC = b"IPA-TWISTED ERASE CHECK "


def sample_offsets(size: int, count: int = SAMPLES, sample: int = SAMPLE,
                   seed: int | None = None) -> list[int]:
    """Aligned offsets of ``sample`` bytes spread over ``size``: first and
    last, then one random position in each of ``count - 2`` stripes."""
    if size < sample:
        return []
    last = (size - sample) // sample * sample
    rng = random.Random(seed)
    offsets = {0, last}
    stripes = max(count - 2, 0)
    if last > sample and stripes:
        width = last / stripes
        for i in range(stripes):
            low = int(i * width) // sample * sample
            high = max(low, int((i + 1) * width) // sample * sample - sample)
            offsets.add(rng.randrange(low // sample, high // sample + 1)
                        * sample)
    return sorted(o for o in offsets if 0 <= o <= last)


@functools.lru_cache(maxsize=256)
def _pattern(start: int) -> bytes:
    """64 bytes counting up from ``start`` (mod 256), 0xA5 for a zero."""
    return bytes((start + i) & 0xFF or 0xA5 for i in range(64))


def marker(token: bytes, offset: int, sample: int = SAMPLE) -> bytes:
    """The bytes written at ``offset``: every 4 KiB chunk carries the magic,
    the token, the offset and its index, then a pattern."""
    out = bytearray()
    for index in range(sample // CHUNK):
        head = MAGIC + token + b" %016x %04x " % (offset, index)
        body = _pattern((offset // CHUNK + index) & 0xFF)
        chunk = (head + body * (CHUNK // len(body) + 1))[:CHUNK]
        out += chunk
    return bytes(out)


def _is_zero(data: bytes) -> bool:
    """All zero bytes (compared at C speed, not byte by byte)."""
    return data == bytes(len(data))


def _aligned(size: int) -> mmap.mmap:
    return mmap.mmap(-1, size)  # page aligned, as O_DIRECT wants


def _open(path: str, write: bool) -> int:
    flags = (os.O_RDWR if write else os.O_RDONLY) | os.O_CLOEXEC
    try:
        return os.open(path, flags | getattr(os, "O_DIRECT", 0))
    except OSError:
        # a filesystem that refuses O_DIRECT (a test's plain file)
        return os.open(path, flags)


def write_markers(guard: DeviceGuard, path: str, offsets: Sequence[int],
                  token: bytes, sample: int = SAMPLE) -> None:
    guard.check(path)
    fd = _open(path, write=True)
    buf = _aligned(sample)
    try:
        for offset in offsets:
            buf.seek(0)
            buf.write(marker(token, offset, sample))
            written = os.pwritev(fd, [buf], offset)
            if written != sample:
                raise OSError(f"short write at {offset}: {written} bytes")
        os.fsync(fd)
    finally:
        buf.close()
        os.close(fd)


def read_samples(path: str, offsets: Sequence[int],
                 sample: int = SAMPLE) -> list[bytes]:
    fd = _open(path, write=False)
    buf = _aligned(sample)
    out = []
    try:
        for offset in offsets:
            got = os.preadv(fd, [buf], offset)
            if got != sample:
                raise OSError(f"short read at {offset}: {got} bytes")
            out.append(bytes(buf))
    finally:
        buf.close()
        os.close(fd)
    return out


@attrs.define
class Baseline:
    """What the check compares against: the markers written, or the
    digests of the samples read before the erase."""

    offsets: list[int]
    sample: int
    token: bytes | None = None
    digests: list[str] | None = None
    zero_before: list[bool] | None = None
    note: str | None = None


def prepare(guard: DeviceGuard, path: str, size: int,
            count: int = SAMPLES, sample: int = SAMPLE,
            token: bytes | None = None) -> Baseline:
    """Write the markers (or, failing that, read the samples)."""
    offsets = sample_offsets(size, count, sample)
    token = token if token is not None else os.urandom(8).hex().encode()
    try:
        write_markers(guard, path, offsets, token, sample)
    except OSError as e:
        data = read_samples(path, offsets, sample)
        note = (f"markers could not be written ({e}); samples read before "
                f"the erase instead")
    else:
        data = read_samples(path, offsets, sample)
        lost = [o for o, got in zip(offsets, data)
                if got != marker(token, o, sample)]
        if not lost:
            return Baseline(offsets, sample, token=token)
        # acknowledged, not kept: a marker that never landed cannot be
        # "gone" afterwards; the samples as they read now are the baseline
        note = (f"markers written, but {len(lost)} of {len(offsets)} did "
                f"not read back (first at {lost[0]}): the device does not "
                f"keep the writes it acknowledges; the samples as read then "
                f"are the baseline")
    return Baseline(offsets, sample,
                    digests=[hashlib.sha256(d).hexdigest() for d in data],
                    zero_before=[_is_zero(d) for d in data], note=note)


def check(path: str, baseline: Baseline, expect_zeroes: bool
          ) -> dict[str, Any]:
    """Read the samples back; the check's part of the erase report."""
    data = read_samples(path, baseline.offsets, baseline.sample)
    zero = changed = 0
    kept: list[int] = []
    not_zero: list[int] = []
    for i, (offset, got) in enumerate(zip(baseline.offsets, data)):
        is_zero = _is_zero(got)
        if is_zero:
            zero += 1
        if baseline.token is not None:
            want = marker(baseline.token, offset, baseline.sample)
            left = any(got[c:c + CHUNK] == want[c:c + CHUNK]
                       for c in range(0, baseline.sample, CHUNK))
        else:
            assert baseline.digests is not None
            assert baseline.zero_before is not None
            left = (hashlib.sha256(got).hexdigest() == baseline.digests[i]
                    and not baseline.zero_before[i])
        if left:
            kept.append(offset)
        elif not is_zero:
            changed += 1
            if expect_zeroes:
                not_zero.append(offset)
    passed = not kept and not not_zero
    result: dict[str, Any] = {
        "samples": len(baseline.offsets),
        "sample_bytes": baseline.sample,
        "bytes_read": len(baseline.offsets) * baseline.sample,
        "spread": [baseline.offsets[0], baseline.offsets[-1]]
        if baseline.offsets else [],
        "mode": "markers" if baseline.token is not None else "digests",
        "expect": "zeroes" if expect_zeroes else "changed",
        "zeroes": zero,
        "changed_not_zeroes": changed,
        "unchanged_offsets": kept[:16],
        "unchanged": len(kept),
        "not_zeroes_offsets": not_zero[:16],
        "passed": passed,
    }
    if baseline.note:
        result["note"] = baseline.note
    return result
