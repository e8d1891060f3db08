"""Counters put into the agent under profile (benchmarks/profile_write.py).

Loaded as ``sitecustomize`` (the profiler puts a directory holding a copy
of this file first on the agent's PYTHONPATH), before twistd starts: it
wraps a few Twisted methods to count what the write path costs, without
changing the agent's code:

- ``callFromThread``: calls, by the function handed to the reactor;
- ``deferToThreadPool`` / ``callInThreadWithCallback``: hand-offs to the
  reactor's thread pool;
- the TCP transport's ``pauseProducing`` / ``resumeProducing``: how often
  the download was paused and for how long;
- ``Connection._dataReceived``: how many socket reads reached the
  protocol, and their sizes;
- ``os.write`` / ``os.pwrite``: calls and bytes, by thread name (a
  1-byte write is the reactor's waker: a ``callFromThread`` wake-up);
- the name of every thread started, by its native id (for py-spy's and
  /proc's thread ids).

``SIGUSR2`` writes the counters as JSON to ``$IPA_PROBE_OUT`` and resets
them.  For profiling only: never part of the agent.
"""

from __future__ import annotations

import collections
import json
import os
import signal
import threading
import time
from typing import Any

_lock = threading.Lock()
_stats: dict[str, Any] = {}
#: native thread id -> Python thread name, of every thread started
_threads: dict[str, str] = {}


def _reset() -> None:
    _stats.clear()
    _stats.update({
        "call_from_thread": collections.Counter(),
        "to_thread": collections.Counter(),
        "pauses": 0, "paused_s": 0.0, "max_pause_s": 0.0,
        "_paused_at": None,
        "reads": 0, "read_bytes": 0,
        "read_sizes": collections.Counter(),
        "writes": collections.Counter(), "write_bytes": collections.Counter(),
    })


_reset()


def _name(f: Any) -> str:
    owner = getattr(f, "__self__", None)
    qual = getattr(f, "__qualname__", None) or repr(f)
    if owner is not None and "." not in qual:
        qual = f"{type(owner).__name__}.{qual}"
    return qual


def _dump(signum: int, frame: Any) -> None:
    with _lock:
        out = {k: v for k, v in _stats.items() if not k.startswith("_")}
        out["threads"] = dict(_threads)
        if _stats["_paused_at"] is not None:
            out["still_paused"] = True
        _reset()
    path = os.environ.get("IPA_PROBE_OUT", "/tmp/ipa-probe.json")
    with open(path + ".part", "w") as f:
        json.dump(out, f)
    os.rename(path + ".part", path)


def _install() -> None:
    from twisted.internet import base, tcp, threads
    from twisted.python import threadpool

    original_cft = base.ReactorBase.callFromThread

    def callFromThread(self: Any, f: Any, *args: Any, **kw: Any) -> None:
        with _lock:
            _stats["call_from_thread"][_name(f)] += 1
        return original_cft(self, f, *args, **kw)

    base.ReactorBase.callFromThread = callFromThread  # type: ignore

    original_dtp = threads.deferToThreadPool

    def deferToThreadPool(reactor: Any, pool: Any, f: Any, *a: Any,
                          **kw: Any) -> Any:
        with _lock:
            _stats["to_thread"][_name(f)] += 1
        return original_dtp(reactor, pool, f, *a, **kw)

    threads.deferToThreadPool = deferToThreadPool

    original_citwc = threadpool.ThreadPool.callInThreadWithCallback

    def callInThreadWithCallback(self: Any, onResult: Any, func: Any,
                                 *a: Any, **kw: Any) -> Any:
        with _lock:
            _stats["to_thread"]["(pool) " + _name(func)] += 1
        return original_citwc(self, onResult, func, *a, **kw)

    threadpool.ThreadPool.callInThreadWithCallback = \
        callInThreadWithCallback  # type: ignore

    original_pause = tcp.Connection.pauseProducing
    original_resume = tcp.Connection.resumeProducing

    def pauseProducing(self: Any) -> None:
        with _lock:
            if _stats["_paused_at"] is None:
                _stats["_paused_at"] = time.monotonic()
                _stats["pauses"] += 1
        return original_pause(self)

    def resumeProducing(self: Any) -> None:
        with _lock:
            at = _stats["_paused_at"]
            if at is not None:
                took = time.monotonic() - at
                _stats["paused_s"] += took
                _stats["max_pause_s"] = max(_stats["max_pause_s"], took)
                _stats["_paused_at"] = None
        return original_resume(self)

    tcp.Connection.pauseProducing = pauseProducing  # type: ignore
    tcp.Connection.resumeProducing = resumeProducing  # type: ignore

    original_data = tcp.Connection._dataReceived

    def _dataReceived(self: Any, data: bytes) -> Any:
        n = len(data)
        with _lock:
            _stats["reads"] += 1
            _stats["read_bytes"] += n
            _stats["read_sizes"][1 << max(n - 1, 0).bit_length()] += 1
        return original_data(self, data)

    tcp.Connection._dataReceived = _dataReceived  # type: ignore

    for name in ("write", "pwrite"):
        original = getattr(os, name)

        def wrapped(fd: int, data: Any, *a: Any,
                    _original: Any = original, _name: str = name) -> int:
            n: int = _original(fd, data, *a)
            key = (f"{_name} ({threading.current_thread().name})"
                   + (" 1 byte: a wake-up" if n == 1 else ""))
            with _lock:
                _stats["writes"][key] += 1
                _stats["write_bytes"][key] += n
            return n

        setattr(os, name, wrapped)

    original_run = threading.Thread.run

    def run(self: threading.Thread) -> None:
        with _lock:
            _threads[str(threading.get_native_id())] = self.name
        original_run(self)

    threading.Thread.run = run  # type: ignore
    _threads[str(threading.get_native_id())] = "reactor (main)"
    signal.signal(signal.SIGUSR2, _dump)


if os.environ.get("IPA_PROBE_OUT"):
    _install()
