"""Scrub secrets out of text the agent hands over (collected system logs).

The options that the table in :mod:`ipa_twisted.config` marks ``secret``
can show up in what ``ps``, ``dmesg``, the journal or a log file print,
in any of their spellings:

* a flag: ``--agent-token VALUE``, ``--agent-token=VALUE``;
* a kernel parameter: ``ipa-agent-token=VALUE``;
* an INI key: ``agent_token = VALUE`` (to the end of the line);
* a query or JSON field: ``agent_token=VALUE&``, ``"agent_token": "VALUE"``.

Each value is replaced by ``***``.  The values the agent knows (its token,
configured passwords) are also replaced wherever they appear, whatever
precedes them.
"""

from __future__ import annotations

import re
from typing import Iterable

from ipa_twisted.config import OPTIONS

MASK = b"***"

#: a known secret shorter than this is not searched for as a bare word
#: (it would blot out ordinary text); its option spellings still are
MIN_LITERAL = 4


def secret_keys() -> list[str]:
    """Every spelling of every secret option (longest first)."""
    keys: set[str] = set()
    for option in OPTIONS:
        if not option.secret:
            continue
        for key in (option.name, option.flag, option.kernel):
            if key:
                keys.update({key, key.replace("_", "-"),
                             key.replace("-", "_")})
    return sorted(keys, key=lambda k: (-len(k), k))


def _patterns() -> tuple[re.Pattern[bytes], ...]:
    alt = b"(?:" + b"|".join(re.escape(k.encode()) for k in secret_keys()) \
        + b")"
    value = rb"(?P<value>\"[^\"\n]*\"|'[^'\n]*'|[^\s&;,\"'}\]]+)"
    # ``key = value`` alone on its line (INI, shell, env): the rest of it
    ini = re.compile(
        rb"(?im)^(?P<key>[ \t]*(?:export[ \t]+)?[\"']?" + alt
        + rb"[\"']?[ \t]*[=:][ \t]*)(?P<value>\S.*?)[ \t]*$")
    # a flag, as ps shows it: ``--key value``, ``--key=value``
    flag = re.compile(rb"(?i)(?P<key>(?<![\w-])--" + alt
                      + rb"(?:[ \t]*=[ \t]*|[ \t]+))" + value)
    # ``key=value`` anywhere: kernel command lines, queries, JSON
    pair = re.compile(rb"(?i)(?P<key>(?<![\w-])[\"']?" + alt
                      + rb"[\"']?[ \t]*[=:][ \t]*)" + value)
    return ini, flag, pair


_INI, _FLAG, _PAIR = _patterns()


def _mask(match: re.Match[bytes]) -> bytes:
    value = match.group("value")
    quote = value[:1] if value[:1] in (b'"', b"'") and len(value) > 1 \
        else b""
    return match.group("key") + quote + MASK + quote


def scrub(data: bytes, known: Iterable[str | None] = ()) -> bytes:
    """``data`` with every secret option's value, and every known secret
    value, replaced by ``***``."""
    for pattern in (_INI, _FLAG, _PAIR):
        data = pattern.sub(_mask, data)
    for value in sorted({v for v in known if v}, key=len, reverse=True):
        raw = value.encode("utf-8", "replace")
        if len(raw) >= MIN_LITERAL:
            data = data.replace(raw, MASK)
    return data
