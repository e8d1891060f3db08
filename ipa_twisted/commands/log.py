"""The log extension: ``log.collect_system_logs``, the system's logs as a
gzipped tarball, base64 (built by :mod:`ipa_twisted.system_logs`, which
the ``logs`` inspection collector uses too)."""

from __future__ import annotations

from ipa_twisted.commands.base import Extension, sync_command


class LogExtension(Extension):
    name = "log"

    @sync_command("collect_system_logs")
    async def collect_system_logs(self) -> dict[str, str]:
        from ipa_twisted import system_logs

        return {"system_logs": await system_logs.collect(self.agent)}
