"""Download an image onto a device: resumable, verified, never half-done.

One pipeline (:mod:`ipa_twisted.image.pipeline`) lives across every HTTP
attempt: after a dropped connection or a stall, the next attempt asks for
the rest (``Range``), so nothing is downloaded or written twice and the
checksum still covers every byte.  Attempts are bounded
(``image_download_connection_retries``) with a growing pause; a 4xx answer
is fatal at once; ``image_download_max_duration`` caps the whole download.

When anything fails (download, format, checksum, write) the start and end
of the disk are zeroed, so that a half-written image can never boot.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import attrs
from twisted.internet.task import deferLater
from twisted.logger import Logger

from ipa_twisted import errors
from ipa_twisted.hardware import blockio
from ipa_twisted.image import formats
from ipa_twisted.image.pipeline import FormatGate, Qcow2Target
from ipa_twisted.image.progress import Progress
from ipa_twisted.image.sink import SinkError
from ipa_twisted.image.stream import fetch_range, stream_body
from ipa_twisted.looping import every

log = Logger()

MAX_RETRY_PAUSE = 60.0


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


async def download_to_device(
    context: Any,
    image_info: Mapping[str, Any],
    device: str,
    algo: str | None,
    headers: Mapping[str, str] | None = None,
    on_progress: Callable[[Progress], None] | None = None,
) -> WriteResult:
    """Stream the image onto ``device`` (the caller checks the digest)."""
    config = context.config
    clock = context.reactor
    image_id = str(image_info["id"])
    url = str(image_info["urls"][0])
    permitted = tuple(context.lookup_config.get("permitted_image_formats")
                      or formats.DEFAULT_PERMITTED)
    context.guard.check(device)
    http, headers = _client(context, url, image_info, headers)
    device_size = await context.in_thread(blockio.device_size, device)
    progress = Progress(clock, image_id, device, total=None)
    gate = FormatGate(clock, device, algo, image_info.get("disk_format"),
                      permitted, device_size)
    deadline = (clock.seconds() + config.image_download_max_duration
                if config.image_download_max_duration else None)
    attempts = 1 + config.image_download_connection_retries
    attempt = 0

    def on_response(response: Any, total: int | None) -> None:
        if total is not None:
            progress.total = total
            if gate.detected in (None, "raw", "gpt", "iso") and \
                    total > device_size and gate.target is None:
                raise errors.ImageWriteError(
                    device, None, "", f"the image ({total} bytes) is larger "
                    f"than the device ({device_size} bytes)")

    def tick() -> None:
        progress.update(gate.received)
        if on_progress is not None:
            on_progress(progress)

    ticker = every(clock, 2.0, tick, what=f"progress of image {image_id}")
    try:
        while True:
            attempt += 1
            if deadline is not None and clock.seconds() > deadline:
                raise errors.ImageDownloadTimeoutError(
                    image_id, f"the download took longer than "
                    f"image_download_max_duration "
                    f"({config.image_download_max_duration} s)")
            log.info("downloading image {id} from {url} to {dev} (attempt "
                     "{n}/{total}{at})", id=image_id, url=url, dev=device,
                     n=attempt, total=attempts,
                     at=f", from byte {gate.received}" if gate.received
                     else "")
            try:
                await stream_body(
                    http, clock, url, gate, image_id,
                    config.image_download_connection_timeout,
                    headers=headers, offset=gate.received,
                    on_response=on_response)
                break
            except errors.ImageDownloadFatalError:
                raise
            except errors.ImageDownloadError as e:
                if gate.error is not None:
                    raise gate.error from None
                if attempt >= attempts:
                    raise
                pause = retry_pause(attempt,
                                    config.image_download_connection_retry_interval)
                log.warn("{error}; trying again in {t:.0f} s", error=e.details,
                         t=pause)
                await deferLater(clock, pause)
        written, digest = await gate.finish()
        target = gate.target
        while isinstance(target, Qcow2Target) and target.stream.missed:
            await _refetch(context, http, url, target, image_id, headers)
        await gate.finalize()
    except BaseException as e:
        try:
            await gate.abort()
        except Exception:
            pass
        if isinstance(e, SinkError):
            raise errors.ImageWriteError(device, e.errno, "", str(e)) from None
        raise
    finally:
        if ticker.running:
            ticker.stop()
        progress.stop()
    progress.finished(gate.received)
    return WriteResult(url, gate.received, written, digest, gate.detected,
                       attempt)


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
