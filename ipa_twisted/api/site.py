"""The HTTP site that serves the agent API: request log and TLS.

One log line per request after its answer::

    <client> - <METHOD> <path>[?<query>] - <status> (<ms>ms)

with the value of ``agent_token`` masked (ironic-python-agent logs it).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl, urlencode

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.web.resource import IResource
from twisted.web.server import Request, Site

log = Logger(namespace="ipa_twisted.api")

SECRET_PARAMS = {"agent_token"}


def mask_query(query: str) -> str:
    """The query string with secret parameters' values replaced."""
    if not query:
        return query
    pairs = parse_qsl(query, keep_blank_values=True)
    return urlencode(
        [(k, "***" if k in SECRET_PARAMS else v) for k, v in pairs],
        safe="*,:/",
    )


def client_address(request: Request) -> str:
    forwarded = request.getHeader(b"x-forwarded-for")
    if forwarded:
        return forwarded.decode("latin-1").split(",")[0].strip()
    real = request.getHeader(b"x-real-ip")
    if real:
        return real.decode("latin-1").strip()
    addr: Any = request.getClientAddress()
    return str(getattr(addr, "host", "unknown"))


class _TimedRequest(Request):
    _ipa_started: float | None = None

    def process(self) -> None:
        site: Site = self.channel.site  # type: ignore[attr-defined]
        self._ipa_started = site.reactor.seconds()
        super().process()


class AgentSite(Site):
    requestFactory = _TimedRequest
    noisy = False

    def __init__(self, resource: IResource, reactor: IReactorTime) -> None:
        super().__init__(resource, reactor=reactor)
        self.displayTracebacks = False

    def log(self, request: Request) -> None:  # type: ignore[override]
        uri = request.uri.decode("latin-1")
        path, sep, query = uri.partition("?")
        shown = path + (sep + mask_query(query) if sep else "")
        started = getattr(request, "_ipa_started", None)
        if started is None:
            elapsed = "?"
        else:
            elapsed = f"{(self.reactor.seconds() - started) * 1000:.1f}"
        log.info(
            "{client} - {method} {uri} - {code} ({ms}ms)",
            client=client_address(request),
            method=request.method.decode("latin-1"),
            uri=shown,
            code=request.code,
            ms=elapsed,
        )
