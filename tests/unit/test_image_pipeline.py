"""The image pipeline end to end on this machine's loopback: formats
(raw, qcow2), refusals, resumable downloads against a server that drops
the connection or ignores ranges.  The "disk" is a file.  (Compressed
formats and a real stall take seconds: they are in
tests/integration/test_image_pipeline_slow.py.)"""

from __future__ import annotations

import hashlib
import lzma
import os
import shutil
import subprocess
from typing import Any

from treq.client import HTTPClient
from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Factory, Protocol

from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.resource import Resource
from twisted.web import proxy
from twisted.web.server import NOT_DONE_YET, Site

from ipa_twisted import errors
from ipa_twisted.config import load_config
from ipa_twisted.context import RunningAgent
from ipa_twisted.hardware.disks import DeviceGuard
from ipa_twisted.image.proxy import bypass, proxy_for
from ipa_twisted.image.writer import download_to_device, retry_pause
from ipa_twisted.testing import FakeProcessRunner
from tests import hostile_images as hi
from tests.integration import harness as h
from tests.integration.base import unavailable

MiB = 1024 * 1024
RAW = os.urandom(6 * MiB) + bytes(2 * MiB) + os.urandom(777)


class Files(Resource):
    """Serves ``files``; per-file behaviour in ``rules``."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.files: dict[str, bytes] = {}
        self.rules: dict[str, dict[str, Any]] = {}
        self.requests: list[tuple[str, str | None]] = []
        self.hanging: list[Any] = []
        #: requests whose connection went away before their end
        self.lost: list[str] = []

    def render_GET(self, request: Any) -> Any:
        name = request.path.decode().lstrip("/")
        header = request.getHeader(b"range")
        rng = header.decode() if header else None
        self.requests.append((name, rng))
        rule = self.rules.get(name, {})
        data = self.files.get(name)
        if data is None:
            request.setResponseCode(404)
            return b"no such image"
        if rule.get("fail", 0):
            rule["fail"] -= 1
            request.setResponseCode(503)
            return b"busy"
        start = 0
        if rng and not rule.get("ignore_range"):
            first, _, last = rng[len("bytes="):].partition("-")
            start = int(first)
            end = int(last) + 1 if last else len(data)
            request.setResponseCode(206)
            request.setHeader(b"content-range",
                              f"bytes {start}-{end - 1}/{len(data)}".encode())
            data = data[start:end]
        request.setHeader(b"content-length", str(len(data)).encode())
        cut = rule.pop("drop_at", None)
        if cut is not None:
            request.write(data[:cut - start])
            # close once that much is sent (the channel, registered as the
            # transport's producer, would otherwise hold the close back
            # and the "drop" became a stall)
            transport = request.channel.transport
            transport.unregisterProducer()
            transport.loseConnection()
            return NOT_DONE_YET
        request.notifyFinish().addErrback(
            lambda _: self.lost.append(name))
        stall = rule.pop("stall_at", None)
        if stall is not None:
            request.write(data[:stall])
            self.hanging.append(request)
            return NOT_DONE_YET
        return data


class _PipelineBase(TestCase):
    def setUp(self) -> None:
        self.server = Files()
        port = reactor.listenTCP(0, Site(self.server), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        self.base = f"http://127.0.0.1:{port.getHost().port}/"
        pool = HTTPConnectionPool(reactor, persistent=False)
        self.addCleanup(pool.closeCachedConnections)
        self.disk = os.path.abspath(self.mktemp())
        with open(self.disk, "wb") as f:
            f.truncate(2048 * MiB)  # sparse
        config = load_config({
            "image_download_connection_retries": "3",
            "image_download_connection_retry_interval": "0",
            "image_download_connection_timeout": "2",
        })
        self.context = RunningAgent(
            config=config, reactor=reactor, process=FakeProcessRunner(),
            guard=DeviceGuard(None), http=HTTPClient(Agent(reactor,
                                                           pool=pool)))

    def tearDown(self) -> None:
        for request in self.server.hanging:
            request.transport.abortConnection()

    def serve(self, name: str, data: bytes, **rule: Any) -> dict[str, Any]:
        self.server.files[name] = data
        self.server.rules[name] = rule
        return {"id": name, "urls": [self.base + name],
                "disk_format": rule.pop("claimed", "raw")}

    async def write(self, info: dict[str, Any]) -> Any:
        return await download_to_device(self.context, info, self.disk,
                                        "sha256")

    def disk_bytes(self, n: int) -> bytes:
        with open(self.disk, "rb") as f:
            return f.read(n)



class PipelineTests(_PipelineBase):
    async def test_raw(self) -> None:
        result = await self.write(self.serve("disk.img", RAW))
        self.assertEqual(result.digest, hashlib.sha256(RAW).hexdigest())
        self.assertEqual((result.detected, result.written, result.attempts),
                         ("raw", len(RAW), 1))
        self.assertEqual(self.disk_bytes(len(RAW)), RAW)

    #: qemu-img's output for RAW, by its options: made once per process
    #: (RAW does not change), as several tests ask for the same image
    made: dict[tuple[tuple[str, ...], bool], bytes] = {}

    def qcow2(self, *options: str, grow: bool = False) -> bytes:
        if shutil.which("qemu-img") is None:
            unavailable(h.Unavailable("needs qemu-img (qemu-utils)"))
        key = (options, grow)
        if key not in self.made:
            self.made[key] = self._qemu_img(options, grow)
        return self.made[key]

    def _qemu_img(self, options: tuple[str, ...], grow: bool) -> bytes:
        raw = os.path.abspath(self.mktemp())
        image = raw + ".qcow2"
        with open(raw, "wb") as f:
            f.write(RAW)
        subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2",
                        *options, raw, image], check=True)
        if grow:  # past 512 MiB the L1 table grows and moves behind the data
            subprocess.run(["qemu-img", "resize", image, "+1G"], check=True,
                           capture_output=True)
            subprocess.run(["qemu-io", "-c", "write -P 9 900M 64k", image],
                           check=True, capture_output=True)
        with open(image, "rb") as f:
            return f.read()

    async def test_qcow2(self) -> None:
        for options in ([], ["-c"]):
            with open(self.disk, "r+b") as f:
                f.write(b"\xee" * 32 * MiB)  # old data, to be zeroed
            image = self.qcow2(*options)
            result = await self.write(self.serve("disk.qcow2", image,
                                                 claimed="qcow2"))
            self.assertEqual(result.detected, "qcow2")
            self.assertEqual(result.digest, hashlib.sha256(image).hexdigest())
            self.assertEqual(self.disk_bytes(len(RAW)), RAW)

    async def test_qcow2_with_tables_behind_data_uses_ranges(self) -> None:
        image = self.qcow2(grow=True)
        await self.write(self.serve("grown.qcow2", image, claimed="qcow2"))
        self.assertEqual(self.disk_bytes(len(RAW)), RAW)
        with open(self.disk, "rb") as f:
            f.seek(900 * MiB)
            self.assertEqual(f.read(65536), b"\x09" * 65536)
        self.assertTrue(any(r for _, r in self.server.requests))

    async def test_claimed_raw_but_qcow2_is_refused(self) -> None:
        with self.assertRaises(errors.InvalidImage) as cm:
            await self.write(self.serve("sneaky.img", self.qcow2()))
        self.assertIn("claims to be raw but its content is qcow2",
                      str(cm.exception))

    async def test_format_not_permitted(self) -> None:
        vmdk = b"KDMV" + os.urandom(100000)
        with self.assertRaises(errors.InvalidImage) as cm:
            await self.write(self.serve("disk.vmdk", vmdk, claimed="vmdk"))
        self.assertIn("image format vmdk is not permitted", str(cm.exception))
        self.context.lookup_config["permitted_image_formats"] = ["raw"]
        with self.assertRaises(errors.InvalidImage):
            await self.write(self.serve("q.qcow2", self.qcow2(),
                                        claimed="qcow2"))

    async def test_xz_needing_too_much_memory_is_refused(self) -> None:
        # an xz header may ask for any dictionary (up to 1.5 GiB): the
        # decoder allocates what it says
        inner = RAW[:65536] + bytes(MiB)
        # (the block header xz writes for a 256 MiB dictionary, without
        # the encoder allocating one)
        packed = hi.xz_asking_for(256 * MiB, inner)
        with self.assertRaises(errors.InvalidImage) as cm:
            await self.write(self.serve("huge-dict.xz", packed))
        self.assertIn("needs more than 128 MiB", str(cm.exception))
        # xz -9 (64 MiB dictionary), and streams one after another, pass
        packed = (lzma.compress(inner[:100000], preset=9)
                  + lzma.compress(inner[100000:]))
        result = await self.write(self.serve("nine.xz", packed))
        self.assertEqual(self.disk_bytes(len(inner)), inner)
        self.assertEqual(result.written, len(inner))

    async def test_gzip_transfer_encoding_cannot_hide_the_size(self) -> None:
        """The agent's own client asks for the stored bytes: a server that
        would gzip them on the way (and so send a small Content-Length)
        sends them as they are, and the image larger than the disk is
        refused before a byte is written."""
        from twisted.web.resource import EncodingResourceWrapper
        from twisted.web.server import GzipEncoderFactory

        from ipa_twisted.agent import AgentService

        seen: list[Any] = []

        class Recording(Files):
            def render_GET(self, request: Any) -> Any:
                seen.append(request.getHeader(b"accept-encoding"))
                request.setHeader(b"connection", b"close")
                return super().render_GET(request)

        files = Recording()
        files.files["big.img"] = RAW  # 8 MiB, for a 4 MiB disk
        site = Site(EncodingResourceWrapper(files, [GzipEncoderFactory()]))
        port = reactor.listenTCP(0, site, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        with open(self.disk, "r+b") as f:
            f.truncate(4 * MiB)
            f.write(b"\xee" * 4 * MiB)
        self.context.http = AgentService(load_config({}), reactor).http
        with self.assertRaises(errors.ImageWriteError) as cm:
            await self.write({"id": "big", "urls": [
                f"http://127.0.0.1:{port.getHost().port}/big.img"],
                "disk_format": "raw"})
        self.assertIn(f"the image ({len(RAW)} bytes) is larger than the "
                      f"device ({4 * MiB} bytes)", str(cm.exception))
        self.assertEqual(seen, [b"identity"])
        self.assertEqual(self.disk_bytes(4 * MiB), b"\xee" * 4 * MiB)

    # ---------------------------------------------------------- resilience

    async def test_resume_after_a_drop(self) -> None:
        result = await self.write(self.serve("disk.img", RAW,
                                             drop_at=len(RAW) // 2))
        self.assertEqual(result.attempts, 2)
        self.assertEqual(result.digest, hashlib.sha256(RAW).hexdigest())
        self.assertEqual(self.disk_bytes(len(RAW)), RAW)
        (_, first), (_, second) = self.server.requests
        self.assertIsNone(first)
        self.assertTrue(second and second.startswith("bytes="))
        self.flushLoggedErrors()

    async def test_server_ignoring_ranges_restarts(self) -> None:
        result = await self.write(self.serve("disk.img", RAW,
                                             drop_at=len(RAW) // 3,
                                             ignore_range=True))
        self.assertEqual(result.attempts, 2)
        self.assertEqual(result.digest, hashlib.sha256(RAW).hexdigest())
        self.assertEqual(self.disk_bytes(len(RAW)), RAW)
        self.flushLoggedErrors()

    async def test_5xx_then_success(self) -> None:
        result = await self.write(self.serve("disk.img", RAW, fail=2))
        self.assertEqual(result.attempts, 3)

    async def test_4xx_is_fatal_at_once(self) -> None:
        with self.assertRaises(errors.ImageDownloadFatalError):
            await self.write({"id": "x", "urls": [self.base + "missing"]})
        self.assertEqual(len(self.server.requests), 1)

    async def test_retries_run_out(self) -> None:
        with self.assertRaises(errors.ImageDownloadError):
            await self.write(self.serve("disk.img", RAW, fail=10))
        self.assertEqual(len(self.server.requests), 4)

    def test_retry_pause(self) -> None:
        self.assertEqual([retry_pause(n, 10) for n in range(1, 6)],
                         [10, 20, 40, 60, 60])
        self.assertEqual(retry_pause(3, 100), 100)




class _Pipe(Protocol):
    def __init__(self, peer: Any) -> None:
        self.peer = peer

    def dataReceived(self, data: bytes) -> None:
        self.peer.transport.write(data)

    def connectionLost(self, reason: Any = None) -> None:
        if self.peer.transport is not None:
            self.peer.transport.loseConnection()


class ConnectProxy(Protocol):
    """A minimal CONNECT proxy (what corporate proxies do for https)."""

    seen: list[str] = []

    def connectionMade(self) -> None:
        self.buf = b""
        self.pipe: _Pipe | None = None

    def dataReceived(self, data: bytes) -> None:
        if self.pipe is not None:
            self.pipe.transport.write(data)
            return
        self.buf += data
        if b"\r\n\r\n" not in self.buf:
            return
        head, _, rest = self.buf.partition(b"\r\n\r\n")
        method, target, _ = head.split(b"\r\n")[0].split(b" ", 2)
        ConnectProxy.seen.append(head.decode())
        host, port = target.decode().rsplit(":", 1)
        self.pipe = _Pipe(self)
        d = connectProtocol(TCP4ClientEndpoint(reactor, host, int(port)),
                            self.pipe)

        def ready(_: Any) -> None:
            self.transport.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            if rest:
                self.pipe.transport.write(rest)

        d.addCallback(ready)

    def connectionLost(self, reason: Any = None) -> None:
        if self.pipe is not None and self.pipe.transport is not None:
            self.pipe.transport.loseConnection()


class ProxyTests(_PipelineBase):
    def test_no_proxy_rules(self) -> None:
        self.assertTrue(bypass("images.example.com", "example.com"))
        self.assertTrue(bypass("10.1.2.3", "10.0.0.0/8,foo"))
        self.assertTrue(bypass("x", "*"))
        self.assertFalse(bypass("example.org", "example.com,.net"))
        self.assertEqual(proxy_for("http://a/x", {"http": "http://p:3128"},
                                   None), "http://p:3128")
        self.assertIsNone(proxy_for("https://a/x", {"http": "http://p"},
                                    None))
        self.assertIsNone(proxy_for("http://a.lan/x", {"http": "http://p"},
                                    "lan"))

    async def test_http_proxy(self) -> None:
        seen: list[bytes] = []

        class Recording(proxy.ProxyRequest):
            def process(self) -> None:
                seen.append(self.uri)
                super().process()

        class Channel(proxy.Proxy):
            requestFactory = Recording

        from twisted.web.http import HTTPFactory

        factory = HTTPFactory()
        factory.protocol = Channel  # type: ignore[assignment]
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        info = self.serve("disk.img", RAW)
        info["proxies"] = {"http": f"http://127.0.0.1:{port.getHost().port}"}
        result = await self.write(info)
        self.assertEqual(result.digest, hashlib.sha256(RAW).hexdigest())
        self.assertEqual(seen, [(self.base + "disk.img").encode()])

    async def test_https_through_connect(self) -> None:
        from ipa_twisted import tls

        cert = tls.save_certificate(
            tls.generate_certificate("127.0.0.1", "images"),
            os.path.abspath(self.mktemp()))
        options = tls.server_options(cert.cert_pem, cert.key_pem)
        https = reactor.listenSSL(0, Site(self.server), options,
                                  interface="127.0.0.1")
        self.addCleanup(https.stopListening)
        ConnectProxy.seen = []
        proxy_port = reactor.listenTCP(0, Factory.forProtocol(ConnectProxy),
                                       interface="127.0.0.1")
        self.addCleanup(proxy_port.stopListening)
        self.context.tls_policy = tls.client_policy(cafile=cert.cert_path)
        self.server.files["disk.img"] = RAW
        url = f"https://127.0.0.1:{https.getHost().port}/disk.img"
        result = await self.write({
            "id": "img", "urls": [url], "disk_format": "raw",
            "proxies": {"https":
                        f"http://u:p@127.0.0.1:{proxy_port.getHost().port}"}})
        self.assertEqual(result.digest, hashlib.sha256(RAW).hexdigest())
        self.assertEqual(self.disk_bytes(len(RAW)), RAW)
        connect, = ConnectProxy.seen
        self.assertTrue(connect.startswith(
            f"CONNECT 127.0.0.1:{https.getHost().port} HTTP/1.1"))
        self.assertIn("Proxy-Authorization: Basic dTpw", connect)


class HTTPSTests(_PipelineBase):
    """Images over HTTPS, verified with the agent's TLS settings
    (``--cafile``, ``--insecure``)."""

    def https(self) -> tuple[str, str]:
        from ipa_twisted import tls

        cert = tls.save_certificate(
            tls.generate_certificate("127.0.0.1", "images"),
            os.path.abspath(self.mktemp()))
        options = tls.server_options(cert.cert_pem, cert.key_pem)
        port = reactor.listenSSL(0, Site(self.server), options,
                                 interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        self.server.files["disk.img"] = RAW
        return (f"https://127.0.0.1:{port.getHost().port}/disk.img",
                cert.cert_path)

    def client(self, policy: Any) -> None:
        pool = HTTPConnectionPool(reactor, persistent=False)
        self.addCleanup(pool.closeCachedConnections)
        self.context.http = HTTPClient(Agent(reactor, contextFactory=policy,
                                             pool=pool))

    async def test_trusted_by_cafile(self) -> None:
        from ipa_twisted import tls

        url, ca = self.https()
        self.client(tls.client_policy(cafile=ca))
        result = await self.write({"id": "i", "urls": [url],
                                   "disk_format": "raw"})
        self.assertEqual(result.digest, hashlib.sha256(RAW).hexdigest())
        self.assertEqual(self.disk_bytes(len(RAW)), RAW)

    async def test_untrusted_certificate_fails_clearly(self) -> None:
        from ipa_twisted import tls

        url, _ = self.https()
        self.client(tls.client_policy())
        with self.assertRaises(errors.ImageDownloadError) as caught:
            await self.write({"id": "i", "urls": [url], "disk_format": "raw"})
        self.assertIn("certificate", str(caught.exception.details).lower())
        self.assertNotEqual(self.disk_bytes(len(RAW)), RAW)

    async def test_insecure_skips_verification(self) -> None:
        from ipa_twisted import tls

        url, _ = self.https()
        self.client(tls.client_policy(insecure=True))
        result = await self.write({"id": "i", "urls": [url],
                                   "disk_format": "raw"})
        self.assertEqual(result.digest, hashlib.sha256(RAW).hexdigest())
