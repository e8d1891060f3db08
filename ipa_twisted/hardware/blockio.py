"""Low-level block device helpers (blocking: call them from a thread).

Every function that writes takes the :class:`DeviceGuard` and checks the
path first.
"""

from __future__ import annotations

import fcntl
import os
import struct
import threading
from typing import Any

from twisted.python.threadpool import ThreadPool

from ipa_twisted.hardware.disks import SYS_BLOCK, DeviceGuard, kname_of

BLKGETSIZE64 = 0x80081272
BLKSSZGET = 0x1268
BLKRRPART = 0x125F
MiB = 1024 * 1024


#: Threads for blocking disk work (opening devices, reading tables,
#: wiping): a pool of its own, so that a slow or dead disk never starves
#: the reactor's pool, which name resolution uses.
DISK_THREADS = 4


class _DaemonThread(threading.Thread):
    """A pool thread the interpreter does not wait for at exit (a write to
    a dead disk may never return)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.daemon = True


class DiskThreadPool(ThreadPool):
    threadFactory = _DaemonThread

    def stop(self) -> None:
        """Stop the threads without waiting for them (``ThreadPool.stop``
        joins them): one may be stuck in a write to a dead disk, and the
        agent must still exit.  Their work is abandoned, as daemon
        threads' is at exit."""
        self.joined = True
        self.started = False
        self._team.quit()


def start_disk_pool(reactor: Any, size: int = DISK_THREADS) -> ThreadPool:
    """A started pool of ``size`` threads for disk work, stopped when the
    reactor shuts down."""
    pool = DiskThreadPool(0, size, name="disk")
    pool.start()
    trigger = getattr(reactor, "addSystemEventTrigger", None)
    if trigger is not None:
        trigger("during", "shutdown", pool.stop)
    return pool


def size_of_fd(fd: int) -> int:
    """Size in bytes of an open block device (or regular file)."""
    try:
        buf = fcntl.ioctl(fd, BLKGETSIZE64, b"\0" * 8)
        return int(struct.unpack("Q", buf)[0])
    except OSError:
        return os.fstat(fd).st_size


def sector_size_of_fd(fd: int) -> int:
    """Logical sector size of an open block device (512 for a file)."""
    try:
        buf = fcntl.ioctl(fd, BLKSSZGET, b"\0" * 4)
        return int(struct.unpack("i", buf)[0])
    except OSError:
        return 512


def device_size(path: str) -> int:
    """Size in bytes of a block device (or a regular file)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return size_of_fd(fd)
    finally:
        os.close(fd)


def logical_sector_size(path: str) -> int:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return sector_size_of_fd(fd)
    finally:
        os.close(fd)


def reread_partitions(path: str) -> None:
    """Have the kernel read the partition table again (``BLKRRPART``,
    what ``blockdev --rereadpt`` does: one ioctl).  OSError when the
    kernel refuses (a partition in use, not a partitionable device)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        fcntl.ioctl(fd, BLKRRPART)
    finally:
        os.close(fd)


BLKPG = 0x1269
BLKPG_ADD_PARTITION = 1


def add_partitions(path: str, parts: list[tuple[int, int, int]]) -> None:
    """Tell the kernel about partitions ``(number, offset, length)`` in
    bytes (``BLKPG_ADD_PARTITION``: what partprobe does for a table the
    kernel cannot read itself).  OSError as the kernel gives it."""
    import ctypes

    class Partition(ctypes.Structure):
        _fields_ = [("start", ctypes.c_longlong),
                    ("length", ctypes.c_longlong),
                    ("pno", ctypes.c_int),
                    ("devname", ctypes.c_char * 64),
                    ("volname", ctypes.c_char * 64)]

    class Arg(ctypes.Structure):
        _fields_ = [("op", ctypes.c_int), ("flags", ctypes.c_int),
                    ("datalen", ctypes.c_int), ("data", ctypes.c_void_p)]

    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        for number, offset, length in parts:
            part = Partition(offset, length, number, b"", b"")
            arg = Arg(BLKPG_ADD_PARTITION, 0, ctypes.sizeof(part),
                      ctypes.addressof(part))
            fcntl.ioctl(fd, BLKPG, arg)
    finally:
        os.close(fd)


def read_at(path: str, offset: int, length: int) -> bytes:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return os.pread(fd, length, offset)
    finally:
        os.close(fd)


def disk_identifier(path: str) -> str:
    """The MBR disk signature (bytes 440-443, little endian) as 0x%08x."""
    data = read_at(path, 440, 4)
    if len(data) < 4:
        return "0x00000000"
    return "0x%08x" % struct.unpack("<I", data)[0]


def has_gpt(path: str) -> bool:
    for sector in (512, 4096):
        if read_at(path, sector, 8) == b"EFI PART":
            return True
    return False


def partitions_of(path: str, sys_block: str = SYS_BLOCK) -> list[str]:
    """``/dev/<name>`` of each partition the kernel knows on this disk."""
    kname = kname_of(path)
    base = os.path.join(sys_block, kname)
    try:
        entries = sorted(os.listdir(base))
    except OSError:
        return []
    return [
        f"/dev/{e}" for e in entries
        if e.startswith(kname)
        and os.path.exists(os.path.join(base, e, "partition"))
    ]


def zero_range(guard: DeviceGuard, path: str, offset: int, length: int
               ) -> None:
    guard.check(path)
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        zeros = bytes(min(length, MiB))
        done = 0
        while done < length:
            n = os.pwrite(fd, zeros[: length - done], offset + done)
            done += n
        os.fsync(fd)
    finally:
        os.close(fd)


class WipeError(OSError):
    """One end of a disk or both could not be zeroed; ``failed`` maps
    "start"/"end" to the error."""

    def __init__(self, path: str, failed: dict[str, OSError]) -> None:
        first = next(iter(failed.values()))
        super().__init__(first.errno, "could not zero the "
                         + " and the ".join(failed) + f" of {path}: "
                         + "; ".join(str(e) for e in failed.values()))
        self.failed = failed


def wipe_head_and_tail(guard: DeviceGuard, path: str,
                       amount: int = MiB) -> None:
    """Zero the first and last ``amount`` bytes: MBR, both GPT headers and
    tables, most filesystem superblocks.  Both ends are tried even when
    one fails (a dying disk may still take the start, which is what keeps
    it from booting); then WipeError says which failed."""
    size = device_size(path)
    head = min(amount, size)
    regions = [("start", 0, head)]
    if size > head:
        tail = min(amount, size - head)
        regions.append(("end", size - tail, tail))
    failed: dict[str, OSError] = {}
    for name, offset, length in regions:
        try:
            zero_range(guard, path, offset, length)
        except OSError as e:
            failed[name] = e
    if failed:
        raise WipeError(path, failed)
