"""Log level: debug events are dropped unless --debug / ipa-debug.

twistd installs its log observers after ``makeService``; we wrap whatever
it installs in a level filter.
"""

from __future__ import annotations

from typing import Any, Iterable

from twisted.logger import (
    FilteringLogObserver,
    ILogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    globalLogBeginner,
)

_state: dict[str, Any] = {}


def apply_log_level(debug: bool) -> None:
    if debug or "installed" in _state:
        return
    predicate = LogLevelFilterPredicate(defaultLogLevel=LogLevel.info)
    original = globalLogBeginner.beginLoggingTo

    def begin(observers: Iterable[ILogObserver], *args: Any,
              **kwargs: Any) -> None:
        wrapped = [FilteringLogObserver(o, [predicate]) for o in observers]
        original(wrapped, *args, **kwargs)

    globalLogBeginner.beginLoggingTo = begin  # type: ignore[method-assign]
    _state["installed"] = True
