"""Overwriting a whole device (blocking: run it in a thread).

What IPA does with ``shred --force [--zero] --iterations N``: N passes of
random data, then (``zeroize``) a pass of zeroes.  Done here with large
``O_DIRECT`` writes from a page-aligned buffer, which is what
``dd if=/dev/zero oflag=direct`` does and about twice as fast as shred's
buffered writes (benchmarks/erase.py).  The random passes are an AES-CTR
key stream under a fresh random key: unpredictable, and generated far
faster than a disk takes it.

``done`` is called with the bytes written so far (all passes), from this
thread: keep it cheap (the caller reads the number from the reactor).
``stop`` is polled between writes: when it returns True the overwrite ends
with :class:`Stopped`.
"""

from __future__ import annotations

import mmap
import os
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable, Sequence

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from ipa_twisted.hardware.disks import DeviceGuard

CHUNK = 4 * 1024 * 1024
PIECE = 256 * 1024
RANDOM = "random"
ZEROES = "zeroes"


class Stopped(Exception):
    """The overwrite was asked to stop."""


def passes(iterations: int, zeroize: bool) -> list[str]:
    return [RANDOM] * iterations + ([ZEROES] if zeroize else [])


def _open(path: str) -> int:
    flags = os.O_WRONLY | os.O_CLOEXEC
    try:
        return os.open(path, flags | getattr(os, "O_DIRECT", 0))
    except OSError:
        return os.open(path, flags)  # a test's file on tmpfs


def overwrite(guard: DeviceGuard, path: str, size: int,
              kinds: Sequence[str], done: Callable[[int], None],
              stop: Callable[[], bool] = lambda: False,
              chunk: int = CHUNK) -> None:
    """The passes ``kinds`` over ``size`` bytes of ``path``.  For a random
    pass a helper thread computes the next buffer while this one writes
    (the write releases the GIL), so the key stream costs no time."""
    guard.check(path)
    fd = _open(path)
    buffers = [mmap.mmap(-1, chunk), mmap.mmap(-1, chunk)]
    zeros = bytes(chunk)
    written = 0
    helper = ThreadPoolExecutor(1, thread_name_prefix="overwrite")
    try:
        for kind in kinds:
            stream = None
            if kind == RANDOM:
                stream = Cipher(algorithms.AES(os.urandom(32)),
                                modes.CTR(os.urandom(16))).encryptor()

            def fill(buf: mmap.mmap) -> None:
                # in pieces: between them the writer can take the GIL back
                buf.seek(0)
                for start in range(0, chunk, PIECE):
                    piece = zeros[start:start + PIECE]
                    buf.write(stream.update(piece) if stream is not None
                              else piece)

            fill(buffers[0])
            offset, turn = 0, 0
            while offset < size:
                if stop():
                    raise Stopped(f"stopped at {written} bytes")
                length = min(chunk, size - offset)
                following: Future[None] | None = None
                if offset + length < size and stream is not None:
                    following = helper.submit(fill, buffers[1 - turn])
                view = memoryview(buffers[turn])[:length]
                try:
                    n = os.pwritev(fd, [view], offset)
                except OSError as e:
                    # where it failed is the report's news (a bad range)
                    raise OSError(e.errno, f"{e.strerror}, writing the "
                                  f"{kind} pass at byte {offset} of "
                                  f"{path}") from e
                finally:
                    view.release()
                if following is not None:
                    following.result()
                    turn = 1 - turn
                if n != length:
                    raise OSError(f"short write at {offset}: {n} of "
                                  f"{length} bytes")
                offset += n
                written += n
                done(written)
            os.fsync(fd)
    finally:
        helper.shutdown(wait=True)
        for buf in buffers:
            buf.close()
        os.close(fd)
