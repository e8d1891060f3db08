"""Build the ipa-twisted ramdisk (``ramdisk/build``; docs/ramdisk.md).

Two stages, each cached by the hash of what goes into it:

1. **base**: a Debian root (mmdebstrap, variant ``essential``) with
   python3, udev, busybox (its DHCP client), kmod and the Debian package
   of every tool the agent runs (``ipa_twisted/tools.py``, scope agent),
   no docs, man pages or locales; and the Debian kernel package, as a
   ``.deb`` beside it.  Keyed by the package list, the suite and this
   stage's recipe; a cold base is the slow part (downloads).
2. **ramdisk**: the base unpacked; the kernel's modules that servers need
   (storage, NICs, virtio, md, dm, nvme, ipmi, the filesystems the agent
   makes) and what they depend on; the agent's dependencies installed by
   pip from pinned wheels (``ramdisk/requirements.txt``, hashes checked,
   no index) and the agent as a wheel built from this checkout; bytecode
   compiled with hashes (no timestamps); ``/init``; then every listed
   agent tool is checked to be there, every mtime set to
   ``SOURCE_DATE_EPOCH``; what the boot does not read moved into a
   squashfs image in the tree (see "the cold part" below); the tree
   packed as a sorted newc cpio, compressed.  Keyed by the base, the wheels, the agent's sources, the
   init and the flags: a rebuild with nothing changed copies the result
   from the cache.

Beside them, cached on its own: Debian's kernel image repacked behind an
lz4 decompressor (``kernel_repack.py``; ``--stock-kernel`` skips it).

Standard library only; runs as root (mmdebstrap's root mode, chroot).
"""

from __future__ import annotations

import argparse
import functools
import fnmatch
import hashlib
import importlib.machinery
import importlib.util
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable, Iterable

import stage

HERE = os.path.dirname(os.path.abspath(__file__))
TOP = os.path.dirname(HERE)

def _load_tools() -> Any:
    """ipa_twisted/tools.py (standard library only), without importing the
    agent's package or putting its directory on sys.path."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "_ipa_twisted_tools", os.path.join(TOP, "ipa_twisted", "tools.py"))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # NamedTuple needs its module
    spec.loader.exec_module(module)
    return module


agent_tools = _load_tools()

#: Changing the recipe of a stage: bump its version (the cache key).
BASE_RECIPE = 3
KERNEL_RECIPE = 1
RAMDISK_RECIPE = 7

SUITE = "bookworm"
#: 2026-01-01: the default SOURCE_DATE_EPOCH (mtimes in the ramdisk)
EPOCH = 1767225600
KERNEL_PACKAGE = "linux-image-amd64"
PIP_WHEEL = ("pip-26.3-py3-none-any.whl",
             "f3b60b20ffaadd4415ed7957212a38ac63fa4c5fa375bd0f4a797777940fad13")

#: Debian packages besides those of the agent's tools: the interpreter,
#: udev and module loading for /init, busybox for udhcpc, CA certificates
#: for HTTPS to Ironic and image servers, agetty for the debug console
#: (util-linux).
BASE_PACKAGES = ["python3", "udev", "kmod", "busybox", "ca-certificates",
                 "iproute2", "util-linux"]
#: mmdebstrap's essential variant brings usrmerge, which brings perl
#: (30 MB); the merged /usr is made by then, so they go.
PURGE = ["usrmerge", "libfile-find-rule-perl", "libnumber-compare-perl",
         "libtext-glob-perl", "perl", "perl-modules-5.36", "libperl5.36"]
FIRMWARE_PACKAGES = ["firmware-linux-free", "firmware-misc-nonfree",
                     "firmware-bnx2", "firmware-bnx2x", "firmware-qlogic",
                     "firmware-realtek", "firmware-netronome",
                     "firmware-intel-misc"]
DEBUG_SSH_PACKAGES = ["dropbear-bin"]

#: dpkg never unpacks these (size; not used in a ramdisk); the copyright
#: files stay.
DPKG_EXCLUDES = ["/usr/share/doc/*", "/usr/share/man/*", "/usr/share/info/*",
                 "/usr/share/locale/*", "/usr/share/lintian/*",
                 "/usr/share/linda/*", "/usr/share/bug/*",
                 "/usr/share/i18n/*"]
DPKG_INCLUDES = ["/usr/share/doc/*/copyright"]

#: Kernel modules kept (paths under lib/modules/VERSION/kernel; the
#: modules these need are added from modules.dep): storage controllers,
#: NICs, virtio, md/dm, NVMe (and Intel VMD), IPMI, USB storage (virtual
#: media), VLANs and bonds, the filesystems the agent reads or makes, and
#: the crypto/lib helpers those load by name (crc32c for ext4/xfs).
MODULES = [
    "drivers/ata/*", "drivers/scsi/*", "drivers/nvme/*", "drivers/md/*",
    "drivers/block/*", "drivers/virtio/*", "drivers/net/ethernet/*",
    "drivers/net/virtio_net.ko*", "drivers/net/net_failover.ko*",
    "drivers/net/mii.ko*", "drivers/net/mdio*", "drivers/net/phy/*",
    "drivers/net/bonding/*", "drivers/char/ipmi/*", "drivers/message/*",
    "drivers/usb/storage/*", "drivers/usb/host/*", "drivers/cdrom/*",
    "drivers/pci/controller/vmd.ko*", "drivers/char/virtio_console.ko*",
    "drivers/char/hw_random/virtio-rng.ko*",
    "fs/ext4/*", "fs/jbd2/*", "fs/mbcache.ko*", "fs/xfs/*", "fs/fat/*",
    "fs/isofs/*", "fs/udf/*", "fs/nls/*", "fs/efivarfs/*",
    "fs/overlayfs/*", "fs/squashfs/*",
    "net/8021q/*", "net/802/*", "net/llc/*", "net/packet/*",
    "lib/*", "crypto/*", "arch/x86/crypto/*",
]
#: Matched by MODULES but left out (unless another module needs them):
#: the floppy driver (no server has a floppy controller; under QEMU it
#: probes the emulated one at every boot), Ceph and cluster-RAID
#: clients, NVMe-oF and Fibre Channel target (serving) modes.
MODULES_LEFT_OUT = ["drivers/block/floppy.ko*", "drivers/block/rbd.ko*",
                    "drivers/md/md-cluster.ko*", "drivers/nvme/target/*",
                    "drivers/scsi/qla2xxx/tcm_qla2xxx.ko*"]
#: Python's own test suite and tools that nothing in the agent imports.
PRUNE = ["usr/lib/python3.11/test", "usr/lib/python3.11/idlelib",
         "usr/lib/python3.11/tkinter", "usr/lib/python3.11/turtledemo",
         "usr/lib/python3.11/lib2to3", "usr/lib/python3.11/ensurepip",
         "usr/lib/python3.11/pydoc_data", "usr/share/python3/debian_defaults",
         "var/cache/apt", "var/lib/apt", "var/cache/ldconfig",
         "var/cache/debconf/templates.dat-old", "boot",
         # hardware names for udev properties nothing here reads (12 MB)
         "usr/lib/udev/hwdb.bin", "etc/udev/hwdb.bin",
         "etc/machine-id", "var/lib/dbus/machine-id",
         # identities nvme-cli's installation made up for the build
         # machine: every server booting the ramdisk would present the
         # same NVMe host NQN (nvme-cli derives one from the machine's
         # DMI UUID when the file is absent)
         "etc/nvme/hostnqn", "etc/nvme/hostid"]
#: In the installed wheels: test suites, zstandard's cffi backend (the C
#: one is used), type stubs; Twisted's protocols and tools the agent does
#: not use (SSH, mail, chat, raw packets, GPS, trial) and their twistd
#: plugins (twisted.web needs twisted.spread: it stays).
PRUNE_PYTHON = ["*/test", "*/tests", "zstandard/_cffi.*",
                "zstandard/backend_cffi.py", "*.pyi",
                "twisted/conch", "twisted/mail", "twisted/words",
                "twisted/pair", "twisted/positioning", "twisted/trial",
                "twisted/newsfragments",
                "twisted/plugins/twisted_conch.py",
                "twisted/plugins/twisted_mail.py",
                "twisted/plugins/twisted_words.py",
                "twisted/plugins/twisted_trial.py",
                "twisted/plugins/cred_sshkeys.py"]
#: Cut from our ramdisk's Debian root (not the IPA reference's:
#: benchmarks/netboot.py): what nothing in the ramdisk runs or reads.
#: Globs, relative to the root.
SLIM = [
    # perl: only Debian's packaging scripts use it (debconf, adduser,
    # update-rc.d), and nothing installs packages in the ramdisk
    "usr/bin/perl", "usr/bin/perl5.*", "usr/lib/x86_64-linux-gnu/perl-base",
    "usr/lib/x86_64-linux-gnu/perl", "usr/share/perl5",
    # the sources of udev's hardware database (hwdb.bin is gone: PRUNE)
    "usr/lib/udev/hwdb.d",
    # dpkg's per-package file lists and checksums (its status file stays:
    # `dpkg -l` still lists what is in the ramdisk)
    "var/lib/dpkg/info/*",
    # shell completions, initramfs-tools hooks, debugger helpers, Debian's
    # Python byte-compiling helpers
    "usr/share/bash-completion", "usr/share/zsh", "usr/share/initramfs-tools",
    "usr/share/gcc", "usr/share/gdb", "usr/share/python3",
    # Python: the C test modules, turtle graphics, frozen-module examples
    "usr/lib/python3.11/lib-dynload/_test*",
    "usr/lib/python3.11/lib-dynload/_ctypes_test.*",
    "usr/lib/python3.11/lib-dynload/_xxtestfuzz.*",
    "usr/lib/python3.11/lib-dynload/xxlimited*",
    "usr/lib/python3.11/turtle.py", "usr/lib/python3.11/__phello__",
    # libraries nothing here links (the smoke test's ldd check fails the
    # build if one is needed after all) and programs the agent never runs
    # that alone need big ones: ICU's i18n (xfs_scrub), Berkeley DB
    # (arpd, pam_userdb, Python's dbm.ndbm), SQLite (Python's sqlite3)
    "usr/lib/x86_64-linux-gnu/libicui18n.so*",
    "usr/lib/x86_64-linux-gnu/libicuio.so*",
    "usr/lib/x86_64-linux-gnu/libicutu.so*",
    "usr/lib/x86_64-linux-gnu/libicutest.so*",
    "usr/sbin/xfs_scrub", "usr/sbin/xfs_scrub_all",
    "usr/lib/x86_64-linux-gnu/libdb-5.3.so", "usr/sbin/arpd",
    "usr/lib/x86_64-linux-gnu/security/pam_userdb.so",
    "usr/lib/python3.11/lib-dynload/_dbm.*",
    "usr/lib/x86_64-linux-gnu/libsqlite3.so*",
    "usr/lib/python3.11/lib-dynload/_sqlite3.*", "usr/lib/python3.11/sqlite3",
    "usr/lib/x86_64-linux-gnu/libmvec.so*",
    "usr/lib/x86_64-linux-gnu/libexpatw.so*",
    "usr/lib/x86_64-linux-gnu/libformw.so*",
    "usr/lib/x86_64-linux-gnu/libmenuw.so*",
    "usr/lib/x86_64-linux-gnu/liburcu-*", "usr/lib/x86_64-linux-gnu/libgdbm*",
    "usr/lib/x86_64-linux-gnu/libhistory.so*",
    "usr/lib/x86_64-linux-gnu/libnsl.so.1", "usr/lib/x86_64-linux-gnu/libpsx.so*",
]
#: glibc's character set converters (iconv) kept: mtools converts file
#: names to the FAT code page (850 by default, 437 the other common one);
#: Python has its own codecs.  The rest (8 MB) go.
GCONV_KEEP = ["IBM437.so", "IBM850.so"]
LIBDIR = "usr/lib/x86_64-linux-gnu"
STATE_FILES = ["var/log", "var/lib/dpkg/status-old",
               "var/lib/dpkg/available-old", "var/cache/debconf/config.dat-old"]

#: The agent's sources: what goes into its wheel (and the cache key).
AGENT_SOURCES = ["ipa_twisted", "twisted/plugins", "setup.cfg",
                 "pyproject.toml", "README.md"]
RAMDISK_FILES = ["builder.py", "kernel_repack.py", "stage.py", "init",
                 "udhcpc", "start-agent", "requirements.txt"]

MiB = 1024 ** 2


def say(text: str) -> None:
    print(f"ramdisk: {text}", flush=True)


def run(argv: list[str], **kw) -> subprocess.CompletedProcess:
    result = subprocess.run(argv, **kw)
    if result.returncode != 0:
        raise SystemExit(f"ramdisk: {' '.join(argv[:6])} ... failed "
                         f"({result.returncode})")
    return result


def cache_dir(given: str | None) -> str:
    path = given or os.path.join(
        os.environ.get("IPA_TWISTED_CACHE")
        or os.path.expanduser("~/.cache/ipa-twisted"), "ramdisk")
    os.makedirs(path, exist_ok=True)
    return path


def digest(parts: Iterable[bytes]) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(hashlib.sha256(part).digest())
    return h.hexdigest()


#: a file's sha256 (stage.py's, which the kernel's and the ISO's stages use)
file_sha256 = stage.sha256


def source_files(paths: list[str]) -> list[str]:
    """The files under ``paths`` (relative to the checkout), sorted;
    caches and bytecode left out."""
    found = []
    for rel in paths:
        full = os.path.join(TOP, rel)
        if os.path.isfile(full):
            found.append(rel)
            continue
        for root, dirs, files in os.walk(full):
            dirs[:] = sorted(d for d in dirs if d != "__pycache__")
            for name in files:
                if name.endswith((".pyc", ".pyo")) or name == "dropin.cache":
                    continue
                found.append(os.path.relpath(os.path.join(root, name), TOP))
    return sorted(found)


def agent_packages() -> list[str]:
    """The Debian packages of the agent's tools (optional ones and those
    Debian does not ship left out)."""
    return sorted({t.package for t in agent_tools.of_scope(agent_tools.AGENT)
                   if t.package and not t.optional})


# ------------------------------------------------------------- stage 1

def base_packages(args: argparse.Namespace) -> list[str]:
    packages = set(BASE_PACKAGES) | set(agent_packages())
    if args.firmware:
        packages |= set(FIRMWARE_PACKAGES)
    if args.ssh_key:
        packages |= set(DEBUG_SSH_PACKAGES)
    packages |= set(args.extra_package)
    return sorted(packages)


def build_base(args: argparse.Namespace, cache: str,
               packages: list[str] | None = None, kernel: bool = True) -> str:
    """The Debian root as a tarball and the kernel .deb, in a cache
    directory named by their key; returns that directory.  ``packages``:
    another list than the agent's (benchmarks/netboot.py's IPA
    reference, kernel_repack's build root); ``kernel``: False for a root
    without the kernel .deb beside it."""
    packages = sorted(packages) if packages else base_packages(args)
    key = digest([f"base {BASE_RECIPE} {SUITE} {args.mirror}".encode()
                  + (b"" if kernel else b" without the kernel"),
                  " ".join(packages).encode(),
                  " ".join(DPKG_EXCLUDES + DPKG_INCLUDES + PURGE).encode(),
                  str(args.epoch).encode()])[:16]
    out = os.path.join(cache, f"base-{key}")
    if os.path.exists(os.path.join(out, "done")):
        say(f"Debian base {key}: cached")
        return out
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(out)
    components = "main,non-free-firmware" if args.firmware else "main"
    say(f"Debian base {key}: mmdebstrap {SUITE} with {len(packages)} "
        f"packages" + (f" (+ {KERNEL_PACKAGE})" if kernel else ""))
    t0 = time.monotonic()
    hook = (f'cd {out} && APT_CONFIG="$MMDEBSTRAP_APT_CONFIG" sh -c '
            f'\'apt-get download -q "$(apt-cache depends {KERNEL_PACKAGE} '
            f'| sed -n "s/ *Depends: \\(linux-image-[0-9].*\\)/\\1/p" '
            f'| head -n 1)"\'')
    argv = ["mmdebstrap", "--variant=essential", "--mode=root",
            f"--components={components}",
            "--include=" + ",".join(packages),
            "--aptopt=Acquire::Retries \"3\""]
    if kernel:
        argv.append(f"--customize-hook={hook}")
    argv.append("--customize-hook=chroot \"$1\" dpkg --purge "
                "--force-depends " + " ".join(PURGE))
    argv += [f"--dpkgopt=path-exclude={p}" for p in DPKG_EXCLUDES]
    argv += [f"--dpkgopt=path-include={p}" for p in DPKG_INCLUDES]
    argv += [SUITE, os.path.join(out, "root.tar")]
    if args.mirror:
        argv.append(args.mirror)
    env = {**os.environ, "SOURCE_DATE_EPOCH": str(args.epoch)}
    run(argv, env=env, stdin=subprocess.DEVNULL,
        stdout=None if args.verbose else subprocess.DEVNULL)
    debs = [n for n in os.listdir(out) if n.endswith(".deb")]
    if kernel and len(debs) != 1:
        raise SystemExit(f"ramdisk: expected one kernel package, got {debs}")
    with open(os.path.join(out, "packages"), "w") as f:
        f.write("\n".join(packages) + "\n")
    with open(os.path.join(out, "done"), "w") as f:
        f.write(f"{time.monotonic() - t0:.0f} s\n")
    say(f"Debian base {key}: {time.monotonic() - t0:.0f} s")
    return out


# ------------------------------------------------------------- wheels

def wheelhouse(cache: str) -> str:
    """The pinned wheels (requirements.txt, hashes checked) and pip's own,
    downloaded once into the cache."""
    lock = os.path.join(HERE, "requirements.txt")
    key = file_sha256(lock)[:16]
    out = os.path.join(cache, f"wheels-{key}")
    if os.path.exists(os.path.join(out, "done")):
        return out
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(out)
    say("downloading the pinned wheels (once)")
    platform = ["--only-binary", ":all:", "--platform", "manylinux2014_x86_64",
                "--platform", "manylinux_2_28_x86_64",
                "--python-version", "3.11", "--implementation", "cp",
                "--abi", "cp311", "--abi", "abi3", "--abi", "none"]
    run([sys.executable, "-m", "pip", "download", "-q", "--no-deps",
         "--require-hashes", "-r", lock, "-d", out] + platform)
    name, want = PIP_WHEEL
    pip_version = name.split("-")[1]
    run([sys.executable, "-m", "pip", "download", "-q", "--no-deps",
         f"pip=={pip_version}", "-d", out] + platform)
    if file_sha256(os.path.join(out, name)) != want:
        raise SystemExit(f"ramdisk: {name} does not have the pinned sha256")
    open(os.path.join(out, "done"), "w").close()
    return out


def agent_wheel(work: str, epoch: int) -> str:
    """The agent as a wheel built from a copy of the checkout's sources."""
    src = os.path.join(work, "src")
    for rel in source_files(AGENT_SOURCES):
        target = os.path.join(src, rel)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        shutil.copy2(os.path.join(TOP, rel), target)
    dist = os.path.join(work, "dist")
    env = {**os.environ, "SOURCE_DATE_EPOCH": str(epoch)}
    run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
         "-w", dist, src], env=env,
        stdout=subprocess.DEVNULL)
    wheels = os.listdir(dist)
    if len(wheels) != 1:
        raise SystemExit(f"ramdisk: expected one agent wheel, got {wheels}")
    return os.path.join(dist, wheels[0])


# ------------------------------------------------------------- stage 2

def closure(starts: Iterable[str],
            neighbours: Callable[[str], Iterable[str]]) -> set[str]:
    """``starts`` and everything reached from them through
    ``neighbours``."""
    seen: set[str] = set()
    todo = list(starts)
    while todo:
        node = todo.pop()
        if node in seen:
            continue
        seen.add(node)
        todo.extend(neighbours(node))
    return seen


def module_closure(moddir: str) -> list[str]:
    """The modules matching MODULES and every module they depend on
    (paths relative to ``moddir``)."""
    deps: dict[str, list[str]] = {}
    with open(os.path.join(moddir, "modules.dep")) as f:
        for line in f:
            mod, _, rest = line.partition(":")
            deps[mod] = rest.split()
    wanted = [m for m in deps if any(fnmatch.fnmatch(m, "kernel/" + p)
                                     for p in MODULES)
              and not any(fnmatch.fnmatch(m, "kernel/" + p)
                          for p in MODULES_LEFT_OUT)]
    return sorted(closure(wanted, lambda mod: deps.get(mod, [])))


def kernel_stage(base: str) -> str:
    """The kernel and the modules of MODULES (and what they need), each
    compressed, in a cache directory beside the base, named by the base
    (its kernel package), MODULES and this recipe: compressing them is
    the slow part of the ramdisk stage.  Returns that directory:
    ``vmlinuz``, ``version``, ``modules/VERSION/...``."""
    key = digest([f"kernel {KERNEL_RECIPE}".encode(),
                  os.path.basename(base).encode(),
                  " ".join(MODULES).encode(),
                  " ".join(MODULES_LEFT_OUT).encode()])[:16]
    out = os.path.join(os.path.dirname(base), f"kernel-{key}")
    if os.path.exists(os.path.join(out, "done")):
        return out
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(out)
    work = tempfile.mkdtemp(prefix="ipa-kernel-", dir=os.path.dirname(base))
    try:
        kdir = os.path.join(work, "kernel")
        run(["dpkg-deb", "-x", kernel_deb(base), kdir])
        mods = os.path.join(kdir, "lib", "modules")
        version = os.listdir(mods)[0]
        moddir = os.path.join(mods, version)
        run(["depmod", "-b", kdir, version])  # the package has none
        keep = module_closure(moddir)
        target = os.path.join(out, "modules", version)
        os.makedirs(target)
        for name in ("modules.order", "modules.builtin",
                     "modules.builtin.modinfo"):
            if os.path.exists(os.path.join(moddir, name)):
                shutil.copy2(os.path.join(moddir, name), target)
        for mod in keep:
            dest = os.path.join(target, mod)
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            shutil.copy2(os.path.join(moddir, mod), dest)
        # each module compressed (kmod unpacks the few it loads): the
        # initramfs is smaller by ~70 MB; -19 rather than -15: 2 MB less
        # to fetch and unpack, and zstd unpacks both as fast.  One zstd
        # per core, each single-threaded (the same bytes every time).
        plain = [os.path.join(target, m) for m in keep if m.endswith(".ko")]
        jobs = max(1, min(4, os.cpu_count() or 1))
        procs = [subprocess.Popen(["zstd", "-q", "--rm", "-19", "-T1"]
                                  + plain[i::jobs]) for i in range(jobs)]
        if any(p.wait() != 0 for p in procs):
            raise SystemExit("ramdisk: compressing the modules failed")
        order = os.path.join(target, "modules.order")
        if os.path.exists(order):
            with open(order) as f:
                text = f.read()
            with open(order, "w") as f:
                f.write(re.sub(r"\.ko$", ".ko.zst", text, flags=re.M))
        shutil.copy2(os.path.join(kdir, "boot", f"vmlinuz-{version}"),
                     os.path.join(out, "vmlinuz"))
        with open(os.path.join(out, "version"), "w") as f:
            f.write(version + "\n")
        with open(os.path.join(out, "count"), "w") as f:
            f.write(f"{len(keep)}\n")
        open(os.path.join(out, "done"), "w").close()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return out


def kernel_deb(base: str) -> str:
    """The kernel package the base's stage downloaded beside it."""
    return os.path.join(base, [n for n in os.listdir(base)
                               if n.endswith(".deb")][0])


def stage_roots(args: argparse.Namespace, cache: str
                ) -> tuple[Callable[[list[str]], str],
                           Callable[[str, list[str]], Any]]:
    """What the stages of stage.py (the repacked kernel, the ISO) build
    in: a Debian root of their packages, without the kernel .deb; their
    script run in it, writable."""
    return (lambda packages: build_base(args, cache, packages, kernel=False),
            lambda root, argv: in_image(root, argv, writable=True))


def repacked_kernel(args: argparse.Namespace, cache: str, base: str,
                    vmlinuz: str, fresh: bool = False) -> str:
    """Debian's kernel behind an lz4 decompressor (kernel_repack.py):
    the same vmlinux, ~2.5 s sooner to start under TCG."""
    import kernel_repack
    try:
        return kernel_repack.repack(
            vmlinuz, kernel_deb(base), cache, *stage_roots(args, cache), say,
            mirror=args.mirror, fresh=fresh)
    except Exception as e:
        raise SystemExit(f"ramdisk: repacking the kernel failed: {e}\n"
                         f"(--stock-kernel ships Debian's image as it is)")


def build_iso(args: argparse.Namespace, cache: str, result: str,
              fresh: bool = False) -> str:
    """The ISO of the ramdisk in ``result`` (iso.py)."""
    import iso
    try:
        return iso.build(
            os.path.join(result, "ipa-twisted.kernel"),
            os.path.join(result, "ipa-twisted.initramfs"), args.iso_params,
            cache, *stage_roots(args, cache), say, args.epoch,
            mirror=args.mirror, fresh=fresh)
    except Exception as e:
        raise SystemExit(f"ramdisk: making the ISO failed: {e}")


def install_kernel(base: str, root: str, work: str) -> tuple[str, str]:
    """The kernel stage's modules into ``root``; depmod.  Returns
    (vmlinuz path, version)."""
    stage = kernel_stage(base)
    with open(os.path.join(stage, "version")) as f:
        version = f.read().strip()
    with open(os.path.join(stage, "count")) as f:
        count = f.read().strip()
    shutil.copytree(os.path.join(stage, "modules", version),
                    os.path.join(root, "lib", "modules", version),
                    dirs_exist_ok=True)
    run(["depmod", "-b", root, version])
    say(f"kernel {version}: {count} modules kept")
    return os.path.join(stage, "vmlinuz"), version


CHROOT_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:"
                      "/sbin:/bin", "HOME": "/root", "LC_ALL": "C.UTF-8",
              "PYTHONDONTWRITEBYTECODE": "1"}


def chroot(root: str, argv: list[str], **kw) -> subprocess.CompletedProcess:
    env = {**CHROOT_ENV,
           "SOURCE_DATE_EPOCH": os.environ.get("SOURCE_DATE_EPOCH", "0"),
           "PYTHONHASHSEED": "0"}
    del env["PYTHONDONTWRITEBYTECODE"]
    return run(["chroot", root] + argv, env=env, **kw)


def install_python(root: str, wheels: str, own: str) -> None:
    inside = os.path.join(root, "tmp", "wheels")
    shutil.copytree(wheels, inside)
    shutil.copy(own, inside)
    shutil.copy(os.path.join(HERE, "requirements.txt"), inside)
    pip = ["python3", f"/tmp/wheels/{PIP_WHEEL[0]}/pip", "install", "-q",
           "--no-index", "--find-links", "/tmp/wheels", "--no-compile",
           "--no-cache-dir", "--break-system-packages",
           "--root-user-action=ignore", "--disable-pip-version-check"]
    chroot(root, pip + ["--require-hashes", "-r",
                        "/tmp/wheels/requirements.txt"])
    chroot(root, pip + ["--no-deps", "/tmp/wheels/" + os.path.basename(own)])
    shutil.rmtree(inside)
    prune_python(os.path.join(root, SITE))
    # twistd's plugin cache made now rather than at every boot; then
    # bytecode without timestamps for everything (-f: also over what the
    # imports just wrote), as the ramdisk imports and never recompiles
    chroot(root, ["python3", "-c",
                  "from twisted.plugin import IPlugin, getPlugins\n"
                  "import twisted.plugins\n"
                  "list(getPlugins(IPlugin, twisted.plugins))"])
    chroot(root, ["python3", "-m", "compileall", "-q", "-f", "-j", "1",
                  "--invalidation-mode", "unchecked-hash", "/" + SITE])


SITE = "usr/local/lib/python3.11/dist-packages"


def prune_python(site: str) -> None:
    """Remove PRUNE_PYTHON from the wheels; strip their libraries."""
    for top, dirs, files in os.walk(site, topdown=True):
        rel = os.path.relpath(top, site)
        for d in list(dirs):
            if any(fnmatch.fnmatch(os.path.join(rel, d), p)
                   for p in PRUNE_PYTHON):
                shutil.rmtree(os.path.join(top, d))
                dirs.remove(d)
        for name in files:
            path = os.path.join(top, name)
            if any(fnmatch.fnmatch(os.path.normpath(os.path.join(rel, name)),
                                   p) for p in PRUNE_PYTHON):
                os.unlink(path)
            elif ".so" in name and shutil.which("strip"):
                run(["strip", "--strip-unneeded", path])


def check_tools(root: str) -> None:
    """Fail the build when a listed, non-optional agent tool is missing."""
    dirs = ["usr/local/sbin", "usr/local/bin", "usr/sbin", "usr/bin",
            "sbin", "bin"]
    missing = []
    for tool in agent_tools.of_scope(agent_tools.AGENT):
        if tool.optional:
            continue
        if not any(os.path.lexists(os.path.join(root, d, tool.name))
                   for d in dirs):
            missing.append(f"{tool.name} ({tool.package}: "
                           f"{tool.needed_for})")
    for name in ("twistd", "python3"):
        if not any(os.path.lexists(os.path.join(root, d, name))
                   for d in dirs):
            missing.append(name)
    if missing:
        raise SystemExit("ramdisk: tools missing from the image:\n  "
                         + "\n  ".join(missing))


def configure(root: str, args: argparse.Namespace, build_id: str) -> None:
    """/init, the DHCP script, /etc files, debug access, config files."""
    shutil.copy(os.path.join(HERE, "init"), os.path.join(root, "init"))
    os.chmod(os.path.join(root, "init"), 0o755)
    share = os.path.join(root, "usr", "share", "ipa-twisted")
    os.makedirs(share, exist_ok=True)
    for name in ("udhcpc", "start-agent"):
        shutil.copy(os.path.join(HERE, name), os.path.join(share, name))
        os.chmod(os.path.join(share, name), 0o755)
    etc = os.path.join(root, "etc")
    for name, text in (("hostname", "ipa-twisted\n"),
                       ("hosts", "127.0.0.1 localhost ipa-twisted\n"
                                 "::1 localhost ip6-localhost\n"),
                       ("fstab", ""), ("machine-id", "")):
        with open(os.path.join(etc, name), "w") as f:
            f.write(text)
    resolv = os.path.join(etc, "resolv.conf")
    if os.path.lexists(resolv):
        os.unlink(resolv)
    os.symlink("../run/resolv.conf", resolv)
    ipa = os.path.join(etc, "ipa-twisted")
    os.makedirs(os.path.join(ipa, "agent.d"), exist_ok=True)
    with open(os.path.join(ipa, "build-id"), "w") as f:
        f.write(build_id + "\n")
    for path in args.config:
        shutil.copy(path, os.path.join(ipa, "agent.d",
                                       os.path.basename(path)))
    if args.ssh_key:
        ssh = os.path.join(root, "root", ".ssh")
        os.makedirs(ssh, mode=0o700, exist_ok=True)
        with open(args.ssh_key) as src, \
                open(os.path.join(ssh, "authorized_keys"), "w") as dst:
            dst.write(src.read())
        os.chmod(os.path.join(ssh, "authorized_keys"), 0o600)
    if args.debug_password:
        set_root_password(root, args.debug_password)
        open(os.path.join(ipa, "debug-console"), "w").close()


def set_root_password(root: str, password: str) -> None:
    # a salt derived from the password keeps the build reproducible
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import crypt
    salt = "$6$" + hashlib.sha256(b"ipa-twisted" + password.encode()
                                  ).hexdigest()[:16]
    hashed = crypt.crypt(password, salt)
    path = os.path.join(root, "etc", "shadow")
    with open(path) as f:
        lines = f.read().splitlines()
    with open(path, "w") as f:
        for line in lines:
            fields = line.split(":")
            if fields[0] == "root":
                fields[1] = hashed
            f.write(":".join(fields) + "\n")


def prune(root: str) -> None:
    for rel in PRUNE:
        path = os.path.join(root, rel)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        elif os.path.lexists(path):
            os.unlink(path)
    for rel in STATE_FILES:
        path = os.path.join(root, rel)
        if os.path.isdir(path):
            for name in os.listdir(path):
                sub = os.path.join(path, name)
                if os.path.isdir(sub) and not os.path.islink(sub):
                    shutil.rmtree(sub)
                else:
                    os.unlink(sub)
        elif os.path.lexists(path):
            os.unlink(path)
    # bytecode of pruned modules, caches of tools run during the build
    for top, dirs, files in os.walk(os.path.join(root, "root")):
        for d in list(dirs):
            if d == ".cache":
                shutil.rmtree(os.path.join(top, d))
                dirs.remove(d)


def _remove(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    elif os.path.lexists(path):
        os.unlink(path)


#: ICU's "stub data" (what ICU builds when its data is to be loaded from
#: files): a table of contents with no entries, exported under the name
#: libicuuc looks for.  ICU then finds no locale data and fails cleanly
#: where it would need some (converters other than the algorithmic
#: UTF-8/16/32 and Latin-1); only libxml2 links ICU here, for XML in
#: encodings other than those, and only through bsdtar's libarchive (xar
#: archives), never for the ISO 9660 config drives the agent extracts.
ICU_STUB = """\
struct toc {
    unsigned short header_size; unsigned char magic1, magic2;
    unsigned short info_size, info_reserved;
    unsigned char big_endian, charset_family, sizeof_uchar, reserved;
    unsigned char format[4], format_version[4], data_version[4];
    char padding[8];
    unsigned int count, reserved2;
    int no_entries[4];
};
__attribute__((visibility("default"), aligned(16)))
const struct toc SYMBOL = {
    32, 0xda, 0x27, 20, 0, 0, 0, 2, 0,
    {'T', 'o', 'C', 'P'}, {1, 0, 0, 0}, {0, 0, 0, 0}, {0}, 0, 0, {0}};
"""


def stub_icu_data(root: str, work: str) -> None:
    """Replace ICU's data library (31 MB of locale data, there because
    libarchive links libxml2, which links ICU) with ICU's empty stub."""
    libdir = os.path.join(root, LIBDIR)
    found = [n for n in os.listdir(libdir)
             if re.fullmatch(r"libicudata\.so\.\d+\.\d+", n)]
    if not found:
        return
    if not shutil.which("cc"):
        raise SystemExit("ramdisk: needs a C compiler (cc) for ICU's stub "
                         "data (tools/setup-host.sh installs gcc)")
    name = found[0]
    major = name.split(".")[2]
    source = os.path.join(work, "icudata-stub.c")
    with open(source, "w") as f:
        f.write(ICU_STUB.replace("SYMBOL", f"icudt{major}_dat"))
    stub = os.path.join(work, name)
    run(["cc", "-shared", "-fPIC", "-O2", "-nostdlib",
         f"-Wl,-soname,libicudata.so.{major}", "-Wl,--build-id=none",
         "-o", stub, source])
    shutil.copy(stub, os.path.join(libdir, name))


#: Libraries that only engines and stressors the agent never runs need:
#: fio's Ceph (RBD, RADOS), GlusterFS, NBD, RDMA and persistent-memory
#: engines, stress-ng's IPsec and GPU (EGL, GLES, GBM) stressors.  Both
#: programs link them directly (and bind every symbol at start), so each
#: is replaced by a stub that defines what the programs here take from it,
#: under the same versions; calling one prints the library's and the
#: symbol's name and exits 127.  What only these libraries needed goes
#: too (Ceph's common library, Mesa, ...): ~45 MB unpacked, ~11 MB to
#: fetch.  The agent's fio jobs (libaio, psync, net) and stress-ng's cpu
#: and vm stressors run in the smoke test.
STUB_LIBRARIES = ["librbd.so.1", "librados.so.2", "libgfapi.so.0",
                  "libnbd.so.0", "libibverbs.so.1", "librdmacm.so.1",
                  "libpmem.so.1", "libpmemblk.so.1", "libIPSec_MB.so.1",
                  "libEGL.so.1", "libGLESv2.so.2", "libgbm.so.1"]
STUB_HEAD = """\
static void missing(const char *text, long length)
    __attribute__((noreturn, used));
static void missing(const char *text, long length)
{
    long r;
    __asm__ volatile ("syscall" : "=a"(r)
                      : "a"(1L), "D"(2L), "S"(text), "d"(length)
                      : "rcx", "r11", "memory");
    __asm__ volatile ("syscall" : : "a"(231L), "D"(127L)
                      : "rcx", "r11", "memory");
    __builtin_unreachable();
}
#define STUB(n, symbol) \
    void n(void) __asm__(symbol); \
    void n(void) { static const char m[] = \
        SONAME " is a stub in this ramdisk: " symbol " called\\n"; \
        missing(m, sizeof(m) - 1); }
#define DATA(n, symbol, size) \
    char n[size] __asm__(symbol) __attribute__((aligned(16))) = {0};
"""


def _elf_files(root: str) -> list[str]:
    found = []
    for top, dirs, files in os.walk(root):
        dirs.sort()
        for name in sorted(files):
            path = os.path.join(top, name)
            if os.path.islink(path) or not os.path.isfile(path):
                continue
            with open(path, "rb") as f:
                if f.read(4) == b"\x7fELF":
                    found.append(path)
    return found


def _dynamic(path: str) -> tuple[str | None, list[str]]:
    """An ELF file's SONAME and NEEDED entries."""
    out = run(["readelf", "-dW", path], capture_output=True,
              text=True).stdout
    soname, needed = None, []
    for line in out.splitlines():
        m = re.search(r"\((SONAME|NEEDED)\)[^[]*\[(.+)\]", line)
        if m and m.group(1) == "SONAME":
            soname = m.group(2)
        elif m:
            needed.append(m.group(2))
    return soname, needed


@functools.lru_cache(maxsize=None)
def _version_needs(path: str) -> dict[str, list[str]]:
    """{library: [version names]} that ``path`` requires."""
    out = run(["readelf", "-VW", path], capture_output=True,
              text=True).stdout
    needs: dict[str, list[str]] = {}
    current = None
    for line in out.splitlines():
        m = re.search(r"File: (\S+)\s+Cnt:", line)
        if m:
            current = needs.setdefault(m.group(1), [])
            continue
        m = re.search(r"Name: (\S+)\s+Flags:", line)
        if m and current is not None:
            current.append(m.group(1))
    return needs


@functools.lru_cache(maxsize=None)
def _symbols(path: str, defined: bool) -> list[tuple[str, str, int, str]]:
    """(name, nm type, size, version) of the dynamic symbols ``path``
    defines, or of those it needs (strong references only)."""
    argv = ["nm", "-D", "--with-symbol-versions"]
    argv += ["--defined-only", "-S"] if defined else ["--undefined-only"]
    out = run(argv + [path], capture_output=True, text=True).stdout
    symbols = []
    for line in out.splitlines():
        fields = line.split()
        if defined and len(fields) == 4:
            size, kind, full = int(fields[1], 16), fields[2], fields[3]
        elif defined and len(fields) == 3:
            size, kind, full = 0, fields[1], fields[2]
        elif not defined and len(fields) == 2 and fields[0] == "U":
            size, kind, full = 0, "U", fields[1]
        else:
            continue
        name, _, version = full.partition("@")
        symbols.append((name, kind, size, version.lstrip("@")))
    return symbols


def stub_engine_libraries(root: str, work: str,
                          sonames: Iterable[str] = tuple(STUB_LIBRARIES)
                          ) -> None:
    """Replace the libraries ``sonames`` (STUB_LIBRARIES) with stubs and
    drop what only they need."""
    _symbols.cache_clear()  # a file of an earlier build may share a path
    _version_needs.cache_clear()
    elves = _elf_files(root)
    dynamic = {path: _dynamic(path) for path in elves}
    by_soname = {so: path for path, (so, _) in dynamic.items() if so}
    stubbed = {so: by_soname[so] for so in sonames if so in by_soname}
    if not stubbed:
        return
    if not shutil.which("cc"):
        raise SystemExit("ramdisk: needs a C compiler (cc) for the stub "
                         "libraries (tools/setup-host.sh installs gcc)")
    libraries = set(by_soname.values())
    starts = [p for p in elves if p not in libraries]

    def reached(cut: set[str]) -> set[str]:
        return closure(starts, lambda path: [
            by_soname[so] for so in dynamic[path][1]
            if so not in cut and so in by_soname])

    gone = (reached(set()) - reached(set(stubbed))) - set(stubbed.values())
    stubs_dir = os.path.join(work, "stubs")
    os.makedirs(stubs_dir, exist_ok=True)
    for soname, real in sorted(stubbed.items()):
        exports = {name: (kind, size) for name, kind, size, _ in
                   _symbols(real, defined=True)}
        versions: dict[str, set[str]] = {}
        wanted: dict[str, str] = {}
        for path in elves:
            if path in gone or path in stubbed.values() or \
                    soname not in dynamic[path][1]:
                continue
            for version in _version_needs(path).get(soname, []):
                versions.setdefault(version, set())
            # what its other libraries define is theirs, not the stub's
            others = set()
            for so in dynamic[path][1]:
                if so not in stubbed and so in by_soname:
                    others.update(name for name, *_ in _symbols(
                        by_soname[so], defined=True))
            for name, _, _, version in _symbols(path, defined=False):
                if name not in exports or name in others:
                    continue
                if wanted.get(name, version) != version:
                    raise SystemExit(f"ramdisk: {name} of {soname} is "
                                     "needed in two versions: no stub")
                wanted[name] = version
        lines = [f'#define SONAME "{soname}"', STUB_HEAD]
        for i, (name, version) in enumerate(sorted(wanted.items())):
            kind, size = exports[name]
            if kind in "TtWwi":
                lines.append(f'STUB(f{i}, "{name}")')
            else:
                lines.append(f'DATA(d{i}, "{name}", {max(size, 1)})')
            versions.setdefault(version or "", set()).add(name)
        source = os.path.join(stubs_dir, soname + ".c")
        with open(source, "w") as f:
            f.write("\n".join(lines) + "\n")
        named = sorted(v for v in versions if v)
        unversioned = sorted(versions.get("", set()))
        script = os.path.join(stubs_dir, soname + ".map")
        with open(script, "w") as f:
            if not named:
                f.write("{ global: %s local: *; };\n" % "".join(
                    f'"{n}"; ' for n in unversioned))
            for i, version in enumerate(named):
                names = sorted(versions[version]) + (
                    unversioned if i == 0 else [])
                f.write("%s { global: %s%s};\n" % (
                    version, "".join(f'"{n}"; ' for n in names),
                    "local: *; " if i == 0 else ""))
        stub = os.path.join(stubs_dir, soname)
        run(["cc", "-shared", "-fPIC", "-O2", "-nostdlib",
             f"-Wl,-soname,{soname}", "-Wl,--build-id=none",
             f"-Wl,--version-script={script}", "-o", stub, source])
        os.unlink(real)
        shutil.copy(stub, real)
        os.chmod(real, 0o644)
    for path in sorted(gone):
        os.unlink(path)
    for top, dirs, files in os.walk(root):
        for name in files + dirs:
            path = os.path.join(top, name)
            if os.path.islink(path) and not os.path.exists(path) and \
                    os.path.normpath(os.path.join(
                        top, os.readlink(path))) in gone:
                os.unlink(path)
    say(f"stubbed {len(stubbed)} libraries that only unused fio engines "
        f"and stress-ng stressors need; {len(gone)} files only they needed "
        f"left out")


def slim(root: str, work: str) -> None:
    """What our ramdisk does without (SLIM, glibc's converters but
    GCONV_KEEP, ICU's data); stale bytecode; the standard library's
    bytecode made to trust itself (see below)."""
    import glob

    for pattern in SLIM:
        for path in sorted(glob.glob(os.path.join(root, pattern))):
            _remove(path)
    gconv = os.path.join(root, LIBDIR, "gconv")
    if os.path.isdir(gconv):
        for name in os.listdir(gconv):
            if name.endswith(".so") and name not in GCONV_KEEP:
                os.unlink(os.path.join(gconv, name))
    stub_icu_data(root, work)
    stub_engine_libraries(root, work)
    for top in (os.path.join(root, "usr/lib/python3.11"),
                os.path.join(root, "usr/lib/python3")):
        for path, dirs, files in os.walk(top):
            if os.path.basename(path) != "__pycache__":
                continue
            parent = os.path.dirname(path)
            for name in files:
                module = name.split(".")[0]
                full = os.path.join(path, name)
                if not (os.path.exists(os.path.join(parent, module + ".py"))
                        or os.path.isdir(os.path.join(parent, module))):
                    os.unlink(full)       # its source was cut
                    continue
                trust_bytecode(full)
            if not os.listdir(path):
                os.rmdir(path)


def trust_bytecode(pyc: str) -> None:
    """Debian compiles the standard library to bytecode that carries its
    source's hash and is checked against it (flags 0b11): each import
    reads and hashes the source again.  Flag it unchecked (0b01), as our
    own bytecode is: the ramdisk's files never change."""
    with open(pyc, "r+b") as f:
        head = f.read(8)
        if len(head) == 8 and head[4:8] == b"\x03\0\0\0":
            f.seek(4)
            f.write(b"\x01\0\0\0")


#: How each listed agent tool is run by the build's smoke test (chroot,
#: /proc mounted): an argument that makes it print its version or usage
#: and exit 0.  Tools not named here: --version.
SMOKE_ARGS = {
    "chpasswd": ["--help"], "hdparm": ["-V"], "ip": ["-V"],
    "ipmitool": ["-V"], "lshw": ["-version"], "mkfs.ext4": ["-V"],
    "mkfs.vfat": ["--help"], "mkfs.xfs": ["-V"], "openssl": ["version"],
    "udevadm": ["--version"], "efibootmgr": ["--version"],
}
#: What the agent does with the tools whose libraries the build cuts
#: (bsdtar: ICU; mcopy: glibc's converters) and the disk tools, on files.
SMOKE_SCRIPT = """\
set -eu
cd "$(mktemp -d)"
mkdir -p src/openstack/latest out
echo '{"uuid": "smoke"}' > src/openstack/latest/meta_data.json
echo ok > src/openstack/latest/vendor_data2.json
bsdtar -cf drive.iso --format iso9660 --options joliet,rockridge -C src .
bsdtar -xf drive.iso -C out
cmp src/openstack/latest/meta_data.json out/openstack/latest/meta_data.json
dd if=/dev/zero of=vfat.img bs=1M count=8 2>/dev/null
mkfs.vfat -n CONFIG-2 vfat.img >/dev/null
mcopy -s -i vfat.img out/openstack ::/
mtype -i vfat.img ::/openstack/latest/meta_data.json > back.json
cmp back.json src/openstack/latest/meta_data.json
dd if=/dev/zero of=disk.img bs=1M count=64 2>/dev/null
parted -s disk.img mklabel gpt mkpart p1 ext4 1MiB 32MiB
sgdisk -e -p disk.img >/dev/null
blkid -p disk.img >/dev/null
mkfs.ext4 -q -F -L smoke disk.img
mkswap disk.img >/dev/null
wipefs -a -q disk.img
if command -v fio >/dev/null; then
    # burnin_disk's engine and verification, on a file (fio's other
    # engines' libraries are stubs: STUB_LIBRARIES)
    fio --name=smoke --filename=fio.img --size=4M --rw=randwrite \
        --ioengine=libaio --iodepth=4 --verify=crc32c --bs=64k \
        --output-format=json >/dev/null
    fio --name=smoke --filename=fio.img --size=4M --rw=read \
        --ioengine=psync --bs=64k >/dev/null
    fio --enghelp=net >/dev/null
fi
if command -v stress-ng >/dev/null; then
    stress-ng --cpu 1 --cpu-ops 10 --vm 1 --vm-bytes 8M --vm-ops 10 \
        --metrics-brief >/dev/null 2>&1
fi
echo smoke passed
"""
#: ramdisk/start-agent loaded as a module (a script: no .py), in the image
LOAD_START_AGENT = """\
import importlib, importlib.machinery, importlib.util, sys
path = "/usr/share/ipa-twisted/start-agent"
loader = importlib.machinery.SourceFileLoader("start_agent", path)
start_agent = importlib.util.module_from_spec(
    importlib.util.spec_from_loader("start_agent", loader))
loader.exec_module(start_agent)
"""
#: The agent's Python side: ramdisk/start-agent imports every module of
#: the agent, twistd finds the plugin.  (Importing klein installs the
#: default reactor, as it does when twistd makes the agent's service.)
SMOKE_PYTHON = LOAD_START_AGENT + """\
start_agent.prepare()
failed = start_agent.preload()
for name in start_agent.SKIP:
    try:
        importlib.import_module(name)
    except Exception as e:
        failed.append(f"{name}: {e!r}")
from twisted.plugin import getPlugins
from twisted.application.service import IServiceMaker
names = [p.tapname for p in getPlugins(IServiceMaker)]
if "ipa" not in names:
    failed.append(f"no ipa plugin for twistd: {names}")
if failed:
    sys.exit("\\n".join(failed))
"""
#: Runs ARGV in the image: a private mount namespace in which the root is
#: read-only (the test leaves no trace in the image), with /proc and a
#: tmpfs /tmp.
IN_IMAGE = """\
mount --bind "$0" "$0" && mount -o remount,bind,ro "$0" && \\
exec chroot "$0" sh -c 'mount -t proc proc /proc && \\
    mount -t tmpfs tmpfs /tmp && exec "$@"' sh "$@"
"""
#: the same, the image left writable (kernel_repack builds in its root)
IN_IMAGE_RW = IN_IMAGE.replace(' && mount -o remount,bind,ro "$0"', "")


def in_image(root: str, argv: list[str], text: bool = True,
             writable: bool = False) -> subprocess.CompletedProcess:
    """``argv`` run in the image as IN_IMAGE says; output captured (as
    bytes with ``text=False``).  ``writable``: the image is not made
    read-only (kernel_repack builds in its build root)."""
    return subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "--fork",
         "sh", "-c", IN_IMAGE_RW if writable else IN_IMAGE, root] + argv,
        env=CHROOT_ENV, capture_output=True, text=text)


def smoke_test(root: str) -> None:
    """Fail the build unless every listed agent tool runs in the image
    (its libraries load, it starts), what the agent does with the tools
    whose dependencies were cut still works, every program and Python
    extension finds its libraries, and the agent's modules import."""
    names = [t.name for t in agent_tools.of_scope(agent_tools.AGENT)
             if not t.optional]
    lines = ["failed="]
    for name in names:
        argv = " ".join([name] + SMOKE_ARGS.get(name, ["--version"]))
        lines.append(f"out=$({argv} 2>&1 </dev/null) || "
                     f"failed=\"$failed\n{name}: exit $?: $(echo \"$out\" "
                     f"| head -n 3)\"")
        lines.append(f"case \"$out\" in *'error while loading'*|"
                     f"*'symbol lookup error'*) failed=\"$failed\n{name}: "
                     f"$out\" ;; esac")
    # every ELF program and Python extension: its libraries resolve
    lines.append(
        "for f in /usr/bin/* /usr/sbin/* /usr/local/bin/* "
        "/usr/lib/python3.11/lib-dynload/*.so "
        "$(find /usr/local/lib/python3.11 -name '*.so'); do "
        "[ -f \"$f\" ] || continue; "
        "head -c 4 \"$f\" | grep -q ELF || continue; "
        "out=$(ldd \"$f\" 2>&1) || continue; "
        "case \"$out\" in *'not found'*) "
        "failed=\"$failed\n$f: $(echo \"$out\" | grep 'not found')\" ;; "
        "esac; done")
    lines.append('[ -z "$failed" ] || { printf "%b\n" "$failed"; exit 1; }')
    script = "\n".join(lines) + "\n"
    checks = [("tools", ["sh", "-c", script]),
              ("a config drive, a disk", ["sh", "-c", SMOKE_SCRIPT]),
              ("the agent's modules", ["python3", "-c", SMOKE_PYTHON])]
    for what, argv in checks:
        result = in_image(root, argv)
        if result.returncode != 0:
            raise SystemExit(f"ramdisk: smoke test ({what}) failed in the "
                             f"image:\n{result.stdout[-3000:]}"
                             f"{result.stderr[-3000:]}")
    say(f"smoke test: {len(names)} agent tools run, a config drive and a "
        f"disk made, the agent's modules import")


#: start-agent's compile cache in the image (see CompileCache there)
COMPILE_CACHE = "usr/share/ipa-twisted/compile-cache"


def record_compile_cache(root: str) -> None:
    """Record in the image, by its own Python, what the agent's imports
    compile (start-agent --record-compile-cache), twice with two hash
    seeds, and keep what both agree on (start-agent's merge_recordings)
    for start-agent to use at boot."""
    recordings = []
    for seed in ("0", "1"):
        result = in_image(root, [
            "env", f"PYTHONHASHSEED={seed}", "python3",
            "/usr/share/ipa-twisted/start-agent", "--record-compile-cache"],
            text=False)
        if result.returncode != 0:
            raise SystemExit("ramdisk: recording the compile cache failed:\n"
                             + result.stderr.decode(errors="replace")[-3000:])
        recordings.append(result.stdout)
    start_agent = load_start_agent(os.path.join(HERE, "start-agent"))
    merged = start_agent.merge_recordings(*recordings)
    with open(os.path.join(root, COMPILE_CACHE), "wb") as f:
        f.write(merged)
    tag, patterns, sources = start_agent.marshal.loads(merged)
    say(f"compile cache: {len(patterns)} patterns, {len(sources)} "
        f"sources ({len(merged) // 1024} KiB)")


def load_start_agent(path: str) -> Any:
    """ramdisk/start-agent (a script: no .py) as a module."""
    loader = importlib.machinery.SourceFileLoader("start_agent", path)
    module = importlib.util.module_from_spec(
        importlib.util.spec_from_loader("start_agent", loader))
    loader.exec_module(module)
    return module


# ------------------------------------------------------- the cold part
#
# The kernel unpacks the whole initramfs before it runs /init: under
# emulation that took 5 s for 200 MB, of which the boot reads 47 MB
# before the agent's lookup (measured: files' access times after a boot).
# So the files that nothing reads until a command needs them ("cold": the
# burn-in, IPMI, firmware and bootloader tools, most kernel modules, the
# Python modules the agent imports on use, ...) go into one squashfs
# image inside the initramfs, which /init mounts first thing; each cold
# file's path is a symlink into the mounted image (a directory whose
# files are all cold is one symlink).  The image is read on use, block by
# block.  Which files are hot is decided by the rules below, not by
# tracing a boot: a file wrongly cold still works (read from the image),
# only later.

#: Where the image is, and where /init mounts it.
COLD_IMAGE = "usr/lib/ipa-twisted/cold.squashfs"
COLD_MOUNT = "usr/lib/ipa-twisted/cold"
#: Kept in the initramfs whole (globs relative to the root; a directory
#: means everything under it): /init, configuration and state, udev's
#: rules and helpers, locales, CA certificates (read at start), the
#: kernel's module indexes, the agent's own scripts.
HOT_TREES = ["init", "etc", "var", "root", "run", "tmp",
             "usr/share/ipa-twisted", "usr/lib/udev", "usr/lib/systemd",
             "usr/lib/modprobe.d", "usr/lib/locale", "usr/lib/ssl",
             "usr/share/ca-certificates", "usr/local/bin", "usr/local/sbin",
             "usr/lib/modules/*/modules.*",
             "usr/lib/x86_64-linux-gnu/gconv/gconv-modules*",
             # Python's start-up and the distributions' metadata (entry
             # points, twistd's plugins)
             "usr/lib/python3.11/site.py", "usr/lib/python3.11/os.py",
             "usr/local/lib/python3.11/dist-packages/*.dist-info",
             "usr/local/lib/python3.11/dist-packages/*.pth",
             "usr/local/lib/python3.11/dist-packages/twisted/plugins"]
#: Programs that /init, start-agent and udev's rules run before the lookup
#: (with the libraries they link, found by the build).
HOT_PROGRAMS = ["sh", "dash", "busybox", "mount", "umount", "mkdir", "cat",
                "tee", "sleep", "tr", "cut", "nice", "basename", "setsid",
                "hostname", "ip", "kmod", "udevadm", "systemd-udevd",
                "hwclock", "ldconfig", "python3.11", "mdadm", "blkid",
                "agetty", "dropbear"]
#: Kernel modules loaded before the lookup in a virtual machine, and those
#: that mount the image; on other hardware a NIC's driver comes from the
#: image (a few hundred kB read once).
HOT_MODULES = ["drivers/block/loop.ko*", "fs/squashfs/*",
               "drivers/virtio/*", "drivers/net/virtio_net.ko*",
               "drivers/net/net_failover.ko*", "net/core/failover.ko*",
               "drivers/block/virtio_blk.ko*", "drivers/ata/ata_piix.ko*",
               "drivers/ata/ata_generic.ko*"]
#: the image: zstd (xz is 3 MB smaller but slower to read, lz4 larger),
#: 1 MiB blocks (4 MB smaller than 128 KiB ones; reading a small file
#: inflates its whole block, ~10 ms under emulation)
SQUASHFS_OPTIONS = ["-comp", "zstd", "-Xcompression-level", "19",
                    "-b", "1048576", "-noappend", "-all-root",
                    "-no-xattrs", "-no-progress", "-quiet"]

PYTHON_FILES = LOAD_START_AGENT + """\
import json
start_agent.prepare()
start_agent.preload()
import twisted.plugin, twisted.plugins, twisted.internet.reactor
files = set()
for module in list(sys.modules.values()):
    for name in ("__file__", "__cached__"):
        value = getattr(module, name, None)
        if isinstance(value, str):
            files.add(value)
print(json.dumps(sorted(files)))
"""


def python_hot_files(root: str) -> list[str]:
    """The files of every module the agent imports while it starts
    (start-agent's preload, in the image): paths relative to the root."""
    result = in_image(root, ["python3", "-c", PYTHON_FILES])
    if result.returncode != 0:
        raise SystemExit("ramdisk: listing the agent's modules failed:\n"
                         + result.stderr[-3000:])
    return [p.lstrip("/") for p in json.loads(result.stdout)]


def _resolve(root: str, rel: str) -> str | None:
    """``rel`` (relative to ``root``) with every symlink in it followed
    inside ``root``, or None when it leads nowhere."""
    todo = rel.split("/")
    done: list[str] = []
    hops = 0
    while todo:
        part = todo.pop(0)
        if part in ("", "."):
            continue
        if part == "..":
            done = done[:-1]
            continue
        full = os.path.join(root, *done, part)
        if os.path.islink(full):
            hops += 1
            if hops > 40:
                return None
            target = os.readlink(full)
            if target.startswith("/"):
                done = []
            todo = target.split("/") + todo
            continue
        done.append(part)
    path = "/".join(done)
    return path if os.path.lexists(os.path.join(root, path)) else None


def hot_files(root: str, python: Iterable[str]) -> set[str]:
    """The regular files (relative paths) that stay in the initramfs:
    HOT_TREES, HOT_PROGRAMS and HOT_MODULES, the ``python`` files and every
    library these programs and Python's extensions link."""
    import glob

    hot: set[str] = set()
    for pattern in HOT_TREES:
        for full in glob.glob(os.path.join(root, pattern)):
            if os.path.isdir(full) and not os.path.islink(full):
                for top, dirs, files in os.walk(full):
                    hot.update(os.path.relpath(os.path.join(top, f), root)
                               for f in files)
            else:
                hot.add(os.path.relpath(full, root))
    for name in HOT_PROGRAMS:
        for d in ("usr/bin", "usr/sbin", "usr/lib/systemd"):
            if os.path.lexists(os.path.join(root, d, name)):
                hot.add(f"{d}/{name}")
    for moddir in glob.glob(os.path.join(root, "usr/lib/modules/*")):
        deps: dict[str, list[str]] = {}
        with open(os.path.join(moddir, "modules.dep")) as f:
            for line in f:
                mod, _, rest = line.partition(":")
                deps[mod] = rest.split()
        wanted = [m for m in deps if any(
            fnmatch.fnmatch(m, "kernel/" + p) for p in HOT_MODULES)]
        rel = os.path.relpath(moddir, root)
        hot.update(f"{rel}/{m}" for m in closure(
            wanted, lambda mod: deps.get(mod, [])))
    hot.update(python)
    # what they are once symlinks are followed, and the libraries the
    # programs and extensions link
    resolved = {r for r in (_resolve(root, p) for p in hot) if r}
    libdirs = [LIBDIR, "usr/lib", "usr/lib64"]

    def libraries(rel: str) -> list[str]:
        full = os.path.join(root, rel)
        try:
            with open(full, "rb") as f:
                if f.read(4) != b"\x7fELF":
                    return []
        except OSError:
            return []
        found = []
        for name in _dynamic(full)[1]:
            for d in libdirs:
                r = _resolve(root, f"{d}/{name}")
                if r:
                    found.append(r)
                    break
        interp = _resolve(root, "usr/lib64/ld-linux-x86-64.so.2")
        return found + ([interp] if interp else [])

    return {p for p in closure(resolved, libraries)
            if os.path.isfile(os.path.join(root, p))
            and not os.path.islink(os.path.join(root, p))}


def split_cold(root: str, work: str, hot: set[str], epoch: int) -> dict:
    """Move every regular file not in ``hot`` into COLD_IMAGE (a squashfs
    image in the root) and leave symlinks to it at their paths (one for
    a directory whose every file is cold).  Returns counts and sizes."""
    cold_root = os.path.join(work, "cold")
    os.makedirs(cold_root)
    os.chmod(cold_root, 0o755)
    mount = "/" + COLD_MOUNT
    moved_files = moved_bytes = links = 0

    def parents(rel: str) -> None:
        """The directories above ``rel`` in the image, each with its
        mode in the root (not the build's umask: the image's bytes)."""
        parts = rel.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            sub = "/".join(parts[:i])
            path = os.path.join(cold_root, sub)
            if not os.path.isdir(path):
                os.mkdir(path)
                os.chmod(path, stat.S_IMODE(
                    os.lstat(os.path.join(root, sub)).st_mode))

    def movable(rel: str) -> bool:
        """A directory that can go whole: only cold files and such
        directories in it (no symlink, nothing hot, not empty)."""
        full = os.path.join(root, rel)
        names = os.listdir(full)
        if not names:
            return False
        for name in names:
            sub = f"{rel}/{name}"
            path = os.path.join(root, sub)
            if os.path.islink(path):
                return False
            if os.path.isdir(path):
                if not movable(sub):
                    return False
            elif not os.path.isfile(path) or sub in hot:
                return False
        return True

    def move(rel: str) -> None:
        nonlocal moved_files, moved_bytes, links
        src = os.path.join(root, rel)
        dst = os.path.join(cold_root, rel)
        parents(rel)
        if os.path.isdir(src):
            for top, dirs, files in os.walk(src):
                moved_files += len(files)
                moved_bytes += sum(os.lstat(os.path.join(top, f)).st_size
                                   for f in files)
        else:
            moved_files += 1
            moved_bytes += os.lstat(src).st_size
        os.rename(src, dst)
        os.symlink(f"{mount}/{rel}", src)
        links += 1

    def walk(rel: str) -> None:
        full = os.path.join(root, rel) if rel else root
        for name in sorted(os.listdir(full)):
            sub = f"{rel}/{name}" if rel else name
            path = os.path.join(root, sub)
            if os.path.islink(path):
                continue
            if os.path.isdir(path):
                if sub == COLD_MOUNT or sub in ("proc", "sys", "dev"):
                    continue
                if movable(sub):
                    move(sub)
                else:
                    walk(sub)
            elif os.path.isfile(path) and sub not in hot:
                move(sub)

    walk("")
    image = os.path.join(root, COLD_IMAGE)
    for rel in (os.path.dirname(COLD_IMAGE), COLD_MOUNT):
        os.makedirs(os.path.join(root, rel), exist_ok=True)
        os.chmod(os.path.join(root, rel), 0o755)
    # every time in the image is ``epoch`` (mksquashfs refuses the options
    # with SOURCE_DATE_EPOCH set, and that sets only the image's own time)
    env = {k: v for k, v in os.environ.items() if k != "SOURCE_DATE_EPOCH"}
    run(["mksquashfs", cold_root, image] + SQUASHFS_OPTIONS
        + ["-mkfs-time", str(epoch), "-all-time", str(epoch)], env=env)
    shutil.rmtree(cold_root)
    info = {"cold_files": moved_files, "cold_bytes": moved_bytes,
            "cold_links": links, "cold_image_bytes": os.path.getsize(image)}
    say(f"cold part: {moved_files} files ({moved_bytes / MiB:.1f} MiB) in "
        f"a {info['cold_image_bytes'] / MiB:.1f} MiB squashfs image, "
        f"{links} symlinks to it")
    return info


def pack(root: str, path: str, epoch: int, compress: list[str]) -> int:
    """Every mtime set to ``epoch``; newc cpio archives of the tree in
    byte order: COLD_IMAGE (when there is one) alone and uncompressed,
    the kernel copies it as it is (it is compressed already), then the
    rest, compressed.  The kernel unpacks such a concatenation in order.
    Returns the unpacked size in bytes."""
    names: list[bytes] = []
    size = 0
    for top, dirs, files in os.walk(root):
        for name in dirs + files:
            full = os.path.join(top, name)
            names.append(os.path.relpath(full, root).encode())
            st = os.lstat(full)
            size += st.st_size
            os.utime(full, (epoch, epoch), follow_symlinks=False)
    os.utime(root, (epoch, epoch))
    names.sort()
    image = COLD_IMAGE.encode()
    first: list[bytes] = []
    if image in names:
        parts = image.split(b"/")
        first = [b"/".join(parts[:i]) for i in range(1, len(parts) + 1)]
        names.remove(image)
    with open(path, "wb") as out:
        if first:
            _cpio(root, [b"."] + first, out, None)
        _cpio(root, [b"."] + names, out, compress)
    return size


def _cpio(root: str, names: list[bytes], out: Any,
          compress: list[str] | None) -> None:
    cpio = subprocess.Popen(
        ["cpio", "--quiet", "-o", "-H", "newc", "--null", "--reproducible",
         "-R", "0:0"], cwd=root, stdin=subprocess.PIPE,
        stdout=subprocess.PIPE if compress else out)
    comp = None
    assert cpio.stdin is not None
    if compress:
        assert cpio.stdout is not None
        comp = subprocess.Popen(compress, stdin=cpio.stdout, stdout=out)
        cpio.stdout.close()
    cpio.stdin.write(b"\0".join(names) + b"\0")
    cpio.stdin.close()
    if cpio.wait() != 0 or (comp and comp.wait() != 0):
        raise SystemExit("ramdisk: packing the initramfs failed")


def initramfs_archives(path: str) -> list[bytes]:
    """The cpio archives of an initramfs ``pack`` made, uncompressed (for
    tests and tools: ``cpio -t`` reads one archive)."""
    with open(path, "rb") as f:
        data = f.read()
    archives = []
    pos = 0
    while pos < len(data):
        if data[pos:pos + 6] == b"070701":
            end = pos
            while True:   # newc entries: a 110-byte header, name, data
                namesize = int(data[end + 94:end + 102], 16)
                filesize = int(data[end + 54:end + 62], 16)
                name = data[end + 110:end + 110 + namesize - 1]
                end += (110 + namesize + 3) // 4 * 4
                end += (filesize + 3) // 4 * 4
                if name == b"TRAILER!!!":
                    break
            archives.append(data[pos:end])
            pos = end
        elif data[pos] == 0:
            pos += 1
        else:
            kind = {b"\x28\xb5\x2f\xfd": ["zstd", "-dcq"],
                    b"\x02\x21\x4c\x18": ["lz4", "-dcq"],
                    b"\x1f\x8b": ["gzip", "-dc"],
                    b"\xfd7zXZ": ["xz", "-dc"]}
            for magic, argv in kind.items():
                if data[pos:pos + len(magic)] == magic:
                    archives.append(subprocess.run(
                        argv, input=data[pos:], capture_output=True,
                        check=True).stdout)
                    return archives
            raise ValueError(f"{path}: no archive at byte {pos}")
    return archives


COMPRESSORS = {
    # the kernel unpacks each of these before it runs /init.  lz4 (the
    # default) unpacks the fastest: measured in direct QEMU boots (TCG),
    # the kernel had unpacked ours 1.0-1.8 s sooner than with zstd, for
    # 8.4 MB more to fetch (~0.4 s for iPXE under emulation).  zstd -19:
    # 2.4 MB less than -12, as fast to unpack; a build ~25 s longer
    "zstd": ["zstd", "-q", "-19", "-T1", "-c"],
    # the kernel reads lz4's legacy frames only (-l)
    "lz4": ["lz4", "-q", "-l", "-12", "-c"],
    "gzip": ["gzip", "-n", "-9", "-c"],
    "xz": ["xz", "--check=crc32", "-6", "-T1", "-c"],
    "none": ["cat"],
}


def build_ramdisk(args: argparse.Namespace, cache: str, base: str,
                  wheels: str) -> str:
    sources = source_files(AGENT_SOURCES)
    parts = [f"ramdisk {RAMDISK_RECIPE} {args.epoch} {args.compress} "
             f"{args.stock_kernel}".encode(),
             os.path.basename(base).encode(), os.path.basename(wheels).encode()]
    for rel in sources:
        with open(os.path.join(TOP, rel), "rb") as f:
            parts.append(rel.encode() + b"\0" + f.read())
    for name in RAMDISK_FILES:
        with open(os.path.join(HERE, name), "rb") as f:
            parts.append(name.encode() + b"\0" + f.read())
    for path in args.config + ([args.ssh_key] if args.ssh_key else []):
        with open(path, "rb") as f:
            parts.append(b"file\0" + f.read())
    parts.append((args.debug_password or "").encode())
    key = digest(parts)[:16]
    out = os.path.join(cache, f"ramdisk-{key}")
    if os.path.exists(os.path.join(out, "done")) and not args.no_cache:
        say(f"ramdisk {key}: cached")
        return out
    if args.no_cache:
        out = tempfile.mkdtemp(prefix=f"ramdisk-{key}-", dir=cache)
    else:
        shutil.rmtree(out, ignore_errors=True)
        os.makedirs(out)
    t0 = time.monotonic()
    work = tempfile.mkdtemp(prefix="ipa-ramdisk-", dir=cache)
    try:
        os.environ["SOURCE_DATE_EPOCH"] = str(args.epoch)
        root = os.path.join(work, "root")
        os.makedirs(root)
        run(["tar", "-C", root, "--numeric-owner", "-xpf",
             os.path.join(base, "root.tar")])
        vmlinuz, version = install_kernel(base, root, work)
        if not args.stock_kernel:
            vmlinuz = repacked_kernel(args, cache, base, vmlinuz)
        own = agent_wheel(work, args.epoch)
        install_python(root, wheels, own)
        configure(root, args, key)
        prune(root)
        slim(root, work)
        check_tools(root)
        smoke_test(root)
        record_compile_cache(root)
        cold = split_cold(root, work, hot_files(root, python_hot_files(root)),
                          args.epoch)
        shutil.copy(vmlinuz, os.path.join(out, "ipa-twisted.kernel"))
        os.utime(os.path.join(out, "ipa-twisted.kernel"),
                 (args.epoch, args.epoch))
        initramfs = os.path.join(out, "ipa-twisted.initramfs")
        unpacked = pack(root, initramfs, args.epoch,
                        COMPRESSORS[args.compress])
        info = {"key": key, "kernel_version": version,
                "kernel": "debian" if args.stock_kernel else "lz4 repack",
                "unpacked_bytes": unpacked, "compression": args.compress,
                "build_seconds": round(time.monotonic() - t0, 1),
                "agent_wheel": os.path.basename(own), **cold}
        with open(os.path.join(out, "build-info.json"), "w") as f:
            json.dump(info, f, indent=1)
        open(os.path.join(out, "done"), "w").close()
        say(f"ramdisk {key}: built in {time.monotonic() - t0:.0f} s")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return out


def relock() -> None:
    """Resolve setup.cfg's install_requires again; rewrite the lock."""
    import configparser
    parser = configparser.ConfigParser()
    parser.read(os.path.join(TOP, "setup.cfg"))
    requires = [r.strip() for r in parser["options"]["install_requires"]
                .splitlines() if r.strip()]
    with tempfile.TemporaryDirectory() as tmp:
        run([sys.executable, "-m", "pip", "download", "-q", "-d", tmp,
             "--only-binary", ":all:", "--platform", "manylinux2014_x86_64",
             "--platform", "manylinux_2_28_x86_64", "--python-version",
             "3.11", "--implementation", "cp", "--abi", "cp311", "--abi",
             "abi3", "--abi", "none"] + requires)
        lines = []
        for name in sorted(os.listdir(tmp)):
            project, version = name.split("-")[:2]
            project = re.sub(r"[-_.]+", "-", project).lower()
            lines.append(f"{project}=={version} --hash=sha256:"
                         f"{file_sha256(os.path.join(tmp, name))}")
    path = os.path.join(HERE, "requirements.txt")
    with open(path) as f:
        header = [ln for ln in f.read().splitlines() if ln.startswith("#")]
    with open(path, "w") as f:
        f.write("\n".join(header + sorted(lines)) + "\n")
    say(f"{path}: {len(lines)} pins")


def same_again(what: str, first: str, again: str) -> bool:
    """Whether ``again`` (a stage built afresh into its own directory,
    removed here) has the bytes of ``first``; says which."""
    a, b = file_sha256(first), file_sha256(again)
    shutil.rmtree(os.path.dirname(again), ignore_errors=True)
    if a != b:
        print(f"ramdisk: NOT reproducible: {what} {a} != {b}",
              file=sys.stderr)
        return False
    say(f"reproducible: {what}, built again: sha256 {a}")
    return True


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="ramdisk/build",
        description="Build ipa-twisted.kernel and ipa-twisted.initramfs "
                    "(Debian packages, the agent from this checkout).")
    parser.add_argument("-o", "--output", default=".",
                        help="directory for the kernel and initramfs "
                             "(default: the current one)")
    parser.add_argument("--cache-dir", help="build cache (default: "
                        "$IPA_TWISTED_CACHE/ramdisk or "
                        "~/.cache/ipa-twisted/ramdisk)")
    parser.add_argument("--mirror", default="",
                        help="Debian mirror (default: mmdebstrap's, "
                             "deb.debian.org)")
    parser.add_argument("--firmware", action="store_true",
                        help="add Debian's firmware packages (NICs, "
                             "storage: non-free-firmware)")
    parser.add_argument("--ssh-key", metavar="FILE",
                        help="debug: root may log in over SSH (dropbear) "
                             "with this public key")
    parser.add_argument("--debug-password", metavar="PASSWORD",
                        help="debug: root's password, and a login prompt "
                             "on the serial console")
    parser.add_argument("--config", metavar="FILE", action="append",
                        default=[], help="an agent config file ([DEFAULT] "
                        "section) put in /etc/ipa-twisted/agent.d "
                        "(repeatable)")
    parser.add_argument("--extra-package", metavar="PKG", action="append",
                        default=[], help="another Debian package to "
                        "install (repeatable)")
    parser.add_argument("--compress", choices=sorted(COMPRESSORS),
                        default="lz4",
                        help="the initramfs's compression (default lz4: "
                        "the fastest for the kernel to unpack, which it "
                        "does before /init; zstd is 8 MB smaller)")
    parser.add_argument("--stock-kernel", action="store_true",
                        help="ship Debian's vmlinuz as it is (xz, signed "
                        "for UEFI Secure Boot) instead of the same kernel "
                        "repacked with lz4, which starts ~2.5 s sooner "
                        "under QEMU TCG, ~0.5 s without emulation")
    parser.add_argument("--iso", action="store_true",
                        help="also make ipa-twisted.iso, for virtual media "
                        "(BIOS and UEFI; see --iso-params)")
    parser.add_argument("--iso-params", metavar="PARAMS", default="",
                        help="the ISO's kernel command line after its "
                        "consoles, e.g. 'ipa-api-url=http://ironic:6385' "
                        "(an ISO gets none from Ironic)")
    parser.add_argument("--epoch", type=int, default=int(
        os.environ.get("SOURCE_DATE_EPOCH", EPOCH)),
        help="mtime of every file (default: $SOURCE_DATE_EPOCH or "
             f"{EPOCH})")
    parser.add_argument("--no-cache", action="store_true",
                        help="build the ramdisk stage again even if cached "
                             "(the Debian base stays cached)")
    parser.add_argument("--check-reproducible", action="store_true",
                        help="build the ramdisk stage twice, compare sha256")
    parser.add_argument("--relock", action="store_true",
                        help="re-resolve ramdisk/requirements.txt and exit")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    if args.relock:
        relock()
        return 0
    if args.iso_params and not args.iso:
        parser.error("--iso-params is for --iso")
    if args.iso:
        import iso
        try:
            iso.command_line(args.iso_params)
        except ValueError as e:
            parser.error(str(e))
    if os.geteuid() != 0:
        print("ramdisk: run as root (mmdebstrap, chroot)", file=sys.stderr)
        return 1
    t0 = time.monotonic()
    cache = cache_dir(args.cache_dir)
    base = build_base(args, cache)
    wheels = wheelhouse(cache)
    result = build_ramdisk(args, cache, base, wheels)
    if args.check_reproducible:
        args.no_cache = True
        again = build_ramdisk(args, cache, base, wheels)
        try:
            for name in ("ipa-twisted.kernel", "ipa-twisted.initramfs"):
                a = file_sha256(os.path.join(result, name))
                b = file_sha256(os.path.join(again, name))
                if a != b:
                    print(f"ramdisk: NOT reproducible: {name} {a} != {b} "
                          f"(kept: {again})", file=sys.stderr)
                    again = ""
                    return 1
                say(f"reproducible: {name} sha256 {a} (twice)")
            if not args.stock_kernel:
                # the ramdisk stage reuses the repacked kernel: build
                # that again too
                if not same_again("the repacked kernel", os.path.join(
                        result, "ipa-twisted.kernel"), repacked_kernel(
                        args, cache, base,
                        os.path.join(kernel_stage(base), "vmlinuz"),
                        fresh=True)):
                    return 1
        finally:
            if again:
                shutil.rmtree(again, ignore_errors=True)
    names = ["ipa-twisted.kernel", "ipa-twisted.initramfs"]
    paths = {name: os.path.join(result, name) for name in names}
    if args.iso:
        paths["ipa-twisted.iso"] = build_iso(args, cache, result)
        names.append("ipa-twisted.iso")
        if args.check_reproducible and not same_again(
                "the ISO", paths["ipa-twisted.iso"],
                build_iso(args, cache, result, fresh=True)):
            return 1
    os.makedirs(args.output, exist_ok=True)
    with open(os.path.join(result, "build-info.json")) as f:
        info = json.load(f)
    for name in names:
        target = os.path.join(args.output, name)
        shutil.copy2(paths[name], target)
        size = os.path.getsize(target)
        say(f"{target}: {size / MiB:.1f} MiB ({size} bytes), sha256 "
            f"{file_sha256(target)}")
    say(f"initramfs unpacked: {info['unpacked_bytes'] / MiB:.1f} MiB; "
        f"kernel {info['kernel_version']}; done in "
        f"{time.monotonic() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
