"""Calling a sandboxed agent's API from the test (inside its namespace)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

from tests.integration import harness as h


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kw: Any) -> None:
        return None


def call(netns: str, method: str, path: str, body: Any = None,
         port: int = 9999, timeout: float = 60
         ) -> tuple[int, dict[str, str], Any]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}",
                                 data=data, method=method)
    opener = urllib.request.build_opener(NoRedirect)
    with h.in_netns(netns):
        try:
            with opener.open(req, timeout=timeout) as r:
                status, headers, raw = r.status, dict(r.headers), r.read()
        except urllib.error.HTTPError as e:
            status, headers, raw = e.code, dict(e.headers), e.read()
    return status, headers, json.loads(raw) if raw else None


def command(netns: str, token: str, name: str, **params: Any) -> Any:
    status, _, body = call(netns, "POST",
                           f"/v1/commands/?wait=true&agent_token={token}",
                           {"name": name, "params": params})
    if status != 200:
        raise RuntimeError(f"{name}: HTTP {status}: {body}")
    return body
