"""Progress of long writes: bytes, percentage, rate and ETA, every few
seconds in the log (and readable by whoever holds the object)."""

from __future__ import annotations

from typing import Any

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from ipa_twisted.looping import every

log = Logger()

MiB = 1024 * 1024


def _eta(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 60}m{seconds % 60:02d}s"


class Progress:
    def __init__(self, clock: IReactorTime, what: str, where: str,
                 total: int | None, interval: float = 5.0) -> None:
        self._clock = clock
        self.what = what
        self.where = where
        self.total = total
        self.done = 0
        self.started = clock.seconds()
        self._loop = every(clock, interval, self.report,
                           what=f"progress report of {what}")

    def update(self, done: int) -> None:
        self.done = done

    def snapshot(self) -> dict[str, Any]:
        elapsed = max(self._clock.seconds() - self.started, 1e-9)
        rate = self.done / elapsed
        out: dict[str, Any] = {
            "bytes": self.done,
            "total": self.total,
            "rate_mib_s": round(rate / MiB, 1),
            "elapsed_s": round(elapsed, 1),
        }
        if self.total:
            out["percent"] = round(100.0 * self.done / self.total, 1)
            if rate > 0:
                out["eta_s"] = round((self.total - self.done) / rate, 1)
        return out

    def text(self) -> str:
        """One line for operators (heartbeats' agent_status_message)."""
        snap = self.snapshot()
        if self.total:
            return (f"writing image {self.what} to {self.where}: "
                    f"{snap['percent']}% ({self.done // MiB} of "
                    f"{self.total // MiB} MiB), {snap['rate_mib_s']} MiB/s, "
                    f"ETA {_eta(snap.get('eta_s', 0))}")
        return (f"writing image {self.what} to {self.where}: "
                f"{self.done // MiB} MiB, {snap['rate_mib_s']} MiB/s")

    def report(self) -> None:
        snap = self.snapshot()
        if self.total:
            log.info(
                "{what} -> {where}: {mib} of {total_mib} MiB ({pct}%), "
                "{rate} MiB/s, ETA {eta}",
                what=self.what, where=self.where, mib=self.done // MiB,
                total_mib=self.total // MiB, pct=snap["percent"],
                rate=snap["rate_mib_s"], eta=_eta(snap.get("eta_s", 0)),
            )
        else:
            log.info("{what} -> {where}: {mib} MiB, {rate} MiB/s",
                     what=self.what, where=self.where, mib=self.done // MiB,
                     rate=snap["rate_mib_s"])

    def stop(self) -> None:
        self._loop.stop()

    def finished(self, done: int) -> None:
        self.done = done
        self.stop()
        snap = self.snapshot()
        log.info("{what} -> {where}: {mib} MiB written in {t} s "
                 "({rate} MiB/s)", what=self.what, where=self.where,
                 mib=round(done / MiB, 1), t=snap["elapsed_s"],
                 rate=snap["rate_mib_s"])
