"""In-memory fakes of the agent's seams, for tests (ours and third parties').

Each fake provides the same interface as the real thing and is checked with
``verifyObject`` in the tests.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import attrs
from twisted.internet.defer import Deferred, fail, succeed
from zope.interface import implementer

from ipa_twisted.commands.base import Extension, async_command, sync_command
from ipa_twisted.hardware.manager import HardwareManager, HardwareSupport
from ipa_twisted.process import (
    IProcessRunner,
    ProcessFailed,
    ProcessResult,
    ToolNotFound,
)

Handler = Callable[[Sequence[str]], "ProcessResult | Deferred[ProcessResult]"]


@implementer(IProcessRunner)
@attrs.define
class FakeProcessRunner:
    """Answers ``run(argv)`` from a table of handlers keyed by tool name.

    A tool without a handler is "not installed" (ToolNotFound).  Every call
    is recorded in ``calls``.
    """

    handlers: dict[str, Handler] = attrs.field(factory=dict)
    calls: list[tuple[str, ...]] = attrs.field(factory=list)

    def add(self, tool: str, stdout: bytes | str = b"", exit_code: int = 0,
            stderr: bytes | str = b"") -> None:
        out = stdout.encode() if isinstance(stdout, str) else stdout
        err = stderr.encode() if isinstance(stderr, str) else stderr

        def handler(argv: Sequence[str]) -> ProcessResult:
            return ProcessResult(tuple(argv), exit_code, out, err)

        self.handlers[tool] = handler

    def run(self, argv: Sequence[str], timeout: float = 60.0,
            check: bool = True, stdin: bytes | None = None,
            env: Mapping[str, str] | None = None
            ) -> "Deferred[ProcessResult]":
        self.calls.append(tuple(argv))
        handler = self.handlers.get(argv[0])
        if handler is None:
            return fail(ToolNotFound(argv, "command not found"))
        value = handler(argv)
        d = value if isinstance(value, Deferred) else succeed(value)

        def checked(result: ProcessResult) -> ProcessResult:
            if check and result.exit_code != 0:
                raise ProcessFailed(argv, f"exit code {result.exit_code}",
                                    result)
            return result

        return d.addCallback(checked)

    def stop(self) -> "Deferred[None]":
        return succeed(None)


class FakeHardwareManager(HardwareManager):
    """A manager with fixed answers; steps are recorded in ``ran``."""

    HARDWARE_MANAGER_NAME = "fake_hardware_manager"
    HARDWARE_MANAGER_VERSION = "1.0"

    def __init__(self, support: int = HardwareSupport.SERVICE_PROVIDER,
                 inventory: dict[str, Any] | None = None,
                 root_device: str = "/dev/fake0") -> None:
        super().__init__()
        self.support = support
        self.inventory = inventory or {
            "interfaces": [{"name": "eth0", "mac_address": "52:54:00:12:34:56"}],
            "cpu": {"count": 1, "architecture": "x86_64"},
            "disks": [], "memory": {"total": 1, "physical_mb": 1},
        }
        self.root_device = root_device
        self.ran: list[tuple[str, dict[str, Any]]] = []

    def evaluate_hardware_support(self) -> int:
        return self.support

    def list_hardware_info(self) -> dict[str, Any]:
        return self.inventory

    def get_os_install_device(self, permit_refresh: bool = False) -> str:
        return self.root_device

    def get_clean_steps(self, node: Any, ports: Any) -> list[dict[str, Any]]:
        return [{"step": "fake_clean", "priority": 10, "interface": "deploy",
                 "reboot_requested": False, "abortable": True}]

    def get_deploy_steps(self, node: Any, ports: Any) -> list[dict[str, Any]]:
        return []

    def get_service_steps(self, node: Any, ports: Any) -> list[dict[str, Any]]:
        return []

    def fake_clean(self, node: Any, ports: Any, **kwargs: Any) -> str:
        self.ran.append(("fake_clean", kwargs))
        return "cleaned"

    def full_sync(self) -> None:
        self.ran.append(("full_sync", {}))


class FakeExtension(Extension):
    """Commands for exercising the runner and the API."""

    name = "fake"

    def __init__(self, agent: Any = None) -> None:
        super().__init__(agent)
        self.pending: list[Deferred[Any]] = []

    @sync_command("echo")
    def echo(self, value: Any = "ok") -> Any:
        return value

    @sync_command("boom")
    def boom(self) -> None:
        raise ValueError("bad thing")

    @async_command("slow")
    def slow(self) -> "Deferred[Any]":
        d: Deferred[Any] = Deferred()
        self.pending.append(d)
        return d

    @async_command("done")
    def done(self, text: str = "done") -> str:
        return text

    def _check(self, size: Any = 1) -> None:
        from ipa_twisted import errors

        if not isinstance(size, int) or size < 1:
            raise errors.InvalidCommandParamsError("size must be >= 1")

    @async_command("validated", _check)
    def validated(self, size: Any = 1) -> int:
        return int(size) * 2

    @sync_command("unserializable")
    def unserializable(self) -> object:
        return object()


class HangingHTTP:
    """A treq-like client whose requests never get an answer; cancelling
    one fails it as twisted.web does (``ResponseNeverReceived`` wrapping
    the ``CancelledError``).  ``calls`` holds the URLs asked for,
    ``pending`` the requests not cancelled yet."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.pending: list[Deferred[Any]] = []

    def request(self, method: str, url: str, **kwargs: Any
                ) -> Deferred[Any]:
        from twisted.internet.defer import CancelledError
        from twisted.python.failure import Failure
        from twisted.web.client import ResponseNeverReceived

        def cancel(d: Deferred[Any]) -> None:
            self.pending.remove(d)
            d.errback(ResponseNeverReceived([Failure(CancelledError())]))

        self.calls.append(url)
        d: Deferred[Any] = Deferred(cancel)
        self.pending.append(d)
        return d


class FakeIronic:
    """A tiny Ironic API (Klein) answering lookup and heartbeat.

    ``lookup_answers`` and ``heartbeat_answers`` are lists of
    ``(status, body)`` consumed in order (the last one repeats).  Every
    request is recorded in ``requests`` as ``(method, path, args, headers,
    body)``.
    """

    from klein import Klein as _Klein

    app = _Klein()

    def __init__(self, version: str = "1.99") -> None:
        self.version = version
        self.version_status = 200
        self.node = {"uuid": "1be26c0b-03f2-4d2e-ae87-c02d7f33c123",
                     "properties": {}, "instance_info": {}}
        self.lookup_answers: list[tuple[int, Any]] = [
            (200, {"node": self.node, "config": {
                "heartbeat_timeout": 300, "agent_token": "x" * 43}})]
        self.heartbeat_answers: list[tuple[int, Any]] = [(202, None)]
        self.requests: list[tuple[str, str, dict[str, list[str]],
                                  dict[str, str], Any]] = []

    def _record(self, request: Any) -> None:
        import json

        raw = request.content.read() if request.content else b""
        body = json.loads(raw) if raw else None
        args = {k.decode(): [v.decode() for v in vs]
                for k, vs in request.args.items()}
        headers = {k.decode().lower(): v[0].decode()
                   for k, v in request.requestHeaders.getAllRawHeaders()}
        self.requests.append((request.method.decode(), request.path.decode(),
                              args, headers, body))

    @staticmethod
    def _answer(request: Any, answers: list[tuple[int, Any]]) -> bytes:
        import json

        status, body = answers.pop(0) if len(answers) > 1 else answers[0]
        request.setResponseCode(status)
        request.setHeader(b"Content-Type", b"application/json")
        return json.dumps(body).encode() if body is not None else b""

    @app.route("/", methods=["GET"])
    def root(self, request: Any) -> bytes:
        self._record(request)
        request.setResponseCode(self.version_status)
        import json

        return json.dumps({"name": "OpenStack Ironic API",
                           "default_version": {"id": "v1",
                                               "version": self.version,
                                               "min_version": "1.1"}}
                          ).encode()

    @app.route("/v1/lookup", methods=["GET"])
    def lookup(self, request: Any) -> bytes:
        self._record(request)
        return self._answer(request, self.lookup_answers)

    @app.route("/v1/heartbeat/<string:uuid>", methods=["POST"])
    def heartbeat(self, request: Any, uuid: str) -> bytes:
        self._record(request)
        return self._answer(request, self.heartbeat_answers)

    def of(self, path: str) -> list[tuple[str, str, dict[str, list[str]],
                                          dict[str, str], Any]]:
        return [r for r in self.requests if r[1] == path
                or r[1].startswith(path + "/")]
