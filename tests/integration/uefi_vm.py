"""A UEFI machine for the tests: QEMU (TCG) with OVMF firmware.

Why: ``efibootmgr`` needs real UEFI variables and a disk that firmware can
name (libefiboot cannot describe a loop device), and this machine must
never have its own NVRAM touched.  The guest has its own NVRAM (a copy of
``OVMF_VARS.fd`` in the test's work directory), one virtio disk (a loop
device the test made) and nothing else of the host's hardware.

The guest runs Debian's kernel (downloaded once into the cache) and a tiny
busybox initramfs.  Its root filesystem is this machine's root, shared
read-only over 9p, under a tmpfs overlay: the guest runs the very same
Python, agent and tools as the test, and nothing it writes reaches the host.
Its network is QEMU's user network with ``restrict=on``: it can reach
nothing but what the test forwards to it (the agent API, one port).

``boot_ramdisk`` starts the guest like a ramdisk (kernel and initramfs
given to the firmware; a shell script of the test's runs as the guest's
init); ``boot_disk`` starts the same machine with no kernel, so the
firmware boots from the disk through its NVRAM boot entries, which is the
proof the tests look for.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time

from tests.integration import harness as h

OVMF_CODE = "/usr/share/OVMF/OVMF_CODE_4M.fd"
OVMF_VARS = "/usr/share/OVMF/OVMF_VARS_4M.fd"

# Modules the initramfs loads to reach the 9p root; the rest are loaded by
# the guest script with modprobe from the kernel's own module tree.
EARLY_MODULES = ["virtio_pci", "9pnet_virtio", "9p", "overlay"]

INIT = r"""#!/bin/busybox sh
# initramfs /init of the test UEFI guest (tests/integration/uefi_vm.py)
B=/bin/busybox
$B mkdir -p /proc /sys /dev /lower /upper /newroot
$B mount -t proc proc /proc
$B mount -t devtmpfs devtmpfs /dev
$B mount -t sysfs sysfs /sys
for m in $($B cat /modules.order); do
    $B insmod /modules/$m || echo "guest-init: insmod $m failed"
done
script=$($B sed -n 's/.*ipa_guest_script=\([^ ]*\).*/\1/p' /proc/cmdline)
$B mount -t 9p -o trans=virtio,version=9p2000.L,ro,cache=loose,msize=512000 \
    hostroot /lower || { echo "guest-init: no 9p root"; $B poweroff -f; }
$B mount -t tmpfs -o size=75% tmpfs /upper
$B mkdir -p /upper/data /upper/work
$B mount -t overlay overlay \
    -o lowerdir=/lower,upperdir=/upper/data,workdir=/upper/work /newroot \
    || { echo "guest-init: no overlay"; $B poweroff -f; }
for fs in proc sys dev; do $B mount --move /$fs /newroot/$fs; done
echo "guest-init: running $script"
exec $B switch_root /newroot /bin/sh "$script"
"""


def require_qemu() -> None:
    missing = [p for p in (OVMF_CODE, OVMF_VARS, "/bin/busybox")
               if not os.path.exists(p)]
    if shutil.which("qemu-system-x86_64") is None:
        missing.append("qemu-system-x86_64")
    if missing:
        raise h.Unavailable(f"a UEFI test machine needs {', '.join(missing)} "
                            f"(apt install qemu-system-x86 ovmf "
                            f"busybox-static: tools/setup-host.sh)")


def guest_kernel() -> tuple[str, str, str]:
    """Debian's current amd64 kernel, unpacked once into the cache:
    (vmlinuz, tree holding lib/modules/VERSION, VERSION)."""
    base = os.path.join(h.cache_dir(), "guest-kernel")
    done = os.path.join(base, "ready")
    if not os.path.exists(done):
        shutil.rmtree(base, ignore_errors=True)
        os.makedirs(base)
        deps = h.run(["apt-cache", "depends", "linux-image-amd64"]).stdout
        match = re.search(r"Depends: (linux-image-[\w.+-]+)", deps)
        if not match:
            raise h.Unavailable("apt knows no linux-image-amd64 package "
                                "(apt-get update)")
        h.say(f"guest kernel: downloading {match.group(1)} (once)")
        result = h.run(["apt-get", "download", match.group(1)], cwd=base,
                       check=False)
        debs = [n for n in os.listdir(base) if n.endswith(".deb")]
        if not debs:
            raise h.Unavailable(f"apt-get download {match.group(1)} failed: "
                                f"{result.stderr.strip()[-300:]}")
        deb = os.path.join(base, debs[0])
        h.run(["dpkg-deb", "-x", deb, os.path.join(base, "root")])
        os.unlink(deb)
        with open(done, "w") as f:
            f.write(match.group(1) + "\n")
    root = os.path.join(base, "root")
    version = os.listdir(os.path.join(root, "lib", "modules"))[0]
    modules = os.path.join(root, "lib", "modules", version)
    if not os.path.exists(os.path.join(modules, "modules.dep")):
        h.run(["depmod", "-b", root, version])
    return os.path.join(root, "boot", f"vmlinuz-{version}"), root, version


def build_initramfs(root: str, version: str, path: str) -> None:
    """busybox + the early modules (dependencies first) + /init, as a
    newc cpio archive."""
    modules = os.path.join(root, "lib", "modules", version)
    deps: dict[str, list[str]] = {}
    names: dict[str, str] = {}
    with open(os.path.join(modules, "modules.dep")) as f:
        for line in f:
            mod, _, rest = line.partition(":")
            deps[mod] = rest.split()
            names[os.path.basename(mod)[:-3].replace("-", "_")] = mod
    order: list[str] = []

    def add(mod: str) -> None:
        for dep in deps[mod]:
            add(dep)
        if mod not in order:
            order.append(mod)

    for name in EARLY_MODULES:
        add(names[name])
    tree = path + ".d"
    shutil.rmtree(tree, ignore_errors=True)
    for d in ("bin", "modules"):
        os.makedirs(os.path.join(tree, d))
    shutil.copy("/bin/busybox", os.path.join(tree, "bin", "busybox"))
    for mod in order:
        shutil.copy(os.path.join(modules, mod),
                    os.path.join(tree, "modules", os.path.basename(mod)))
    with open(os.path.join(tree, "modules.order"), "w") as f:
        f.write("\n".join(os.path.basename(m) for m in order) + "\n")
    with open(os.path.join(tree, "init"), "w") as f:
        f.write(INIT)
    os.chmod(os.path.join(tree, "init"), 0o755)
    h.run(["bsdtar", "--format", "newc", "-cf", path, "-C", tree, "."])
    shutil.rmtree(tree)


class UefiMachine:
    """One test machine: its NVRAM file, its disk, its serial log."""

    def __init__(self, cleanups: h.Cleanups, workdir: str, disk: str,
                 memory_mb: int = 1536) -> None:
        require_qemu()
        self.cleanups = cleanups
        self.workdir = workdir
        self.disk = disk
        self.memory_mb = memory_mb
        self.vars = os.path.join(workdir, "OVMF_VARS.fd")
        shutil.copy(OVMF_VARS, self.vars)
        self.proc: subprocess.Popen[bytes] | None = None
        self.serial = ""
        self.boots = 0

    def _start(self, extra: list[str]) -> None:
        self.boots += 1
        self.serial = os.path.join(self.workdir, f"serial-{self.boots}.log")
        argv = ["qemu-system-x86_64", "-machine", "q35", "-accel", "tcg",
                "-cpu", "max", "-smp", "2", "-m", str(self.memory_mb),
                "-nodefaults", "-display", "none", "-no-reboot",
                "-drive", f"if=pflash,format=raw,unit=0,readonly=on,"
                          f"file={OVMF_CODE}",
                "-drive", f"if=pflash,format=raw,unit=1,file={self.vars}",
                "-drive", f"if=none,id=disk0,format=raw,file={self.disk},"
                          f"cache=writethrough",
                "-device", "virtio-blk-pci,drive=disk0,bootindex=1",
                "-serial", f"file:{self.serial}"] + extra
        self.proc = subprocess.Popen(
            argv, stdout=subprocess.DEVNULL,
            stderr=open(self.serial + ".qemu", "w"), start_new_session=True)
        self.cleanups.add(f"qemu boot {self.boots}", self.stop)

    def boot_ramdisk(self, script: str, api_port: int,
                     guest_port: int = 9999) -> None:
        """Boot the kernel and initramfs; ``script`` (a path on this
        machine) is the guest's init; ``api_port`` on this machine's
        loopback reaches ``guest_port`` in the guest."""
        vmlinuz, root, version = guest_kernel()
        initrd = os.path.join(self.workdir, "initramfs.cpio")
        if not os.path.exists(initrd):
            build_initramfs(root, version, initrd)
        self._start([
            "-kernel", vmlinuz, "-initrd", initrd,
            "-append", f"console=ttyS0 panic=-1 ipa_guest_script={script} "
                       f"ipa_guest_modules={root}",
            "-virtfs", "local,path=/,mount_tag=hostroot,security_model=none,"
                       "readonly=on,multidevs=remap",
            "-netdev", f"user,id=net0,restrict=on,"
                       f"hostfwd=tcp:127.0.0.1:{api_port}-:{guest_port}",
            "-device", "virtio-net-pci,netdev=net0"])

    def boot_disk(self) -> None:
        """Power on with no kernel: the firmware boots from NVRAM."""
        self._start(["-nic", "none"])

    def read_serial(self) -> str:
        try:
            with open(self.serial, encoding="utf-8", errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def wait_for_serial(self, pattern: str, timeout: float) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            match = re.search(pattern, self.read_serial())
            if match:
                return match
            if self.proc is not None and self.proc.poll() is not None:
                break
            time.sleep(0.5)
        raise AssertionError(f"{pattern!r} not on the guest's serial console "
                             f"within {timeout:.0f} s; it shows:\n"
                             f"{self.read_serial()[-3000:]}")

    def wait_for_exit(self, timeout: float) -> int:
        assert self.proc is not None
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"the guest did not power off within {timeout:.0f} s; "
                f"serial:\n{self.read_serial()[-3000:]}") from None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            h.stop_process(self.proc, timeout=10)
