"""The one parser of request query strings: for the token, for ``wait``
and for the request log.

It splits exactly as Twisted's ``twisted.web.http.parse_qs`` does (items
separated by ``&`` *and* ``;``, ``+`` is a space, percent escapes decoded
in names and values, an item without ``=`` ignored), so that what
authenticates a request and what the log masks can never differ.  Request
bodies are never parsed for arguments: only the query counts.
"""

from __future__ import annotations

import re
from typing import Iterator, NamedTuple
from urllib.parse import unquote_to_bytes

#: Names whose values are never logged.
SECRET_PARAMS = frozenset({b"agent_token"})
MASK = "***"

_SEPARATORS = re.compile(rb"([&;])")


class QueryItem(NamedTuple):
    raw: bytes            # the item as sent
    name: bytes | None    # decoded name (None: no "=", Twisted ignores it)
    value: bytes


def _decode(text: bytes) -> bytes:
    return unquote_to_bytes(text.replace(b"+", b" "))


def items(query: bytes) -> Iterator[tuple[QueryItem, bytes]]:
    """Each item of ``query`` with the separator that follows it."""
    parts = _SEPARATORS.split(query)
    for i in range(0, len(parts), 2):
        raw = parts[i]
        sep = parts[i + 1] if i + 1 < len(parts) else b""
        name, eq, value = raw.partition(b"=")
        if eq:
            yield QueryItem(raw, _decode(name), _decode(value)), sep
        else:
            yield QueryItem(raw, None, b""), sep


def split_uri(uri: bytes) -> tuple[bytes, bytes | None]:
    """``path?query`` -> (path, query or None)."""
    path, sep, query = uri.partition(b"?")
    return path, (query if sep else None)


def args(uri: bytes) -> dict[bytes, list[bytes]]:
    """The arguments of a request URI, as ``request.args`` holds them."""
    _, query = split_uri(uri)
    found: dict[bytes, list[bytes]] = {}
    if query is None:
        return found
    for item, _ in items(query):
        if item.name is not None:
            found.setdefault(item.name, []).append(item.value)
    return found


def arg(uri: bytes, name: str) -> str | None:
    """The first value of ``name`` in the URI's query, as text."""
    values = args(uri).get(name.encode("ascii"))
    if not values:
        return None
    return values[0].decode("utf-8", "replace")


def mask_query(query: str) -> str:
    """The query string as sent, with the values of secret parameters
    replaced by ``***``."""
    raw = query.encode("latin-1")
    shown = []
    for item, sep in items(raw):
        if item.name in SECRET_PARAMS:
            name = item.raw.partition(b"=")[0]
            shown.append(name + b"=" + MASK.encode() + sep)
        else:
            shown.append(item.raw + sep)
    return b"".join(shown).decode("latin-1")


def mask_uri(uri: bytes) -> str:
    """The request URI for the log: secrets masked."""
    text = uri.decode("latin-1")
    path, sep, query = text.partition("?")
    return path + (sep + mask_query(query) if sep else "")
