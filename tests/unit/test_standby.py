"""standby.prepare_image and the write_image deploy step, with the real
reactor, an HTTP server on loopback, and a temporary file as the "disk"."""

from __future__ import annotations

import hashlib
import os
from typing import Any

from treq.client import HTTPClient
from twisted.internet import reactor
from twisted.internet.defer import ensureDeferred
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.resource import Resource
from twisted.web.server import Site

from ipa_twisted import errors
from ipa_twisted.commands.base import CommandRunner
from ipa_twisted.commands.standby import StandbyExtension
from ipa_twisted.commands.steps import DeployExtension
from ipa_twisted.config import load_config
from ipa_twisted.context import RunningAgent
from ipa_twisted.hardware import blockio
from ipa_twisted.hardware.disks import DeviceGuard
from ipa_twisted.hardware.manager import HardwareManager, HardwareManagers
from ipa_twisted.image import gpt, partition_image
from ipa_twisted.testing import FakeHardwareManager, FakeProcessRunner
from tests import hostile_images as hi

IMAGE = b"\x00" * 440 + b"\x78\x56\x34\x12" + os.urandom(2 * 1024 * 1024)
SHA = hashlib.sha256(IMAGE).hexdigest()


class Images(Resource):
    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.hits: list[str] = []
        self.fail_first: int = 0
        self.files: dict[str, bytes] = {}

    def render_GET(self, request: Any) -> bytes:
        path = request.path.decode()
        self.hits.append(path)
        if path in self.files:
            return self.files[path]
        if path == "/missing":
            request.setResponseCode(404)
            return b""
        if self.fail_first:
            self.fail_first -= 1
            request.setResponseCode(503)
            return b""
        if path == "/SHA256SUMS":
            return f"{SHA}  disk.img\n".encode()
        return IMAGE


class TestStandby(StandbyExtension):
    """The real extension; partition discovery replaced (a temp file has
    no kernel partitions; the e2e tests use real loop devices)."""

    async def _after_write(self, device: str, gpt: str | None = None
                           ) -> list[str]:
        self.gpt = gpt
        return [device + "p1"]


class Generic(HardwareManager):
    def evaluate_hardware_support(self) -> int:
        return 1

    def get_deploy_steps(self, node: Any, ports: Any) -> list[Any]:
        return [{"step": "write_image", "priority": 0, "interface": "deploy",
                 "reboot_requested": False}]

    async def write_image(self, node: Any, ports: Any, image_info: Any,
                          configdrive: Any = None) -> Any:
        return await self.agent.get_extension("standby").write_image(
            image_info, configdrive)

    def full_sync(self) -> None:
        pass


class _StandbyBase(TestCase):
    def setUp(self) -> None:
        self.images = Images()
        port = reactor.listenTCP(0, Site(self.images), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        pool = HTTPConnectionPool(reactor, persistent=False)
        self.base = f"http://127.0.0.1:{port.getHost().port}"
        self.disk = os.path.abspath(self.mktemp())
        with open(self.disk, "wb") as f:
            f.write(b"\xff" * (4 * 1024 * 1024))
        config = load_config({
            "image_download_connection_retries": "2",
            "image_download_connection_retry_interval": "0",
            "image_download_connection_timeout": "5",
            "disk_wait_attempts": "1",
        })
        self.context = RunningAgent(
            config=config, reactor=reactor, process=FakeProcessRunner(),
            guard=DeviceGuard(None), http=HTTPClient(Agent(reactor, pool=pool)))
        fake = FakeHardwareManager(root_device=self.disk)
        self.fake = fake
        self.hardware = HardwareManagers([fake, Generic()])
        self.context.hardware = self.hardware
        self.standby = TestStandby(self.context)
        self.context.extensions = {
            "standby": self.standby,
            "deploy": DeployExtension(self.context),
        }
        self.runner = CommandRunner(self.context.extensions)

    async def _init(self) -> None:
        await self.hardware.initialize(self.context)

    def info(self, **kw: Any) -> dict[str, Any]:
        info = {"id": "img-1", "urls": [self.base + "/disk.img"],
                "os_hash_algo": "sha256", "os_hash_value": SHA,
                "disk_format": "raw"}
        info.update(kw)
        return info

    def disk_bytes(self, n: int) -> bytes:
        with open(self.disk, "rb") as f:
            return f.read(n)

    async def execute(self, name: str, **params: Any) -> Any:
        await self._init()
        result = self.runner.execute(name, params)
        return await result.wait()



class StandbyTests(_StandbyBase):
    async def test_write_image_deploy_step_is_one_command(self) -> None:
        step = {"interface": "deploy", "step": "write_image", "priority": 80,
                "args": {"image_info": self.info(), "configdrive": None}}
        result = await self.execute("deploy.execute_deploy_step", step=step,
                                node={"uuid": "n"}, ports=[])
        self.assertEqual(result.status, "SUCCEEDED", result.error)
        self.assertEqual(result.result, {
            "deploy_result": {"result": f"prepare_image: image (img-1) written "
                                        f"to device {self.disk} "
                                        f"root_uuid=0x12345678"},
            "deploy_step": step})
        self.assertEqual([r.command_name for r in self.runner.list()],
                         ["execute_deploy_step"])
        self.assertEqual(self.disk_bytes(len(IMAGE)), IMAGE)
        uuids = self.runner.execute("standby.get_partition_uuids", {})
        self.assertEqual(uuids.result, {"root uuid": "0x12345678"})

    async def test_prepare_image_command(self) -> None:
        result = await self.execute("standby.prepare_image", image_info=self.info())
        self.assertEqual(result.status, "SUCCEEDED", result.error)
        self.assertTrue(result.result["result"].startswith(
            "prepare_image: image (img-1) written to device"))

    async def test_checksum_file_url(self) -> None:
        info = self.info(os_hash_value=self.base + "/SHA256SUMS")
        result = await self.execute("standby.prepare_image", image_info=info)
        self.assertEqual(result.status, "SUCCEEDED", result.error)

    async def test_checksum_mismatch_fails_and_wipes(self) -> None:
        result = await self.execute("standby.prepare_image",
                                image_info=self.info(os_hash_value="0" * 64))
        self.assertEqual(result.status, "FAILED")
        self.assertEqual(result.error["type"], "ImageChecksumError")
        self.assertIn(f"verification checksum: {SHA}", result.error["details"])
        self.assertEqual(self.disk_bytes(1024 * 1024), b"\0" * 1024 * 1024)
        self.flushLoggedErrors()

    async def test_4xx_fails_at_once(self) -> None:
        info = self.info(urls=[self.base + "/missing"])
        result = await self.execute("standby.prepare_image", image_info=info)
        self.assertEqual(result.status, "FAILED")
        self.assertEqual(result.error["type"], "ImageDownloadFatalError")
        self.assertEqual(self.images.hits, ["/missing"])

    async def test_5xx_is_retried(self) -> None:
        self.images.fail_first = 2
        result = await self.execute("standby.prepare_image", image_info=self.info())
        self.assertEqual(result.status, "SUCCEEDED", result.error)
        self.assertEqual(len(self.images.hits), 3)

    async def test_5xx_until_the_end(self) -> None:
        self.images.fail_first = 5
        result = await self.execute("standby.prepare_image", image_info=self.info())
        self.assertEqual(result.status, "FAILED")
        self.assertEqual(result.error["type"], "ImageDownloadError")
        self.assertEqual(len(self.images.hits), 3)

    async def test_validation_is_synchronous(self) -> None:
        await self._init()
        for info in ({"urls": ["http://x/a"]}, {"id": "a", "urls": []},
                     {"id": "a", "urls": ["ftp://x/a"], "checksum": SHA},
                     {"id": "a", "urls": ["http://x/a"]}, "not a dict"):
            with self.assertRaises(errors.InvalidCommandParamsError, msg=info):
                self.runner.execute("standby.prepare_image",
                                    {"image_info": info})
        self.assertEqual(self.runner.list(), [])

    async def test_ephemeral_format_is_a_known_filesystem(self) -> None:
        await self._init()
        partition = self.info(image_type="partition", root_mb=10, swap_mb=0,
                              ephemeral_mb=10, preserve_ephemeral=False)
        for fmt in ("ext4 -E root_owner=0:0", "-V", "../../bin/sh",
                    "ext4;reboot", ["ext4"], 4):
            with self.assertRaises(errors.InvalidCommandParamsError) as cm:
                self.runner.execute("standby.prepare_image", {
                    "image_info": dict(partition, ephemeral_format=fmt)})
            self.assertIn("ephemeral_format must be one of ext2, ext3, ext4",
                          str(cm.exception))
        self.assertEqual(self.runner.list(), [])
        self.assertEqual(self.context.process.calls, [])  # type: ignore
        for fmt in ("ext4", "xfs", "vfat", None):
            partition_image.check_fields(dict(partition, ephemeral_format=fmt))

    async def test_deploy_step_validation_fails_the_command(self) -> None:
        step = {"step": "write_image", "args": {"image_info": {"id": "x"}}}
        result = await self.execute("deploy.execute_deploy_step", step=step,
                                node={}, ports=[])
        self.assertEqual(result.status, "FAILED")
        self.assertEqual(result.error["type"], "InvalidCommandParamsError")
        self.assertEqual(result.error["code"], 400)

    async def test_image_that_is_not_what_it_claims_is_refused(self) -> None:
        result = await self.execute("standby.prepare_image",
                                    image_info=self.info(disk_format="qcow2"))
        self.assertEqual(result.status, "FAILED")
        self.assertEqual(result.error["type"], "InvalidImage")
        self.assertIn("claims to be qcow2 but its content is raw",
                      result.error["details"])
        # nothing was written; the disk's ends were wiped
        self.assertEqual(self.disk_bytes(4), b"\0" * 4)

    async def test_allowlist_is_enforced(self) -> None:
        self.context.guard = DeviceGuard(["/dev/loop99"])
        result = await self.execute("standby.prepare_image", image_info=self.info())
        self.assertEqual(result.status, "FAILED")
        self.assertEqual(result.error["type"], "DeviceNotAllowed")
        self.assertEqual(self.images.hits, [])
        self.assertEqual(self.disk_bytes(4), b"\xff" * 4)


class HostileImageTests(_StandbyBase):
    """Any error in any stage of the pipeline fails the command, wipes the
    disk and frees the agent (issue #12 item 7).  A hang shows as the
    trial timeout of the test."""

    timeout = 60

    def serve(self, name: str, data: bytes) -> dict[str, Any]:
        self.images.files["/" + name] = data
        return self.info(urls=[f"{self.base}/{name}"],
                         os_hash_value=hashlib.sha256(data).hexdigest())

    async def next_command_runs(self) -> None:
        """The agent is free: another prepare_image is accepted and
        succeeds."""
        self.fake.root_device = self.disk
        result = await self.runner.execute(
            "standby.prepare_image", {"image_info": self.info()}).wait()
        self.assertEqual(result.status, "SUCCEEDED", result.error)
        self.assertEqual(self.disk_bytes(len(IMAGE)), IMAGE)

    async def test_compressed_image_expanding_past_the_disk(self) -> None:
        # 16 MiB inside 16 KiB of gzip, for a 4 MiB disk
        inner = IMAGE[:512] + bytes(16 * 1024 * 1024)
        info = self.serve("big.gz", hi.gzip_of(inner))
        result = await self.execute("standby.prepare_image", image_info=info)
        self.assertEqual(result.status, "FAILED")
        self.assertEqual(result.error["type"], "ImageWriteError")
        self.assertIn("larger than the device (4194304 bytes) once inflated",
                      result.error["details"])
        self.assertEqual(os.path.getsize(self.disk), 4 * 1024 * 1024)
        self.assertEqual(self.disk_bytes(1024 * 1024), bytes(1024 * 1024))
        await self.next_command_runs()
        self.flushLoggedErrors()

    async def test_disk_failing_while_inflating(self) -> None:
        # /dev/full fails every write; the inflating thread must not wait
        # for a resume that never comes
        from ipa_twisted.hardware import blockio

        self.patch(blockio, "size_of_fd", lambda fd: 1 << 30)
        self.fake.root_device = "/dev/full"
        info = self.serve("zeros.gz", hi.gzip_bomb(64 * 1024 * 1024))
        result = await self.execute("standby.prepare_image", image_info=info)
        self.assertEqual(result.status, "FAILED")
        self.assertEqual(result.error["type"], "ImageWriteError")
        self.assertIn("No space left on device", result.error["details"])
        await self.next_command_runs()
        self.flushLoggedErrors()

    async def test_hashing_failure(self) -> None:
        import hashlib as hashlib_module

        real = hashlib_module.new

        class Broken:
            def __init__(self, algo: str) -> None:
                self._real = real(algo)

            def update(self, data: Any) -> None:
                raise ValueError("the hasher broke")

            def hexdigest(self) -> str:
                return str(self._real.hexdigest())

        self.patch(hashlib_module, "new", Broken)
        result = await self.execute("standby.prepare_image",
                                    image_info=self.info())
        self.assertEqual(result.status, "FAILED")
        self.assertIn("the hasher broke", result.error["details"])
        self.assertEqual(self.disk_bytes(4), b"\0" * 4)  # wiped
        self.patch(hashlib_module, "new", real)
        await self.next_command_runs()
        self.flushLoggedErrors()

    async def test_config_drive_bomb_fails_before_the_disk_is_touched(
            self) -> None:
        # 128 MiB of config drive in 170 KB: decoding stops at 64 MiB + 1
        info = self.info()
        result = await self.execute("standby.prepare_image", image_info=info,
                                    configdrive=hi.config_drive_bomb(
                                        128 * 1024 * 1024))
        self.assertEqual(result.status, "FAILED")
        self.assertEqual(result.error["type"], "DeploymentError")
        self.assertIn("exceeds maximum limit of 64MiB",
                      result.error["details"])
        self.assertEqual(self.images.hits, [])
        self.assertEqual(self.disk_bytes(4), b"\xff" * 4)
        await self.next_command_runs()

    async def test_hash_algorithms_outside_the_allow_list(self) -> None:
        await self._init()
        for algo in ("shake_128", "shake_256", "sm3", "md5-sha1", "nope"):
            with self.assertRaises(errors.InvalidCommandParamsError,
                                   msg=algo) as cm:
                self.runner.execute("standby.prepare_image", {
                    "image_info": self.info(os_hash_algo=algo)})
            self.assertIn("unsupported os_hash_algo", str(cm.exception))
        await self.next_command_runs()


class AfterWriteTests(SynchronousTestCase):
    """After a whole-disk write: sgdisk -e only when our GPT code refused
    the table, one BLKRRPART instead of partprobe (partprobe when the
    kernel refuses or finds nothing)."""

    def setUp(self) -> None:
        from tests.unit.test_bootloader import ThreadsAtOnce

        self.process = FakeProcessRunner()
        self.process.add("sgdisk")
        self.process.add("partprobe")
        self.context = RunningAgent(
            config=load_config({}), reactor=ThreadsAtOnce(),
            disk_threads=ThreadsAtOnce(), process=self.process,
            guard=DeviceGuard(None))
        self.standby = StandbyExtension(self.context)
        self.reread: list[str] = []
        self.moved: list[str] = []
        self.found: list[str] = ["/dev/sdz1"]
        self.refuse_reread = False

        def reread(device: str) -> None:
            self.reread.append(device)
            if self.refuse_reread:
                raise OSError(22, "Invalid argument")

        def move(device: str) -> str:
            self.moved.append(device)
            return gpt.MOVED

        self.told: list[str] = []

        def tell(device: str) -> int:
            self.told.append(device)
            if self.refuse_blkpg:
                raise OSError(16, "Device or resource busy")
            self.kernel_knows = True
            return 1

        self.refuse_blkpg = False
        self.kernel_knows = True
        self.patch(blockio, "reread_partitions", reread)
        self.patch(blockio, "partitions_of",
                   lambda device: self.found if self.kernel_knows else [])
        self.patch(gpt, "move_backup", move)
        self.patch(gpt, "tell_the_kernel", tell)

    def after(self, moved: str | None) -> list[tuple[str, ...]]:
        partitions = self.successResultOf(ensureDeferred(
            self.standby._after_write("/dev/sdz", moved)))
        self.assertEqual(partitions, ["/dev/sdz1"])
        return self.process.calls

    def test_moved_by_the_writer(self) -> None:
        self.assertEqual(self.after(gpt.MOVED), [])
        self.assertEqual((self.reread, self.moved), (["/dev/sdz"], []))

    def test_no_gpt_or_in_place(self) -> None:
        self.assertEqual(self.after(gpt.NO_GPT), [])
        self.assertEqual(self.after(gpt.IN_PLACE), [])

    def test_refused_falls_back_to_sgdisk(self) -> None:
        self.assertEqual(self.after("refused: entries' CRC32"),
                         [("sgdisk", "-e", "/dev/sdz")])

    def test_image_already_there_is_moved_here(self) -> None:
        self.assertEqual(self.after(None), [])
        self.assertEqual(self.moved, ["/dev/sdz"])

    def test_partprobe_when_the_kernel_refuses(self) -> None:
        self.refuse_reread = True  # (a partition in use: EBUSY, and
        self.refuse_blkpg = True   # so is BLKPG)
        self.assertEqual(self.after(gpt.MOVED), [("partprobe", "/dev/sdz")])

    def test_a_kernel_without_a_gpt_parser_is_told(self) -> None:
        self.kernel_knows = False  # (BLKRRPART finds nothing)
        self.assertEqual(self.after(gpt.MOVED), [])
        self.assertEqual(self.told, ["/dev/sdz"])

    def test_partprobe_when_the_kernel_cannot_be_told(self) -> None:
        self.kernel_knows = False
        self.refuse_blkpg = True

        def partprobe(argv: Any) -> Any:
            self.kernel_knows = True
            from ipa_twisted.process import ProcessResult

            return ProcessResult(tuple(argv), 0, b"", b"")

        self.process.handlers["partprobe"] = partprobe
        self.assertEqual(self.after(gpt.MOVED), [("partprobe", "/dev/sdz")])
        self.assertEqual(self.told, ["/dev/sdz"])

    def test_partitions_seen_at_udevs_event_not_after_a_sleep(self) -> None:
        # the partitions reach sysfs late: the wait ends at the next block
        # event of the agent's one udev source (this test's reactor has no
        # clock: a sleep would fail it)
        from twisted.internet.defer import succeed

        from ipa_twisted.process import ProcessResult

        class Events:
            watches: list[str] = []
            closed = 0

            def watch(self, subsystem: str = "block") -> Any:
                Events.watches.append(subsystem)
                return self

            def next(inner, timeout: float) -> Any:
                self.kernel_knows = True
                return succeed(True)

            def close(self) -> None:
                Events.closed += 1

        reads = []

        def partitions_of(device: str) -> list[str]:
            reads.append(device)
            return self.found if self.kernel_knows and len(reads) > 2 else []

        self.patch(blockio, "partitions_of", partitions_of)
        self.kernel_knows = False
        self.refuse_blkpg = True
        self.process.handlers["partprobe"] = lambda argv: ProcessResult(
            tuple(argv), 0, b"", b"")
        self.context.device_watcher = Events()  # type: ignore[assignment]
        self.assertEqual(self.after(gpt.NO_GPT), [("partprobe", "/dev/sdz")])
        self.assertEqual((Events.watches, Events.closed), (["block"], 1))

    def test_partprobe_for_a_table_that_is_not_gpt(self) -> None:
        self.kernel_knows = False

        def partprobe(argv: Any) -> Any:
            self.kernel_knows = True
            from ipa_twisted.process import ProcessResult

            return ProcessResult(tuple(argv), 0, b"", b"")

        self.process.handlers["partprobe"] = partprobe
        self.assertEqual(self.after(gpt.NO_GPT), [("partprobe", "/dev/sdz")])
        self.assertEqual(self.told, [])
