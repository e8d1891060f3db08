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

import fcntl
import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import uuid
from typing import Any

from tests.integration import agent_api
from tests.integration import harness as h
from tests.integration.base import SandboxTestCase, unavailable

OVMF_CODE = "/usr/share/OVMF/OVMF_CODE_4M.fd"
OVMF_VARS = "/usr/share/OVMF/OVMF_VARS_4M.fd"
# Secure Boot: the SMM build, and variables with Microsoft's keys enrolled
# and Secure Boot on (Debian's ovmf package)
OVMF_CODE_SB = "/usr/share/OVMF/OVMF_CODE_4M.secboot.fd"
OVMF_VARS_SB = "/usr/share/OVMF/OVMF_VARS_4M.ms.fd"

# Modules the initramfs loads to reach the 9p root; the rest are loaded by
# the guest script with modprobe from the kernel's own module tree.
EARLY_MODULES = ["virtio_pci", "9pnet_virtio", "9p", "overlay"]
MiB = 1024 ** 2

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
    missing = [p for p in (OVMF_CODE, OVMF_VARS) if not os.path.exists(p)]
    for tool in ("qemu-system-x86_64", "busybox"):
        if shutil.which(tool) is None:
            missing.append(tool)
    if missing:
        raise h.Unavailable(f"a UEFI test machine needs {', '.join(missing)} "
                            f"(apt install qemu-system-x86 ovmf "
                            f"busybox-static: tools/setup-host.sh)")


def guest_kernel() -> tuple[str, str, str]:
    """Debian's current amd64 kernel, unpacked once into the cache:
    (vmlinuz, tree holding lib/modules/VERSION, VERSION)."""
    base = os.path.join(h.cache_dir(), "guest-kernel")
    done = os.path.join(base, "ready")
    with open(base + ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one download at a time
        if not os.path.exists(done):
            shutil.rmtree(base, ignore_errors=True)
            os.makedirs(base)
            match = None
            for attempt in (1, 2):
                deps = h.run(["apt-cache", "depends", "linux-image-amd64"],
                             check=False).stdout
                match = re.search(r"Depends: (linux-image-[\w.+-]+)", deps)
                if match or attempt == 2:
                    break
                h.run(["apt-get", "update", "-qq"], check=False)  # no lists yet
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


def signed_loaders() -> tuple[str, str]:
    """Debian's shim (signed by Microsoft) and GRUB (signed by Debian),
    from shim-signed and grub-efi-amd64-signed, unpacked once into the
    cache: (shimx64.efi, grubx64.efi)."""
    base = os.path.join(h.cache_dir(), "signed-loaders")
    shim = os.path.join(base, "usr/lib/shim/shimx64.efi.signed")
    grub = os.path.join(base, "usr/lib/grub/x86_64-efi-signed/"
                              "grubx64.efi.signed")
    with open(base + ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (os.path.exists(shim) and os.path.exists(grub)):
            os.makedirs(base, exist_ok=True)
            h.say("Secure Boot loaders: downloading shim-signed and "
                  "grub-efi-amd64-signed (once)")
            result = h.run(["apt-get", "download", "shim-signed",
                            "grub-efi-amd64-signed"], cwd=base, check=False)
            debs = [n for n in os.listdir(base) if n.endswith(".deb")]
            if len(debs) != 2:
                raise h.Unavailable(f"apt-get download shim-signed "
                                    f"grub-efi-amd64-signed failed: "
                                    f"{result.stderr.strip()[-300:]}")
            for deb in debs:
                h.run(["dpkg-deb", "-x", os.path.join(base, deb), base])
                os.unlink(os.path.join(base, deb))
    return shim, grub


def build_boot_disk(path: str, vmlinuz: str, initrd: str,
                    cmdline: str) -> None:
    """For Secure Boot, where the firmware will not start an unsigned
    kernel given with -kernel: a disk whose ESP holds Debian's signed shim
    and GRUB (removable path), the signed Debian kernel, the initramfs
    and a grub.cfg that boots them, as a signed ramdisk would be booted."""
    shim, grub = signed_loaders()
    esp = path + ".esp"
    size_mib = 64
    h.run(["mkfs.vfat", "-C", "-n", "IPABOOT", esp, str(size_mib * 1024)])
    cfg = path + ".grub.cfg"
    with open(cfg, "w") as f:
        f.write("search --no-floppy --set=root --label IPABOOT\n"
                f"linux /vmlinuz {cmdline}\ninitrd /initramfs\nboot\n")
    h.run(["mmd", "-i", esp, "::/EFI", "::/EFI/BOOT", "::/EFI/debian"])
    for source, target in ((shim, "::/EFI/BOOT/BOOTX64.EFI"),
                           (grub, "::/EFI/BOOT/grubx64.efi"),
                           (cfg, "::/EFI/BOOT/grub.cfg"),
                           (cfg, "::/EFI/debian/grub.cfg"),
                           (vmlinuz, "::/vmlinuz"), (initrd, "::/initramfs")):
        h.run(["mcopy", "-i", esp, source, target])
    with open(path, "wb") as f:
        f.truncate((size_mib + 2) * MiB)
    h.run(["sgdisk", "-n", f"1:2048:+{size_mib}M", "-t", "1:EF00", path])
    h.run(["dd", f"if={esp}", f"of={path}", "bs=1M", "seek=1",
           "conv=notrunc,fsync", "status=none"])
    os.unlink(esp)
    os.unlink(cfg)


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
    busybox = shutil.which("busybox") or "/bin/busybox"
    shutil.copy(busybox, os.path.join(tree, "bin", "busybox"))
    # a dynamically linked busybox (Debian's "busybox" package) brings
    # its libraries along
    libs = h.run(["ldd", busybox], check=False).stdout
    for lib in re.findall(r"(/\S+) \(0x", libs):
        target = os.path.join(tree, lib.lstrip("/"))
        os.makedirs(os.path.dirname(target), exist_ok=True)
        shutil.copy(lib, target)
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
                 netns: str, memory_mb: int = 1536,
                 secure_boot: bool = False,
                 devices: list[str] | None = None,
                 more_disks: list[str] | None = None,
                 firmware: str = "uefi") -> None:
        require_qemu()
        #: "uefi" (OVMF, its own NVRAM) or "bios" (QEMU's SeaBIOS: it
        #: boots the first disk's boot sector)
        self.firmware = firmware
        #: every virtio disk, in order (vda, vdb...): ``disk`` first
        self.disks = [disk] + list(more_disks or [])
        #: more QEMU arguments for the ramdisk boots (disks: NVMe, SATA)
        self.devices = list(devices or [])
        self.cleanups = cleanups
        self.netns = netns
        self.workdir = workdir
        self.disk = disk
        self.memory_mb = memory_mb
        self.secure_boot = secure_boot
        if secure_boot and not all(os.path.exists(p) for p in
                                   (OVMF_CODE_SB, OVMF_VARS_SB)):
            raise h.Unavailable(f"Secure Boot needs {OVMF_CODE_SB} and "
                                f"{OVMF_VARS_SB} (apt install ovmf)")
        self.code = OVMF_CODE_SB if secure_boot else OVMF_CODE
        self.vars = os.path.join(workdir, "OVMF_VARS.fd")
        shutil.copy(OVMF_VARS_SB if secure_boot else OVMF_VARS, self.vars)
        self.proc: subprocess.Popen[bytes] | None = None
        self.serial = ""
        self.boots = 0
        cleanups.add("qemu", self.stop)

    def _start(self, extra: list[str], disks: list[str] | None = None,
               bootindex: bool = True) -> None:
        self.stop()  # one machine, one power switch
        self.boots += 1
        self.serial = os.path.join(self.workdir, f"serial-{self.boots}.log")
        machine = ["-machine", "q35,smm=on", "-global",
                   "driver=cfi.pflash01,property=secure,value=on"] \
            if self.secure_boot else ["-machine", "q35"]
        flash = [] if self.firmware == "bios" else [
            "-drive", f"if=pflash,format=raw,unit=0,readonly=on,"
                      f"file={self.code}",
            "-drive", f"if=pflash,format=raw,unit=1,file={self.vars}"]
        argv = ["ip", "netns", "exec", self.netns,
                "qemu-system-x86_64"] + machine + ["-accel", "tcg",
                "-cpu", "max", "-smp", "2", "-m", str(self.memory_mb),
                "-nodefaults", "-display", "none", "-no-reboot"] + flash + [
                "-serial", f"file:{self.serial}"]
        for i, disk in enumerate(self.disks if disks is None else disks):
            argv += ["-drive", f"if=none,id=disk{i},format=raw,file={disk},"
                               f"cache=writethrough",
                     "-device", f"virtio-blk-pci,drive=disk{i}"
                                + (f",bootindex={i + 1}" if bootindex
                                   else "")]
        argv += extra
        with open(self.serial + ".qemu", "w") as stderr:
            self.proc = subprocess.Popen(
                argv, stdout=subprocess.DEVNULL, stderr=stderr,
                start_new_session=True)

    def boot_ramdisk(self, script: str, api_port: int,
                     guest_port: int = 9999, mac: str = h.NODE_MAC,
                     restrict: bool = True) -> None:
        """Boot the kernel and initramfs; ``script`` (a path on this
        machine) is the guest's init.  QEMU runs in the test's namespace:
        ``api_port`` on its loopback reaches ``guest_port`` in the guest,
        and (``restrict=False``) the guest reaches the namespace's loopback
        as 10.0.2.2, and nothing else (the namespace has no way out)."""
        vmlinuz, root, version = guest_kernel()
        initrd = os.path.join(self.workdir, "initramfs.cpio")
        if not os.path.exists(initrd):
            build_initramfs(root, version, initrd)
        cmdline = (f"console=ttyS0 panic=-1 ipa_guest_script={script} "
                   f"ipa_guest_modules={root}")
        if self.secure_boot:
            boot_disk = os.path.join(self.workdir, "boot-disk.img")
            if not os.path.exists(boot_disk):
                build_boot_disk(boot_disk, vmlinuz, initrd, cmdline)
            boot = ["-drive", f"if=none,id=boot,format=raw,readonly=on,"
                              f"file={boot_disk}",
                    "-device", "virtio-blk-pci,drive=boot,bootindex=0"]
        else:
            boot = ["-kernel", vmlinuz, "-initrd", initrd,
                    "-append", cmdline]
        self._start(boot + [
            "-virtfs", "local,path=/,mount_tag=hostroot,security_model=none,"
                       "readonly=on,multidevs=remap",
            "-netdev", f"user,id=net0,restrict={'on' if restrict else 'off'},"
                       f"hostfwd=tcp:127.0.0.1:{api_port}-:{guest_port}",
            "-device", f"virtio-net-pci,netdev=net0,mac={mac}"]
            + self.devices)

    def boot_disk(self, disks: list[str] | None = None,
                  bootindex: bool = True) -> None:
        """Power on with no kernel: the firmware boots from NVRAM; with
        ``disks``, only those are attached (a machine that lost the
        others).  Without ``bootindex`` QEMU names no boot device, so
        that OVMF follows its NVRAM BootOrder alone (with one, OVMF puts
        the entries of the named disk's device path first, its own
        removable-media entry among them)."""
        self._start(["-nic", "none"], disks, bootindex)

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


GUEST = """#!/bin/sh
# The test UEFI guest's init: the agent, as a ramdisk would run it.
mods=$(sed -n 's/.*ipa_guest_modules=\\([^ ]*\\).*/\\1/p' /proc/cmdline)
mkdir -p /lib/modules && mount --bind "$mods/lib/modules" /lib/modules
modprobe -a virtio_blk virtio_net efivarfs vfat nls_cp437 nls_ascii ext4
mount -t efivarfs efivarfs /sys/firmware/efi/efivars
mount -t tmpfs tmpfs /run
ip link set lo up && ip link set eth0 up
ip addr add 10.0.2.15/24 dev eth0 && ip route add default via 10.0.2.2
echo "guest: disks: $(ls /sys/block)"
cd /tmp
{setup}
{python} -m http.server --bind 127.0.0.1 --directory {www} 8080 \\
    >/dev/null 2>&1 &
: > /tmp/cmdline
{twistd} --nodaemon --pidfile= --logfile=- ipa \\
    --device-allowlist {allowlist} --cmdline-file /tmp/cmdline \\
    --disk-wait-attempts 2 --disk-wait-delay 1 {agent_args}
echo "guest: the agent exited ($?)"
echo o > /proc/sysrq-trigger
sleep 30
"""


def start_agent(test: Any, machine: UefiMachine, www: str,
                agent_args: list[str], port: int,
                restrict: bool = True, wait: bool = True,
                setup: str = "", allowlist: str = "/dev/vda") -> None:
    """Boot ``machine`` as a ramdisk running our agent with ``agent_args``;
    (``wait``) returns when its plain-HTTP API answers on ``port`` (in the
    namespace).  ``setup`` is shell run in the guest before the agent
    starts; ``www`` is served in the guest on 127.0.0.1:8080."""
    script = os.path.join(machine.workdir, "guest.sh")
    with open(script, "w") as f:
        f.write(GUEST.format(
            python=sys.executable, www=www,
            twistd=os.path.join(os.path.dirname(sys.executable), "twistd"),
            agent_args=" ".join(agent_args), setup=setup,
            allowlist=allowlist))
    start = time.monotonic()
    machine.boot_ramdisk(script, port, restrict=restrict)
    while wait and time.monotonic() - start < 300:
        if machine.proc is not None and machine.proc.poll() is not None:
            break
        try:
            status, _, _ = agent_api.call(machine.netns, "GET", "/v1/status",
                                          port=port, timeout=5)
            if status == 200:
                h.say(f"test machine: agent API up "
                      f"{time.monotonic() - start:.1f} s after power on")
                return
        except (OSError, ValueError):
            pass
        time.sleep(1)
    if wait:
        test.fail(f"the guest's agent did not answer; serial:\n"
                  f"{machine.read_serial()[-3000:]}")


def device_mapper_setup(tables: list[tuple[str, str]],
                        modules: str = "dm-mod dm-flakey") -> str:
    """Guest shell (a ``setup`` for :func:`start_agent`) that makes the
    device-mapper devices ``tables`` names, in order (so the first is
    /dev/dm-0 on a fresh boot), each from its table (``\\n`` between
    lines; shell expansions such as $sectors, the size of /dev/vda in
    sectors, work), and prints each one's table on the serial console as
    "dm NAME: line;line;".  No udev runs in the guest, hence
    ``--noudevsync`` and ``dmsetup mknodes`` (lsblk needs /dev/mapper)."""
    script = (f"modprobe -a {modules}\n"
              "sectors=$(blockdev --getsz /dev/vda)\n")
    for name, table in tables:
        script += f'printf "{table}" | dmsetup create --noudevsync {name}\n'
    script += "dmsetup mknodes\n"
    for name, _ in tables:
        script += (f"echo \"dm {name}: $(dmsetup table {name} | "
                   f"tr '\\n' ';')\"\n")
    return script


class MachineTestCase(SandboxTestCase):
    """A sandboxed test whose agent runs in a test machine: ``self.machine``
    (its disk a 5 GiB loop device), ``self.www`` (served in the guest on
    127.0.0.1:8080), ``self.port`` (the agent API, forwarded)."""

    disk_size = 5 << 30  # the agent ignores disks under 4 GiB
    #: the test builds images from the debootstrap'd Debian tree
    needs_debian_root = False
    #: OVMF with Secure Boot on (Microsoft's keys)
    secure_boot = False

    def setUp(self) -> None:
        super().setUp()
        try:
            require_qemu()
            guest_kernel()
            if self.needs_debian_root:
                h.debian_root()
        except h.Unavailable as e:
            unavailable(e)
        self.www = os.path.join(self.workdir, "www")
        os.makedirs(self.www)
        self.port = h.free_port()
        self.machine = UefiMachine(self.cleanups, self.workdir, self.device,
                                   self.netns, secure_boot=self.secure_boot)

    def start_agent(self, agent_args: list[str], setup: str = "") -> None:
        start_agent(self, self.machine, self.www, agent_args, self.port,
                    setup=setup)


def make_uefi_disk_image(path: str, size: int, label: str,
                         grub_cfg: str) -> str:
    """A whole-disk image as a UEFI cloud image has it: GPT, an ESP with
    EFI/debian/grubx64.efi and a BOOTX64.CSV naming it (as shim's fallback
    reads it), and an empty second partition.  The GRUB is the Debian
    tree's own, made standalone with ``grub_cfg`` built in.  Returns the
    image's sha256."""
    tree = tempfile.mkdtemp(prefix="uefi-image-")
    try:
        h.run(["tar", "-C", tree, "-xf", h.debian_root()])
        with open(os.path.join(tree, "tmp", "embedded.cfg"), "w") as f:
            f.write(grub_cfg)
        h.run(["chroot", tree, "grub-mkstandalone", "-O", "x86_64-efi",
               "-o", "/tmp/grubx64.efi",
               "boot/grub/grub.cfg=/tmp/embedded.cfg"])
        csv = os.path.join(tree, "tmp", "BOOTX64.CSV")
        with open(csv, "wb") as f:
            f.write(f"grubx64.efi,{label},,This is the boot entry for "
                    f"{label}\n".encode("utf-16"))
        esp = path + ".esp"
        esp_mib = 64
        h.run(["mkfs.vfat", "-C", "-n", "ESP", esp, str(esp_mib * 1024)])
        h.run(["mmd", "-i", esp, "::/EFI", "::/EFI/debian"])
        h.run(["mcopy", "-i", esp, os.path.join(tree, "tmp", "grubx64.efi"),
               csv, "::/EFI/debian/"])
        with open(path, "wb") as f:
            f.truncate(size)
        h.run(["sgdisk", "-n", f"1:2048:+{esp_mib}M", "-t", "1:EF00",
               "-c", "1:EFI System", "-n", "2:0:0", "-t", "2:8300", path])
        h.run(["dd", f"if={esp}", f"of={path}", "bs=1M", "seek=1",
               "conv=notrunc,fsync", "status=none"])
        os.unlink(esp)
    finally:
        shutil.rmtree(tree, ignore_errors=True)
    return h.file_sha256(path)


# ------------------------------------------------------------ the NVRAM file

GLOBAL_VARIABLE = uuid.UUID("8be4df61-93ca-11d2-aa0d-00e098032b8c").bytes_le
AUTH_STORE = uuid.UUID("aaf32c78-947b-439a-a180-2e144ec37792").bytes_le
VAR_ADDED = 0x3F
VAR_IN_DELETED_TRANSITION = 0x3E


def nvram_variables(path: str) -> dict[str, bytes]:
    """The live EFI global variables in an OVMF_VARS file (the variable
    store that follows the firmware volume header; a copy being replaced
    counts only when no newer copy was added)."""
    with open(path, "rb") as f:
        data = f.read()
    if data[40:44] != b"_FVH":
        raise ValueError(f"{path}: not a firmware volume")
    fv_header = struct.unpack_from("<H", data, 0x30)[0]
    auth = data[fv_header:fv_header + 16] == AUTH_STORE
    store_size = struct.unpack_from("<I", data, fv_header + 16)[0]
    pos, end = fv_header + 28, fv_header + store_size
    added: dict[str, bytes] = {}
    replaced: dict[str, bytes] = {}
    while pos + 32 <= end:
        start_id, state = struct.unpack_from("<HB", data, pos)
        if start_id != 0x55AA:
            break
        if auth:  # + MonotonicCount, TimeStamp, PubKeyIndex
            name_size, data_size = struct.unpack_from("<II", data, pos + 36)
            guid, header = data[pos + 44:pos + 60], 60
        else:
            name_size, data_size = struct.unpack_from("<II", data, pos + 8)
            guid, header = data[pos + 16:pos + 32], 32
        body = pos + header
        name = data[body:body + name_size].decode("utf-16-le").rstrip("\0")
        value = data[body + name_size:body + name_size + data_size]
        if guid == GLOBAL_VARIABLE and state == VAR_ADDED:
            added[name] = value
        elif guid == GLOBAL_VARIABLE and state == VAR_IN_DELETED_TRANSITION:
            replaced[name] = value
        pos = (body + name_size + data_size + 3) & ~3
    return {**replaced, **added}


def boot_entries(path: str) -> tuple[list[int], dict[int, tuple[str, str]]]:
    """BootOrder, and each Boot#### entry's (description, file path; ""
    when the entry names no file)."""
    variables = nvram_variables(path)
    raw = variables.get("BootOrder", b"")
    order = list(struct.unpack(f"<{len(raw) // 2}H", raw))
    entries: dict[int, tuple[str, str]] = {}
    for name, value in variables.items():
        if not re.fullmatch(r"Boot[0-9A-F]{4}", name):
            continue
        path_len = struct.unpack_from("<H", value, 4)[0]
        i = 6
        while i + 2 <= len(value) and value[i:i + 2] != b"\0\0":
            i += 2
        description = value[6:i].decode("utf-16-le")
        nodes, j, file_path = value[i + 2:i + 2 + path_len], 0, ""
        while j + 4 <= len(nodes):
            kind, sub, length = struct.unpack_from("<BBH", nodes, j)
            if kind == 0x04 and sub == 0x04:  # media, file path
                file_path = nodes[j + 4:j + length].decode(
                    "utf-16-le").rstrip("\0")
            if kind == 0x7F or length < 4:
                break
            j += length
        entries[int(name[4:], 16)] = (description, file_path)
    return order, entries
