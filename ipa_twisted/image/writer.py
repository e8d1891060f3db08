"""Download an image onto a device: resumable, verified, never half-done.

The device is opened first, in a thread of the disk pool: a device that
cannot be opened fails the command before anything is downloaded, with
its own error (never retried: the network is not at fault).

One pipeline (:mod:`ipa_twisted.image.pipeline`) lives across every HTTP
attempt: after a dropped connection or a stall, the next attempt asks for
the rest (``Range``), so nothing is downloaded or written twice and the
checksum still covers every byte.  Attempts are bounded
(``image_download_connection_retries``) with a growing pause; a 4xx answer
is fatal at once; so is a local error (the device, the image).
``image_download_max_duration`` is a deadline for the whole download: at
the deadline the download in flight is cancelled.  A cancelled download
(the command is cancelled, the agent stops) closes its connection and
propagates ``CancelledError``: it is never retried.

After the download the sinks flush, sync and close the device (and, for a
whole-disk image, move the backup GPT to the end of the disk:
:mod:`ipa_twisted.image.gpt`); the disk must keep completing work meanwhile
(``image_download_connection_timeout`` without progress is a stalled disk,
ten times that for the final sync).  Nothing waits for a thread stuck in a
write to a dead disk for more than :data:`ABORT_GRACE` seconds.

When anything fails (download, format, checksum, write) the start and end
of the disk are zeroed by the caller, so that a half-written image can
never boot.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import attrs
from twisted.internet import defer
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure

from ipa_twisted import errors
from ipa_twisted.image import formats
from ipa_twisted.image.pipeline import FormatGate, Qcow2Target
from ipa_twisted.image.progress import Progress
from ipa_twisted.image.sink import Device, DiskStalled, SinkError
from ipa_twisted.image.stream import fetch_range, stream_body
from ipa_twisted.looping import every

log = Logger()

MAX_RETRY_PAUSE = 60.0
#: How long a failed or cancelled download waits for its disk threads to
#: stop (a thread in a write to a dead disk may never come back).
ABORT_GRACE = 5.0
#: The final sync may take this many stall timeouts (buffered writes).
FLUSH_FACTOR = 10


def retry_pause(attempt: int, interval: float) -> float:
    """Pause before retry ``attempt`` (1-based): the interval, doubling,
    at most a minute (or the interval, if that is longer)."""
    return min(interval * 2 ** (attempt - 1), max(interval, MAX_RETRY_PAUSE))


@attrs.frozen
class WriteResult:
    url: str
    received: int          # bytes of the image file
    written: int           # bytes written to the device
    digest: str | None
    detected: str | None   # the image's real format
    attempts: int
    #: what became of the backup GPT (whole-disk images: see
    #: ipa_twisted.image.gpt; "refused: ..." when sgdisk must do it)
    gpt: str | None = None


def move_gpt_backup(device: Device) -> str:
    """The ``after_write`` of a whole-disk image (the writer's thread)."""
    from ipa_twisted.image import gpt

    assert device.plain is not None
    try:
        return gpt.relocate_backup(device.plain, device.size,
                                   device.sector_size)
    except gpt.GPTError as e:
        return f"refused: {e}"


async def download_to_device(
    context: Any,
    image_info: Mapping[str, Any],
    device: str,
    algo: str | None,
    headers: Mapping[str, str] | None = None,
    on_progress: Callable[[Progress], None] | None = None,
    whole_disk: bool = False,
) -> WriteResult:
    """Stream the image onto ``device`` (the caller checks the digest;
    ``whole_disk``: move its backup GPT to the end of the disk)."""
    config = context.config
    reactor = clock = context.reactor
    image_id = str(image_info["id"])
    url = str(image_info["urls"][0])
    permitted = tuple(context.lookup_config.get("permitted_image_formats")
                      or formats.DEFAULT_PERMITTED)
    context.guard.check(device)
    http, headers = _client(context, url, image_info, headers)
    try:
        disk = await _open(context, device)
    except OSError as e:
        raise errors.ImageWriteError(
            device, e.errno, "", f"cannot open {device}: "
            f"{e.strerror or e}") from None
    if whole_disk:
        disk.after_write = move_gpt_backup
    stall_timeout = config.image_download_connection_timeout
    progress = Progress(clock, image_id, device, total=None)
    gate = FormatGate(reactor, disk, algo, image_info.get("disk_format"),
                      permitted)
    max_duration = config.image_download_max_duration
    attempts = 1 + config.image_download_connection_retries
    attempt = 0

    def on_response(response: Any, total: int | None) -> None:
        if total is not None:
            progress.total = total
            if gate.detected in (None, "raw", "gpt", "iso") and \
                    total > disk.size and gate.target is None:
                raise errors.ImageWriteError(
                    device, None, "", f"the image ({total} bytes) is larger "
                    f"than the device ({disk.size} bytes)")

    def tick() -> None:
        progress.update(gate.received)
        if on_progress is not None:
            on_progress(progress)

    async def download() -> None:
        nonlocal attempt
        while True:
            attempt += 1
            log.info("downloading image {id} from {url} to {dev} (attempt "
                     "{n}/{total}{at})", id=image_id, url=url, dev=device,
                     n=attempt, total=attempts,
                     at=f", from byte {gate.received}" if gate.received
                     else "")
            try:
                streamed = await stream_body(
                    http, clock, url, gate, image_id, stall_timeout,
                    headers=headers, offset=gate.received,
                    on_response=on_response)
                if streamed.direct_reads:
                    log.debug("{n} reads of {url} went straight to the "
                              "buffers", n=streamed.direct_reads, url=url)
                return
            except errors.ImageDownloadFatalError:
                raise
            except errors.ImageDownloadError as e:
                if gate.error is not None:
                    raise gate.error from None
                if attempt >= attempts:
                    raise
                pause = retry_pause(
                    attempt, config.image_download_connection_retry_interval)
                log.warn("{error}; trying again in {t:.0f} s",
                         error=e.details, t=pause)
                await deferLater(clock, pause)

    def deadline_passed(result: Any, timeout: float) -> None:
        raise errors.ImageDownloadTimeoutError(
            image_id, f"the download took longer than "
            f"image_download_max_duration ({max_duration:g} s)")

    ticker = every(clock, 2.0, tick, what=f"progress of image {image_id}")
    try:
        downloading = defer.Deferred.fromCoroutine(download())
        if max_duration:
            downloading.addTimeout(max_duration, clock,
                                   onTimeoutCancel=deadline_passed)
        await downloading
        written, digest = await _watched(gate.finish(), gate, clock,
                                         stall_timeout, device)
        target = gate.target
        while isinstance(target, Qcow2Target) and target.stream.missed:
            await _refetch(context, http, url, target, image_id, headers)
        await _watched(gate.finalize(), gate, clock, stall_timeout, device)
    except BaseException as e:
        await _abort(gate, clock, device)
        if isinstance(e, SinkError):
            raise errors.ImageWriteError(device, e.errno, "", str(e)) from None
        raise
    finally:
        ticker.stop()
        progress.stop()
        if not disk.claimed:  # no sink took it: close it here
            context.in_thread(disk.close).addErrback(lambda _: None)
    progress.finished(gate.received)
    return WriteResult(url, gate.received, written, digest, gate.detected,
                       attempt, disk.after_write_result)


async def _open(context: Any, path: str) -> Device:
    """``Device.open`` in a disk thread.  Cancelled meanwhile, the device
    is closed as soon as the thread has opened it."""
    waiter: defer.Deferred[Device] = defer.Deferred()

    def arrived(result: Any) -> None:
        if waiter.called:  # (cancelled: nobody will use it)
            if isinstance(result, Device):
                context.in_thread(result.close).addErrback(lambda _: None)
            return None
        if isinstance(result, Failure):
            waiter.errback(result)
        else:
            waiter.callback(result)
        return None

    context.in_thread(Device.open, path).addBoth(arrived)
    return await waiter


async def _watched(d: "defer.Deferred[Any]", gate: Any, clock: Any,
                   timeout: float, path: str) -> Any:
    """``await d`` (the sinks finishing), as long as the disk side keeps
    moving: :class:`DiskStalled` when ``gate.progress`` stays still for
    ``timeout`` seconds (``FLUSH_FACTOR`` times that once it syncs)."""
    last = [gate.progress, clock.seconds()]
    stalled: list[float] = []

    def check() -> None:
        now = clock.seconds()
        moved = gate.progress
        if moved != last[0]:
            last[0], last[1] = moved, now
            return
        limit = timeout * (FLUSH_FACTOR if gate.flushing else 1)
        if now - last[1] >= limit and not d.called:
            stalled.append(limit)
            d.cancel()

    loop = every(clock, min(1.0, timeout / 4), check,
                 what=f"the disk watchdog of {path}")
    try:
        return await d
    except defer.CancelledError:
        if stalled:
            what = "its sync" if gate.flushing else "a write"
            log.error("writing {path}: nothing completed for {t} s",
                      path=path, t=stalled[0])
            raise DiskStalled(path, stalled[0], what) from None
        raise
    finally:
        loop.stop()


async def _abort(gate: FormatGate, clock: Any, path: str) -> None:
    """Stop the pipeline's threads; wait for them at most ABORT_GRACE s."""
    try:
        d = gate.abort()
        d.addTimeout(ABORT_GRACE, clock)
        await d
    except defer.TimeoutError:
        log.error("the threads writing {path} did not stop within {t} s "
                  "(a write to the disk does not return); leaving them",
                  path=path, t=ABORT_GRACE)
    except Exception:
        log.failure("stopping the writes to {path}", Failure(), path=path)


def _client(context: Any, url: str, image_info: Mapping[str, Any],
            headers: Mapping[str, str] | None
            ) -> tuple[Any, dict[str, str]]:
    """The HTTP client for this image (through a proxy when image_info
    says so) and the headers to send."""
    from urllib.parse import urlparse

    from ipa_twisted.image.proxy import client_through, proxy_for
    from ipa_twisted.tls import client_policy

    out = dict(headers or {})
    proxies = image_info.get("proxies")
    if proxies is not None and not isinstance(proxies, dict):
        raise errors.InvalidCommandParamsError("proxies must be an object")
    proxy = proxy_for(url, proxies, image_info.get("no_proxy"))
    if proxy is None:
        return context.http, out
    config = context.config
    policy = context.tls_policy or client_policy(
        config.insecure, config.cafile, config.certfile, config.keyfile,
        config.tls_min_version)
    client, extra = client_through(context.reactor, proxy,
                                   urlparse(url).scheme, policy)
    log.info("downloading {url} through the proxy {proxy}", url=url,
             proxy=proxy.split("@")[-1])
    out.update(extra)
    return client, out


async def _refetch(context: Any, http: Any, url: str,
                   target: Qcow2Target, image_id: str,
                   headers: Mapping[str, str]) -> None:
    """Fetch again, by byte range, what went by before it was known to be
    needed (qcow2 tables behind their data)."""
    missed = target.stream.take_missed()
    log.info("qcow2: fetching {n} pieces again (they came before the "
             "tables that map them)", n=len(missed))
    timeout = context.config.image_download_connection_timeout
    for item in missed:
        data = await fetch_range(http, context.reactor, url,
                                 item.host, item.length, timeout, image_id,
                                 headers)
        if data is None:
            raise errors.InvalidImage(
                f"this qcow2 image's tables come after its data and {url} "
                f"does not serve byte ranges: it cannot be streamed "
                f"(rewrite it with qemu-img convert)")
        target.refetched(item, data)
