"""Write a byte stream to a block device, hashing it on the way.

The network delivers chunks on the reactor thread.  They are copied once,
into a ring of page-aligned buffers (``mmap``); each full buffer goes to two
worker threads at the same time: one hashes it, one writes it to the device
(``O_DIRECT`` when the device allows it).  A buffer is reused only when both
are done with it.  When no buffer is free the producer (the HTTP transport)
is paused, and resumed when one frees up: memory stays at ``depth x size``
whatever the image size, and the download never outruns the disk.

hashlib and os.write release the GIL, so hashing, writing and receiving run
in parallel.
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

from ipa_twisted.image.checksum import new_hasher

log = Logger()

BUFFER_SIZE = 8 * 1024 * 1024
DEPTH = 4
_STOP = object()
_SYNC_AND_STOP = object()


class SinkError(Exception):
    def __init__(self, path: str, err: OSError) -> None:
        self.path = path
        self.errno = err.errno
        super().__init__(f"writing {path}: {err.strerror or err}")


def _open_device(path: str, offset: int, direct: bool) -> tuple[int, bool]:
    flags = os.O_WRONLY | getattr(os, "O_CLOEXEC", 0)
    if direct and hasattr(os, "O_DIRECT"):
        try:
            fd = os.open(path, flags | os.O_DIRECT)
            if offset:
                os.lseek(fd, offset, os.SEEK_SET)
            return fd, True
        except OSError as e:
            if e.errno not in (errno.EINVAL, errno.EOPNOTSUPP):
                raise
    fd = os.open(path, flags)
    if offset:
        os.lseek(fd, offset, os.SEEK_SET)
    return fd, False


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


class DeviceSink(Pausable):
    """An ``IConsumer`` that writes to ``path`` from ``offset``.

    ``write()`` is called on the reactor thread; ``finish()`` flushes the
    tail, syncs, and fires with ``(bytes written, hexdigest or None)``;
    ``abort()`` stops early.  Errors from the worker threads fail the
    ``finish()`` Deferred (and pause the producer at once).
    """

    def __init__(
        self,
        reactor: IReactorFromThreads,
        path: str,
        hash_algo: str | None = None,
        offset: int = 0,
        buffer_size: int = BUFFER_SIZE,
        depth: int = DEPTH,
        direct: bool = True,
        on_progress: Callable[[int], None] | None = None,
    ) -> None:
        self._reactor = reactor
        self.path = path
        self._hasher = new_hasher(hash_algo) if hash_algo else None
        self._offset = offset
        self._size = buffer_size
        self._buffers = [mmap.mmap(-1, buffer_size) for _ in range(depth)]
        self._free = list(range(depth))
        self._pending = [0] * depth  # workers still using each buffer
        self._current: int | None = None
        self._fill = 0
        super().__init__()
        self._failed: BaseException | None = None
        self._aborted = False
        self._finishing: Deferred[tuple[int, str | None]] | None = None
        self.received = 0
        self.written = 0
        self._on_progress = on_progress
        self._direct = direct
        self._fd: int | None = None
        self._hash_q: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._write_q: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._stopping = False
        self._backlog: list[bytes] = []
        self._closed: Deferred[None] = Deferred()
        self.direct_io = False

    # ---------------------------------------------------- thread bodies

    def open(self) -> None:
        """Open the device and start the workers (may raise OSError)."""
        direct = self._direct and self._offset % 4096 == 0
        self._fd, self.direct_io = _open_device(self.path, self._offset,
                                                direct)
        hasher = threading.Thread(target=self._hash_loop, daemon=True,
                                  name=f"hash {self.path}")
        writer = threading.Thread(target=self._write_loop, daemon=True,
                                  name=f"write {self.path}")
        self._threads = [hasher, writer]
        hasher.start()
        writer.start()

    def _hash_loop(self) -> None:
        while True:
            item = self._hash_q.get()
            if item is _STOP:
                return
            index, length = item
            if self._hasher is not None:
                try:
                    with memoryview(self._buffers[index]) as view:
                        self._hasher.update(view[:length])
                except Exception as e:  # never leave a buffer taken
                    self._hasher = None
                    self._reactor.callFromThread(self._fail, e)
            self._reactor.callFromThread(self._release, index, 0)

    def _write_loop(self) -> None:
        """Owns the file descriptor: writes, then syncs and closes it."""
        assert self._fd is not None
        fd = self._fd
        error: BaseException | None = None
        while True:
            item = self._write_q.get()
            if item is _STOP or item is _SYNC_AND_STOP:
                break
            index, length = item
            if error is None:
                try:
                    self._write_all(fd, index, length)
                except Exception as e:
                    error = (SinkError(self.path, e)
                             if isinstance(e, OSError) else e)
                    self._reactor.callFromThread(self._fail, error)
            self._reactor.callFromThread(self._release, index,
                                         0 if error else length)
        try:
            if item is _SYNC_AND_STOP and error is None:
                os.fsync(fd)
        except OSError as e:
            error = SinkError(self.path, e)
        finally:
            try:
                os.close(fd)
            except OSError:
                pass
        self._reactor.callFromThread(self._writer_exited, error)

    def _write_all(self, fd: int, index: int, length: int) -> None:
        if self.direct_io and length % 4096:
            # The tail is not a whole number of sectors: finish it with
            # buffered I/O.
            flags = fcntl.fcntl(fd, fcntl.F_GETFL)
            fcntl.fcntl(fd, fcntl.F_SETFL, flags & ~os.O_DIRECT)
            self.direct_io = False
        with memoryview(self._buffers[index]) as buf:
            view = buf[:length]
            done = 0
            while done < length:
                done += os.write(fd, view[done:])
            view.release()

    # ------------------------------------------------------ reactor side

    def _resume(self) -> None:
        if self._failed is None:  # a failed sink keeps its producer paused
            super()._resume()

    @property
    def error(self) -> BaseException | None:
        """The error that stopped this sink (a write or hashing error), if
        any; None after abort()."""
        return None if self._aborted else self._failed

    def write(self, data: bytes) -> None:
        if self._failed is not None:
            return
        self.received += len(data)
        if self._backlog:
            self._backlog.append(bytes(data))
            return
        self._copy_in(memoryview(data))

    def _copy_in(self, view: memoryview) -> None:
        while view:
            if self._current is None:
                if not self._free:
                    # The producer may deliver a little more after being
                    # paused (one socket read); keep it until a buffer frees.
                    self._backlog.append(bytes(view))
                    self._pause()
                    return
                self._current = self._free.pop()
                self._fill = 0
            room = self._size - self._fill
            take = min(room, len(view))
            self._buffers[self._current][self._fill:self._fill + take] = \
                view[:take]
            self._fill += take
            view = view[take:]
            if self._fill == self._size:
                self._submit()
        if not self._free and self._current is None:
            self._pause()

    def _drain_backlog(self) -> None:
        while self._backlog and (self._free or self._current is not None):
            chunk = self._backlog.pop(0)
            before = len(self._backlog)
            self._copy_in(memoryview(chunk))
            if len(self._backlog) > before:
                # It did not all fit: the rest went to the end; put it first.
                self._backlog.insert(0, self._backlog.pop())
                break

    def _submit(self) -> None:
        assert self._current is not None
        index, length = self._current, self._fill
        self._current = None
        self._fill = 0
        self._pending[index] = 2
        self._hash_q.put((index, length))
        self._write_q.put((index, length))

    def _release(self, index: int, written: int) -> None:
        self.written += written
        if written and self._on_progress is not None:
            self._on_progress(self.written)
        self._pending[index] -= 1
        if self._pending[index] == 0:
            self._free.append(index)
            self._drain_backlog()
            if not self._backlog:
                self._resume()
            self._flush_if_done()

    def _fail(self, error: BaseException) -> None:
        if self._failed is None:
            self._failed = error
            log.error("{error}", error=str(error))
        self._pause()
        # Stop the producer for good: a paused one would wait for a resume
        # that never comes (the HTTP transport, or an inflating thread).
        if self._producer is not None:
            self._producer.stopProducing()

    def _busy(self) -> bool:
        return any(self._pending)

    def _maybe_stop(self) -> None:
        """Once finishing and every buffer is back, stop the workers."""
        if self._finishing is None or self._stopping or self._busy():
            return
        self._stopping = True
        self._hash_q.put(_STOP)
        self._write_q.put(_SYNC_AND_STOP)

    def _writer_exited(self, error: BaseException | None) -> None:
        self._fd = None
        self._closed.callback(None)
        d, self._finishing = self._finishing, None
        if d is None:
            return
        error = self._failed or error
        digest = None
        if error is None and self._hasher is not None:
            try:
                digest = self._hasher.hexdigest()
            except Exception as e:
                error = e
        if error is not None:
            d.errback(error)
        else:
            d.callback((self.written, digest))

    def finish(self) -> "Deferred[tuple[int, str | None]]":
        """Flush what is buffered, fsync; fire with (bytes, hexdigest)."""
        d: Deferred[tuple[int, str | None]] = Deferred()
        self._finishing = d
        self._flush_if_done()
        return d

    def _flush_if_done(self) -> None:
        if self._finishing is None or self._backlog:
            return
        if self._failed is None and self._current is not None and self._fill:
            self._submit()
        self._maybe_stop()

    def finalize(self) -> "Deferred[None]":
        """Nothing left to do: finish() already synced and closed."""
        d: Deferred[None] = Deferred()
        d.callback(None)
        return d

    def abort(self) -> "Deferred[None]":
        """Stop early (what was written stays); fires once the device is
        closed."""
        if self._failed is None:
            self._failed = RuntimeError("aborted")
            self._aborted = True
        self._pause()
        if not self._stopping and self._fd is not None:
            self._stopping = True
            self._hash_q.put(_STOP)
            self._write_q.put(_STOP)
        return self.closed()

    def closed(self) -> "Deferred[None]":
        """Fires once the device is closed (the writer thread is done)."""
        d: Deferred[None] = Deferred()

        def fire(result: object) -> object:
            d.callback(None)
            return result

        self._closed.addBoth(fire)
        return d


BLKZEROOUT = 0x127F
ALIGN = 4096


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


class PositionalWriter:
    """Writes ``(offset, bytes)`` pieces from a thread, coalescing
    neighbours into aligned 8 MiB writes (``O_DIRECT`` when aligned)."""

    def __init__(self, reactor: Any, path: str,
                 on_drained: Callable[[int], None],
                 on_progress: Callable[[int], None] | None = None) -> None:
        self._reactor = reactor
        self.path = path
        self._on_drained = on_drained
        self._on_progress = on_progress
        self._q: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._buf = mmap.mmap(-1, BUFFER_SIZE)
        self._direct: int | None = None
        self._plain: int | None = None
        self.written = 0
        self.error: BaseException | None = None

    def open(self) -> None:
        flags = os.O_WRONLY | getattr(os, "O_CLOEXEC", 0)
        self._plain = os.open(self.path, flags)
        try:
            self._direct = os.open(self.path, flags | getattr(os, "O_DIRECT",
                                                              0))
        except OSError:
            self._direct = None
        threading.Thread(target=self._run, daemon=True,
                         name=f"write {self.path}").start()

    def put(self, offset: int, data: bytes) -> None:
        self._q.put((offset, data))

    def drain(self) -> "Deferred[None]":
        d: Deferred[None] = Deferred()
        self._q.put(("drain", d))
        return d

    def close(self, zero: Iterable[tuple[int, int]], sync: bool = True
              ) -> "Deferred[None]":
        """Flush, zero the ``zero`` ranges (an iterable: a generator runs in
        the writer's thread), sync and close."""
        d: Deferred[None] = Deferred()
        self._q.put((_CLOSE, (zero, sync, d)))
        return d

    # ------------------------------------------------------------ thread

    def _run(self) -> None:
        start = fill = 0
        drained = 0
        while True:
            item = self._q.get()
            offset, data = item
            if offset == "drain" or offset is _CLOSE:
                self._guarded(self._flush, start, fill)
                start = fill = 0
                self._drained(drained)
                drained = 0
                if offset == "drain":
                    self._fire(data)
                    continue
                zero, sync, d = data
                self._close(zero, sync, d)
                return
            drained += len(data)
            if self.error is None:
                try:
                    if fill and (offset != start + fill
                                 or fill + len(data) > BUFFER_SIZE):
                        self._flush(start, fill)
                        fill = 0
                    if len(data) >= BUFFER_SIZE:
                        self._write(offset, data, own_buffer=False)
                    else:
                        if fill == 0:
                            start = offset
                        self._buf[fill:fill + len(data)] = data
                        fill += len(data)
                except Exception as e:  # the thread must go on answering
                    self.error = self.error or e
            if self._q.empty():
                self._guarded(self._flush, start, fill)
                fill = 0
            # tell the reactor in batches: a wake-up per piece is costly
            if drained >= BUFFER_SIZE or self._q.empty():
                self._drained(drained)
                drained = 0

    def _guarded(self, func: Callable[..., None], *args: Any) -> None:
        try:
            func(*args)
        except Exception as e:
            self.error = self.error or e

    def _drained(self, n: int) -> None:
        if n:
            self._reactor.callFromThread(self._on_drained, n)

    def _flush(self, start: int, fill: int) -> None:
        if fill and self.error is None:
            with memoryview(self._buf) as view:
                self._write(start, view[:fill], own_buffer=True)

    def _write(self, offset: int, data: Any, own_buffer: bool) -> None:
        if self.error is not None:
            return
        # O_DIRECT needs an aligned memory buffer: only our own mmap is
        aligned = (own_buffer and self._direct is not None
                   and offset % ALIGN == 0 and len(data) % ALIGN == 0)
        fd = self._direct if aligned else self._plain
        assert fd is not None
        try:
            done = 0
            while done < len(data):
                done += os.pwrite(fd, data[done:], offset + done)
        except OSError as e:
            self.error = SinkError(self.path, e)
            return
        self.written += len(data)
        if self._on_progress is not None:
            self._reactor.callFromThread(self._on_progress, self.written)

    def _fire(self, d: "Deferred[None]") -> None:
        error = self.error
        if error is not None:
            self._reactor.callFromThread(d.errback, error)
        else:
            self._reactor.callFromThread(d.callback, None)

    def _close(self, zero: Iterable[tuple[int, int]], sync: bool,
               d: "Deferred[None]") -> None:
        try:
            if self.error is None:
                assert self._plain is not None
                for offset, length in zero:
                    zero_range(self._plain, offset, length)
                if sync:
                    for fd in (self._direct, self._plain):
                        if fd is not None:
                            os.fsync(fd)
        except Exception as e:
            self.error = self.error or (
                SinkError(self.path, e) if isinstance(e, OSError) else e)
        finally:
            for fd in (self._direct, self._plain):
                if fd is not None:
                    try:
                        os.close(fd)
                    except OSError:
                        pass
            self._direct = self._plain = None
        self._fire(d)
