"""The Ironic API client (treq): version discovery, lookup and heartbeat.

Several API URLs may be given: each request tries them in order and moves
on when one cannot be reached (connection refused, DNS, timeout); the URL
that answered moves to the front, so later requests go there first.
"""

from __future__ import annotations

import json
import random
from typing import Any, Mapping, Sequence

import attrs
from twisted.internet import defer
from twisted.internet import error as ierror
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.web import client as webclient
from twisted.web.iweb import IResponse

from ipa_twisted import __version__, errors
from ipa_twisted.httpfetch import MiB, describe, get_bytes
from ipa_twisted.retry import GaveUp, is_cancellation, retry

log = Logger()

MIN_VERSION = (1, 31)
AGENT_VERSION_VERSION = (1, 36)
AGENT_TOKEN_VERSION = (1, 62)
AGENT_VERIFY_CA_VERSION = (1, 68)
AGENT_STATUS_VERSION = (1, 72)
MAX_KNOWN_VERSION = AGENT_VERIFY_CA_VERSION

#: Failures that mean "this URL is not reachable now": try the next one.
CONNECTION_ERRORS = (
    ierror.ConnectError,
    ierror.DNSLookupError,
    ierror.ConnectionLost,
    ierror.TimeoutError,
    defer.TimeoutError,
    webclient.ResponseNeverReceived,
    webclient.RequestTransmissionFailed,
    webclient.ResponseFailed,
)

#: The most of an answer read (lookup answers are a few KiB; a bigger
#: body fails like a broken connection: BodyTooLarge is a ResponseFailed).
ANSWER_LIMIT = 16 * MiB

LOOKUP_MAX_BACKOFF = 60.0
LOOKUP_CONFLICT_PAUSES = (5.0, 10.0, 30.0)


def version_tuple(text: str) -> tuple[int, int]:
    major, _, minor = text.partition(".")
    return int(major), int(minor)


def version_text(version: tuple[int, int]) -> str:
    return f"{version[0]}.{version[1]}"


def lookup_delay(attempt: int, interval: float, rng: random.Random) -> float:
    """Pause after the ``attempt``-th failed lookup (1-based), as IPA does:
    ``U(interval, clamp(2^(attempt-1), interval, 60))``."""
    high = min(max(2.0 ** (attempt - 1), interval), LOOKUP_MAX_BACKOFF)
    return rng.uniform(interval, high)


def conflict_pause(conflicts: int) -> float:
    """Extra pause after the ``conflicts``-th 409 (5, 10, then 30 s)."""
    index = min(conflicts, len(LOOKUP_CONFLICT_PAUSES)) - 1
    return LOOKUP_CONFLICT_PAUSES[max(index, 0)]


def error_text(body: bytes) -> str:
    """The useful part of an Ironic error body."""
    text = body.decode("utf-8", "replace")
    try:
        data = json.loads(text)
    except ValueError:
        return text.strip()[:500]
    if isinstance(data, dict) and "error_message" in data:
        message = data["error_message"]
        if isinstance(message, str):
            try:
                message = json.loads(message)
            except ValueError:
                return message
        if isinstance(message, dict):
            return str(message.get("faultstring") or message.get("title")
                       or message)
        return str(message)
    return text.strip()[:500]


class LookupAttemptFailed(Exception):
    def __init__(self, reason: str, conflict: bool = False) -> None:
        super().__init__(reason)
        self.conflict = conflict


@attrs.define
class LookupResult:
    node: dict[str, Any]
    config: dict[str, Any]

    @property
    def node_uuid(self) -> str:
        return str(self.node["uuid"])


class IronicClient:
    """Talks to the Ironic API on behalf of the agent.

    ``http`` is a treq-like client (``treq.HTTPClient`` or
    ``treq.testing.StubTreq``).
    """

    def __init__(
        self,
        http: Any,
        clock: IReactorTime,
        api_urls: Sequence[str],
        request_timeout: float = 30.0,
        pinned_version: str | None = None,
        request_id: str | None = None,
        rng: random.Random | None = None,
    ) -> None:
        if not api_urls:
            raise ValueError("at least one API URL is needed")
        self._http = http
        self._clock = clock
        self.api_urls = list(api_urls)
        self._timeout = request_timeout
        self._pinned = version_tuple(pinned_version) if pinned_version else None
        self._version: tuple[int, int] | None = self._pinned
        self._request_id = request_id
        self._rng = rng or random.SystemRandom()

    # -------------------------------------------------------------- plumbing

    def _headers(self, version: tuple[int, int] | None) -> dict[str, str]:
        headers = {
            "Content-Type": "application/json",
            "Accept": "application/json",
            "User-Agent": f"ipa-twisted/{__version__}",
        }
        if self._request_id:
            headers["X-OpenStack-Request-ID"] = self._request_id
        if version is not None:
            headers["X-OpenStack-Ironic-API-Version"] = version_text(version)
        return headers

    async def _one(self, method: str, url: str, **kwargs: Any
                   ) -> tuple[IResponse, bytes]:
        return await get_bytes(self._http, self._clock, url,
                               limit=ANSWER_LIMIT, timeout=self._timeout,
                               method=method, **kwargs)

    async def request(
        self,
        method: str,
        path: str,
        version: tuple[int, int] | None = None,
        json_body: Any = None,
        params: Mapping[str, str] | None = None,
    ) -> tuple[str, IResponse, bytes]:
        """Send to the first reachable API URL; ``(url, response, body)``."""
        kwargs: dict[str, Any] = {"headers": self._headers(version)}
        if json_body is not None:
            kwargs["data"] = json.dumps(json_body).encode("utf-8")
        if params:
            kwargs["params"] = dict(params)
        last: Exception | None = None
        for base in list(self.api_urls):
            url = base + path
            try:
                response, body = await self._one(method, url, **kwargs)
            except CONNECTION_ERRORS as e:
                if is_cancellation(e):
                    raise defer.CancelledError() from None
                log.warn("cannot reach Ironic at {url}: {error}", url=base,
                         error=describe(e))
                last = e
                continue
            if self.api_urls[0] != base:
                self.api_urls.remove(base)
                self.api_urls.insert(0, base)
            return base, response, body
        assert last is not None
        raise last

    # ------------------------------------------------------------- versions

    async def api_version(self) -> tuple[int, int]:
        """The API's default microversion (cached), or 1.31 when unknown."""
        if self._version is not None:
            return self._version
        try:
            _, response, body = await self.request("GET", "/")
            if response.code != 200:
                raise ValueError(f"HTTP {response.code}")
            data = json.loads(body)
            version = version_tuple(data["default_version"]["version"])
        except defer.CancelledError:
            raise
        except Exception as e:
            log.warn("cannot tell the Ironic API version ({error}); assuming "
                     "{v} for now", error=describe(e),
                     v=version_text(MIN_VERSION))
            return MIN_VERSION
        log.info("Ironic API version {v}", v=version_text(version))
        self._version = version
        return version

    # --------------------------------------------------------------- lookup

    async def lookup_once(
        self, addresses: Sequence[str], node_uuid: str | None = None
    ) -> LookupResult:
        version = min(await self.api_version(), AGENT_TOKEN_VERSION)
        params = {"addresses": ",".join(addresses)}
        if node_uuid:
            params["node_uuid"] = node_uuid
        try:
            _, response, body = await self.request(
                "GET", "/v1/lookup", version=version, params=params
            )
        except CONNECTION_ERRORS as e:
            if is_cancellation(e):
                raise defer.CancelledError() from None
            raise LookupAttemptFailed(f"Ironic unreachable: {describe(e)}")
        if response.code == 409:
            raise LookupAttemptFailed(
                f"conflict (409): {error_text(body)}", conflict=True
            )
        if response.code != 200:
            raise LookupAttemptFailed(
                f"HTTP {response.code}: {error_text(body)} (has the node been "
                f"enrolled, with a port for one of {','.join(addresses)}, "
                f"and is it in a state that allows lookup?)"
            )
        try:
            data = json.loads(body)
        except ValueError:
            raise LookupAttemptFailed("answer is not JSON") from None
        if not isinstance(data, dict):
            raise LookupAttemptFailed("answer is not a JSON object")
        node = data.get("node")
        if not isinstance(node, dict) or not node.get("uuid"):
            raise LookupAttemptFailed("answer has no node uuid")
        config = data.get("config")
        if not isinstance(config, dict):
            # Old Ironic: heartbeat_timeout at the top level.
            if "heartbeat_timeout" not in data:
                raise LookupAttemptFailed("answer has no config")
            config = {"heartbeat_timeout": data["heartbeat_timeout"]}
        if "heartbeat_timeout" not in config:
            raise LookupAttemptFailed("answer has no heartbeat_timeout")
        return LookupResult(node, config)

    async def lookup(
        self,
        addresses: Sequence[str],
        node_uuid: str | None = None,
        timeout: float = 600.0,
        interval: float = 1.0,
    ) -> LookupResult:
        """Look the node up, retrying with random exponential backoff (and
        longer pauses after 409s) for up to ``timeout`` seconds."""
        conflicts = 0
        last_conflict = False
        tries = 0

        async def once() -> LookupResult:
            nonlocal conflicts, last_conflict, tries
            tries += 1
            try:
                return await self.lookup_once(addresses, node_uuid)
            except LookupAttemptFailed as e:
                last_conflict = e.conflict
                conflicts += e.conflict
                raise

        def pause(failures: int) -> float:
            extra = conflict_pause(conflicts) if last_conflict else 0.0
            return lookup_delay(failures, interval, self._rng) + extra

        def retrying(n: int, error: BaseException, delay: float) -> None:
            log.warn("lookup attempt {n} failed: {reason}; retrying in "
                     "{pause:.1f} s", n=n, reason=str(error), pause=delay)

        try:
            result = await retry(
                self._clock, once, pause, timeout=timeout,
                retryable=lambda e: isinstance(e, LookupAttemptFailed),
                on_retry=retrying)
        except GaveUp as e:
            raise errors.LookupNodeError(
                f"Could not look up node info after {e.attempts} attempts "
                f"in {timeout:.0f} s; last error: {e.last}") from None
        log.info("lookup found node {uuid} (attempt {n})",
                 uuid=result.node_uuid, n=tries)
        return result

    # ------------------------------------------------------------ heartbeat

    async def heartbeat(
        self,
        node_uuid: str,
        callback_url: str,
        agent_token: str | None,
        agent_verify_ca: str | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        detected = await self.api_version()
        version = min(detected, MAX_KNOWN_VERSION)
        body: dict[str, Any] = {"callback_url": callback_url}
        if detected >= AGENT_TOKEN_VERSION:
            body["agent_token"] = agent_token
        if detected >= AGENT_VERSION_VERSION:
            body["agent_version"] = __version__
        if detected >= AGENT_VERIFY_CA_VERSION and agent_verify_ca:
            body["agent_verify_ca"] = agent_verify_ca
        if extra and detected >= AGENT_STATUS_VERSION:
            body.update(extra)
            version = AGENT_STATUS_VERSION
        try:
            _, response, resp_body = await self.request(
                "POST", f"/v1/heartbeat/{node_uuid}", version=version,
                json_body=body,
            )
        except CONNECTION_ERRORS as e:
            if is_cancellation(e):
                raise defer.CancelledError() from None
            raise errors.HeartbeatConnectionError(describe(e)) from None
        if response.code == 202:
            log.debug("heartbeat accepted")
            return
        text = error_text(resp_body)
        if response.code == 409:
            raise errors.HeartbeatConflictError(text)
        raise errors.HeartbeatError(f"HTTP {response.code}: {text}")
