"""JSON encoding of everything the agent sends.

Objects with a ``serialize()`` method become what it returns, UUIDs become
strings, tuples and sets become lists.  Anything else is a ``TypeError``:
callers that store results check them once, when they are produced, so that
the command list can never become unserializable.
"""

from __future__ import annotations

import json
import uuid
from typing import Any


class AgentEncoder(json.JSONEncoder):
    def default(self, o: Any) -> Any:
        serialize = getattr(o, "serialize", None)
        if callable(serialize):
            return serialize()
        if isinstance(o, uuid.UUID):
            return str(o)
        if isinstance(o, (set, frozenset)):
            return sorted(o)
        if isinstance(o, bytes):
            return o.decode("utf-8", "replace")
        return super().default(o)


def dumps(obj: Any) -> str:
    return json.dumps(obj, cls=AgentEncoder)


def dump_bytes(obj: Any) -> bytes:
    return dumps(obj).encode("utf-8")


def to_jsonable(obj: Any) -> Any:
    """A plain-JSON copy of ``obj`` (raises TypeError if it has none)."""
    return json.loads(dumps(obj))
