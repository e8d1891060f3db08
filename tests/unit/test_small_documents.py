"""Small documents, bounded: every body the agent reads whole (checksum
files, config-drive URLs, Ironic's and the inspector's answers, qcow2
ranges) has a deadline and a cap, and on either the request is cancelled
and its connection closed.  Image servers are asked for the bytes as
stored (``Accept-Encoding: identity``).  In memory: StubTreq and a Clock.
"""

from __future__ import annotations

import json
from typing import Any, Callable

from treq.client import HTTPClient
from treq.testing import RequestTraversalAgent, StubTreq
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from ipa_twisted import errors
from ipa_twisted.commands.standby import CHECKSUM_FILE_LIMIT, StandbyExtension
from ipa_twisted.config import load_config
from ipa_twisted.context import RunningAgent
from ipa_twisted.hardware.disks import DeviceGuard
from ipa_twisted.httpfetch import (
    BodyTooLarge,
    EncodedBody,
    IdentityAgent,
    get_bytes,
)
from ipa_twisted.image import checksum, configdrive
from ipa_twisted.image.stream import fetch_range
from ipa_twisted.inspection import inspector
from ipa_twisted.ironic import ANSWER_LIMIT, IronicClient
from ipa_twisted.testing import FakeProcessRunner

MiB = 1024 * 1024


class Server(Resource):
    """Answers by path: ``handlers[path](request) -> bytes | NOT_DONE_YET``;
    remembers each request and whether its connection was lost."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.handlers: dict[bytes, Callable[[Any], Any]] = {}
        self.requests: list[Any] = []
        self.ended: list[Any] = []

    def render(self, request: Any) -> Any:
        self.requests.append(request)
        request.notifyFinish().addBoth(self.ended.append)
        return self.handlers[request.path](request)


def hang(request: Any) -> Any:
    """Headers and a little of the body, then nothing."""
    request.write(b"partial")
    return NOT_DONE_YET


def claims(size: int) -> Callable[[Any], Any]:
    """Says ``size`` bytes are coming; sends one KiB and waits."""
    def handler(request: Any) -> Any:
        request.setHeader(b"content-length", str(size).encode())
        request.write(b"x" * 1024)
        return NOT_DONE_YET
    return handler


def streams(size: int, chunk: int = 256 * 1024) -> Callable[[Any], Any]:
    """``size`` bytes with no Content-Length, chunk after chunk."""
    def handler(request: Any) -> Any:
        left = size
        while left:
            n = min(chunk, left)
            request.write(b"y" * n)
            left -= n
        request.finish()
        return NOT_DONE_YET
    return handler


class _Base(SynchronousTestCase):
    def setUp(self) -> None:
        self.server = Server()
        self.stub = StubTreq(self.server)
        self.clock = Clock()

    def closed(self, n: int = 1) -> None:
        """The server saw its ``n`` requests' connections end early (the
        client closed them), not finish."""
        self.stub.flush()
        self.assertEqual(len(self.server.ended), n)
        for outcome in self.server.ended:
            self.assertIsNotNone(outcome, "the request finished normally")


class GetBytesTests(_Base):
    def test_body(self) -> None:
        self.server.handlers[b"/doc"] = lambda r: b"hello"
        d = get_bytes(self.stub, self.clock, "http://x/doc", limit=5,
                      timeout=10)
        self.stub.flush()
        response, body = self.successResultOf(d)
        self.assertEqual((response.code, body), (200, b"hello"))

    def test_cap_without_content_length(self) -> None:
        self.server.handlers[b"/big"] = streams(2 * MiB)
        d = get_bytes(self.stub, self.clock, "http://x/big", limit=MiB,
                      timeout=10)
        self.stub.flush()
        failure = self.failureResultOf(d, BodyTooLarge)
        self.assertEqual(str(failure.value),
                         f"the answer is larger than {MiB} bytes")

    def test_content_length_over_the_cap_is_not_read(self) -> None:
        self.server.handlers[b"/big"] = claims(100 * MiB)
        d = get_bytes(self.stub, self.clock, "http://x/big", limit=MiB,
                      timeout=10)
        self.stub.flush()
        self.failureResultOf(d, BodyTooLarge)
        self.closed()

    def test_deadline_cancels_and_closes(self) -> None:
        self.server.handlers[b"/slow"] = hang
        d = get_bytes(self.stub, self.clock, "http://x/slow", limit=MiB,
                      timeout=30)
        self.stub.flush()
        self.assertNoResult(d)
        self.clock.advance(30)
        self.failureResultOf(d, defer.TimeoutError)
        self.closed()

    def test_cancel_closes(self) -> None:
        self.server.handlers[b"/slow"] = hang
        d = get_bytes(self.stub, self.clock, "http://x/slow", limit=MiB,
                      timeout=30)
        self.stub.flush()
        d.cancel()
        self.failureResultOf(d, defer.CancelledError)
        self.closed()
        self.assertEqual(self.clock.getDelayedCalls(), [])


class IdentityTests(_Base):
    def client(self) -> HTTPClient:
        agent = RequestTraversalAgent(self.server)
        self.flush = agent.flush
        return HTTPClient(IdentityAgent(agent))

    def test_asks_for_identity_only(self) -> None:
        self.server.handlers[b"/img"] = lambda r: b"data"
        d = self.client().get("http://x/img")
        self.flush()
        self.successResultOf(d)
        request, = self.server.requests
        self.assertEqual(request.requestHeaders.getRawHeaders(
            b"accept-encoding"), [b"identity"])

    def test_encoded_anyway_is_refused(self) -> None:
        def gzipped(request: Any) -> Any:
            request.setHeader(b"content-encoding", b"gzip")
            return hang(request)

        self.server.handlers[b"/img"] = gzipped
        d = self.client().get("http://x/img", unbuffered=True)
        self.flush()
        failure = self.failureResultOf(d, EncodedBody)
        self.assertIn("gzip-encoded", str(failure.value))


class ChecksumFileTests(_Base):
    """prepare_image's checksum file (``os_hash_value`` is a URL)."""

    def resolve(self, path: str) -> "defer.Deferred[Any]":
        config = load_config({"image_download_connection_timeout": "20"})
        context = RunningAgent(config=config, reactor=self.clock,
                               process=FakeProcessRunner(),
                               guard=DeviceGuard(None), http=self.stub)
        standby = StandbyExtension(context)
        spec = checksum.ChecksumSpec("sha256", None, "http://x" + path)
        d = defer.ensureDeferred(standby._resolve_checksum(
            spec, {"id": "img", "urls": ["http://x/disk.img"]}))
        self.stub.flush()
        return d

    def test_found(self) -> None:
        self.server.handlers[b"/SUMS"] = lambda r: ("a" * 64 + "  disk.img\n"
                                                   ).encode()
        self.assertEqual(self.successResultOf(self.resolve("/SUMS")),
                         ("sha256", "a" * 64))

    def test_too_large(self) -> None:
        self.server.handlers[b"/SUMS"] = streams(CHECKSUM_FILE_LIMIT + 1)
        failure = self.failureResultOf(self.resolve("/SUMS"),
                                       errors.ImageDownloadError)
        self.assertIn(f"the answer is larger than {CHECKSUM_FILE_LIMIT} "
                      f"bytes", failure.value.details)

    def test_body_that_never_ends(self) -> None:
        self.server.handlers[b"/SUMS"] = hang
        d = self.resolve("/SUMS")
        self.clock.advance(20)
        failure = self.failureResultOf(d, errors.ImageDownloadError)
        self.assertIn("cannot get the checksum file http://x/SUMS: timed out",
                      failure.value.details)
        self.closed()


class ConfigDriveURLTests(_Base):
    def fetch(self, path: str) -> "defer.Deferred[bytes]":
        context = RunningAgent(config=load_config({}), reactor=self.clock,
                               process=FakeProcessRunner(),
                               guard=DeviceGuard(None), http=self.stub)
        d = defer.ensureDeferred(configdrive.fetch(context, "http://x" + path))
        self.stub.flush()
        return d

    def test_larger_than_any_config_drive_is_not_read(self) -> None:
        self.server.handlers[b"/cd"] = claims(configdrive.URL_LIMIT + 1)
        failure = self.failureResultOf(self.fetch("/cd"),
                                       errors.DeploymentError)
        self.assertIn("exceeds maximum limit of 64MiB",
                      str(failure.value.details))
        self.closed()

    def test_body_that_never_ends(self) -> None:
        self.server.handlers[b"/cd"] = hang
        d = self.fetch("/cd")
        self.clock.advance(configdrive.URL_TIMEOUT)
        failure = self.failureResultOf(d, errors.DeploymentError)
        self.assertIn("timed out", str(failure.value.details))
        self.closed()


class IronicAnswerTests(_Base):
    def test_lookup_answer_over_the_cap(self) -> None:
        body = json.dumps({"node": {"uuid": "u", "x": "z" * ANSWER_LIMIT},
                           "config": {"heartbeat_timeout": 300}}).encode()
        self.server.handlers[b"/v1/lookup"] = claims(len(body))
        client = IronicClient(self.stub, self.clock, ["http://ironic"],
                              pinned_version="1.68")
        from ipa_twisted.ironic import LookupAttemptFailed

        d = defer.ensureDeferred(client.lookup_once(["52:54:00:12:34:56"]))
        self.stub.flush()
        failure = self.failureResultOf(d, LookupAttemptFailed)
        self.assertIn(f"the answer is larger than {ANSWER_LIMIT} bytes",
                      str(failure.value))
        self.closed()


class InspectorAnswerTests(_Base):
    def test_answer_over_the_cap_is_a_failed_post(self) -> None:
        self.server.handlers[b"/continue"] = claims(
            inspector.ANSWER_LIMIT + 1)
        context = RunningAgent(config=load_config({}), reactor=self.clock,
                               process=FakeProcessRunner(),
                               guard=DeviceGuard(None), http=self.stub)
        d = defer.ensureDeferred(inspector.post(
            context, ["http://x/continue"], b"{}", 30))
        for _ in range(inspector.ATTEMPTS):
            self.stub.flush()
            self.clock.advance(60)
        result = self.successResultOf(d)
        self.assertIsNone(result.status)
        self.assertIn("the answer is larger than", result.answer)
        self.closed(inspector.ATTEMPTS)


class RangeTests(_Base):
    """The second pass of a qcow2 download (item 5)."""

    def fetch(self, length: int = 1000) -> "defer.Deferred[bytes | None]":
        d = defer.ensureDeferred(fetch_range(
            self.stub, self.clock, "http://x/q", 4096, length, 30, "img"))
        self.stub.flush()
        return d

    def test_server_ignoring_range_is_not_read(self) -> None:
        # 200 and a 400 MiB body that is still coming: give up at once
        self.server.handlers[b"/q"] = claims(400 * MiB)
        self.assertIsNone(self.successResultOf(self.fetch()))
        self.closed()

    def test_range_answer_is_capped(self) -> None:
        def too_much(request: Any) -> Any:
            request.setResponseCode(206)
            request.setHeader(b"content-range", b"bytes 4096-5095/99999")
            return streams(5 * MiB)(request)

        self.server.handlers[b"/q"] = too_much
        failure = self.failureResultOf(self.fetch(), errors.ImageDownloadError)
        self.assertIn("sent more than the 1000 bytes asked for",
                      failure.value.details)

    def test_range(self) -> None:
        def part(request: Any) -> Any:
            self.assertEqual(request.getHeader(b"range"), b"bytes=4096-5095")
            request.setResponseCode(206)
            request.setHeader(b"content-range", b"bytes 4096-5095/99999")
            return b"r" * 1000

        self.server.handlers[b"/q"] = part
        self.assertEqual(self.successResultOf(self.fetch()), b"r" * 1000)

    def test_other_answers_are_errors(self) -> None:
        def gone(request: Any) -> Any:
            request.setResponseCode(416)
            return b""

        self.server.handlers[b"/q"] = gone
        failure = self.failureResultOf(self.fetch(), errors.ImageDownloadError)
        self.assertIn("answered HTTP 416", failure.value.details)
