"""Root device hints: which disk the image goes to (contract section 8).

A hint is ``{name: expression}``; a device matches when every hint
matches.  Expressions are lower-cased and stripped; string values (on both
sides) are URL-quoted, so spaces and special characters compare as Ironic
normalized them.  A hint with no operator means equality (``s==`` for
strings, ``==`` for ``size``).  Operators:

=========================  ==============================================
``== != < <= > >=``        numeric comparison (``=`` means ``>=``)
``s== s!= s< s<= s> s>=``  string comparison
``<in> x``                 ``x`` is a substring
``<or> a <or> b``          equal to any of the alternatives
``<all-in> a b``           every word is a substring
``<range-in> [ a b )``     numeric range, ``[``/``]`` inclusive
=========================  ==============================================

``size`` is in GiB (the device's bytes / 2^30, as a float).  Unlike
ironic-python-agent 13.0.0, ``<or>`` and ``<range-in>`` work for ``size``
(Ironic accepts them there).  ``serial`` and the ``wwn*`` hints also match
when *any* of a device's known values match.
"""

from __future__ import annotations

import re
from typing import Any, Iterable, Mapping, Sequence
from urllib.parse import quote

import attrs

from ipa_twisted.config import parse_bool

GiB = 1024 ** 3

STRING_HINTS = frozenset({
    "model", "wwn", "serial", "vendor", "wwn_with_extension",
    "wwn_vendor_extension", "name", "hctl", "by_path", "tran",
})
LIST_HINTS = frozenset({
    "serial", "wwn", "wwn_with_extension", "wwn_vendor_extension",
})
VALID_HINTS = STRING_HINTS | {"size", "rotational"}

NUMERIC_OPS = ("==", "!=", "<=", ">=", "<", ">", "=")
STRING_OPS = ("s==", "s!=", "s<=", "s>=", "s<", "s>")
WORD_OPS = ("<range-in>", "<all-in>", "<in>", "<or>")
_OP_RE = re.compile(
    "^(" + "|".join(re.escape(o) for o in WORD_OPS + STRING_OPS + NUMERIC_OPS)
    + r")\s*"
)
_RANGE_RE = re.compile(
    r"^([\[(])\s*(\S+)\s+(\S+)\s*([\])])$"
)


class HintError(ValueError):
    """The hints themselves are invalid (not: no device matches)."""


@attrs.frozen
class Hint:
    name: str
    op: str
    values: tuple[Any, ...]
    #: For <range-in>: (low inclusive, high inclusive).
    bounds: tuple[bool, bool] = (True, True)

    def describe(self) -> str:
        if self.op == "<or>":
            return f"{self.name} <or> " + " <or> ".join(map(str, self.values))
        if self.op == "<range-in>":
            lo, hi = self.bounds
            return (f"{self.name} <range-in> {'[' if lo else '('} "
                    f"{self.values[0]} {self.values[1]} {']' if hi else ')'}")
        return f"{self.name} {self.op} " + " ".join(map(str, self.values))


def normalize_string(value: Any) -> str:
    return quote(str(value).strip().lower())


def _number(name: str, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise HintError(
            f'root device hint "{name}" is not a number: {text!r}'
        ) from None
    if name == "size":
        if value != int(value) or value <= 0:
            raise HintError(
                f'root device hint "size" must be a positive integer '
                f'(GiB): {text!r}'
            )
    return value


def parse_hint(name: str, expression: Any) -> Hint:
    if name not in VALID_HINTS:
        raise HintError(
            f'the hint "{name}" is invalid; valid hints are: '
            + ", ".join(sorted(VALID_HINTS))
        )
    if name == "rotational":
        if isinstance(expression, bool):
            return Hint(name, "==", (expression,))
        try:
            return Hint(name, "==", (parse_bool(str(expression)),))
        except ValueError:
            raise HintError(
                f'root device hint "rotational" is not a boolean: '
                f'{expression!r}'
            ) from None
    if name in STRING_HINTS and not isinstance(expression, str):
        raise HintError(
            f'root device hint "{name}" is not a string: {expression!r}'
        )
    text = str(expression).strip().lower()
    if not text:
        raise HintError(f'root device hint "{name}" is empty')
    m = _OP_RE.match(text)
    op = m.group(1) if m else ("==" if name == "size" else "s==")
    rest = text[m.end():] if m else text
    numeric = name == "size"

    if op == "<or>":
        parts = [p.strip() for p in re.split(r"<or>", rest) if p.strip()]
        if not parts:
            raise HintError(f'root device hint "{name}" has no values')
        values = tuple(
            _number(name, p) if numeric else normalize_string(p) for p in parts
        )
        return Hint(name, op, values)
    if op == "<range-in>":
        r = _RANGE_RE.match(rest.strip())
        if not r:
            raise HintError(
                f'root device hint "{name}": <range-in> wants "[ low high )" '
                f'with [ or ( and ] or ), got {rest!r}'
            )
        low, high = _number(name, r.group(2)), _number(name, r.group(3))
        return Hint(name, op, (low, high),
                    (r.group(1) == "[", r.group(4) == "]"))
    if not rest.strip():
        raise HintError(f'root device hint "{name}" has an operator but no '
                        f'value')
    if op == "<all-in>":
        return Hint(name, op, tuple(normalize_string(w) for w in rest.split()))
    if op == "<in>":
        return Hint(name, op, (normalize_string(rest),))
    if op in NUMERIC_OPS:
        return Hint(name, op, (_number(name, rest.strip()),))
    # string operators
    if numeric:
        raise HintError(f'root device hint "size" cannot use {op}')
    value = rest.strip()
    if name == "name" and not value.startswith("/dev/"):
        value = "/dev/" + value
    return Hint(name, op, (normalize_string(value),))


def parse_hints(hints: Mapping[str, Any] | None) -> list[Hint]:
    if not hints:
        return []
    if not isinstance(hints, Mapping):
        raise HintError(f"root device hints must be an object: {hints!r}")
    return [parse_hint(name, expr) for name, expr in hints.items()]


def _compare(op: str, left: Any, right: Any) -> bool:
    if op in ("==", "s=="):
        return bool(left == right)
    if op in ("!=", "s!="):
        return bool(left != right)
    if op in ("<", "s<"):
        return bool(left < right)
    if op in ("<=", "s<="):
        return bool(left <= right)
    if op in (">", "s>"):
        return bool(left > right)
    if op in (">=", "s>=", "="):
        return bool(left >= right)
    raise AssertionError(op)


def match_value(hint: Hint, value: Any) -> bool:
    """Does one device value satisfy the hint?"""
    if value is None or (isinstance(value, str) and not value.strip()):
        return False
    if hint.name == "rotational":
        if isinstance(value, str):
            try:
                value = parse_bool(value)
            except ValueError:
                return False
        return bool(value) == hint.values[0]
    if hint.name == "size":
        try:
            gib = float(value) / GiB
        except (TypeError, ValueError):
            return False
        if hint.op == "<or>":
            return any(gib == v for v in hint.values)
        if hint.op == "<range-in>":
            low, high = hint.values
            lo_in, hi_in = hint.bounds
            return ((gib >= low if lo_in else gib > low)
                    and (gib <= high if hi_in else gib < high))
        if hint.op in ("<in>", "<all-in>"):
            return False
        return _compare(hint.op, gib, hint.values[0])
    text = normalize_string(value)
    if hint.op == "<or>":
        return text in hint.values
    if hint.op == "<in>":
        return hint.values[0] in text
    if hint.op == "<all-in>":
        return all(v in text for v in hint.values)
    if hint.op == "<range-in>":
        try:
            number = float(str(value))
        except ValueError:
            return False
        low, high = hint.values
        lo_in, hi_in = hint.bounds
        return ((number >= low if lo_in else number > low)
                and (number <= high if hi_in else number < high))
    if hint.op in NUMERIC_OPS:
        try:
            return _compare(hint.op, float(str(value)), hint.values[0])
        except ValueError:
            return False
    return _compare(hint.op, text, hint.values[0])


def device_matches(device: Mapping[str, Any], hints: Sequence[Hint]) -> bool:
    for hint in hints:
        value = device.get(hint.name)
        if hint.name in LIST_HINTS and isinstance(value, (list, tuple)):
            if not any(match_value(hint, v) for v in value if v is not None):
                return False
        elif not match_value(hint, value):
            return False
    return True


def find_devices(devices: Iterable[Mapping[str, Any]],
                 hints: Mapping[str, Any] | None) -> list[Mapping[str, Any]]:
    parsed = parse_hints(hints)
    return [d for d in devices if device_matches(d, parsed)]

