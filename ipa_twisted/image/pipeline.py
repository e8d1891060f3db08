"""From the bytes of an image file to the bytes of a disk.

The download feeds a :class:`FormatGate`.  It keeps the first 64 KiB,
decides what the image really is (:mod:`ipa_twisted.image.formats`),
refuses what is not permitted or not what it claims to be, and then hands
everything to one target:

- raw (and gpt, iso): :class:`~ipa_twisted.image.sink.DeviceSink`, which
  hashes, copies and writes in parallel threads;
- gzip, xz, zstd, bzip2: :class:`DecompressStage` (one thread hashes the
  compressed bytes and inflates them through a bounded stream reader: xz
  under a memory limit, zstd with a bounded window) in front of a new gate
  that must find a raw image inside, no larger than the disk;
- qcow2: :class:`Qcow2Target` (a hashing thread, the streaming qcow2
  reader on the reactor, :class:`~ipa_twisted.image.sink.PositionalWriter`
  for the clusters: compressed ones inflated in its thread; unwritten
  ranges zeroed at the end).

Every target is a push consumer with back-pressure (``pauseProducing`` on
its producer when its queues are full), so memory stays bounded whatever
the image.  A stage that fails stops its producer (``stopProducing``) and
says so in ``error``: nothing waits for a resume that cannot come.
``finish()`` fires with ``(bytes written to the disk, hex digest of the
image file)``; ``finalize()`` completes what a second pass needed (qcow2),
runs the device's ``after_write`` (the GPT), syncs and closes the device.
Each target's ``progress`` counts what its threads got done (the
watchdogs want it to move while the download waits for the disk).
"""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import queue
import threading
from typing import Any, Callable

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from zope.interface import implementer

from ipa_twisted import errors
from ipa_twisted.image import formats
from ipa_twisted.image.checksum import new_hasher
from ipa_twisted.image.qcow2 import Qcow2Error, Qcow2Stream
from ipa_twisted.image.sink import (QUEUE_LIMIT, Backlog, Device,
                                   DeviceSink, HashThread, Pausable, Piece,
                                   PositionalWriter, SinkError)

log = Logger()

MiB = 1024 * 1024
OUT_CHUNK = 4 * MiB
#: The most memory an xz stream may ask for (``xz -9`` needs 65 MiB).
XZ_MEMLIMIT = 128 * MiB
#: The largest zstd window accepted (zstd's own default limit).
ZSTD_MAX_WINDOW = 128 * MiB
_EOF = object()


class FormatGate(Pausable):
    """Detects the format from the first bytes, then passes everything to
    the right target."""

    def __init__(self, reactor: Any, device: Device, hash_algo: str | None,
                 claimed: str | None, permitted: tuple[str, ...],
                 inner: bool = False,
                 on_progress: Callable[[int], None] | None = None) -> None:
        super().__init__()
        self._reactor = reactor
        self.device = device
        self._algo = hash_algo
        self._claimed = claimed
        self._permitted = tuple(permitted)
        self._device_size = device.size
        self._inner = inner
        self._on_progress = on_progress
        self._head = bytearray()
        self.target: Any = None
        self.detected: str | None = None
        self.received = 0

    def write(self, data: bytes) -> None:
        self.received += len(data)
        if self.received > self._device_size and (
                self._inner or isinstance(self.target, DeviceSink)):
            # (a qcow2 file may be larger than its virtual size, which its
            # own reader checks; a compressed one has its inner gate)
            raise errors.ImageWriteError(
                self.device.path, None, "",
                f"the image is larger than the device ({self._device_size} "
                f"bytes)" + (" once inflated" if self._inner else ""))
        if self.target is not None:
            self.target.write(data)
            return
        self._head += data
        if len(self._head) >= formats.HEAD_SIZE:
            self._choose()

    def _choose(self) -> None:
        head, self._head = bytes(self._head), bytearray()
        detected = formats.detect(head)
        self.detected = detected
        if detected in formats.COMPRESSIONS:
            if self._inner:
                raise errors.InvalidImage(
                    f"a {detected} stream inside a compressed image")
            log.info("image is {kind}-compressed; inflating on the fly",
                     kind=detected)
            inner = FormatGate(self._reactor, self.device, None,
                               self._claimed, self._permitted, inner=True,
                               on_progress=self._on_progress)
            self.target = DecompressStage(self._reactor, detected,
                                          self._algo, inner)
        else:
            formats.check(self._claimed, detected, self._permitted)
            if self._inner and detected == "qcow2":
                raise errors.InvalidImage(
                    "qcow2 inside a compressed image is not supported")
            log.info("image format {fmt} (claimed {claimed})",
                     fmt=detected, claimed=self._claimed or "nothing")
            if detected == "qcow2":
                self.target = Qcow2Target(self._reactor, self.device,
                                          self._algo, self._on_progress)
            else:
                self.target = DeviceSink(self._reactor, self.device,
                                         self._algo,
                                         on_progress=self._on_progress)
        if self._producer is not None:
            self.target.registerProducer(self._producer, True)
        self.target.write(head)

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        super().registerProducer(producer, streaming)
        if self.target is not None:
            self.target.registerProducer(producer, streaming)

    def unregisterProducer(self) -> None:
        super().unregisterProducer()
        if self.target is not None:
            self.target.unregisterProducer()

    @property
    def paused(self) -> bool:
        return bool(self.target is not None and self.target.paused)

    @property
    def error(self) -> BaseException | None:
        return self.target.error if self.target is not None else None

    @property
    def progress(self) -> int:
        """What the disk side got done (see DeviceSink.progress)."""
        return int(self.target.progress) if self.target is not None else 0

    @property
    def flushing(self) -> bool:
        """The disk side is in its final sync."""
        return bool(self.target is not None and self.target.flushing)

    @property
    def path(self) -> str:
        return self.device.path

    # the body may be received straight into a raw sink's buffers
    # (ipa_twisted.image.stream): reserve() then commit()

    def direct_target(self) -> "FormatGate | None":
        """This gate, when its target takes bytes in place (a raw
        image's sink); else None."""
        if isinstance(self.target, DeviceSink) and not self._inner:
            return self
        return None

    def reserve(self, n: int) -> memoryview | None:
        result: memoryview | None = self.target.reserve(n)
        return result

    def commit(self, n: int) -> None:
        self.received += n
        if self.received > self._device_size:
            raise errors.ImageWriteError(
                self.device.path, None, "", f"the image is larger than the "
                f"device ({self._device_size} bytes)")
        self.target.commit(n)

    def finish(self) -> "Deferred[tuple[int, str | None]]":
        if self.target is None:
            self._choose()
        result: Deferred[tuple[int, str | None]] = self.target.finish()
        return result

    def finalize(self) -> "Deferred[None]":
        if self.target is None:
            return succeed(None)
        result: Deferred[None] = self.target.finalize()
        return result

    def abort(self) -> "Deferred[None]":
        if self.target is None:
            return succeed(None)
        result: Deferred[None] = self.target.abort()
        return result


class _QueueReader(io.RawIOBase):
    """A blocking file over a queue of chunks (for the inflating thread);
    hashes what it hands out."""

    def __init__(self, q: "queue.SimpleQueue[Any]", hasher: Any,
                 consumed: Callable[[int], None]) -> None:
        self._q = q
        self._buf = b""
        self._hasher = hasher
        self._consumed = consumed
        self._eof = False

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        while not self._buf and not self._eof:
            item = self._q.get()
            if item is _EOF:
                self._eof = True
                break
            if isinstance(item, BaseException):
                raise item
            if self._hasher is not None:
                self._hasher.update(item)
            self._consumed(len(item))
            self._buf = item
        n = min(len(b), len(self._buf))
        b[:n] = self._buf[:n]
        self._buf = self._buf[n:]
        return n


class _XzReader(io.RawIOBase):
    """xz (concatenated streams too) under a memory limit: the dictionary
    an xz header asks for is what the decoder allocates."""

    def __init__(self, raw: Any, memlimit: int) -> None:
        self._raw = raw
        self._memlimit = memlimit
        self._d = self._new()
        self._done = False

    def _new(self) -> Any:
        return lzma.LZMADecompressor(lzma.FORMAT_XZ, memlimit=self._memlimit)

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        while not self._done:
            if self._d.eof:
                # another stream may follow (after null padding)
                rest = self._d.unused_data.lstrip(b"\0")
                while not rest:
                    more = self._raw.read(1024 * 1024)
                    if not more:
                        self._done = True
                        return 0
                    rest = more.lstrip(b"\0")
                self._d = self._new()
                data = rest
            elif self._d.needs_input:
                data = self._raw.read(1024 * 1024)
                if not data:
                    raise EOFError("the xz stream ends before its end marker")
            else:
                data = b""
            try:
                out = self._d.decompress(data, max_length=len(b))
            except lzma.LZMAError as e:
                if "memory" in str(e).lower():
                    raise lzma.LZMAError(
                        f"{e}: the stream needs more than "
                        f"{self._memlimit // MiB} MiB to inflate") from None
                raise
            if out:
                b[:len(out)] = out
                return len(out)
        return 0


@implementer(IPushProducer)
class DecompressStage(Pausable):
    """Hash and inflate in one thread; feed the inflated bytes downstream
    (pausing when downstream is paused, stopping when it failed)."""

    def __init__(self, reactor: Any, kind: str, hash_algo: str | None,
                 downstream: FormatGate) -> None:
        super().__init__()
        self._reactor = reactor
        self._kind = kind
        self._hasher = new_hasher(hash_algo) if hash_algo else None
        self._down = downstream
        self._q: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._queued = 0
        self._lock = threading.Lock()
        self._go = threading.Event()
        self._go.set()
        self._stop = False
        self._done: Deferred[None] = Deferred()
        self._failure: BaseException | None = None
        self._inflated = 0
        downstream.registerProducer(self, True)
        self._thread = threading.Thread(target=self._run, daemon=True,
                                        name=f"inflate {kind}")
        self._thread.start()

    # downstream's back-pressure on us
    def pauseProducing(self) -> None:
        if self._down.error is not None:
            self.stopProducing()
            return
        self._go.clear()

    def resumeProducing(self) -> None:
        self._go.set()

    def stopProducing(self) -> None:
        error = self._down.error
        if error is not None and self._failure is None:
            self._failure = error
        self._stop = True
        self._go.set()

    def write(self, data: bytes) -> None:
        if self._failure is not None:
            # inflating has stopped: refuse more (the download stops)
            raise self._failure
        with self._lock:
            self._queued += len(data)
            full = self._queued > QUEUE_LIMIT
        self._q.put(bytes(data))
        if full:
            self._pause()

    @property
    def progress(self) -> int:
        """Bytes inflated from, plus what the disk side got done."""
        return self._inflated + self._down.progress

    @property
    def flushing(self) -> bool:
        return self._down.flushing

    def _consumed(self, n: int) -> None:
        self._inflated += n  # (the inflating thread's count)
        with self._lock:
            self._queued -= n
            low = self._queued < QUEUE_LIMIT // 2
        if low and self._paused:
            self._reactor.callFromThread(self._resume)

    def _open(self, raw: Any) -> Any:
        if self._kind == "gzip":
            return gzip.GzipFile(fileobj=raw)
        if self._kind == "xz":
            return io.BufferedReader(_XzReader(raw, XZ_MEMLIMIT), OUT_CHUNK)
        if self._kind == "bzip2":
            return bz2.BZ2File(raw)
        if self._kind == "zstd":
            import zstandard

            return zstandard.ZstdDecompressor(
                max_window_size=ZSTD_MAX_WINDOW).stream_reader(
                    raw, read_across_frames=True)
        raise errors.InvalidImage(f"unknown compression {self._kind}")

    def _run(self) -> None:
        reader = _QueueReader(self._q, self._hasher, self._consumed)
        try:
            stream = self._open(io.BufferedReader(reader, 1024 * 1024))
            while not self._stop:
                chunk = stream.read(OUT_CHUNK)
                if not chunk:
                    break
                self._go.wait()
                if self._stop:
                    break
                done = threading.Event()
                self._reactor.callFromThread(self._deliver, chunk, done)
                done.wait()
                if self._failure is not None:
                    break
        except BaseException as e:
            self._failure = self._failure or errors.InvalidImage(
                f"cannot inflate the {self._kind} image: {e}")
        self._reactor.callFromThread(self._ended)

    def _deliver(self, chunk: bytes, done: threading.Event) -> None:
        try:
            self._down.write(chunk)
            if self._down.error is not None:
                self._failure = self._failure or self._down.error
        except BaseException as e:
            self._failure = self._failure or e
        finally:
            done.set()

    def _ended(self) -> None:
        self._done.callback(None)

    @property
    def error(self) -> BaseException | None:
        return self._failure or self._down.error

    async def _finish(self) -> tuple[int, str | None]:
        self._q.put(_EOF)
        await self._done
        if self._failure is not None:
            await self._down.abort()
            raise self._failure
        written, _ = await self._down.finish()
        return written, self._hasher.hexdigest() if self._hasher else None

    def finish(self) -> "Deferred[tuple[int, str | None]]":
        return Deferred.fromCoroutine(self._finish())

    def finalize(self) -> "Deferred[None]":
        return self._down.finalize()

    def abort(self) -> "Deferred[None]":
        self._stop = True
        self._go.set()
        self._q.put(_EOF)
        return self._down.abort()


class Qcow2Target(Pausable):
    """qcow2 -> disk: hash the file in a thread, parse it on the reactor
    (tables only: a few Python calls per cluster), copy and inflate the
    clusters in a thread, write them in another one.

    Each network read makes one hand-off to the hashing thread and one
    batch of pieces for the writer; the threads wake the reactor only to
    resume a paused download (:class:`~ipa_twisted.image.sink.Backlog`).
    """

    def __init__(self, reactor: Any, device: Device, hash_algo: str | None,
                 on_progress: Callable[[int], None] | None = None) -> None:
        super().__init__()
        self._reactor = reactor
        self._backlog = Backlog(reactor, QUEUE_LIMIT, self._resume)
        self.writer = PositionalWriter(reactor, device, self._backlog,
                                       on_progress, on_error=self._fail)
        self._hash = HashThread(reactor, hash_algo, self._backlog)
        self._batch: list[Piece] | None = None
        # the virtual size is checked against the device before anything
        # is sized from it
        self.stream = Qcow2Stream(self._emit, max_size=device.size,
                                  emit_compressed=self._emit_compressed)

    @property
    def threads(self) -> list[threading.Thread]:
        return [self._hash.thread] + self.writer.threads

    def _emit(self, offset: int, data: bytes) -> None:
        self._piece((offset, data))

    def _emit_compressed(self, offset: int, data: bytes,
                         inflate: Callable[[bytes], bytes]) -> None:
        self._piece((offset, data, _invalid_image_on_error(inflate)))

    def _piece(self, piece: Piece) -> None:
        self._backlog.add(len(piece[1]))
        if self._batch is not None:
            self._batch.append(piece)
        else:  # (refetched: a batch of its own)
            self.writer.put([piece])

    @property
    def error(self) -> BaseException | None:
        return self.writer.error

    @property
    def progress(self) -> int:
        return self._hash.hashed + self.writer.progress

    @property
    def flushing(self) -> bool:
        return self.writer.flushing

    def _fail(self, error: BaseException) -> None:
        log.error("{error}", error=str(error))
        self._pause()
        if self._producer is not None:
            self._producer.stopProducing()

    def write(self, data: bytes) -> None:
        if self.writer.error is not None:
            raise self.writer.error
        self._backlog.add(len(data))
        self._hash.put(data)
        self._batch = []
        try:
            self._parse(self.stream.feed, data)
        finally:
            batch, self._batch = self._batch, None
            self.writer.put(batch)
        if self._backlog.add(0):  # (over the limit: wait for a resume)
            self._pause()

    @staticmethod
    def _parse(func: Callable[..., None], *args: Any) -> None:
        """Run the qcow2 reader: whatever it raises is the image's fault
        (InvalidImage), never a network error to retry."""
        try:
            func(*args)
        except Qcow2Error as e:
            raise errors.InvalidImage(str(e)) from None
        except Exception as e:
            log.failure("the qcow2 reader failed")
            raise errors.InvalidImage(
                f"cannot read the qcow2 image: {e!r}") from None

    async def _finish(self) -> tuple[int, str | None]:
        self._parse(self.stream.end)
        self._hash.close()
        digest = await self._hash.done
        await self.writer.drain()
        return self.writer.written, digest

    def finish(self) -> "Deferred[tuple[int, str | None]]":
        return Deferred.fromCoroutine(self._finish())

    def refetched(self, missed: Any, data: bytes) -> None:
        self._parse(self.stream.refetched, missed, data)

    async def _finalize(self) -> None:
        if not self.stream.complete:
            raise errors.InvalidImage(
                f"the qcow2 image was not complete: {self.stream.state()}")
        await self.writer.drain()
        # the unwritten ranges are found (a generator) in the writer's
        # thread, not on the reactor: the bitmap may be tens of MiB
        await self.writer.close(zero=self.stream.unwritten_ranges())

    def finalize(self) -> "Deferred[None]":
        return Deferred.fromCoroutine(self._finalize())

    def abort(self) -> "Deferred[None]":
        self._hash.close()
        return self.writer.close(zero=[], sync=False).addErrback(
            lambda _: None)  # (the error, if any, was reported already)


def _invalid_image_on_error(inflate: Callable[[bytes], bytes]
                            ) -> Callable[[bytes], bytes]:
    def run(data: bytes) -> bytes:
        try:
            return inflate(data)
        except Qcow2Error as e:
            raise errors.InvalidImage(str(e)) from None

    return run


__all__ = ["FormatGate", "DecompressStage", "Qcow2Target", "SinkError"]
