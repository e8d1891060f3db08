"""Config drives: decode them, and put them on the disk.

The conductor sends a config drive as a base64 string of a gzipped
ISO9660 image, or as an http(s) URL of one (a URL may also serve the raw
image).  On a whole-disk image it goes to a partition labelled
``config-2``: an existing one is reused; else a new 64 MiB partition is
made at the end of the disk (GPT: ``sgdisk``; MBR: ``parted``, refused when
the four primary partitions are taken).

On a disk with 4 KiB logical sectors Linux cannot read ISO9660, so the
drive is rebuilt as a FAT filesystem labelled ``CONFIG-2`` with the same
files (extracted with ``bsdtar``, copied with ``mcopy``; nothing is
mounted).  mcopy follows links: the extracted files may hold only regular
files, directories and links to files inside the drive (those become
copies); a link out of the drive (``/proc/cmdline``, the agent's key), a
device node or a FIFO refuses the drive.
"""

from __future__ import annotations

import base64
import binascii
import os
import tempfile
import uuid
import zlib
from typing import Any

from twisted.logger import Logger

from ipa_twisted import errors
from ipa_twisted.confined import OutsideTree, check_extracted
from ipa_twisted.hardware import blockio
from ipa_twisted.httpfetch import BodyTooLarge, describe, get_bytes
from ipa_twisted.process import ProcessError

log = Logger()

MAX_MB = 64
MiB = 1024 * 1024
#: The largest config drive (Ironic's limit): decoding stops one byte past.
MAX_BYTES = MAX_MB * MiB
#: The most read from a config-drive URL: base64 of a gzip of the largest
#: drive (64 MiB gzips to a little more when incompressible; base64 adds a
#: third, line breaks a little more).
URL_LIMIT = 90 * MiB
#: Time allowed for the whole config-drive download.
URL_TIMEOUT = 300.0


def _too_large() -> errors.DeploymentError:
    return errors.DeploymentError(
        f"Config drive size exceeds maximum limit of {MAX_MB}MiB")


def gunzip(packed: bytes, limit: int = MAX_BYTES) -> bytes:
    """Inflate gzip members one after another, stopping (DeploymentError)
    as soon as there is more than ``limit`` bytes: a bomb costs no more
    than the limit."""
    out = bytearray()
    data = packed
    d = zlib.decompressobj(16 + zlib.MAX_WBITS)
    while True:
        # a MiB at a time: the output is the only large buffer
        out += d.decompress(data, min(MiB, limit + 1 - len(out)))
        if len(out) > limit:
            raise _too_large()
        if d.eof:
            data = d.unused_data
            if not data:
                break
            if data[:2] != b"\x1f\x8b":
                raise zlib.error("trailing garbage after the gzip data")
            d = zlib.decompressobj(16 + zlib.MAX_WBITS)
            continue
        data = d.unconsumed_tail
        if not data:
            raise EOFError("the gzip data ends before its end marker")
    return bytes(out)


def decode(data: bytes | str) -> bytes:
    """base64 of a gzipped image -> the image; raw bytes (from a URL) that
    are not base64 are taken as the image itself.  Never more than
    :data:`MAX_BYTES` (DeploymentError past that, before inflating more)."""
    raw = data.encode("ascii", "replace") if isinstance(data, str) else data
    try:
        packed = base64.b64decode(raw, validate=False)
    except (binascii.Error, ValueError):
        if isinstance(data, str):
            raise errors.DeploymentError(
                "the config drive is not base64 encoded or is malformed"
            ) from None
        return _bounded(raw)
    try:
        return gunzip(packed)
    except (OSError, EOFError, zlib.error) as e:
        if not isinstance(data, str) and packed[:2] != b"\x1f\x8b":
            return _bounded(raw)
        raise errors.DeploymentError(
            f"Encountered error while decompressing and writing config "
            f"drive: {e}") from None


def _bounded(image: bytes) -> bytes:
    if len(image) > MAX_BYTES:
        raise _too_large()
    return image


async def fetch(context: Any, value: str) -> bytes:
    """The decoded config drive image (decoded in a thread)."""
    if value.lower().startswith(("http://", "https://")):
        try:
            response, body = await get_bytes(
                context.http, context.reactor, value, limit=URL_LIMIT,
                timeout=URL_TIMEOUT)
        except BodyTooLarge:
            raise _too_large() from None
        except Exception as e:
            raise errors.DeploymentError(
                f"cannot download the config drive from {value}: "
                f"{describe(e)}") from None
        if response.code >= 400:
            raise errors.DeploymentError(
                f"cannot download the config drive from {value}: HTTP "
                f"{response.code}")
        result: bytes = await context.in_thread(decode, body)
        return result
    if not isinstance(value, str):
        raise errors.DeploymentError("the config drive must be a string")
    decoded: bytes = await context.in_thread(decode, value)
    return decoded


def size_mb(image: bytes) -> int:
    return max(1, -(-len(image) // MiB))


async def _run(context: Any, argv: list[str], timeout: float = 120.0,
               check: bool = True) -> Any:
    return await context.process.run(argv, timeout=timeout, check=check)


async def labelled_partition(context: Any, device: str, label: str
                             ) -> str | None:
    await _run(context, ["partprobe", device], check=False)
    result = await _run(context, ["lsblk", "-Po", "name,label", device],
                        check=False)
    found = []
    for line in result.out.splitlines():
        fields = dict(part.split("=", 1) for part in line.split()
                      if "=" in part)
        name = fields.get("NAME", "").strip('"')
        if fields.get("LABEL", "").strip('"').lower() == label.lower():
            found.append(f"/dev/{name}")
    if len(found) > 1:
        raise errors.DeploymentError(
            f"more than one partition labelled {label} on {device}: "
            f"{', '.join(found)}")
    return found[0] if found else None


async def write_to_partition(context: Any, part: str, image: bytes) -> None:
    """Write the drive to ``part``: as is, or rebuilt as FAT where the
    sector size does not allow ISO9660."""
    context.guard.check(part)
    sector = await context.in_thread(blockio.logical_sector_size, part)
    if sector > 2048 and image[0x8001:0x8006] == b"CD001":
        await _rebuild_as_fat(context, part, image)
        return

    def write() -> None:
        fd = os.open(part, os.O_WRONLY | os.O_CLOEXEC)
        try:
            os.pwrite(fd, image, 0)
            os.fsync(fd)
        finally:
            os.close(fd)

    await context.in_thread(write)
    head = await context.in_thread(blockio.read_at, part, 0x8001, 5)
    if image[0x8001:0x8006] == b"CD001" and head != b"CD001":
        raise errors.DeploymentError(
            f"the config drive on {part} does not read back")
    log.info("config drive written to {part} ({n} bytes)", part=part,
             n=len(image))


async def _rebuild_as_fat(context: Any, part: str, image: bytes) -> None:
    log.info("{part} has 4 KiB sectors: rebuilding the config drive as "
             "FAT (CONFIG-2)", part=part)
    with tempfile.TemporaryDirectory(prefix="configdrive-") as tmp:
        iso = os.path.join(tmp, "drive.iso")
        with open(iso, "wb") as f:
            f.write(image)
        files = os.path.join(tmp, "files")
        os.makedirs(files)
        try:
            await _run(context, ["bsdtar", "-xf", iso, "-C", files])
            # mcopy follows links: none may lead out of the drive
            await context.in_thread(check_extracted, files)
            await _run(context, ["mkfs.vfat", "-n", "CONFIG-2", part])
            entries = sorted(os.listdir(files))
            if entries:
                await _run(context, ["mcopy", "-s", "-i", part]
                           + [os.path.join(files, e) for e in entries]
                           + ["::"])
        except ProcessError as e:
            raise errors.DeploymentError(
                f"cannot rebuild the config drive as FAT on {part}: {e}"
            ) from None
        except OutsideTree as e:
            raise errors.DeploymentError(
                f"refusing the config drive: {e}") from None


async def partition_numbers(context: Any, device: str) -> set[int]:
    result = await _run(context, ["parted", "-s", "-m", device, "unit",
                                  "MiB", "print"], check=False)
    numbers = set()
    for line in result.out.splitlines():
        first = line.split(":", 1)[0]
        if first.isdigit():
            numbers.add(int(first))
    return numbers


async def add_to_whole_disk(context: Any, device: str, image: bytes) -> str:
    """Put the config drive on a whole-disk image's disk; its partition."""
    if size_mb(image) > MAX_MB:
        raise errors.DeploymentError(
            f"Config drive size exceeds maximum limit of {MAX_MB}MiB")
    context.guard.check(device)
    existing = await labelled_partition(context, device, "config-2")
    if existing is not None:
        log.info("reusing the config-2 partition {part}", part=existing)
        await write_to_partition(context, existing, image)
        return existing
    if await context.in_thread(blockio.has_gpt, device):
        from ipa_twisted.image import gpt

        # (the backup is at the end already after a write: no sgdisk -e)
        moved = await context.in_thread(gpt.move_backup, device)
        if moved.startswith("refused"):
            await _run(context, ["sgdisk", "-e", device], check=False)
        part_uuid = str(uuid.uuid4())
        before = await partition_numbers(context, device)
        await _run(context, ["sgdisk", "-n", f"0:-{MAX_MB}M:0", "-u",
                             f"0:{part_uuid}", "-c", "0:config-2", device])
    else:
        before = await partition_numbers(context, device)
        primary = [n for n in before if n < 5]
        if len(primary) > 3:
            raise errors.DeploymentError(
                f"Config drive cannot be created on {device}: it uses MBR "
                f"partitioning and already has {len(primary)} primary "
                f"partitions")
        await _run(context, ["parted", "-a", "optimal", "-s", "--", device,
                             "mkpart", "primary", "fat32", f"-{MAX_MB}MiB",
                             "-0"])
    await _run(context, ["partprobe", device], check=False)
    after = await partition_numbers(context, device)
    new = sorted(after - before)
    if len(new) != 1:
        raise errors.DeploymentError(
            f"Unable to retrieve config drive partition information on "
            f"{device} (new partitions: {new})")
    from ipa_twisted.image.partitions import partition_path

    part = partition_path(device, new[0])
    await wait_for_partitions(context, device, [part])
    await write_to_partition(context, part, image)
    return part


async def wait_for_partitions(context: Any, device: str, parts: list[str],
                              attempts: int = 15) -> None:
    """Until every partition node exists (re-reading the table): each
    wait ends when udev reports a block device (where udev runs), or after
    half a second."""
    events = context.device_events()
    watch = events.watch("block")
    try:
        for _ in range(attempts):
            missing = [p for p in parts if not os.path.exists(p)]
            if not missing:
                return
            await _run(context, ["partprobe", device], check=False)
            if not [p for p in parts if not os.path.exists(p)]:
                return
            await watch.next(0.5)
    finally:
        watch.close()
    missing = [p for p in parts if not os.path.exists(p)]
    if not missing:
        return
    raise errors.DeploymentError(
        f"partitions did not appear on {device}: {', '.join(missing)}")
