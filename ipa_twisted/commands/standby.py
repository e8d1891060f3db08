"""The standby extension: write the image, sync, power off, reboot.

``prepare_image`` streams a raw whole-disk image from HTTP(S) straight to
the root device, hashing it on the way; nothing is staged in memory or on
a temporary file.  A checksum mismatch or a failed write fails the command
and wipes the start and end of the disk, so that a half-written image can
never boot.

The image pipeline, config drives and partition images are imported when
a command needs them: an idle agent does not hold them (a test checks).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping

from twisted.internet.defer import CancelledError
from twisted.internet import defer
from twisted.logger import Logger

from ipa_twisted import errors
from ipa_twisted.commands.base import Extension, async_command, sync_command
from ipa_twisted.hardware import blockio
from ipa_twisted.hardware.generic import validate_node_root_hints
from ipa_twisted.httpfetch import MiB, describe, get_bytes
from ipa_twisted.process import ProcessError

if TYPE_CHECKING:
    from ipa_twisted.context import RunningAgent
    from ipa_twisted.image import checksum as checksums


log = Logger()

#: The most of a checksums file read (one line per file of a directory).
CHECKSUM_FILE_LIMIT = 16 * MiB
#: How long wiping a disk after a failed write may take (2 MiB).
WIPE_TIMEOUT = 60.0


def auth_headers(image_info: Mapping[str, Any], config: Any) -> dict[str, str]:
    """HTTP authorization for the image server: a ready header value
    (``image_request_authorization``, base64 of it), or basic auth
    (``image_server_auth_strategy=http_basic`` with user and password from
    image_info, else from the configuration)."""
    import base64

    encoded = image_info.get("image_request_authorization")
    if encoded:
        try:
            value = base64.b64decode(encoded).decode("utf-8")
        except ValueError:
            raise errors.InvalidCommandParamsError(
                "image_request_authorization is not base64") from None
        return {"Authorization": value}
    strategy = image_info.get("image_server_auth_strategy") or \
        config.image_server_auth_strategy
    if strategy != "http_basic":
        return {}
    user = image_info.get("image_server_user") or config.image_server_user
    password = image_info.get("image_server_password") or \
        config.image_server_password
    if not user or not password:
        raise errors.InvalidCommandParamsError(
            "http_basic image server authentication needs a user and a "
            "password")
    token = base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
    return {"Authorization": f"Basic {token}"}


def validate_image_info(image_info: Any, md5_enabled: bool) -> None:
    """The synchronous checks of prepare_image (HTTP 400 when they fail)."""
    if not isinstance(image_info, dict):
        raise errors.InvalidCommandParamsError(
            "image_info must be an object"
        )
    missing = [k for k in ("id", "urls") if k not in image_info]
    if missing:
        raise errors.InvalidCommandParamsError(
            f"image_info is missing: {', '.join(missing)}"
        )
    urls = image_info["urls"]
    if (not isinstance(urls, list) or not urls
            or not all(isinstance(u, str) and u for u in urls)):
        raise errors.InvalidCommandParamsError(
            "image_info urls must be a non-empty list of URLs"
        )
    # the image pipeline's parsers: imported when an image comes
    from ipa_twisted.image import checksum as checksums

    for url in urls:
        if not checksums.is_url(url):
            raise errors.InvalidCommandParamsError(
                f"image URL {url!r} is not http:// or https://"
            )
    checksums.checksum_spec(image_info, md5_enabled)
    if image_info.get("image_type") == "partition":
        from ipa_twisted.image import partition_image

        partition_image.check_fields(image_info)


class StandbyExtension(Extension):
    name = "standby"

    def __init__(self, agent: RunningAgent) -> None:
        super().__init__(agent)
        self.cached_image_id: str | None = None
        #: None until an image was written; then the uuids Ironic asks for.
        self.partition_uuids: dict[str, Any] | None = None

    # ------------------------------------------------------------ commands

    def _validate(self, image_info: Any, configdrive: Any = None) -> None:
        validate_image_info(image_info, self.agent.md5_enabled)
        validate_node_root_hints(self.agent.node)

    @async_command("prepare_image", _validate)
    async def prepare_image(self, image_info: dict[str, Any],
                            configdrive: Any = None) -> str:
        return await self._prepare_image(image_info, configdrive)

    async def write_image(self, image_info: Any, configdrive: Any = None
                          ) -> dict[str, str]:
        """What the ``write_image`` deploy step runs.

        The conductor only sees ``execute_deploy_step``: this is not a
        command of its own (no busy check, not listed), and its result is
        shaped like ``prepare_image``'s.
        """
        validate_image_info(image_info, self.agent.md5_enabled)
        message = await self._prepare_image(image_info, configdrive)
        return {"result": f"prepare_image: {message}"}

    @sync_command("get_partition_uuids")
    def get_partition_uuids(self) -> dict[str, Any]:
        if self.partition_uuids is None:
            log.warn("no partition uuids yet: prepare_image has not run")
        return dict(self.partition_uuids or {})

    @sync_command("sync")
    async def sync(self) -> None:
        await self.agent.hardware.dispatch("full_sync")

    @async_command("power_off")
    async def power_off(self) -> None:
        await self._shutdown(self.agent.config.power_off_command, "o")

    @async_command("run_image")
    async def run_image(self) -> None:
        await self._shutdown(self.agent.config.reboot_command, "b")

    # ----------------------------------------------------------- internals

    async def _shutdown(self, command: str, sysrq: str) -> None:
        try:
            await self.agent.hardware.dispatch("full_sync")
        except CancelledError:
            raise
        except Exception as e:
            log.warn("sync before power action failed: {e}", e=e)
        import shlex

        argv = shlex.split(command)
        log.info("running {argv}", argv=command)
        try:
            result = await self.agent.process.run(argv, timeout=120.0,
                                                  check=False)
        except ProcessError as e:
            code, out, err = None, "", str(e)
        else:
            code, out, err = result.exit_code, result.out, result.err
            if code == 0 and "ignoring request" not in err:
                return
        if not self.agent.config.sysrq_fallback:
            raise errors.SystemRebootError(code, out, err)
        log.warn("{argv} failed ({err}); using /proc/sysrq-trigger",
                 argv=command, err=err.strip())
        try:
            with open("/proc/sysrq-trigger", "w") as f:
                f.write(sysrq)
        except OSError as e:
            raise errors.SystemRebootError(code, out, f"{err}; sysrq: {e}")

    async def _prepare_image(self, image_info: dict[str, Any],
                             configdrive: Any) -> str:
        image_id = str(image_info["id"])
        if configdrive is None:
            configdrive = image_info.get("configdrive")
        device = await self.agent.hardware.dispatch(
            "get_os_install_device", permit_refresh=True)
        self.agent.guard.check(device)
        from ipa_twisted.image import checksum as checksums

        spec = checksums.checksum_spec(image_info, self.agent.md5_enabled)
        expected_algo, expected = await self._resolve_checksum(
            spec, image_info)
        if image_info.get("image_type") == "partition":
            message = await self._partition_image(
                image_info, device, configdrive, expected_algo, expected)
            log.info(message)
            return message
        # the config drive first: a bad one fails before the disk is
        # touched (it is at most 64 MiB once decoded)
        from ipa_twisted.image import configdrive as configdrive_mod

        drive = (await configdrive_mod.fetch(self.agent, configdrive)
                 if configdrive else None)
        gpt = None
        if self.cached_image_id != image_id:
            gpt = await self._write(image_info, device, expected_algo,
                                    expected)
            self.cached_image_id = image_id
        else:
            log.info("image {id} is already on {dev}", id=image_id,
                     dev=device)
        partitions = await self._after_write(device, gpt)
        if drive is not None:
            part = await configdrive_mod.add_to_whole_disk(self.agent, device,
                                                           drive)
            log.info("config drive on {part}", part=part)
        root_uuid = await self.agent.in_thread(blockio.disk_identifier,
                                               device)
        self.partition_uuids = {"root uuid": root_uuid}
        log.info("{dev} holds {n} partition(s); disk identifier {uuid}",
                 dev=device, n=len(partitions), uuid=root_uuid)
        message = (f"image ({image_id}) written to device {device} "
                   f"root_uuid={root_uuid}")
        log.info(message)
        return message

    async def _partition_image(self, image_info: dict[str, Any], device: str,
                               configdrive: Any, algo: str, expected: str
                               ) -> str:
        import platform

        from ipa_twisted.image import partition_image

        paths, _, _, _ = await partition_image.prepare(
            self.agent, image_info, device, configdrive, self.agent.node,
            platform.machine())
        await self._write(image_info, paths["root"], algo, expected,
                          wipe=device)
        self.cached_image_id = str(image_info["id"])
        uuids = await partition_image.finish(self.agent, image_info, device,
                                             paths)
        self.partition_uuids = uuids
        message = (f"image ({image_info['id']}) written to device {device} "
                   f"root_uuid={uuids['root uuid']}")
        if image_info.get("deploy_boot_mode") == "uefi" and \
                uuids.get("efi system partition uuid"):
            message += (f" efi_system_partition_uuid="
                        f"{uuids['efi system partition uuid']}")
        return message

    async def _resolve_checksum(self, spec: checksums.ChecksumSpec,
                                image_info: Mapping[str, Any]
                                ) -> tuple[str, str]:
        if spec.value is not None:
            return spec.algo, spec.value
        assert spec.url is not None
        url = spec.url
        try:
            response, body = await get_bytes(
                self.agent.http, self.agent.reactor, url,
                limit=CHECKSUM_FILE_LIMIT,
                timeout=self.agent.config.image_download_connection_timeout)
        except Exception as e:
            raise errors.ImageDownloadError(
                str(image_info["id"]),
                f"cannot get the checksum file {url}: {describe(e)}"
            ) from None
        if response.code != 200:
            raise errors.ImageDownloadError(
                str(image_info["id"]),
                f"checksum file {url} answered HTTP {response.code}")
        text = body.decode("utf-8", "replace")
        from ipa_twisted.image import checksum as checksums

        digest = checksums.parse_checksum_file(text, image_info["urls"][0])
        algo = spec.algo or checksums.algo_for_digest(
            digest, self.agent.md5_enabled)
        return algo, digest

    async def _write(self, image_info: Mapping[str, Any], device: str,
                     algo: str, expected: str, wipe: str | None = None
                     ) -> str | None:
        """Stream the image onto ``device`` (a disk, or the root partition
        of a partition image); on failure wipe ``wipe`` (the disk).  For
        a whole disk: what became of its backup GPT (see
        ``ipa_twisted.image.gpt``)."""
        from ipa_twisted.image.writer import download_to_device

        image_id = str(image_info["id"])
        try:
            result = await download_to_device(
                self.agent, image_info, device, algo,
                headers=auth_headers(image_info, self.agent.config),
                on_progress=self.agent.report_progress,
                whole_disk=wipe is None)
        except BaseException:
            await self._wipe(wipe or device)
            raise
        finally:
            self.agent.report_progress(None)
        if result.digest != expected.lower():
            await self._wipe(wipe or device)
            raise errors.ImageChecksumError(image_id, result.url, expected,
                                            str(result.digest))
        log.info("image {id} ({fmt}, {mib} MiB, {attempts} attempt(s)): "
                 "{algo} checksum verified", id=image_id, fmt=result.detected,
                 mib=result.received // (1024 * 1024),
                 attempts=result.attempts, algo=algo)
        return result.gpt

    async def _wipe(self, device: str) -> None:
        """Make a failed write unbootable: zero both ends of the disk
        (within WIPE_TIMEOUT: a dead disk may never answer)."""
        try:
            d = self.agent.in_thread(blockio.wipe_head_and_tail,
                                     self.agent.guard, device)
            d.addTimeout(WIPE_TIMEOUT, self.agent.reactor)
            await d
            log.warn("wiped the partition tables of {dev} after a failed "
                     "write", dev=device)
        except blockio.WipeError as e:
            if "start" in e.failed:
                log.error("could not wipe {dev} after a failed write: {e}",
                          dev=device, e=e)
            else:
                log.warn("wiped the start of {dev} (its partition table) "
                         "after a failed write; its end could not be zeroed: "
                         "{e}", dev=device, e=e.failed["end"])
        except defer.TimeoutError:
            log.error("could not wipe {dev} after a failed write: the disk "
                      "did not answer within {t} s", dev=device,
                      t=WIPE_TIMEOUT)
        except Exception as e:
            log.error("could not wipe {dev} after a failed write: {e}",
                      dev=device, e=e)

    async def _after_write(self, device: str, gpt: str | None = None
                           ) -> list[str]:
        """Put the backup GPT at the end of the disk (unless the writer
        did: ``gpt`` says what it did), re-read the partitions, check
        there are some."""
        from ipa_twisted.image import gpt as gpt_tables

        run = self.agent.process.run
        if gpt is None:  # (the image was already there)
            gpt = await self.agent.in_thread(gpt_tables.move_backup, device)
        if gpt == gpt_tables.MOVED:
            log.info("moved the backup GPT of {dev} to the end of the disk",
                     dev=device)
        elif gpt not in (gpt_tables.IN_PLACE, gpt_tables.NO_GPT):
            log.warn("the backup GPT of {dev} was not moved ({reason}): "
                     "running sgdisk -e", dev=device, reason=gpt)
            try:
                await run(["sgdisk", "-e", device], timeout=120.0)
            except ProcessError as e:
                log.warn("could not move the GPT backup header of {dev}: "
                         "{e}", dev=device, e=e.reason)
        # one ioctl (BLKRRPART) instead of partprobe (udevadm settle twice,
        # dmidecode); when the kernel finds no partition (it has no parser
        # for the table), a GPT's are added with BLKPG; partprobe when all
        # that fails (it parses the table in user space)
        try:
            await self.agent.in_thread(blockio.reread_partitions, device)
            reread = bool(blockio.partitions_of(device))
        except OSError as e:
            log.info("the kernel did not re-read the partitions of {dev} "
                     "({e})", dev=device, e=e)
            reread = False
        if not reread and gpt in (gpt_tables.MOVED, gpt_tables.IN_PLACE):
            # a kernel without a GPT parser: tell it what we read
            try:
                added = await self.agent.in_thread(
                    gpt_tables.tell_the_kernel, device)
                reread = bool(blockio.partitions_of(device))
                log.info("added the {n} partition(s) of {dev}'s GPT to "
                         "the kernel", n=added, dev=device)
            except (OSError, gpt_tables.GPTError) as e:
                log.info("could not add the partitions of {dev} ({e})",
                         dev=device, e=e)
        if not reread:
            log.info("running partprobe {dev}", dev=device)
            try:
                await run(["partprobe", device], timeout=120.0)
            except ProcessError as e:
                log.warn("partprobe {dev}: {e}", dev=device, e=e.reason)
        # the kernel's view (sysfs) is usually there already; otherwise
        # each wait ends at udev's next block event (or after half a second
        # where no udev runs)
        partitions: list[str] = []
        watch = self.agent.device_events().watch("block")
        try:
            for _ in range(10):
                partitions = blockio.partitions_of(device)
                if partitions:
                    break
                await watch.next(0.5)
        finally:
            watch.close()
        if not partitions:
            raise errors.DeploymentError(
                f"No partitions found on the device {device} after writing "
                f"the image: a whole-disk image must carry a partition table"
            )
        return partitions

