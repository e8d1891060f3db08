"""The agent REST API that the Ironic conductor calls (contract section 1).

``AgentAPI(runner, ...).app.resource()`` is a Twisted resource; routes are
the same with and without the ``/v1`` prefix (except the documents at ``/``
and ``/v1/``).  Every error answer is JSON ``{"faultcode", "faultstring"}``.
"""

from __future__ import annotations

import hmac
import json
from typing import Any, Callable

from klein import Klein
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from werkzeug.exceptions import HTTPException
from werkzeug.routing import RequestRedirect

from ipa_twisted import __version__, encoding, errors
from ipa_twisted.commands.base import CommandRunner

log = Logger()

#: Largest accepted request body; a command's params are small (a config
#: drive is at most 64 MiB of base64, sent inside the params).
MAX_BODY = 96 * 1024 * 1024

DOCS_URL = "https://docs.openstack.org/ironic-python-agent/"
MEDIA_TYPE = "application/vnd.openstack.ironic-python-agent.v1+json"


class BadRequest(errors.AgentError):
    message = "400 Bad Request"
    status_code = 400


def _root_url(request: IRequest) -> str:
    """``scheme://host[:port]`` as the client addressed us."""
    scheme = "https" if request.isSecure() else "http"
    host = request.getHeader(b"host")
    if not host:
        addr = request.getHost()
        host = f"{addr.host}:{addr.port}".encode()
    return f"{scheme}://{host.decode('utf-8', 'replace')}"


def _links(root: str, name: str) -> list[dict[str, str]]:
    return [
        {"href": f"{root}/v1/{name}", "rel": "self"},
        {"href": f"{root}/{name}", "rel": "bookmark"},
    ]


def _v1(root: str) -> dict[str, Any]:
    return {
        "id": "v1",
        "links": [
            {"href": f"{root}/v1", "rel": "self"},
            {"href": DOCS_URL, "rel": "describedby", "type": "text/html"},
        ],
    }


def fault_body(code: int, text: str) -> bytes:
    return encoding.dump_bytes({
        "faultcode": "Server" if code >= 500 else "Client",
        "faultstring": text,
    })


def _arg(request: IRequest, name: str) -> str | None:
    values = request.args.get(name.encode("ascii"))
    if not values:
        return None
    return values[0].decode("utf-8", "replace")


class AgentAPI:
    """Routes of the agent API over a :class:`CommandRunner`.

    ``token`` returns the agent token currently in force (None: none yet,
    and then every ``/commands`` call is refused).
    """

    app = Klein()

    def __init__(
        self,
        runner: CommandRunner,
        token: Callable[[], str | None],
        started_at: float,
        version: str = __version__,
    ) -> None:
        self._runner = runner
        self._token = token
        self._started_at = started_at
        self._version = version

    # ----------------------------------------------------------- helpers

    def _json(self, request: IRequest, obj: Any, code: int = 200) -> bytes:
        request.setResponseCode(code)
        request.setHeader(b"Content-Type", b"application/json")
        return encoding.dump_bytes(obj)

    def _check_token(self, request: IRequest) -> None:
        expected = self._token()
        given = _arg(request, "agent_token")
        if (
            expected is None
            or given is None
            or not hmac.compare_digest(given.encode(), expected.encode())
        ):
            raise errors.Unauthorized()

    @staticmethod
    def _wants_wait(request: IRequest) -> bool:
        value = _arg(request, "wait")
        return value is not None and value.lower() == "true"

    # ------------------------------------------------------------ routes

    @app.route("/", methods=["GET"])
    def root(self, request: IRequest) -> bytes:
        root = _root_url(request)
        v1 = _v1(root)
        return self._json(request, {
            "name": "OpenStack Ironic Python Agent API",
            "description": "Ironic Python Agent is a provisioning agent "
                           "for OpenStack Ironic",
            "versions": [v1],
            "default_version": v1,
        })

    @app.route("/v1/", methods=["GET"])
    def v1(self, request: IRequest) -> bytes:
        root = _root_url(request)
        doc = _v1(root)
        doc["commands"] = _links(root, "commands")
        doc["status"] = _links(root, "status")
        doc["media_types"] = [
            {"base": "application/json", "type": MEDIA_TYPE}
        ]
        return self._json(request, doc)

    @app.route("/v1/status", methods=["GET"])
    @app.route("/status", methods=["GET"])
    def status(self, request: IRequest) -> bytes:
        return self._json(request, {
            "started_at": self._started_at,
            "version": self._version,
        })

    @app.route("/v1/commands/", methods=["GET"])
    @app.route("/commands/", methods=["GET"])
    def list_commands(self, request: IRequest) -> bytes:
        self._check_token(request)
        return self._json(request, {
            "commands": [r.serialize() for r in self._runner.list()]
        })

    @app.route("/v1/commands/<string:command_id>", methods=["GET"])
    @app.route("/commands/<string:command_id>", methods=["GET"])
    async def get_command(self, request: IRequest, command_id: str) -> bytes:
        self._check_token(request)
        result = self._runner.get(command_id)
        if self._wants_wait(request):
            await result.wait()
        return self._json(request, result.serialize())

    @app.route("/v1/commands/", methods=["POST"])
    @app.route("/commands/", methods=["POST"])
    async def run_command(self, request: IRequest) -> bytes:
        self._check_token(request)
        raw = request.content.read(MAX_BODY + 1) if request.content else b""
        if len(raw) > MAX_BODY:
            raise BadRequest(f"request body larger than {MAX_BODY} bytes")
        try:
            body = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as e:
            raise BadRequest(f"Failed to decode JSON object: {e}") from None
        if (
            not isinstance(body, dict)
            or not isinstance(body.get("name"), str)
            or not isinstance(body.get("params"), dict)
        ):
            raise BadRequest("Missing or invalid name or params")
        result = self._runner.execute(body["name"], body["params"])
        if not result.is_async or self._wants_wait(request):
            await result.wait()
        return self._json(request, result.serialize())

    # ------------------------------------------------------------ errors

    @app.handle_errors(errors.AgentError)
    def agent_error(self, request: IRequest, failure: Failure) -> bytes:
        exc = failure.value
        assert isinstance(exc, errors.AgentError)
        request.setResponseCode(exc.code)
        request.setHeader(b"Content-Type", b"application/json")
        return fault_body(exc.code, str(exc))

    @app.handle_errors(HTTPException)
    def http_error(self, request: IRequest, failure: Failure) -> bytes:
        exc = failure.value
        assert isinstance(exc, HTTPException)
        code = exc.code or 500
        request.setResponseCode(code)
        request.setHeader(b"Content-Type", b"application/json")
        if isinstance(exc, RequestRedirect):
            location = exc.new_url
            _, sep, query = request.uri.decode("latin-1").partition("?")
            if sep and "?" not in location:
                location += "?" + query  # keep the query (agent_token...)
            request.setHeader(b"Location", location.encode("utf-8"))
            return fault_body(code, f"{code} Permanent Redirect: {location}")
        return fault_body(code, f"{code} {exc.name}: {exc.description}")

    @app.handle_errors(Exception)
    def unexpected_error(self, request: IRequest, failure: Failure) -> bytes:
        log.failure("unexpected error answering {method} {path}", failure,
                    method=request.method.decode(), path=request.path.decode())
        request.setResponseCode(500)
        request.setHeader(b"Content-Type", b"application/json")
        return fault_body(500, str(failure.value) or repr(failure.value))
