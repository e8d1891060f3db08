"""Entry points of one group, read from the installed distributions'
``entry_points.txt``: what ``importlib.metadata.entry_points(group=...)``
answers, without importing importlib.metadata.

The agent reads two groups once at start-up (its command extensions, its
hardware managers); importlib.metadata (with csv, its adapters, its
caches of every directory on ``sys.path``) would then stay in memory,
~0.5 MiB of an idle agent, for nothing.

Same answer: the directories on ``sys.path`` in order, in each the
``*.dist-info`` and ``*.egg-info`` directories; a distribution (by its
normalized name) is read from the first place it is found; its entry
points in file order.  A ``sys.path`` entry that is not a directory (a
zip archive) makes the whole answer come from importlib.metadata, which
reads those too.
"""

from __future__ import annotations

import os
import re
import sys
from functools import reduce
from importlib import import_module
from typing import Any, Iterable, Iterator

import attrs

#: ``module:attr.attr [extra, ...]``
_VALUE = re.compile(
    r"(?P<module>[\w.]+)\s*(:\s*(?P<attr>[\w.]+)\s*)?((?P<extras>\[.*\])\s*)?$"
)


@attrs.frozen
class EntryPoint:
    name: str
    value: str
    group: str

    def load(self) -> Any:
        """The object named: the module imported, then each attribute."""
        match = _VALUE.match(self.value)
        if match is None:
            raise ValueError(f"not an entry point: {self.value!r}")
        module = import_module(match.group("module"))
        names = [n for n in (match.group("attr") or "").split(".") if n]
        return reduce(getattr, names, module)


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "_", name).lower()


def _distributions(directory: str) -> Iterator[tuple[str, str]]:
    """(normalized name, metadata directory) of the distributions in
    ``directory``, in ``os.listdir`` order (as importlib.metadata)."""
    try:
        names = os.listdir(directory or ".")
    except OSError:
        return
    for name in names:
        low = name.lower()
        for suffix in (".dist-info", ".egg-info"):
            if low.endswith(suffix):
                stem = name[:-len(suffix)]
                # name-version(-pyX.Y...): the name is before the first "-"
                yield (_normalize(stem.partition("-")[0]),
                       os.path.join(directory or ".", name))


def _parse(text: str, group: str) -> Iterator[tuple[str, str]]:
    """(name, value) of ``group``'s entries in an entry_points.txt."""
    section = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1].strip()
            continue
        if section != group:
            continue
        name, eq, value = line.partition("=")
        if eq:
            yield name.strip(), value.strip()


def entry_points(group: str, path: Iterable[str] | None = None
                 ) -> list[EntryPoint]:
    """The entry points of ``group`` (``path``: ``sys.path``)."""
    entries = list(sys.path if path is None else path)
    if any(e and os.path.exists(e) and not os.path.isdir(e)
           for e in entries):
        return _from_importlib(group, entries)
    seen: set[str] = set()
    found: list[EntryPoint] = []
    for entry in entries:
        for name, meta in _distributions(entry):
            if name in seen:
                continue
            seen.add(name)
            try:
                with open(os.path.join(meta, "entry_points.txt"),
                          encoding="utf-8") as f:
                    text = f.read()
            except OSError:
                continue
            found.extend(EntryPoint(n, v, group)
                         for n, v in _parse(text, group))
    return found


def _from_importlib(group: str, entries: list[str]) -> list[EntryPoint]:
    """A zip archive on the path: importlib.metadata reads it."""
    from importlib import metadata

    seen: set[str] = set()
    found: list[EntryPoint] = []
    for dist in metadata.distributions(path=entries):
        name = _normalize(getattr(dist, "_normalized_name", None)
                          or dist.metadata["Name"] or "")
        if name in seen:
            continue
        seen.add(name)
        found.extend(EntryPoint(ep.name, ep.value, group)
                     for ep in dist.entry_points if ep.group == group)
    return found
