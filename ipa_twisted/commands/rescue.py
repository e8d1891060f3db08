"""The rescue extension: ``finalize_rescue``.

Ironic (rescue interface ``agent``) boots the ramdisk on a deployed node,
waits for its heartbeat and calls ``rescue.finalize_rescue`` with the
tenant's rescue password, hashed (``hashed: true``; older conductors send
it plain).  It expects the answer in the same POST (a synchronous
command), as IPA gives it; then the agent must stop serving, so that its
API is not left open on the tenant's network.

What the agent does, in order:

1. the password is made a crypt(3) hash if it came plain (``openssl
   passwd -6``, the password on its standard input, never on a command
   line), and refused if it is empty or holds a ``:`` or a line break
   (it ends up in a ``user:hash`` line);
2. the hash is written to IPA's password file (mode 0600), where the
   ramdisk's rescue service of diskimage-builder looks for it;
3. if the ramdisk has the rescue user, its password is set to the hash
   (``chpasswd -e``, on standard input);
4. IPA's marker file ``/etc/.rescued`` is made (an agent started again
   sees it and stays silent, as IPA's does);
5. once the answer has gone, the agent stops its API and its heartbeats.

Neither the password nor its hash is ever logged.
"""

from __future__ import annotations

import os
import pwd
from typing import Any

from twisted.logger import Logger

from ipa_twisted import errors
from ipa_twisted.commands.base import Extension, sync_command
from ipa_twisted.process import ProcessError

log = Logger()

#: Where IPA leaves the hash (diskimage-builder's rescue service reads it).
PASSWORD_FILE = "/etc/ipa-rescue-config/ipa-rescue-password"
#: IPA's marker of a rescued ramdisk.
RESCUED_MARKER = "/etc/.rescued"
#: The user diskimage-builder's rescue element makes.
RESCUE_USER = "rescue"


class RescueError(errors.AgentError):
    message = "Rescue operation failed"


def _check(extension: Any, rescue_password: Any = "",
           hashed: Any = False) -> None:
    """400 before anything is written: a password that cannot be a
    ``user:hash`` line."""
    if not isinstance(hashed, bool):
        raise errors.InvalidCommandParamsError(
            f"hashed must be true or false, not {hashed!r}")
    if not isinstance(rescue_password, str) or not rescue_password:
        raise errors.InvalidCommandParamsError(
            "rescue_password must be a non-empty string")
    if any(c in rescue_password for c in "\r\n\0") or (
            hashed and (":" in rescue_password
                        or any(c.isspace() for c in rescue_password))):
        raise errors.InvalidCommandParamsError(
            "rescue_password holds a character it cannot hold (a line "
            "break, or in a hash a ':' or a space)")


class RescueExtension(Extension):
    name = "rescue"
    #: the places written (tests point them elsewhere)
    password_file = PASSWORD_FILE
    marker = RESCUED_MARKER
    user = RESCUE_USER

    @sync_command("finalize_rescue", validator=_check)
    async def finalize_rescue(self, rescue_password: str = "",
                              hashed: bool = False) -> None:
        """Set the rescue password (see the module's docstring), then stop
        serving once this answer has gone."""
        try:
            digest = rescue_password if hashed \
                else await self._hash(rescue_password)
            await self.agent.in_thread(self._write_password_file, digest)
            await self._set_user_password(digest)
            await self.agent.in_thread(self._make_marker)
        except (OSError, ProcessError) as e:
            raise RescueError(
                f"writing the rescue password failed: {e}") from None
        log.info("rescue password set ({kind}); the agent stops serving "
                 "once this answer has gone",
                 kind="given hashed" if hashed else "hashed by the agent")
        # after this command's answer is written (the same POST)
        self.agent.reactor.callLater(0, self.agent.stop_serving,
                                     "rescue finalized")

    async def _hash(self, password: str) -> str:
        result = await self.agent.process.run(
            ["openssl", "passwd", "-6", "-stdin"],
            stdin=password.encode() + b"\n", timeout=60.0)
        digest = result.out.strip()
        if not digest.startswith("$6$") or ":" in digest:
            raise RescueError("openssl passwd gave no SHA-512 crypt hash")
        return str(digest)

    def _write_password_file(self, digest: str) -> None:
        directory = os.path.dirname(self.password_file)
        os.makedirs(directory, mode=0o700, exist_ok=True)
        tmp = self.password_file + ".new"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC
                     | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(digest)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.password_file)

    async def _set_user_password(self, digest: str) -> None:
        try:
            pwd.getpwnam(self.user)
        except KeyError:
            log.info("no user {user} on this ramdisk: the rescue password "
                     "is left in {path} for the ramdisk's rescue service",
                     user=self.user, path=self.password_file)
            return
        await self.agent.process.run(
            ["chpasswd", "-e"], stdin=f"{self.user}:{digest}\n".encode(),
            timeout=60.0)
        log.info("password of user {user} set", user=self.user)

    def _make_marker(self) -> None:
        fd = os.open(self.marker, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW
                     | os.O_CLOEXEC, 0o644)
        os.close(fd)
