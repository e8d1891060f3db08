"""Paths and copies confined to one directory tree: an image's root
filesystem, the files of a config drive.

What an image holds is hostile input: a symbolic link in it may name
``/proc/cmdline``, the agent's TLS key or any ramdisk file, and a tool that
follows it (``cp -L``, ``mcopy``) copies that file onto the deployed disk.
So links are resolved here, never by the tools:

* :func:`resolve_in` resolves a path inside an image's root as a chroot
  would (an absolute link starts again at the image's root), and refuses a
  path that climbs out of it with ``..``;
* :func:`copy_from_image` copies a directory of the image (its /boot/efi,
  onto the EFI system partition, which cannot hold links) with every link
  resolved that way: what a link names is copied if it is a regular file
  or directory of the image's own filesystem; anything else is refused;
* :func:`check_extracted` makes an extracted config drive safe to copy
  with a tool that follows links: links that stay inside are replaced by a
  copy of the file they name, links that leave it, device nodes, FIFOs
  and sockets are refused.

Every refusal is a :class:`OutsideTree` with a sentence that names the
path and what it points at.
"""

from __future__ import annotations

import os
import shutil
import stat
from collections import deque

#: Links followed in one path at most (Linux's limit).
MAX_LINKS = 40


class OutsideTree(Exception):
    """A path leads out of the tree, or to something that is not a file."""


def _parts(path: str) -> list[str]:
    return [p for p in path.split("/") if p not in ("", ".")]


def resolve_in(root: str, path: str) -> str:
    """The path on this machine of what ``path`` (relative to the image's
    root, or absolute in the image) names, symbolic links resolved inside
    ``root`` as in a chroot.  Components that do not exist are kept as
    they are (the result may not exist).  Raises :class:`OutsideTree` for
    a ``..`` above the root and for too many links."""
    pending = deque(_parts(path))
    resolved: list[str] = []   # real directories under root, no links
    links = 0
    while pending:
        name = pending.popleft()
        if name == "..":
            if not resolved:
                raise OutsideTree(f"/{path.lstrip('/')} leads out of the "
                                  f"image (.. above its root)")
            resolved.pop()
            continue
        here = os.path.join(root, *resolved, name)
        try:
            info = os.lstat(here)
        except (FileNotFoundError, NotADirectoryError):
            resolved.append(name)
            resolved.extend(p for p in pending)
            if ".." in resolved:
                raise OutsideTree(f"/{path.lstrip('/')}: .. after a "
                                  f"missing directory") from None
            return os.path.join(root, *resolved)
        if stat.S_ISLNK(info.st_mode):
            links += 1
            if links > MAX_LINKS:
                raise OutsideTree(f"/{path.lstrip('/')}: too many levels "
                                  f"of symbolic links")
            target = os.readlink(here)
            if target.startswith("/"):
                resolved = []
            pending.extendleft(reversed(_parts(target)))
        else:
            resolved.append(name)
    return os.path.join(root, *resolved)


def copy_from_image(root: str, source: str, target: str) -> list[str]:
    """Copy the image's directory ``source`` (a path in the image) into
    the existing directory ``target``, links resolved in the image; the
    paths written (relative to ``target``), in order.  Only regular files
    and directories on the image root's own filesystem are copied; a link
    that leaves the image or names anything else stops the copy with
    :class:`OutsideTree` (what was written stays: the caller cleans up)."""
    root_dev = os.stat(root).st_dev
    written: list[str] = []

    def check(real: str, shown: str, info: os.stat_result) -> None:
        if info.st_dev != root_dev:
            raise OutsideTree(f"{shown} is on another filesystem than the "
                              f"image ({real})")
        if not (stat.S_ISREG(info.st_mode) or stat.S_ISDIR(info.st_mode)):
            raise OutsideTree(f"{shown} is not a regular file or directory")

    def copy_dir(inside: str, out: str, rel: str, seen: set[tuple[int, int]]
                 ) -> None:
        real_dir = resolve_in(root, inside)
        for name in sorted(os.listdir(real_dir)):
            path_in = f"{inside.rstrip('/')}/{name}"
            shown = "/" + path_in.lstrip("/")
            lexical = os.path.join(real_dir, name)
            real = resolve_in(root, path_in)
            try:
                info = os.lstat(real)
            except (FileNotFoundError, NotADirectoryError):
                target = os.readlink(lexical) if os.path.islink(lexical) \
                    else real
                raise OutsideTree(f"{shown} links to {target!r}, which is "
                                  f"not in the image") from None
            check(real, shown, info)
            dest = os.path.join(out, name)
            rel_dest = os.path.join(rel, name) if rel else name
            if stat.S_ISDIR(info.st_mode):
                key = (info.st_dev, info.st_ino)
                if key in seen:
                    raise OutsideTree(f"{shown} links back to a directory "
                                      f"that contains it")
                os.makedirs(dest, exist_ok=True)
                written.append(rel_dest)
                copy_dir(path_in, dest, rel_dest, seen | {key})
            else:
                _copy_file(real, dest, shown, root_dev)
                written.append(rel_dest)

    top = resolve_in(root, source)
    info = os.lstat(top)
    check(top, "/" + source.lstrip("/"), info)
    copy_dir(source, target, "", {(info.st_dev, info.st_ino)})
    return written


def _copy_file(real: str, dest: str, shown: str, device: int) -> None:
    """Copy one regular file, opened without following a link and checked
    again once open (nothing can swap it for a FIFO or a device)."""
    fd = os.open(real, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK
                 | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as src:
        info = os.fstat(src.fileno())
        if not stat.S_ISREG(info.st_mode) or info.st_dev != device:
            raise OutsideTree(f"{shown} is not a regular file of the image")
        out = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_TRUNC
                      | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        with os.fdopen(out, "wb") as dst:
            shutil.copyfileobj(src, dst, 1024 * 1024)


def check_extracted(top: str) -> None:
    """Make the tree ``top`` (files extracted from a config drive) hold
    only regular files and directories: a link to a regular file inside
    ``top`` becomes a copy of it; anything else is refused with
    :class:`OutsideTree`."""
    real_top = os.path.realpath(top)
    for base, dirs, files in os.walk(top):
        for name in dirs + files:
            path = os.path.join(base, name)
            shown = "/" + os.path.relpath(path, top)
            info = os.lstat(path)
            if stat.S_ISREG(info.st_mode) or stat.S_ISDIR(info.st_mode):
                continue
            if not stat.S_ISLNK(info.st_mode):
                raise OutsideTree(f"{shown} is a device, FIFO or socket")
            target = os.readlink(path)
            real = os.path.realpath(path)
            if os.path.commonpath([real, real_top]) != real_top:
                raise OutsideTree(f"{shown} links to {target!r}, outside "
                                  f"the config drive")
            try:
                info = os.lstat(real)
            except (FileNotFoundError, NotADirectoryError):
                raise OutsideTree(f"{shown} links to {target!r}, which is "
                                  f"not in the config drive") from None
            if not stat.S_ISREG(info.st_mode):
                raise OutsideTree(f"{shown} links to {target!r}, which is "
                                  f"not a regular file")
            os.unlink(path)
            _copy_file(real, path, shown, info.st_dev)
