"""The ``inject_files`` deploy and service step: files written into the
deployed disk's filesystems.

IPA's argument shape: ``files``, a list of objects with ``path`` (the
file's absolute path in the deployed system), ``partition`` (where it
goes: a partition number of the root device, a device path, or
``LABEL=``, ``UUID=``, ``PARTUUID=``, ``PARTLABEL=``; without it, the
first partition whose filesystem has the path's first directory),
``content`` (base64, or a URL, which may name ``{node[...]}`` and
``{ports[...]}`` fields), ``deleted`` (remove the file instead), ``mode``,
``dirmode`` (of the leaf directory, when it is made), ``owner`` and
``group`` (numbers); merged after ``node.properties.inject_files``.

**The deployed filesystem is not trusted** (an image made it):

* only partitions of the root device are used, each allow-listed, and
  mounted without device nodes, set-user-ID and execution;
* the path is resolved inside the mounted filesystem as the deployed
  system would resolve it (:func:`ipa_twisted.confined.resolve_in`): a
  link to ``/etc/shadow`` leads to the image's own, never the ramdisk's,
  and ``..`` cannot climb out;
* missing directories are made one by one, never through a link; the
  file is opened without following a link and must be a regular file
  (a FIFO or a device node in its place is refused);
* a URL template reaches only items of ``node`` and ``ports`` (no
  attributes: ``{node.__class__}`` is refused), and what it serves is
  capped at :data:`MAX_URL_CONTENT`.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
import stat
import string
from typing import Any, Mapping, Sequence

from twisted.logger import Logger

from ipa_twisted import errors
from ipa_twisted.confined import OutsideTree, resolve_in
from ipa_twisted.hardware import partinfo
from ipa_twisted.hardware.disks import kname_of
from ipa_twisted.hardware.mounts import MountFailed, mounted

log = Logger()

#: IPA 13.0.0's argsinfo of the step (the text Ironic shows operators).
ARGSINFO = {
    "files": {
        "description": (
            "Files to inject, a list of file structures with keys: 'path' "
            "(path to the file), 'partition' (partition specifier), "
            "'content' (base64 encoded string), 'mode' (new file mode) and "
            "'dirmode' (mode for the leaf directory, if created). "
            "Merged with the values from node.properties[inject_files]."
        ),
        "required": False,
    },
    "verify_ca": {
        "description": (
            "Whether to verify TLS certificates. Global agent options "
            "are used by default."
        ),
        "required": False,
    },
}

FIELDS = frozenset({"path", "partition", "content", "deleted", "mode",
                    "dirmode", "owner", "group"})
#: The most a URL's content may weigh.
MAX_URL_CONTENT = 32 * 1024 * 1024
#: Filesystems never searched for a path (no files in them).
NOT_FILESYSTEMS = frozenset({"", "swap", "LVM2_member", "crypto_LUKS",
                             "linux_raid_member", "BitLocker"})
_IDENTIFIERS = {"LABEL": "label", "UUID": "uuid", "PARTUUID": "partuuid",
                "PARTLABEL": "partlabel"}


class InjectError(errors.CommandExecutionError):
    """A file could not be injected (the text says which and why)."""


def validate_files(from_properties: Any, from_args: Any
                   ) -> list[dict[str, Any]]:
    """The files to inject, node properties' first; every problem found is
    named at once (InvalidCommandParamsError)."""
    if not isinstance(from_properties, list):
        raise errors.InvalidCommandParamsError(
            f"The `inject_files` node property must be a list, got "
            f"{type(from_properties).__name__}")
    if not isinstance(from_args, list):
        raise errors.InvalidCommandParamsError(
            f"The `files` argument must be a list, got "
            f"{type(from_args).__name__}")
    files = from_properties + from_args
    failures = []
    for fl in files:
        if not isinstance(fl, dict):
            failures.append(f"each file must be an object, not {fl!r}")
            continue
        unknown = set(fl) - FIELDS
        if unknown:
            failures.append(f"unexpected fields in {fl}: "
                            f"{', '.join(sorted(unknown))}")
        path = fl.get("path")
        if not path or not isinstance(path, str):
            failures.append(f"expected a path in {fl}")
        elif "\0" in path:
            failures.append(f"a NUL character in the path of {fl}")
        elif path.endswith("/"):
            failures.append(f"directories not supported for {fl}")
        elif os.path.dirname("/" + path.strip("/")) == "/" \
                and not fl.get("partition"):
            failures.append(f'{fl} in root directory requires "partition"')
        content = fl.get("content")
        if content and fl.get("deleted"):
            failures.append(f"content cannot be used with deleted in {fl}")
        elif not fl.get("deleted") and not isinstance(content, str):
            failures.append(f"content (base64 or a URL) expected in {fl}")
        elif isinstance(content, str) and "://" not in content:
            try:
                base64.b64decode(content, validate=True)
            except (binascii.Error, ValueError):
                failures.append(f"content is neither base64 nor a URL in "
                                f"{fl.get('path')}")
        partition = fl.get("partition")
        if partition is not None and type(partition) not in (int, str):
            failures.append(f"partition must be a number or a string in "
                            f"{fl}")
        for field in ("owner", "group", "mode", "dirmode"):
            if field in fl and type(fl[field]) is not int:
                failures.append(f"{field} must be a number in {fl}")
    if failures:
        raise errors.InvalidCommandParamsError(
            "Validation of files failed: " + "; ".join(failures))
    return files


_FIELD = re.compile(r"(node|ports)((?:\[[^\[\]]+\])*)")
_KEY = re.compile(r"\[([^\[\]]+)\]")


class _NodeFields(string.Formatter):
    """``str.format`` reaching only items of ``node`` and ``ports``."""

    def get_field(self, field_name: str, args: Sequence[Any],
                  kwargs: Mapping[str, Any]) -> tuple[Any, str]:
        match = _FIELD.fullmatch(field_name)
        if match is None:
            raise ValueError(f"{{{field_name}}} is not a field of node or "
                             f"ports (only items: node[uuid])")
        value = kwargs[match.group(1)]
        for key in _KEY.findall(match.group(2)):
            if isinstance(value, list):
                value = value[int(key)]
            else:
                value = value[key]
        return value, match.group(1)


def expand_url(template: str, node: Any, ports: Any) -> str:
    try:
        return _NodeFields().format(template, node=node or {},
                                    ports=ports or [])
    except (ValueError, KeyError, IndexError, TypeError) as e:
        raise errors.InvalidCommandParamsError(
            f"cannot expand the URL {template}: {type(e).__name__}: {e}"
        ) from None


def find_partition(parts: list[partinfo.Partition], spec: Any,
                   root: str) -> partinfo.Partition:
    """The partition of the root device that ``spec`` names."""
    text = str(spec).strip()
    if isinstance(spec, int) or text.isdigit():
        found = [p for p in parts if p.number == int(text)]
    elif text.startswith("/dev/"):
        found = [p for p in parts if p.name == kname_of(text)]
    else:
        key, sep, value = text.partition("=")
        if not sep or key.upper() not in _IDENTIFIERS:
            raise errors.InvalidCommandParamsError(
                f"partition {text!r}: give a number, a device path or "
                f"LABEL=, UUID=, PARTUUID=, PARTLABEL=")
        attr = _IDENTIFIERS[key.upper()]
        value = value.strip('"')
        found = [p for p in parts
                 if getattr(p, attr) and
                 (getattr(p, attr) == value
                  or (attr.endswith("uuid")
                      and getattr(p, attr).lower() == value.lower()))]
    if len(found) != 1:
        raise errors.DeviceNotFound(
            f"partition {text!r}: {'no' if not found else 'more than one'} "
            f"partition of the root device {root} matches (partitions: "
            f"{', '.join(p.name for p in parts) or 'none'})")
    return found[0]


def _makedirs(root: str, directory: str) -> bool:
    """Make the missing directories from ``root`` down to ``directory``
    (a path under ``root`` with no links left in it), one by one, never
    through a link; True when the last one was made."""
    rel = os.path.relpath(directory, root)
    here, made = root, False
    for name in ([] if rel == "." else rel.split(os.sep)):
        here = os.path.join(here, name)
        try:
            info = os.lstat(here)
        except FileNotFoundError:
            os.mkdir(here, 0o755)
            made = True
            continue
        if not stat.S_ISDIR(info.st_mode):
            raise InjectError(f"/{os.path.relpath(here, root)} is not a "
                              f"directory")
        made = False
    return made


def apply_file(root: str, entry: Mapping[str, Any], content: bytes | None
               ) -> str:
    """Write (or delete) one file in the filesystem mounted at ``root``;
    a line saying what was done."""
    rel = os.path.normpath(entry["path"].strip("/"))
    shown = "/" + rel
    try:
        target = resolve_in(root, rel)
    except OutsideTree as e:
        raise InjectError(f"{shown}: {e}") from None
    if os.path.commonpath([target, root]) != root or target == root:
        raise InjectError(f"{shown} leads out of the filesystem")
    if entry.get("deleted"):
        try:
            info = os.lstat(target)
        except FileNotFoundError:
            return f"{shown}: not there, nothing to delete"
        if stat.S_ISDIR(info.st_mode):
            raise InjectError(f"{shown} is a directory: not deleted")
        os.unlink(target)
        return f"{shown}: deleted"
    parent = os.path.dirname(target)
    made = _makedirs(root, parent)
    if made and entry.get("dirmode") is not None:
        os.chmod(parent, entry["dirmode"])
    try:
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW
                     | os.O_NONBLOCK | os.O_CLOEXEC, 0o644)
    except OSError as e:
        raise InjectError(f"{shown}: cannot open it for writing: "
                          f"{e.strerror}") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise InjectError(f"{shown} is not a regular file: not "
                              f"written")
        os.ftruncate(fd, 0)
        view = memoryview(content or b"")
        while view:
            view = view[os.write(fd, view):]
        if entry.get("mode") is not None:
            os.fchmod(fd, entry["mode"])
        if entry.get("owner") is not None or entry.get("group") is not None:
            owner, group = entry.get("owner"), entry.get("group")
            os.fchown(fd, -1 if owner is None else owner,
                      -1 if group is None else group)
        os.fsync(fd)
    finally:
        os.close(fd)
    return f"{shown}: {len(content or b'')} bytes written"


def _has_directory(root: str, name: str) -> bool:
    try:
        return os.path.isdir(resolve_in(root, name))
    except OutsideTree:
        return False


async def _download(agent: Any, url: str, verify_ca: Any) -> bytes:
    import treq

    http = agent.http
    if verify_ca is False:
        from treq.client import HTTPClient
        from twisted.web.client import Agent

        from ipa_twisted.tls import client_policy

        http = HTTPClient(Agent(agent.reactor, contextFactory=client_policy(
            True, None, None, None, agent.config.tls_min_version)))
    try:
        d = http.get(url)
        d.addTimeout(agent.config.image_download_connection_timeout,
                     agent.reactor)
        response = await d
        if response.code >= 400:
            raise InjectError(f"cannot download {url}: HTTP "
                              f"{response.code}")
        chunks: list[bytes] = []
        size = 0

        def collect(data: bytes) -> None:
            nonlocal size
            size += len(data)
            if size > MAX_URL_CONTENT:
                raise InjectError(f"{url} serves more than "
                                  f"{MAX_URL_CONTENT} bytes")
            chunks.append(data)

        await treq.collect(response, collect)
    except InjectError:
        raise
    except Exception as e:
        raise InjectError(f"cannot download {url}: {e}") from None
    return b"".join(chunks)


async def inject_files(agent: Any, node: Any, ports: Any, files: Any,
                       verify_ca: Any = True) -> list[str]:
    """The step (see the module's docstring); a line per file done."""
    node = node or {}
    entries = validate_files(
        (node.get("properties") or {}).get("inject_files") or [],
        files or [])
    if not entries:
        log.info("inject_files: no files to inject")
        return []
    root = await agent.hardware.dispatch("get_os_install_device")
    agent.guard.check(root)
    parts = await partinfo.partitions(agent.process, root)
    done = []
    for entry in entries:
        content: bytes | None = None
        value = str(entry.get("content") or "")
        if not entry.get("deleted"):
            if "://" in value:
                content = await _download(agent, expand_url(value, node,
                                                            ports),
                                          verify_ca)
            else:
                content = base64.b64decode(value)
        line = await _inject_one(agent, root, parts, entry, content)
        log.info("inject_files: {line}", line=line)
        done.append(line)
    return done


async def _inject_one(agent: Any, root: str,
                      parts: list[partinfo.Partition],
                      entry: Mapping[str, Any], content: bytes | None
                      ) -> str:
    spec = entry.get("partition")
    try:
        if spec is not None and spec != "":
            part = find_partition(parts, spec, root)
            async with mounted(agent, part.path) as mnt:
                line = await agent.in_thread(apply_file, mnt, entry,
                                             content)
                return f"{line} on {part.path}"
        top = os.path.normpath(entry["path"].strip("/")).split("/")[0]
        for part in parts:
            if part.fstype in NOT_FILESYSTEMS:
                continue
            try:
                async with mounted(agent, part.path) as mnt:
                    if not await agent.in_thread(_has_directory, mnt, top):
                        continue
                    log.info("inject_files: /{top} is on {part}", top=top,
                             part=part.path)
                    line = await agent.in_thread(apply_file, mnt, entry,
                                                 content)
                    return f"{line} on {part.path}"
            except MountFailed as e:
                log.warn("inject_files: {e}", e=e)
        raise errors.DeviceNotFound(
            f"No partition found with path /{top}, scanned: "
            f"{', '.join(p.name for p in parts) or 'none'}")
    except MountFailed as e:
        raise InjectError(str(e)) from None
    except OSError as e:
        raise InjectError(f"{entry['path']}: {e}") from None
