"""A cached build stage that runs a script in a Debian root of its own
(``ramdisk/builder.py``'s repacked kernel and ISO).

The stage's output directory is named by a key of what goes in, and of
the build root itself (its directory and when its tarball was made: a
root made again, with other package versions, makes a new key).  The
root is unpacked afresh for each build, the stage's files are written to
``/NAME`` in it, ``sh /NAME/build.sh`` runs there, and ``collect`` takes
what it made into the output directory.  Standard library only.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from typing import Any, Callable, NamedTuple, Union


class StageError(Exception):
    """A stage could not be built; the message says why."""


class Copy(NamedTuple):
    """A file of the stage's inputs copied from this path."""
    path: str


Content = Union[str, bytes, Copy]


def sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def build(cache: str, name: str, key_parts: list[bytes], packages: list[str],
        files: Callable[[], dict[str, Content]],
        build_root: Callable[[list[str]], str],
        run_in_root: Callable[[str, list[str]], Any],
        collect: Callable[[str, str], None], fresh: bool = False) -> str:
    """The output directory of stage ``name`` (``cache``/NAME-KEY), built
    unless it is there.  ``files()``: what /NAME holds (``build.sh``
    among them), asked for only when the stage is built.
    ``build_root(packages)``: a directory holding
    ``root.tar`` (builder.build_base); ``run_in_root(root, argv)``: argv
    run in the unpacked root, writable (builder.in_image), a
    CompletedProcess; ``collect(inside, out)``: checks what the script
    left in ``inside`` (the root's /NAME) and puts the results in
    ``out``, raising StageError or ValueError if they are wrong.
    ``fresh``: build into a new directory (--check-reproducible); the
    caller removes it.  Raises StageError; the script's ``*.log`` files,
    if any, are kept in the output directory."""
    try:
        base = build_root(packages)
    except SystemExit as e:
        raise StageError(f"no build root with {' '.join(packages)}: {e}") \
            from None
    tar = os.path.join(base, "root.tar")
    made = os.stat(tar)
    with open(__file__, "rb") as f:
        me = f.read()
    key = hashlib.sha256(b"\0".join(key_parts + [
        f"{name} {os.path.basename(base)} {made.st_size} {made.st_mtime_ns}"
        .encode(), me])).hexdigest()[:16]
    out = os.path.join(cache, f"{name}-{key}")
    if fresh:
        out = tempfile.mkdtemp(prefix=f"{name}-{key}-", dir=cache)
    elif os.path.exists(os.path.join(out, "done")):
        return out
    else:
        shutil.rmtree(out, ignore_errors=True)
        os.makedirs(out)
    work = tempfile.mkdtemp(prefix=f"ipa-{name}-", dir=cache)
    try:
        root = os.path.join(work, "root")
        os.makedirs(root)
        subprocess.run(["tar", "-C", root, "--numeric-owner", "-xpf", tar],
                       check=True)
        inside = os.path.join(root, name)
        os.makedirs(inside)
        for filename, content in files().items():
            target = os.path.join(inside, filename)
            if isinstance(content, Copy):
                shutil.copyfile(content.path, target)
                continue
            with open(target, "wb" if isinstance(content, bytes) else "w"
                      ) as f:
                f.write(content)
        result = run_in_root(root, ["sh", f"/{name}/build.sh"])
        logs = [n for n in os.listdir(inside) if n.endswith(".log")]
        for log in logs:
            shutil.copy(os.path.join(inside, log), out)
        if result.returncode != 0:
            kept = ", ".join(os.path.join(out, n) for n in logs)
            raise StageError(f"its script failed ({kept or 'no log'}):\n"
                             f"{(result.stdout + result.stderr)[-1500:]}")
        try:
            collect(inside, out)
        except ValueError as e:
            raise StageError(str(e)) from None
        open(os.path.join(out, "done"), "w").close()
    except BaseException:
        if fresh:
            shutil.rmtree(out, ignore_errors=True)
        raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return out
