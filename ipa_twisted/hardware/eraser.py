"""Erasing disks: probe each one, run the chosen method, prove the result.

For every disk :class:`DiskEraser` probes what the device can do
(``nvme``, ``hdparm``, ``smartctl``, sysfs), lets :func:`.erase.plan_erase`
choose, writes the read-back markers (:mod:`.erase_check`, in a thread),
runs the methods in order until one erases the disk *and* passes the
read-back check, and returns the disk's part of the erase report.  Disks
are erased concurrently, up to the node's ``disk_erasure_concurrency``.

Long work shows its progress (:class:`EraseProgress`): in the running
command's status and in the heartbeat's ``agent_status_message``; when the
step ends the last heartbeat carries a summary of the report, which Ironic
keeps in the node's ``driver_internal_info``.

Every destructive tool is run on a path the device guard has allowed,
checked right before the call.
"""

from __future__ import annotations

import json
import os
import re
import time
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Mapping, Sequence

import attrs
from twisted.internet.defer import (
    CancelledError,
    DeferredList,
    DeferredSemaphore,
    ensureDeferred,
)
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater
from twisted.logger import Logger

from ipa_twisted import errors
from ipa_twisted.hardware import erase, erase_check, overwrite
from ipa_twisted.hardware.disks import SYS_BLOCK, BlockDevice, kname_of
from ipa_twisted.looping import every
from ipa_twisted.process import ProcessError, ToolNotFound

if TYPE_CHECKING:
    from ipa_twisted.context import RunningAgent


log = Logger()

MiB = 1024 * 1024
#: the slowest rate a whole-device tool is allowed before its timeout
SLOWEST = 5 * MiB
POLL = 2.0
VIRTUAL_MEDIA_LABEL = "/dev/disk/by-label/ir-vfd-dev"


class EraseFailed(Exception):
    """One method could not erase the device (the next may)."""


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read().strip()
    except OSError:
        return None


def _timeout(covers: int, floor: float = 3600.0) -> float:
    return max(floor, covers / SLOWEST)


# ------------------------------------------------------------- progress


@attrs.define
class DiskProgress:
    name: str
    phase: str = "waiting"
    method: str | None = None
    fraction: float | None = None
    started: float | None = None


class EraseProgress:
    """What the running erase step shows: ``text()`` for the heartbeat,
    ``snapshot()`` for the command's status; after the step, the report's
    summary (``agent_status`` "end")."""

    def __init__(self, clock: IReactorTime, step: str,
                 names: Sequence[str]) -> None:
        self._clock = clock
        self.step = step
        self.started = clock.seconds()
        self.disks = {name: DiskProgress(name) for name in names}
        self.agent_status = "start"
        self.summary: dict[str, Any] | None = None

    def update(self, name: str, **changes: Any) -> None:
        disk = self.disks[name]
        for key, value in changes.items():
            setattr(disk, key, value)

    def snapshot(self) -> dict[str, Any]:
        if self.summary is not None:
            return {"step": self.step, "finished": True,
                    "devices": self.summary}
        return {
            "step": self.step,
            "elapsed_s": round(self._clock.seconds() - self.started, 1),
            "devices": {
                d.name: {"phase": d.phase, "method": d.method,
                         "percent": None if d.fraction is None
                         else round(100 * d.fraction, 1)}
                for d in self.disks.values()},
        }

    def text(self) -> str:
        if self.summary is not None:
            return (f"{self.step} finished: "
                    + json.dumps(self.summary, sort_keys=True,
                                 separators=(",", ":")))
        parts = []
        for d in self.disks.values():
            what = d.phase + (f" ({d.method})" if d.method else "")
            if d.fraction is not None:
                what += f" {100 * d.fraction:.0f}%"
            parts.append(f"{d.name} {what}")
        elapsed = int(self._clock.seconds() - self.started)
        return f"{self.step}: " + "; ".join(parts) + f" ({elapsed} s)"

    def finish(self, reports: Mapping[str, Mapping[str, Any]]) -> None:
        """Become the step's summary: per device its result, method,
        bytes covered, time and read-back outcome."""
        self.agent_status = "end"
        summary = {}
        for name, report in reports.items():
            check = report.get("verification") or {}
            summary[name] = {
                "result": report.get("result"),
                "method": report.get("method"),
                "serial": report.get("serial"),
                "bytes": report.get("bytes_covered"),
                "seconds": report.get("seconds"),
                "readback": None if not check or "passed" not in check
                else ("passed" if check["passed"] else "FAILED")
                + f" {check.get('samples', 0)}x{check.get('sample_bytes', 0)}"
                f" {check.get('expect', '')}",
            }
            if report.get("reason"):
                summary[name]["reason"] = report["reason"]
        self.summary = summary


# --------------------------------------------------------------- probe


class DiskEraser:
    """Erases disks for one step; ``agent`` is the RunningAgent."""

    def __init__(self, agent: RunningAgent, options: erase.EraseOptions,
                 erase_metadata: Callable[[str], Awaitable[None]],
                 express: bool = False, sys_block: str = SYS_BLOCK,
                 poll: float = POLL,
                 virtual_media_label: str = VIRTUAL_MEDIA_LABEL) -> None:
        self.agent = agent
        self.options = options
        self.erase_metadata = erase_metadata
        self.express = express
        self.sys_block = sys_block
        self.poll = poll
        self.virtual_media_label = virtual_media_label
        self.progress: EraseProgress | None = None

    @property
    def process(self) -> Any:
        return self.agent.process

    @property
    def clock(self) -> IReactorTime:
        return self.agent.reactor  # type: ignore[no-any-return]

    async def _run(self, argv: list[str], timeout: float = 60.0,
                   check: bool = True) -> Any:
        return await self.process.run(argv, timeout=timeout, check=check)

    def _sys(self, kname: str, *parts: str) -> str:
        return os.path.join(self.sys_block, kname, *parts)

    # ---- why a disk is not erased (as IPA)

    async def skip_reason(self, dev: BlockDevice) -> str | None:
        """None to erase; a reason to skip.  Raises for a read-only disk
        the node did not allow to skip (as IPA)."""
        label = self.virtual_media_label
        if os.path.islink(label) and os.path.realpath(label) == \
                os.path.realpath(dev.name):
            return "virtual media device"
        try:
            out = (await self._run(["lsblk", "--fs", "--noheadings",
                                    dev.name], timeout=30.0)).out
        except ProcessError as e:
            return f"could not tell whether it is a RAID member ({e})"
        if "linux_raid_member" in out:
            return "software RAID member"
        if _read(self._sys(kname_of(dev.name), "ro")) == "1":
            if self.options.skip_read_only or self.express:
                return "read-only device (agent_erase_skip_read_only)"
            raise errors.BlockDeviceEraseError(
                f"Failed to invoke erase of device {dev.name} as the device "
                f"is flagged read-only, and the conductor has not signaled "
                f"this is a permitted case.")
        return None

    # ---- what it can do

    async def probe(self, dev: BlockDevice) -> erase.Capabilities:
        kname = kname_of(dev.name)
        notes: list[str] = []
        discard = (int(_read(self._sys(kname, "queue",
                                       "discard_max_bytes")) or 0) > 0)
        loop = os.path.isdir(self._sys(kname, "loop"))
        base = dict(name=dev.name, size=dev.size, discard=discard, loop=loop)
        if kname.startswith("nvme"):
            ctrl = ns = None
            try:
                ctrl = erase.parse_nvme_id_ctrl((await self._run(
                    ["nvme", "id-ctrl", dev.name, "-o", "json"],
                    timeout=30.0)).out)
            except (ProcessError, ValueError) as e:
                notes.append(f"nvme id-ctrl: {e}")
            try:
                ns = erase.parse_nvme_id_ns((await self._run(
                    ["nvme", "id-ns", dev.name, "-o", "json"],
                    timeout=30.0)).out)
            except (ProcessError, ValueError) as e:
                notes.append(f"nvme id-ns: {e}")
            return erase.Capabilities(
                kind="nvme", nvme=ctrl, nvme_ns=ns,
                nvme_namespaces=self.namespaces_on_controller(kname),
                notes=tuple(notes), **base)  # type: ignore[arg-type]
        if loop or kname.startswith(("dm-", "md", "zram", "nbd", "rbd")):
            return erase.Capabilities(kind="other", **base)  # type: ignore
        ata = smart = None
        try:
            ata = erase.parse_hdparm_identify((await self._run(
                ["hdparm", "-I", dev.name], timeout=30.0, check=False)).out)
        except ProcessError as e:
            notes.append(f"hdparm -I: {e}")
        if ata is not None and ata.ata:
            try:
                result = await self._run(
                    ["smartctl", "-d", "ata", "-i", "-g", "security",
                     dev.name], timeout=30.0, check=False)
                smart = erase.parse_smartctl(result.out, result.exit_code)
            except ToolNotFound:
                notes.append("smartctl not found: ATA commands assumed to "
                             "reach the drive (as IPA)")
            except ProcessError as e:
                notes.append(f"smartctl: {e}")
                smart = erase.SmartctlInfo(False, None, False)
        kind = "ata" if ata is not None and ata.ata else "other"
        return erase.Capabilities(kind=kind, ata=ata, smartctl=smart,
                                  notes=tuple(notes), **base)  # type: ignore

    def namespaces_on_controller(self, kname: str) -> int | None:
        """How many namespaces the controller of ``kname`` has (sysfs), or
        None when that cannot be told."""
        ctrl = os.path.realpath(self._sys(kname, "device"))
        try:
            entries = os.listdir(ctrl)
        except OSError:
            return None
        found = [e for e in entries
                 if re.fullmatch(r"nvme\d+(c\d+)?n\d+", e)]
        return len(found) or None

    # ---- erase one disk

    async def erase_disk(self, dev: BlockDevice) -> dict[str, Any]:
        """The disk's report; never raises (a failure is in the report)."""
        report: dict[str, Any] = {
            "device": dev.name, "serial": dev.serial, "model": dev.model,
            "size": dev.size, "started_at": _now(),
        }
        t0 = self.clock.seconds()
        try:
            reason = await self.skip_reason(dev)
            if reason is not None:
                log.info("not erasing {dev}: {reason}", dev=dev.name,
                         reason=reason)
                report.update(result="skipped", reason=reason)
                self._phase(dev.name, "skipped")
                return report
            self._phase(dev.name, "probing")
            caps = await self.probe(dev)
            if not report["serial"]:  # no udev: ask the device
                report["serial"] = (caps.nvme.serial if caps.nvme else
                                    caps.ata.serial if caps.ata else
                                    None) or None
            report["capabilities"] = caps.serialize()
            plan = erase.plan_erase(caps, self.options, self.express)
            if plan.refused:
                report["refused"] = list(plan.refused)
            await self._execute(dev, caps, plan, report)
        except errors.AgentError as e:
            report.update(result="failed", reason=e.details)
            self._phase(dev.name, "failed")
        except (OSError, ProcessError) as e:
            report.update(result="failed", reason=str(e))
            self._phase(dev.name, "failed")
        except CancelledError:
            raise
        except Exception as e:  # a bug must not hide the other disks
            log.failure("erasing {dev} failed", dev=dev.name)
            report.update(result="failed",
                          reason=f"{type(e).__name__}: {e}")
            self._phase(dev.name, "failed")
        report["finished_at"] = _now()
        report["seconds"] = round(self.clock.seconds() - t0, 2)
        return report

    async def _execute(self, dev: BlockDevice, caps: erase.Capabilities,
                       plan: erase.Plan, report: dict[str, Any]) -> None:
        if not plan.methods:
            raise errors.BlockDeviceEraseError(
                f"no erase method for {dev.name}: "
                + ("; ".join(plan.refused) or "the device offers none")
                + ("" if self.options.continue_if_secure_erase_failed else
                   " (fallback to shred is not enabled: "
                   "agent_continue_if_secure_erase_failed)"))
        baseline = None
        if any(m.name != erase.METADATA for m in plan.methods):
            self._phase(dev.name, "sampling")
            baseline = await self._baseline(dev)
        attempts: list[dict[str, Any]] = []
        report["attempts"] = attempts
        for method in plan.methods:
            t0 = self.clock.seconds()
            attempt: dict[str, Any] = {"method": method.name,
                                       "why": method.why}
            attempts.append(attempt)
            log.info("erasing {dev} by {method}: {why}", dev=dev.name,
                     method=method.name, why=method.why)
            self._phase(dev.name, "erasing", method=method.name,
                        fraction=None)
            try:
                await self._run_method(dev, caps, method)
            except (EraseFailed, ProcessError, OSError,
                    errors.AgentError) as e:
                attempt.update(error=str(e),
                               seconds=round(self.clock.seconds() - t0, 2))
                log.warn("{method} of {dev} failed: {e}",
                         method=method.name, dev=dev.name, e=e)
                continue
            attempt["seconds"] = round(self.clock.seconds() - t0, 2)
            if method.name == erase.METADATA:
                report.update(result="erased", method=method.name,
                              why=method.why, bytes_covered=0,
                              verification={"skipped": "metadata only: the "
                                            "data itself is not erased"})
                self._phase(dev.name, "done", fraction=1.0)
                return
            self._phase(dev.name, "verifying", fraction=None)
            assert baseline is not None
            check = await self.agent.in_thread(
                erase_check.check, dev.name, baseline, method.expect_zeroes)
            attempt["verification"] = check
            if not check["passed"]:
                log.error("{dev}: {method} reported success but the "
                          "read-back check failed: {check}", dev=dev.name,
                          method=method.name, check=check)
                attempt["error"] = ("reported success, but the read-back "
                                    "check failed")
                continue
            report.update(result="erased", method=method.name,
                          why=method.why, bytes_covered=method.covers,
                          verification=check)
            self._phase(dev.name, "done", fraction=1.0)
            log.info("{dev} erased by {method} in {t} s; read-back check "
                     "passed ({n} samples)", dev=dev.name,
                     method=method.name, t=attempt["seconds"],
                     n=check["samples"])
            return
        raise errors.BlockDeviceEraseError(
            f"{dev.name} was not erased: " + "; ".join(
                f"{a['method']}: {a.get('error')}" for a in attempts))

    async def _baseline(self, dev: BlockDevice) -> erase_check.Baseline:
        try:
            baseline: erase_check.Baseline = await self.agent.in_thread(
                erase_check.prepare, self.agent.guard, dev.name, dev.size)
        except OSError as e:
            # neither writable nor readable now (a locked drive): only an
            # all-zeroes read-back will count as proof afterwards
            baseline = erase_check.Baseline(
                erase_check.sample_offsets(dev.size), erase_check.SAMPLE,
                note=f"no baseline ({e}): only zeroes count as erased")
        return baseline

    def _phase(self, name: str, phase: str, **changes: Any) -> None:
        if self.progress is None or name not in self.progress.disks:
            return
        self.progress.update(name, phase=phase, **changes)
        self.agent.report_progress(self.progress)

    # ---- the methods

    async def _run_method(self, dev: BlockDevice, caps: erase.Capabilities,
                          method: erase.Method) -> None:
        self.agent.guard.check(dev.name)
        name = method.name
        if name in (erase.NVME_SANITIZE_CRYPTO, erase.NVME_SANITIZE_BLOCK):
            await self._nvme_sanitize(dev, 4 if name ==
                                      erase.NVME_SANITIZE_CRYPTO else 2)
        elif name in (erase.NVME_FORMAT_CRYPTO, erase.NVME_FORMAT_USER_DATA):
            ses = 2 if name == erase.NVME_FORMAT_CRYPTO else 1
            await self._run(["nvme", "format", dev.name, f"--ses={ses}",
                             "--force"], timeout=_timeout(dev.size, 4 * 3600))
        elif name in (erase.ATA_SECURITY_ERASE,
                      erase.ATA_SECURITY_ERASE_ENHANCED):
            await self._ata_security_erase(
                dev, name == erase.ATA_SECURITY_ERASE_ENHANCED)
        elif name in (erase.ATA_SANITIZE_CRYPTO, erase.ATA_SANITIZE_BLOCK):
            await self._ata_sanitize(dev, "--sanitize-crypto-scramble"
                                     if name == erase.ATA_SANITIZE_CRYPTO
                                     else "--sanitize-block-erase")
        elif name == erase.DISCARD:
            await self._with_stat_progress(dev, 13, dev.size,
                                           self._discard(dev))
        elif name == erase.OVERWRITE:
            await self._overwrite(dev, method.covers)
        elif name == erase.METADATA:
            await self.erase_metadata(dev.name)
        else:
            raise EraseFailed(f"unknown method {name}")
        if name != erase.METADATA:
            await self._run(["blockdev", "--flushbufs", dev.name],
                            timeout=60.0, check=False)

    async def _discard(self, dev: BlockDevice) -> None:
        timeout = _timeout(dev.size, 1800.0)
        secure = await self._run(["blkdiscard", "--secure", dev.name],
                                 timeout=timeout, check=False)
        if secure.exit_code == 0:
            return
        log.info("{dev}: no secure discard ({err}); plain discard",
                 dev=dev.name, err=secure.err.strip()[-200:])
        self.agent.guard.check(dev.name)
        await self._run(["blkdiscard", dev.name], timeout=timeout)

    async def _overwrite(self, dev: BlockDevice, total: int) -> None:
        """IPA's shred passes, as O_DIRECT writes in a thread; progress
        from the bytes written."""
        written = [0]
        stop = [False]
        kinds = overwrite.passes(self.options.iterations,
                                 self.options.zeroize)

        def tick() -> None:
            if total:
                self._phase(dev.name, "erasing",
                            fraction=min(1.0, written[0] / total))

        def done(n: int) -> None:
            written[0] = n

        loop = every(self.clock, self.poll, tick,
                     what=f"the erase progress of {dev.name}")
        try:
            await self.agent.in_thread(
                overwrite.overwrite, self.agent.guard, dev.name, dev.size,
                kinds, done, lambda: stop[0])
        except BaseException:
            stop[0] = True  # cancelled (the agent stops): end the thread
            raise
        finally:
            loop.stop()

    async def _with_stat_progress(self, dev: BlockDevice, field: int,
                                  total: int, work: Awaitable[None]) -> None:
        """Run ``work`` while /sys/block/<dev>/stat's sector counter
        ``field`` (6: written, 13: discarded) tells how far it got."""
        stat = self._sys(kname_of(dev.name), "stat")

        def sectors() -> int | None:
            text = _read(stat)
            try:
                return int(text.split()[field]) if text else None
            except (IndexError, ValueError):
                return None

        start = sectors()

        def tick() -> None:
            now = sectors()
            if start is not None and now is not None and total:
                self._phase(dev.name, "erasing",
                            fraction=min(1.0, (now - start) * 512 / total))

        loop = every(self.clock, self.poll, tick,
                     what=f"the erase progress of {dev.name}")
        try:
            await work
        finally:
            loop.stop()

    async def _nvme_sanitize(self, dev: BlockDevice, action: int) -> None:
        seen_running = False

        def progress(out: str) -> tuple[bool, float | None]:
            nonlocal seen_running
            status = erase.parse_sanitize_log(out)
            if status.state == erase.SANITIZE_RUNNING:
                seen_running = True
                return True, status.fraction
            if status.state in (erase.SANITIZE_DONE,
                                erase.SANITIZE_DONE_NO_DEALLOCATE):
                return False, None
            if status.state == erase.SANITIZE_FAILED:
                raise EraseFailed("the controller reports the sanitize "
                                  "failed (sanitize log)")
            if seen_running:
                raise EraseFailed(f"unexpected sanitize state "
                                  f"{status.state}")
            return True, None  # (not started yet)

        await self._sanitize(
            dev, ["nvme", "sanitize", dev.name, f"--sanact={action}"],
            ["nvme", "sanitize-log", dev.name, "-o", "json"], progress)

    async def _sanitize(self, dev: BlockDevice, start: list[str],
                        status: list[str],
                        progress: Callable[[str], tuple[bool, float | None]]
                        ) -> None:
        """Start a sanitize with ``start``, then run ``status`` every
        ``poll`` seconds: ``progress`` reads its output and answers whether
        it still runs and the fraction done (when known), or raises
        EraseFailed when the device reports a failure."""
        await self._run(start, timeout=120.0)
        deadline = self.clock.seconds() + _timeout(dev.size, 4 * 3600)
        while True:
            await deferLater(self.clock, self.poll)
            running, fraction = progress(
                (await self._run(status, timeout=60.0)).out)
            if not running:
                return
            if fraction is not None:
                self._phase(dev.name, "erasing", fraction=fraction)
            if self.clock.seconds() > deadline:
                raise EraseFailed("sanitize still running at its deadline")

    # ---- ATA

    async def _security(self, dev: BlockDevice) -> erase.AtaSecurity | None:
        out = (await self._run(["hdparm", "-I", dev.name], timeout=30.0,
                               check=False)).out
        return erase.parse_hdparm_identify(out).security

    async def _unlock(self, dev: BlockDevice,
                      sec: erase.AtaSecurity | None) -> erase.AtaSecurity | None:
        """As IPA: a drive left locked by an earlier failed attempt is
        unlocked with the password it used ("NULL"; "" for older hdparm)."""
        for password in ("NULL", ""):
            if sec is None or not sec.locked:
                break
            self.agent.guard.check(dev.name)
            result = await self._run(["hdparm", "--user-master", "u",
                                      "--security-unlock", password,
                                      dev.name], timeout=60.0, check=False)
            if result.exit_code != 0:
                log.info("security unlock of {dev} with {pw!r} failed: "
                         "{err}", dev=dev.name, pw=password,
                         err=result.err.strip()[-200:])
            sec = await self._security(dev)
        return sec

    async def _ata_security_erase(self, dev: BlockDevice,
                                  enhanced: bool) -> None:
        sec = await self._security(dev)
        if sec is None or not sec.supported:
            raise EraseFailed("ATA security is not supported")
        if sec.frozen:
            raise EraseFailed(f"Block device {dev.name} is frozen and "
                              f"cannot be erased")
        sec = await self._unlock(dev, sec)
        if sec is None or sec.locked:
            raise EraseFailed(f"Block device {dev.name} already has a "
                              f"security password set")
        if not sec.enabled:
            self.agent.guard.check(dev.name)
            await self._run(["hdparm", "--user-master", "u",
                             "--security-set-pass", "NULL", dev.name],
                            timeout=60.0)
        minutes = (sec.enhanced_minutes if enhanced else sec.erase_minutes)
        estimate = 60.0 * minutes if minutes else None
        self.agent.guard.check(dev.name)
        option = "--security-erase-enhanced" if enhanced \
            else "--security-erase"
        t0 = self.clock.seconds()

        def tick() -> None:
            if estimate:
                self._phase(dev.name, "erasing", fraction=min(
                    0.99, (self.clock.seconds() - t0) / estimate))

        loop = every(self.clock, self.poll, tick,
                     what=f"the erase progress of {dev.name}")
        try:
            await self._run(["hdparm", "--user-master", "u", option, "NULL",
                             dev.name],
                            timeout=2 * estimate + 3600 if estimate
                            else _timeout(dev.size, 4 * 3600))
        except ProcessError as e:
            # as IPA: unlock, so that a fallback can still write the disk
            await self._unlock(dev, await self._security(dev))
            raise EraseFailed(f"Erase failed for device {dev.name}: {e}")
        finally:
            loop.stop()
        sec = await self._security(dev)
        if sec is None or sec.enabled:
            raise EraseFailed(f"An unknown error occurred erasing block "
                              f"device {dev.name} (security still enabled "
                              f"after the erase)")

    async def _ata_sanitize(self, dev: BlockDevice, option: str) -> None:
        def progress(out: str) -> tuple[bool, float | None]:
            status = erase.parse_hdparm_sanitize_status(out)
            if status.failed:
                raise EraseFailed("the drive reports the sanitize failed")
            return status.running, status.fraction

        await self._sanitize(
            dev, ["hdparm", "--yes-i-know-what-i-am-doing", option, dev.name],
            ["hdparm", "--sanitize-status", dev.name], progress)

    # ---- every disk

    async def erase_all(self, devices: Sequence[BlockDevice],
                        step: str) -> dict[str, dict[str, Any]]:
        self.progress = EraseProgress(self.clock, step,
                                      [d.name for d in devices])
        self.agent.report_progress(self.progress)
        limit = DeferredSemaphore(max(1, self.options.concurrency))

        def job(dev: BlockDevice) -> Callable[[], Any]:
            return lambda: ensureDeferred(self.erase_disk(dev))

        results = await DeferredList(
            [limit.run(job(dev)) for dev in devices], consumeErrors=True)
        reports: dict[str, dict[str, Any]] = {}
        for dev, (ok, value) in zip(devices, results):
            reports[dev.name] = value if ok else {
                "device": dev.name, "result": "failed",
                "reason": str(getattr(value, "value", value))}
        self.progress.finish(reports)
        self.agent.report_progress(self.progress)
        return reports
