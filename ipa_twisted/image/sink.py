"""Write a byte stream to a block device, hashing it on the way.

The device is opened first (:class:`Device`, in a thread: opening a block
device may block, and a device that cannot be opened must fail the
command before a byte is downloaded).  Then:

- :class:`DeviceSink` (raw images): a ring of page-aligned buffers
  (``mmap``) that the socket receives into itself (``recv_into``, see
  ``ipa_twisted.image.stream``), or that the network's chunks are copied
  into on the reactor thread (TLS).  Each filled part goes to a hashing
  thread at once, each full buffer to a writing thread (``O_DIRECT`` when
  the device allows it).  A buffer is reused only when both are done with
  it.  When no buffer is free the producer (the HTTP transport) is
  paused, and resumed when one frees up: memory stays at ``depth x
  size`` whatever the image size, and the download never outruns the
  disk.
- :class:`PositionalWriter` (qcow2): ``(offset, bytes)`` pieces, in
  batches, copied by one thread into two page-aligned buffers (coalescing
  neighbours) while another thread writes the full ones: only whole
  buffers are written, except where the offsets jump.  Compressed clusters
  are inflated in the copying thread, never on the reactor.

hashlib, ``os.pwrite``, ``recv_into`` and zlib release the GIL, so
hashing, writing, inflating and receiving run in parallel.  Each sink counts what its
threads got done (:attr:`progress`): the download's watchdog requires it to
advance while the download waits for the disk, so that a disk whose writes
never return fails the command instead of hanging it.

The thread that writes owns the device once the sink has it: it syncs and
closes it at the end; nothing waits for a thread stuck in a write for ever
(see ``ipa_twisted.image.writer``).
"""

from __future__ import annotations

import errno
import fcntl
import mmap
import os
import queue
import struct
import threading
from typing import Any, Callable, Iterable

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorFromThreads
from twisted.logger import Logger
from twisted.python.failure import Failure

from ipa_twisted.image.checksum import new_hasher

log = Logger()

MiB = 1024 * 1024
BUFFER_SIZE = 8 * MiB
#: Buffers of a raw image's sink.
DEPTH = 4
ALIGN = 4096
#: Bytes handed to the threads and not done with yet, at most (each
#: chunk counts once per thread holding it).
QUEUE_LIMIT = 16 * MiB
_EOF = object()


class SinkError(Exception):
    """A local error writing the image (never retried: the network is
    not at fault)."""

    def __init__(self, path: str, err: OSError | None = None,
                 message: str | None = None) -> None:
        self.path = path
        self.errno = err.errno if err is not None else None
        if message is None:
            assert err is not None
            message = f"writing {path}: {err.strerror or err}"
        super().__init__(message)


class DiskStalled(SinkError):
    """The disk stopped completing writes."""

    def __init__(self, path: str, seconds: float, what: str = "a write"
                 ) -> None:
        super().__init__(path, message=(
            f"writing {path}: the disk has not completed {what} for "
            f"{seconds:.0f} s"))


class Device:
    """The device an image is written to, opened before the download.

    ``plain`` is opened for reading and writing; ``direct`` (when the
    device allows it) with ``O_DIRECT``, for page-aligned buffers.
    ``after_write`` (set by the caller) runs in the writing thread after
    the last write and before the sync; its result lands in
    ``after_write_result``.
    """

    def __init__(self, path: str, plain: int, direct: int | None,
                 size: int, sector_size: int) -> None:
        self.path = path
        self.plain: int | None = plain
        self.direct = direct
        self.size = size
        self.sector_size = sector_size
        #: a sink took it: that sink's thread closes it
        self.claimed = False
        self.after_write: Callable[["Device"], Any] | None = None
        self.after_write_result: Any = None

    @classmethod
    def open(cls, path: str, direct: bool = True) -> "Device":
        """Open ``path`` (blocking: call it from a thread); OSError as
        it comes."""
        from ipa_twisted.hardware import blockio

        flags = getattr(os, "O_CLOEXEC", 0)
        plain = os.open(path, os.O_RDWR | flags)
        fd_direct = None
        try:
            if direct and hasattr(os, "O_DIRECT"):
                try:
                    fd_direct = os.open(path, os.O_WRONLY | os.O_DIRECT
                                        | flags)
                except OSError as e:
                    if e.errno not in (errno.EINVAL, errno.EOPNOTSUPP):
                        raise
            return cls(path, plain, fd_direct, blockio.size_of_fd(plain),
                       blockio.sector_size_of_fd(plain))
        except BaseException:
            os.close(plain)
            if fd_direct is not None:
                os.close(fd_direct)
            raise

    def claim(self) -> "Device":
        self.claimed = True
        return self

    def write_at(self, offset: int, data: Any, aligned_buffer: bool) -> None:
        """Write all of ``data`` at ``offset`` (``O_DIRECT`` when the
        buffer, the offset and the length allow it)."""
        fd = self.plain
        if (aligned_buffer and self.direct is not None
                and offset % ALIGN == 0 and len(data) % ALIGN == 0):
            fd = self.direct
        assert fd is not None
        done = 0
        while done < len(data):
            done += os.pwrite(fd, data[done:], offset + done)

    def complete(self, sync: bool = True) -> None:
        """After the last write: ``after_write``, then ``fsync``."""
        if self.after_write is not None:
            self.after_write_result = self.after_write(self)
        if sync:
            assert self.plain is not None
            os.fsync(self.plain)

    def close(self) -> None:
        for fd in (self.direct, self.plain):
            if fd is not None:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self.direct = self.plain = None


class Pausable:
    """A consumer's side of back-pressure: pause/resume its producer
    (the pipeline's stages and the device sink share it)."""

    def __init__(self) -> None:
        self._producer: Any = None
        self._paused = False

    @property
    def paused(self) -> bool:
        return self._paused

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        self._producer = producer
        if self._paused:
            producer.pauseProducing()

    def unregisterProducer(self) -> None:
        self._producer = None

    def _pause(self) -> None:
        if not self._paused:
            self._paused = True
            if self._producer is not None:
                self._producer.pauseProducing()

    def _resume(self) -> None:
        if self._paused:
            self._paused = False
            if self._producer is not None:
                self._producer.resumeProducing()


class Backlog:
    """Bytes handed to worker threads and not done with yet.

    The reactor adds (and pauses its producer over ``limit``); the threads
    release, and wake the reactor only when it waits and the backlog fell
    under half the limit: no wake-up per chunk.
    """

    def __init__(self, reactor: IReactorFromThreads, limit: int,
                 resume: Callable[[], None]) -> None:
        self._reactor = reactor
        self.limit = limit
        self._resume = resume
        self._lock = threading.Lock()
        self.level = 0
        self._waiting = False

    def add(self, n: int) -> bool:
        """Count ``n`` more bytes; True when the producer must pause (the
        caller pauses; ``resume`` is called once it may go on)."""
        with self._lock:
            self.level += n
            if self.level > self.limit:
                self._waiting = True
                return True
            return False

    def release(self, n: int) -> None:
        """``n`` bytes are done with (from any thread)."""
        if not n:
            return
        with self._lock:
            self.level -= n
            wake = self._waiting and self.level < self.limit // 2
            if wake:
                self._waiting = False
        if wake:
            self._reactor.callFromThread(self._resume)


BLKZEROOUT = 0x127F


FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02


def _punch_hole(fd: int, offset: int, length: int) -> bool:
    import ctypes
    import ctypes.util

    libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
    libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64,
                               ctypes.c_int64]
    return libc.fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
                          offset, length) == 0


def zero_range(fd: int, offset: int, length: int) -> None:
    """Make [offset, offset + length) read as zeros: BLKZEROOUT on a block
    device (cheap on thin storage), a punched hole in a file, else plain
    writes of zeros."""
    try:
        fcntl.ioctl(fd, BLKZEROOUT, struct.pack("QQ", offset, length))
        return
    except OSError:
        pass
    if _punch_hole(fd, offset, length):
        return
    zeros = bytes(min(length, 8 * 1024 * 1024))
    done = 0
    while done < length:
        done += os.pwrite(fd, zeros[:length - done], offset + done)


_CLOSE = object()
_DRAIN = object()
#: Unwritten ranges are zeroed this much at a time.
ZERO_STEP = 256 * 1024 * 1024

#: A piece to write: (offset, bytes); or a compressed one, inflated in the
#: copying thread: (offset, compressed bytes, inflate(data) -> bytes).
Piece = tuple[Any, ...]


class PositionalWriter:
    """Writes ``(offset, bytes)`` pieces from threads, coalescing
    neighbours into aligned buffers (``O_DIRECT`` when aligned).

    One thread copies pieces into one of two buffers (inflating compressed
    ones) while the other thread writes the previous full buffer.  A
    buffer is written when it is full, when the next piece does not follow
    it, or on ``drain()``/``close()``.  The bytes of a batch are released
    from ``backlog`` once copied.
    """

    def __init__(self, reactor: Any, device: Device, backlog: Backlog,
                 on_progress: Callable[[int], None] | None = None,
                 on_error: Callable[[BaseException], None] | None = None,
                 buffer_size: int = BUFFER_SIZE, buffers: int = 2) -> None:
        self._reactor = reactor
        self.device = device.claim()
        self.path = device.path
        self._backlog = backlog
        self._on_progress = on_progress
        self._on_error = on_error
        self._size = buffer_size
        self._q: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._io_q: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._buffers = [mmap.mmap(-1, buffer_size) for _ in range(buffers)]
        self._free: queue.SimpleQueue[int] = queue.SimpleQueue()
        for index in range(buffers):
            self._free.put(index)
        self.written = 0          # bytes written (the io thread's count)
        self._copied = 0          # bytes copied (the copying thread's)
        self._zeroed = 0          # bytes zeroed at the end (the io thread)
        #: the io thread is in the final sync
        self.flushing = False
        self.error: BaseException | None = None
        self._error_lock = threading.Lock()
        self._dropping = False
        self.threads = [
            threading.Thread(target=self._copy_loop, daemon=True,
                             name=f"copy {self.path}"),
            threading.Thread(target=self._io_loop, daemon=True,
                             name=f"write {self.path}")]
        for thread in self.threads:
            thread.start()

    @property
    def progress(self) -> int:
        return self._copied + self.written + self._zeroed

    def put(self, batch: list[Piece]) -> None:
        """Pieces to write (their bytes were added to the backlog)."""
        if batch:
            self._q.put(batch)

    def drain(self) -> "Deferred[None]":
        """Fires once everything put so far is on the device (or fails
        with the first error)."""
        d: Deferred[None] = Deferred()
        self._q.put((_DRAIN, d))
        return d

    def close(self, zero: Iterable[tuple[int, int]], sync: bool = True
              ) -> "Deferred[None]":
        """Flush, zero the ``zero`` ranges (an iterable: a generator runs in
        the writer's thread), run the device's ``after_write``, sync and
        close."""
        d: Deferred[None] = Deferred()
        if not sync:  # (stopping early: what is queued need not be written)
            self._dropping = True
        self._q.put((_CLOSE, (zero, sync, d)))
        return d

    # ----------------------------------------------------------- threads

    def _failed(self, error: BaseException) -> None:
        with self._error_lock:
            if self.error is not None:
                return
            self.error = error
        if self._on_error is not None:
            self._reactor.callFromThread(self._on_error, error)

    def _copy_loop(self) -> None:
        index: int | None = None
        start = fill = 0
        while True:
            item = self._q.get()
            if isinstance(item, tuple) and item[0] in (_DRAIN, _CLOSE):
                if index is not None:
                    self._io_q.put((index, start, fill))
                    index = None
                self._io_q.put(item)
                if item[0] is _CLOSE:
                    return
                continue
            released = 0
            for piece in item:
                offset, data = piece[0], piece[1]
                released += len(data)
                if self.error is not None or self._dropping:
                    continue
                if len(piece) == 3:
                    try:
                        data = piece[2](data)
                    except Exception as e:
                        self._failed(e)
                        continue
                view = memoryview(data)
                while view:
                    if index is not None and offset != start + fill:
                        self._io_q.put((index, start, fill))
                        index = None
                    if index is None:
                        index = self._free.get()
                        start, fill = offset, 0
                    take = min(len(view), self._size - fill)
                    self._buffers[index][fill:fill + take] = view[:take]
                    fill += take
                    offset += take
                    self._copied += take
                    view = view[take:]
                    if fill == self._size:
                        self._io_q.put((index, start, fill))
                        index = None
            self._backlog.release(released)

    def _io_loop(self) -> None:
        while True:
            item = self._io_q.get()
            if item[0] is _DRAIN:
                self._fire(item[1])
                continue
            if item[0] is _CLOSE:
                zero, sync, d = item[1]
                self._close(zero, sync, d)
                return
            index, start, length = item
            if self.error is None and length and not self._dropping:
                try:
                    with memoryview(self._buffers[index]) as view:
                        self.device.write_at(start, view[:length], True)
                    self.written += length
                    if self._on_progress is not None:
                        self._reactor.callFromThread(self._on_progress,
                                                     self.written)
                except OSError as e:
                    self._failed(SinkError(self.path, e))
                except Exception as e:
                    self._failed(e)
            self._free.put(index)

    def _fire(self, d: "Deferred[None]") -> None:
        error = self.error
        if error is not None:
            self._reactor.callFromThread(d.errback, error)
        else:
            self._reactor.callFromThread(d.callback, None)

    def _close(self, zero: Iterable[tuple[int, int]], sync: bool,
               d: "Deferred[None]") -> None:
        device = self.device
        try:
            if self.error is None:
                assert device.plain is not None
                for offset, length in zero:
                    # in steps, so that the watchdog sees them go by
                    end = offset + length
                    while offset < end:
                        step = min(end - offset, ZERO_STEP)
                        zero_range(device.plain, offset, step)
                        offset += step
                        self._zeroed += step
                if sync:
                    self.flushing = True
                    device.complete()
        except Exception as e:
            self._failed(SinkError(self.path, e) if isinstance(e, OSError)
                         else e)
        finally:
            device.close()
        self._fire(d)


class HashThread:
    """Hashes chunks (one per network read) in its own thread and
    releases them from the backlog (``algo`` None: only releases them;
    the digest is then None)."""

    def __init__(self, reactor: Any, algo: str | None,
                 backlog: Backlog) -> None:
        self._hasher = new_hasher(algo) if algo else None
        self._q: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._backlog = backlog
        self._reactor = reactor
        self.hashed = 0
        self.done: Deferred[str | None] = Deferred()
        self.thread = threading.Thread(target=self._run, daemon=True,
                                       name="hash")
        self.thread.start()

    def put(self, data: bytes) -> None:
        self._q.put(data)

    def close(self) -> None:
        self._q.put(_EOF)

    def _run(self) -> None:
        error: BaseException | None = None
        while True:
            item = self._q.get()
            if item is _EOF:
                break
            if error is None and self._hasher is not None:
                try:
                    self._hasher.update(item)
                except Exception as e:  # keep draining: never hang
                    error = e
            self.hashed += len(item)
            self._backlog.release(len(item))
        digest = None
        if error is None and self._hasher is not None:
            try:
                digest = self._hasher.hexdigest()
            except Exception as e:
                error = e
        if error is not None:
            self._reactor.callFromThread(self.done.errback, Failure(error))
        else:
            self._reactor.callFromThread(self.done.callback, digest)


class DeviceSink(Pausable):
    """An ``IConsumer`` that writes a raw image to ``device`` from its
    start, hashing it on the way.

    The bytes land in a ring of ``depth`` page-aligned buffers (``mmap``):
    either copied there by :meth:`write` (a chunk the HTTP stack
    delivered), or received there by the socket itself (:meth:`reserve`
    and :meth:`commit`: ``recv_into``, see ``ipa_twisted.image.stream``),
    with no copy and no allocation.  Each part of a buffer is handed to the
    hashing thread as soon as it is filled; a full buffer goes to the
    writing thread (``O_DIRECT`` when the device allows it).  A buffer is
    reused once both are done with it.  When no buffer is free the
    producer (the HTTP transport) is paused, and resumed when one frees
    up: memory stays at ``depth x buffer_size`` whatever the image, and
    the download never outruns the disk.  The threads wake the reactor
    once per buffer each.

    ``finish()`` fires with ``(bytes written, hexdigest or None)`` once
    everything is on the device; ``finalize()`` runs the device's
    ``after_write``, syncs and closes it; ``abort()`` stops early.  A write
    or hashing error stops the producer at once and fails ``finish()``.
    """

    def __init__(self, reactor: IReactorFromThreads, device: Device,
                 hash_algo: str | None = None,
                 on_progress: Callable[[int], None] | None = None,
                 buffer_size: int = BUFFER_SIZE, depth: int = DEPTH) -> None:
        super().__init__()
        self._reactor = reactor
        self.device = device.claim()
        self.path = device.path
        self._hasher = new_hasher(hash_algo) if hash_algo else None
        self._size = buffer_size
        self._buffers = [mmap.mmap(-1, buffer_size) for _ in range(depth)]
        self._free = list(range(depth))
        self._pending = [0] * depth   # jobs still using each buffer
        self._current: int | None = None
        self._fill = 0                # bytes in the current buffer
        self._hashed_to = 0           # ... of which handed to the hasher
        self._offset = 0              # where the current buffer goes
        self._spill: list[bytes] = []  # what came while no buffer was free
        self.received = 0
        self.written = 0
        self._on_progress = on_progress
        self._failed: BaseException | None = None
        self._aborted = False
        self._finishing: Deferred[tuple[int, str | None]] | None = None
        self._digest: str | None = None
        self._hash_q: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._write_q: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._stopped = False
        self._close_sent = False
        self._closing: Deferred[None] | None = None
        self._closed: Deferred[None] = Deferred()
        self._exited = 0
        # what each thread got done (each written by its own thread only)
        self._hashed = 0
        self._wrote = 0
        #: the writing thread is in the final sync
        self.flushing = False
        self.threads = [
            threading.Thread(target=self._hash_loop, daemon=True,
                             name=f"hash {self.path}"),
            threading.Thread(target=self._write_loop, daemon=True,
                             name=f"write {self.path}")]
        for thread in self.threads:
            thread.start()

    @property
    def progress(self) -> int:
        """Bytes the worker threads got through (hashed + written)."""
        return self._hashed + self._wrote

    @property
    def error(self) -> BaseException | None:
        """The error that stopped this sink (a write or hashing error), if
        any; None after abort()."""
        return None if self._aborted else self._failed

    # ---------------------------------------------------- thread bodies

    def _hash_loop(self) -> None:
        error: BaseException | None = None
        while True:
            item = self._hash_q.get()
            if item is _EOF:
                break
            index, start, end, last = item
            if self._hasher is not None and error is None:
                try:
                    with memoryview(self._buffers[index]) as view:
                        self._hasher.update(view[start:end])
                except Exception as e:  # keep going: never hold a buffer
                    error = e
                    self._reactor.callFromThread(self._fail, e)
            self._hashed += end - start
            if last:
                self._reactor.callFromThread(self._release, index, 0)
        digest = None
        if error is None and self._hasher is not None:
            try:
                digest = self._hasher.hexdigest()
            except Exception as e:
                self._reactor.callFromThread(self._fail, e)
        self._reactor.callFromThread(self._hash_exited, digest)

    def _write_loop(self) -> None:
        """Owns the device: writes; at the end syncs and closes it."""
        device = self.device
        error: BaseException | None = None
        while True:
            item = self._write_q.get()
            if item[0] is _CLOSE:
                break
            index, offset, length = item
            if error is None and not self._aborted:
                try:
                    with memoryview(self._buffers[index]) as buf:
                        device.write_at(offset, buf[:length], True)
                    self._wrote += length
                except Exception as e:
                    error = (SinkError(self.path, e)
                             if isinstance(e, OSError) else e)
                    self._reactor.callFromThread(self._fail, error)
            self._reactor.callFromThread(self._release, index,
                                         0 if error else length)
        sync = item[1]
        try:
            if sync and error is None and self._failed is None:
                self.flushing = True
                device.complete()
        except Exception as e:
            error = SinkError(self.path, e) if isinstance(e, OSError) else e
        finally:
            device.close()
        self._reactor.callFromThread(self._writer_exited, error)

    # ------------------------------------------------------ reactor side

    def write(self, data: bytes) -> None:
        """A chunk of the image: copied into the buffers."""
        if self._failed is not None or self._stopped:
            return
        if self._spill:
            self._spill.append(bytes(data))
            return
        self._copy_in(memoryview(data))

    def reserve(self, n: int) -> memoryview | None:
        """Room for up to ``n`` more bytes in the current buffer (for
        ``recv_into``; :meth:`commit` says how many came), or None when
        no buffer is free (the producer is then paused)."""
        if self._failed is not None or self._stopped:
            return None
        if self._spill or (self._current is None and not self._free):
            self._pause()
            return None
        if self._current is None:
            self._take()
        assert self._current is not None
        end = min(self._size, self._fill + n)
        return memoryview(self._buffers[self._current])[self._fill:end]

    def commit(self, n: int) -> None:
        """``n`` bytes arrived in the room :meth:`reserve` gave."""
        self.received += n
        self._fill += n
        self._hash_part()
        if self._fill == self._size:
            self._submit()

    def _take(self) -> None:
        self._current = self._free.pop()
        self._fill = self._hashed_to = 0
        self._pending[self._current] = 2  # the hasher and the writer

    def _copy_in(self, view: memoryview) -> None:
        self.received += len(view)
        while view:
            if self._current is None:
                if not self._free:
                    # The producer may deliver a little more after being
                    # paused (one socket read); keep it until a buffer frees.
                    self._spill.append(bytes(view))
                    self.received -= len(view)
                    self._pause()
                    return
                self._take()
            assert self._current is not None
            take = min(self._size - self._fill, len(view))
            self._buffers[self._current][self._fill:self._fill + take] = \
                view[:take]
            self._fill += take
            view = view[take:]
            if self._fill == self._size:
                self._submit()
        self._hash_part()
        if not self._free and self._current is None:
            self._pause()

    def _hash_part(self, last: bool = False) -> None:
        """Hand the hasher what was filled since the last time."""
        if self._current is not None and (self._fill > self._hashed_to
                                          or last):
            self._hash_q.put((self._current, self._hashed_to, self._fill,
                              last))
            self._hashed_to = self._fill

    def _submit(self) -> None:
        assert self._current is not None
        index, length = self._current, self._fill
        self._hash_part(last=True)
        self._write_q.put((index, self._offset, length))
        self._offset += length
        self._current = None
        self._fill = self._hashed_to = 0

    def _drain_spill(self) -> None:
        while self._spill and (self._free or self._current is not None):
            chunk = self._spill.pop(0)
            before = len(self._spill)
            self._copy_in(memoryview(chunk))
            if len(self._spill) > before:
                # It did not all fit: the rest went to the end; put it first.
                self._spill.insert(0, self._spill.pop())
                break

    def _release(self, index: int, written: int) -> None:
        self.written += written
        if written and self._on_progress is not None:
            self._on_progress(self.written)
        self._pending[index] -= 1
        if self._pending[index] == 0:
            self._free.append(index)
            self._drain_spill()
            if not self._spill and self._failed is None:
                self._resume()
            self._maybe_done()

    def _fail(self, error: BaseException) -> None:
        if self._failed is None:
            self._failed = error
            log.error("{error}", error=str(error))
        self._spill = []
        self._pause()
        # Stop the producer for good: a paused one would wait for a resume
        # that never comes (the HTTP transport, or an inflating thread).
        if self._producer is not None:
            self._producer.stopProducing()
        self._maybe_done()

    def _maybe_done(self) -> None:
        """Finishing: write the last buffer; once every buffer is back,
        stop hashing (the digest fires finish())."""
        if self._finishing is None or self._spill or self._stopped:
            return
        current = self._current
        if current is not None:
            if self._fill and self._failed is None:
                self._submit()
            else:  # (nothing in it, or no use writing it: give it back)
                self._pending[current] = 0
                self._free.append(current)
                self._current = None
        if any(self._pending):
            return
        self._stopped = True
        self._hash_q.put(_EOF)

    def _hash_exited(self, digest: str | None) -> None:
        self._digest = digest
        self._thread_exited()
        d, self._finishing = self._finishing, None
        if d is None:
            return
        if self._failed is not None:
            d.errback(self._failed)
        else:
            d.callback((self.written, digest))

    def _writer_exited(self, error: BaseException | None) -> None:
        self._thread_exited()
        d, self._closing = self._closing, None
        if d is not None:
            error = error or self._failed
            if error is not None and not self._aborted:
                d.errback(error)
            else:
                d.callback(None)

    def _thread_exited(self) -> None:
        self._exited += 1
        if self._exited == len(self.threads):
            self._closed.callback(None)

    def finish(self) -> "Deferred[tuple[int, str | None]]":
        """Write what is buffered; fire with (bytes written, hexdigest)
        once it is all on the device."""
        d: Deferred[tuple[int, str | None]] = Deferred()
        self._finishing = d
        self._maybe_done()
        return d

    def finalize(self) -> "Deferred[None]":
        """The device's after_write, sync, close (after finish())."""
        d: Deferred[None] = Deferred()
        self._closing = d
        if not self._close_sent:
            self._close_sent = True
            self._write_q.put((_CLOSE, True))
        return d

    def abort(self) -> "Deferred[None]":
        """Stop early (what was written stays); fires once the device is
        closed and both threads are done."""
        if self._failed is None:
            self._failed = RuntimeError("aborted")
            self._aborted = True
        self._pause()
        self._spill = []
        if not self._stopped:
            self._stopped = True
            self._hash_q.put(_EOF)
        if not self._close_sent:
            self._close_sent = True
            self._write_q.put((_CLOSE, False))
        return self.closed()

    def closed(self) -> "Deferred[None]":
        """Fires once the device is closed and both threads are done."""
        d: Deferred[None] = Deferred()

        def fire(result: object) -> object:
            d.callback(None)
            return result

        self._closed.addBoth(fire)
        return d
