"""Inspection: run the collectors, post the data, never kill the agent.

Where to post (contract 3.1): ``inspection_callback_url`` (a comma list
tried in order, or ``mdns`` for the inspector found by multicast DNS);
else, when collectors and an API URL are both set,
``<api>/v1/continue_inspection`` (with the API URL discovered by mDNS when
it was ``mdns``: IPA would post to the literal ``mdns/...``).

The POST is retried on connection errors, 409 and 5xx (5 attempts, waits
of 5, 5, 6 and 12 s as IPA); any other answer >= 400, or running out of
attempts, is logged and start-up goes on to lookup (IPA's process dies on
the latter).  Only the answer's ``uuid`` is used (it feeds the lookup).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, Sequence

import attrs
from twisted.internet.defer import CancelledError
from twisted.logger import Logger

from ipa_twisted import encoding, mdns
from ipa_twisted.httpfetch import MiB, describe, get_bytes
from ipa_twisted.inspection.collectors import (
    DEFAULT_COLLECTORS,
    Failures,
    load_collectors,
)
from ipa_twisted.ironic import CONNECTION_ERRORS, error_text
from ipa_twisted.retry import GaveUp, is_cancellation, retry

if TYPE_CHECKING:
    from ipa_twisted.context import RunningAgent


log = Logger()

ATTEMPTS = 5
#: The most of the inspector's answer read (it is a small JSON object).
ANSWER_LIMIT = 16 * MiB
NOT_LOGGED = ("logs",)


def post_delay(attempt: int) -> float:
    """Pause after the ``attempt``-th failed post: 1.5 x 2^(n-1), kept
    within [5, 30] s."""
    return min(max(1.5 * 2 ** (attempt - 1), 5.0), 30.0)


@attrs.frozen
class InspectionResult:
    status: int | None
    answer: Any
    url: str | None

    @property
    def node_uuid(self) -> str | None:
        if isinstance(self.answer, dict) and isinstance(
                self.answer.get("uuid"), str):
            return str(self.answer["uuid"])
        return None


def is_enabled(config: Any) -> bool:
    return bool(config.inspection_callback_url
                or (config.inspection_collectors and config.api_url))


def collector_names(config: Any) -> list[str]:
    return list(config.inspection_collectors or DEFAULT_COLLECTORS)


async def callback_urls(context: RunningAgent, api_urls: Sequence[str] | None
                        ) -> list[str]:
    config = context.config
    if config.inspection_callback_url == ["mdns"]:
        endpoint = await mdns.find_endpoint(
            context.reactor, mdns.INSPECTOR_SERVICE,
            config.mdns_lookup_attempts)
        log.info("mDNS: inspector at {url}", url=endpoint.url)
        context.config = mdns.apply_overrides(config, endpoint.properties)
        return [endpoint.url.rstrip("/") + "/v1/continue"]
    if config.inspection_callback_url:
        return list(config.inspection_callback_url)
    return [u.rstrip("/") + "/v1/continue_inspection"
            for u in api_urls or []]


async def collect(context: RunningAgent, names: Sequence[str]
                  ) -> tuple[dict[str, Any], Failures]:
    failures = Failures()
    data: dict[str, Any] = {}
    for name, collector in load_collectors(names, failures):
        try:
            result = collector.collect(context, data, failures, names)
            if hasattr(result, "__await__"):
                await result
        except CancelledError:
            raise
        except Exception as e:
            failures.add(f"collector {name} failed: {e}")
    data["error"] = failures.error()
    return data, failures


class _NotAccepted(Exception):
    """This round of posts found no inspector that took the data (yet)."""


async def post(context: RunningAgent, urls: Sequence[str], payload: bytes,
               timeout: float) -> InspectionResult:
    headers = {"Content-Type": "application/json",
               "Accept": "application/json"}
    if context.config.global_request_id:
        headers["X-OpenStack-Request-ID"] = context.config.global_request_id
    clock = context.reactor

    async def round_() -> InspectionResult:
        last_error = ""
        for url in urls:
            log.info("posting inspection data to {url} ({n} bytes)", url=url,
                     n=len(payload))
            try:
                response, body = await get_bytes(
                    context.http, clock, url, limit=ANSWER_LIMIT,
                    timeout=timeout, method="POST", data=payload,
                    headers=headers)
            except CONNECTION_ERRORS as e:
                if is_cancellation(e):
                    raise CancelledError() from None
                last_error = f"{url}: {describe(e)}"
                log.warn("cannot post inspection data to {url}: {e}",
                         url=url, e=describe(e))
                continue
            if response.code >= 500 or response.code == 409:
                log.warn("inspection post answered {code}: {text}",
                         code=response.code, text=error_text(body))
                raise _NotAccepted(
                    f"{url}: HTTP {response.code}: {error_text(body)}")
            try:
                answer = json.loads(body) if body else None
            except ValueError:
                answer = body.decode("utf-8", "replace")
            return InspectionResult(response.code, answer, url)
        raise _NotAccepted(last_error)

    try:
        return await retry(clock, round_, post_delay, attempts=ATTEMPTS,
                           retryable=lambda e: isinstance(e, _NotAccepted))
    except GaveUp as e:
        return InspectionResult(None, str(e.last), None)


async def inspect(context: RunningAgent, api_urls: Sequence[str] | None
                  ) -> InspectionResult | None:
    """Collect and post; None when inspection is disabled.  Never raises
    for an unreachable or refusing inspector (it logs)."""
    config = context.config
    if not is_enabled(config):
        return None
    names = collector_names(config)
    log.info("inspection with collectors {names}", names=", ".join(names))
    try:
        urls = await callback_urls(context, api_urls)
    except CancelledError:
        raise
    except Exception as e:
        log.error("inspection skipped: cannot find where to post: {e}", e=e)
        return InspectionResult(None, str(e), None)
    data, failures = await collect(context, names)
    log.debug("inspection data: {data}", data={
        k: v for k, v in data.items() if k not in NOT_LOGGED})
    payload = encoding.dump_bytes(data)
    result = await post(context, urls, payload, config.http_request_timeout)
    if result.status is None:
        log.error("inspection data could not be posted (gave up after "
                  "{n} attempts): {e}; going on", n=ATTEMPTS, e=result.answer)
    elif result.status >= 400:
        log.error("inspection failed: error {code}: {text}; going on",
                  code=result.status,
                  text=result.answer if isinstance(result.answer, str)
                  else json.dumps(result.answer))
    else:
        log.info("inspection data accepted by {url} ({code}){node}",
                 url=result.url, code=result.status,
                 node=f": node {result.node_uuid}" if result.node_uuid
                 else "")
    if failures:
        log.error("inspection collectors reported: {e}", e=failures.error())
    return result
