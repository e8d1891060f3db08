"""The agent REST API that the Ironic conductor calls (contract section 1).

``AgentAPI(runner, ...).resource()`` is the Twisted resource the site
serves (``app.resource()`` is the bare Klein router, without the checks
of the URL that Klein itself cannot answer in JSON); routes are the same
with and without the ``/v1`` prefix (except the documents at ``/``,
``/v1/`` and ``/v1/openapi.json``).  Every error answer is JSON
``{"faultcode", "faultstring"}``.

The token is read from the URI's query only (:mod:`ipa_twisted.api.query`),
never from a body.  Before a body is read, the site asks
:meth:`AgentAPI.body_policy` how large it may be and whether it is kept.
"""

from __future__ import annotations

import hmac
import json
import re
from typing import Any, Callable
from urllib.parse import unquote_to_bytes

import attrs
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from twisted.web.resource import Resource

from ipa_twisted.lean import submodules_only

# the router's modules, not all that Klein and Werkzeug offer (lean.py)
submodules_only("klein", "werkzeug")

from klein._app import Klein  # noqa: E402
from klein._interfaces import IKleinRequest  # noqa: E402
from werkzeug.exceptions import (  # noqa: E402
    HTTPException, MethodNotAllowed, NotFound)
from werkzeug.routing import RequestRedirect  # noqa: E402

from ipa_twisted import __version__, encoding, errors  # noqa: E402
from ipa_twisted.api import query  # noqa: E402
from ipa_twisted.commands.base import CommandRunner  # noqa: E402

log = Logger()

#: Largest accepted command body; a command's params are small (a config
#: drive is at most 64 MiB of base64, sent inside the params).
MAX_BODY = 96 * 1024 * 1024
#: Bodies up to this size are decoded on the reactor; larger ones in a
#: thread.
INLINE_BODY = 1024 * 1024
#: Largest body accepted (read and dropped) on a route that takes none.
MAX_IGNORED_BODY = 64 * 1024
#: Deepest nesting of a command body (objects and arrays); Ironic's own
#: params are a handful of levels deep.
MAX_JSON_DEPTH = 64

DOCS_URL = "https://docs.openstack.org/ironic-python-agent/"
MEDIA_TYPE = "application/vnd.openstack.ironic-python-agent.v1+json"


class BadRequest(errors.AgentError):
    message = "400 Bad Request"
    status_code = 400


class PayloadTooLarge(errors.AgentError):
    message = "413 Payload Too Large"
    status_code = 413


@attrs.frozen
class BodyPolicy:
    """How much of a request body the site reads, and whether it keeps it
    (else the bytes are counted and dropped)."""

    limit: int
    keep: bool


def route_path(path: bytes) -> bytes:
    """The path as the router matches it: percent escapes decoded in each
    segment (as Twisted does), repeated slashes merged (as werkzeug
    does)."""
    decoded = b"/".join(unquote_to_bytes(s) for s in path.split(b"/"))
    return re.sub(rb"/{2,}", b"/", decoded)


def is_command_path(path: bytes) -> bool:
    """Is this (raw) path one of the ``/commands`` routes (token needed)?"""
    routed = route_path(path)
    return routed in (b"/v1/commands", b"/commands") or \
        routed.startswith((b"/v1/commands/", b"/commands/"))


_TOO_DEEP = object()


def _json_depth_ok(obj: Any, limit: int) -> bool:
    stack = [(obj, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, dict):
            children: Any = value.values()
        elif isinstance(value, list):
            children = value
        else:
            continue
        if depth > limit:
            return False
        stack.extend((child, depth + 1) for child in children)
    return True


def _size(content: Any) -> int:
    """The size of a request body (a BytesIO or a temporary file)."""
    if content is None:
        return 0
    position = content.tell()
    content.seek(0, 2)
    size: int = content.tell()
    content.seek(position)
    return size


def _decode(content: Any) -> Any:
    """The JSON of a command body (blocking: a large one is decoded in a
    thread), its depth checked."""
    raw = content.read(MAX_BODY + 1) if content is not None else b""
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise BadRequest(f"Failed to decode JSON object: {e}") from None
    except RecursionError:
        body = _TOO_DEEP
    if body is _TOO_DEEP or not _json_depth_ok(body, MAX_JSON_DEPTH):
        raise BadRequest(f"Failed to decode JSON object: nested deeper "
                         f"than {MAX_JSON_DEPTH} levels")
    return body


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
    """A query argument (never a form field of the body)."""
    return query.arg(request.uri, name)


def _fault(request: IRequest, code: int, text: str) -> bytes:
    request.setResponseCode(code)
    request.setHeader(b"Content-Type", b"application/json")
    return fault_body(code, text)


def _url_problem(request: IRequest) -> str | None:
    """What Klein cannot route (it would answer text or raise outside the
    app's error handlers): a path or Host that is not UTF-8, a Host that
    is no valid name."""
    try:
        b"/".join(request.postpath or []).decode("utf-8")
    except UnicodeDecodeError:
        return "the path is not UTF-8 once percent-decoded"
    try:
        host = request.getRequestHostname().decode("utf-8")
        host.lower().encode("idna")
    except UnicodeError:
        return "invalid Host header"
    return None


def _methods_with_slash(request: IRequest) -> list[str]:
    try:
        mapper = IKleinRequest(request).mapper
    except TypeError:
        return []
    path = mapper.path_info
    if not path or path.endswith("/"):
        return []
    return sorted(mapper.allowed_methods(path + "/"))


class _GuardedResource(Resource):
    """The Klein router behind the checks it cannot answer in JSON."""

    isLeaf = True

    def __init__(self, inner: Resource) -> None:
        super().__init__()
        self._inner = inner

    def render(self, request: IRequest) -> Any:
        problem = _url_problem(request)
        if problem is not None:
            return _fault(request, 400, f"400 Bad Request: {problem}")
        try:
            return self._inner.render(request)
        except HTTPException as e:
            code = e.code or 400
            return _fault(request, code, f"{code} {e.name}: {e.description}")
        except Exception:
            log.failure("unexpected error routing {method} {path}",
                        method=request.method.decode("latin-1"),
                        path=query.split_uri(request.uri)[0].decode(
                            "latin-1"))
            return _fault(request, 500, "500 Internal Server Error")


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
        in_thread: Callable[..., "Deferred[Any]"] | None = None,
    ) -> None:
        self._runner = runner
        self._token = token
        self._started_at = started_at
        self._version = version
        #: runs blocking work in a thread (None: inline, for tests)
        self._in_thread = in_thread

    # ----------------------------------------------------------- helpers

    def _json(self, request: IRequest, obj: Any, code: int = 200) -> bytes:
        request.setResponseCode(code)
        request.setHeader(b"Content-Type", b"application/json")
        return encoding.dump_bytes(obj)

    def resource(self) -> Resource:
        """The resource to serve (see the module's docstring)."""
        return _GuardedResource(self.app.resource())

    def token_valid(self, uri: bytes) -> bool:
        """Does the query of ``uri`` carry the token in force?"""
        expected = self._token()
        given = query.arg(uri, "agent_token")
        return (
            expected is not None
            and given is not None
            and hmac.compare_digest(given.encode(), expected.encode())
        )

    def _check_token(self, request: IRequest) -> None:
        self._require_token(request.uri)

    def _require_token(self, uri: bytes) -> None:
        if not self.token_valid(uri):
            raise errors.Unauthorized()

    def body_policy(self, method: bytes, uri: bytes) -> BodyPolicy:
        """Called by the site once the headers of a request that announces
        a body are in, before any of the body is read.  Raises
        ``Unauthorized`` on a ``/commands`` route without the token (IPA
        answers 401 without reading the body)."""
        path, _ = query.split_uri(uri)
        if is_command_path(path):
            self._require_token(uri)
            if method.upper() == b"POST":
                return BodyPolicy(MAX_BODY, keep=True)
        return BodyPolicy(MAX_IGNORED_BODY, keep=False)

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

    @app.route("/v1/openapi.json", methods=["GET"])
    def openapi_document(self, request: IRequest) -> bytes:
        # imported when asked for: an idle agent need not hold it
        from ipa_twisted.api import openapi

        return self._json(request, openapi.document(self._version))

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
        content = request.content
        size = _size(content)
        if size > MAX_BODY:
            raise PayloadTooLarge(f"request body larger than {MAX_BODY} bytes")
        if size > INLINE_BODY and self._in_thread is not None:
            # 64 MiB of config drive take ~0.2 s to decode (a hostile
            # array of numbers, seconds): not on the reactor
            body = await self._in_thread(_decode, content)
        else:
            body = _decode(content)
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
        if isinstance(exc, NotFound):
            # a method werkzeug does not redirect, on a path that exists
            # with a trailing slash: that path's methods
            slashed = _methods_with_slash(request)
            if slashed:
                exc = MethodNotAllowed(valid_methods=slashed)
                code = 405
                request.setResponseCode(code)
        if isinstance(exc, MethodNotAllowed) and exc.valid_methods:
            request.setHeader(b"Allow",
                              ", ".join(exc.valid_methods).encode("ascii"))
        return fault_body(code, f"{code} {exc.name}: {exc.description}")

    @app.handle_errors(Exception)
    def unexpected_error(self, request: IRequest, failure: Failure) -> bytes:
        log.failure("unexpected error answering {method} {path}", failure,
                    method=request.method.decode(), path=request.path.decode())
        request.setResponseCode(500)
        request.setHeader(b"Content-Type", b"application/json")
        return fault_body(500, str(failure.value) or repr(failure.value))
