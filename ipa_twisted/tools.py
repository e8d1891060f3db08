"""The external tools the agent runs, and those its tests run: one list.

Every program the agent starts through :mod:`ipa_twisted.process` is named
here with the Debian package that ships it and what does not work without
it.  ``tests/unit/test_tools.py`` reads the code and fails when it runs a
tool this list does not name; ``tools/setup-host.sh`` installs from this
list; the agent warns once at start-up about every tool it cannot find.

This module uses the standard library only, so that the set-up script can
run it (``python3 ipa_twisted/tools.py missing-packages``) before anything
else is installed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from typing import NamedTuple

#: Who runs the tool: the agent itself, or only the tests / benchmarks /
#: demo (which also need every agent tool: they run the agent).
AGENT = "agent"
TEST = "test"


class Tool(NamedTuple):
    name: str
    #: the Debian package that ships it (None: not packaged by Debian)
    package: str | None
    #: what does not work without it (the start-up warning says this)
    needed_for: str
    scope: str = AGENT
    #: absent on most machines and that is fine: no start-up warning
    optional: bool = False
    #: installed without the package's recommendations (mdadm's: a mail
    #: server)
    lean: bool = False


TOOLS: tuple[Tool, ...] = (
    # --- the agent -------------------------------------------------------
    Tool("biosdevname", None, "BIOS names of NICs in the inventory (Dell "
         "servers); left out when absent", optional=True),
    Tool("blkid", "util-linux", "partition and filesystem UUIDs "
         "(install_bootloader, partition images)"),
    Tool("blockdev", "util-linux", "re-reading partition tables after an "
         "erase, flushing buffers before power off"),
    Tool("bsdtar", "libarchive-tools", "config drives on 4K-sector disks"),
    Tool("chpasswd", "passwd", "rescue.finalize_rescue (the rescue user's "
         "password)"),
    Tool("chroot", "coreutils", "install_bootloader (the image's own GRUB)"),
    Tool("df", "coreutils", "collect_system_logs"),
    Tool("dmesg", "util-linux", "collect_system_logs"),
    Tool("dmidecode", "dmidecode", "system vendor, memory and BIOS facts in "
         "the inventory"),
    Tool("blkdiscard", "util-linux", "erase_devices on disks whose "
         "discarded blocks read back as zeroes"),
    Tool("env", "coreutils", "burnin_gpu (gpu_burn runs in its install "
         "directory); the deploy benchmark"),
    Tool("fio", "fio", "burnin_disk (the disks' read/write/verify run), "
         "burnin_network (fio's net engine between two nodes)"),
    Tool("efibootmgr", "efibootmgr", "UEFI boot entries (install_bootloader "
         "on UEFI machines, clean_uefi_nvram)"),
    Tool("hdparm", "hdparm", "erase_devices on ATA disks (security erase, "
         "sanitize)"),
    Tool("ip", "iproute2", "collect_system_logs, system.lockdown (network "
         "interfaces set down)"),
    Tool("ipmitool", "ipmitool", "the BMC address in the inventory"),
    Tool("journalctl", "systemd", "collect_system_logs (the journal; "
         "/var/log is collected instead)", optional=True),
    Tool("lsblk", "util-linux", "listing disks: the inventory, the root "
         "device, every write and erase"),
    Tool("lscpu", "util-linux", "CPU facts in the inventory"),
    Tool("lshw", "lshw", "system and memory facts in the inventory"),
    Tool("mkfs", "util-linux", "partition images (ESP, ephemeral "
         "partition)"),
    Tool("mkfs.ext4", "e2fsprogs", "partition images (ext4 ephemeral "
         "partition)"),
    Tool("mkfs.vfat", "dosfstools", "partition images on UEFI (the ESP), "
         "config drives on 4K-sector disks"),
    Tool("mkfs.xfs", "xfsprogs", "partition images (xfs ephemeral "
         "partition)"),
    Tool("mcopy", "mtools", "config drives on 4K-sector disks"),
    Tool("mknod", "coreutils", "install_bootloader (the sealed chroot's "
         "own /dev)"),
    Tool("mkswap", "util-linux", "partition images (swap partition)"),
    Tool("mdadm", "mdadm", "software RAID (create_configuration, "
         "delete_configuration, apply_configuration; install_bootloader on "
         "a RAID)", lean=True),
    Tool("mount", "mount", "install_bootloader"),
    Tool("nvme", "nvme-cli", "erase_devices on NVMe disks (format, "
         "sanitize)"),
    Tool("openssl", "openssl", "rescue.finalize_rescue with a plain "
         "password (hashing it)"),
    Tool("parted", "parted", "partition images, config drives, "
         "collect_system_logs"),
    Tool("partprobe", "parted", "re-reading partitions after a write"),
    Tool("ps", "procps", "collect_system_logs"),
    Tool("setpriv", "util-linux", "install_bootloader (the image's tools "
         "run without the capabilities to escape)"),
    Tool("setsid", "util-linux", "every tool in its own process group, so "
         "that a timeout or a cancel stops all it started"),
    Tool("smartctl", "smartmontools", "erase_devices on ATA disks (can ATA "
         "security commands reach the drive)"),
    Tool("stress-ng", "stress-ng", "burnin_cpu and burnin_memory"),
    Tool("sgdisk", "gdisk", "GPT whole-disk images (moving the backup "
         "header), config drives on GPT disks"),
    Tool("sync", "coreutils", "flushing disks before power off"),
    Tool("udevadm", "udev", "waiting for udev before listing disks"),
    Tool("umount", "mount", "install_bootloader"),
    Tool("wipefs", "util-linux", "erase_devices_metadata, partition images"),
    # the default power commands (--power-off-command, --reboot-command)
    Tool("poweroff", "systemd-sysv", "standby.power_off (falls back to "
         "/proc/sysrq-trigger)", optional=True),
    Tool("reboot", "systemd-sysv", "standby.run_image (falls back to "
         "/proc/sysrq-trigger)", optional=True),
    # --- the tests, benchmarks and demo ------------------------------------
    Tool("apt-get", "apt", "the UEFI test machine (Debian kernel, "
         "signed shim and GRUB)", TEST),
    Tool("apt-cache", "apt", "the UEFI test machine", TEST),
    Tool("busybox", "busybox-static", "the UEFI test machine's initramfs",
         TEST),
    Tool("cat", "coreutils", "process tests", TEST),
    Tool("cpio", "cpio", "packing the ramdisk (ramdisk/build)", TEST),
    Tool("cc", "gcc", "the loop-device geometry shim of the GRUB tests; "
         "ICU's stub data and the stub libraries in the ramdisk "
         "(ramdisk/build)", TEST),
    Tool("curl", "curl", "the deploy benchmark", TEST),
    Tool("dd", "coreutils", "test images", TEST),
    Tool("dnsmasq", "dnsmasq-base", "DHCP and TFTP for the network-boot "
         "test machine (tests/vm)", TEST),
    Tool("debootstrap", "debootstrap", "the Debian partition image of the "
         "bootloader tests", TEST),
    Tool("debugfs", "e2fsprogs", "reading deployed filesystems", TEST),
    Tool("depmod", "kmod", "the UEFI test machine's kernel modules", TEST),
    Tool("dpkg-deb", "dpkg", "the UEFI test machine (unpacking packages)",
         TEST),
    Tool("gcc", "gcc", "the loop-device geometry shim", TEST),
    Tool("genisoimage", "genisoimage", "config drives", TEST),
    Tool("gzip", "gzip", "compressed images", TEST),
    Tool("ldd", "libc-bin", "the UEFI test machine's initramfs", TEST),
    Tool("libvirtd", "libvirt-daemon", "the network-boot test machine's "
         "BMC (tests/vm: a private libvirtd runs it, sushy-emulator "
         "serves Redfish); not the host service (libvirt-daemon-system)",
         TEST, lean=True),
    Tool("losetup", "mount", "loop devices as disks", TEST),
    Tool("mdir", "mtools", "reading ESPs and config drives", TEST),
    Tool("mmdebstrap", "mmdebstrap", "the ramdisk's Debian root "
         "(ramdisk/build)", TEST),
    Tool("minfo", "mtools", "checking an ESP is a FAT filesystem", TEST),
    Tool("mmd", "mtools", "making ESPs", TEST),
    Tool("mtype", "mtools", "reading ESPs", TEST),
    Tool("nginx", "nginx-light", "the deploy benchmark and the network "
         "boot tests (serves images and /httpboot as Ironic deployments "
         "do: sendfile)", TEST),
    Tool("partx", "util-linux", "reading partition tables", TEST),
    Tool("pkill", "procps", "stopping test processes", TEST),
    Tool("prlimit", "util-linux", "the agent under a low open-file limit",
         TEST),
    Tool("py-spy", None, "the sampling part of the write-path profile "
         "(benchmarks/profile_write.py; from PyPI: pip install py-spy)",
         TEST, optional=True),
    Tool("/usr/bin/python3", "python3", "sushy-emulator's virtualenv "
         "(tests/vm: Debian's python3, whose python3-libvirt it uses)",
         TEST),
    Tool("qemu-img", "qemu-utils", "qcow2 images", TEST),
    Tool("qemu-io", "qemu-utils", "qcow2 images with compressed clusters",
         TEST),
    Tool("qemu-system-x86_64", "qemu-system-x86", "the UEFI test machine",
         TEST),
    Tool("mksquashfs", "squashfs-tools", "the ramdisk's cold part: what "
         "nothing reads before the lookup (ramdisk/build)", TEST),
    Tool("unsquashfs", "squashfs-tools", "reading the ramdisk's cold part "
         "(tests/vm/test_ramdisk_build.py)", TEST),
    Tool("sh", "dash", "process tests", TEST),
    Tool("dash", "dash", "the made-up root of the ramdisk's cold-part test "
         "(tests/integration/test_ramdisk_cold.py)", TEST),
    Tool("ssh", "openssh-client", "logging in to a ramdisk built with "
         "--ssh-key (tests/vm/test_ramdisk_net.py)", TEST),
    Tool("ssh-keygen", "openssh-client", "the key of the --ssh-key "
         "ramdisk test (tests/vm/test_ramdisk_net.py)", TEST),
    Tool("sleep", "coreutils", "process tests", TEST),
    Tool("nm", "binutils", "the symbols the ramdisk's stub libraries "
         "define (ramdisk/build)", TEST),
    Tool("readelf", "binutils", "what the ramdisk's programs link "
         "(ramdisk/build)", TEST),
    Tool("strip", "binutils", "smaller libraries in the ramdisk "
         "(ramdisk/build)", TEST),
    Tool("tar", "tar", "cached test images", TEST),
    Tool("unshare", "util-linux", "the sandbox of every agent under test; "
         "the ramdisk build's smoke test", TEST),
    Tool("useradd", "passwd", "the rescue user of the rescue test (in the "
         "sandbox's own /etc)", TEST),
    Tool("virsh", "libvirt-clients", "the network-boot test machine "
         "(tests/vm: defining its libvirt domain, its events, adding a "
         "disk)", TEST, lean=True),
    Tool("xz", "xz-utils", "ramdisk/build --compress xz", TEST),
    Tool("lz4", "lz4", "the ramdisk's initramfs (ramdisk/build; fastest "
         "for the kernel to unpack)", TEST),
    Tool("zstd", "zstd", "compressing the ramdisk and its kernel modules "
         "(ramdisk/build)", TEST),
)

#: Packages the tests need that are not a tool on PATH (files, libraries).
TEST_PACKAGES: tuple[str, ...] = ("ovmf", "libc6-dev", "python3-venv",
                                  "python3-pip",
                                  # network boot (tests/vm): iPXE for
                                  # plain PXE ROMs, pxelinux and its
                                  # ldlinux.c32 for the pxe interface
                                  "ipxe", "pxelinux", "syslinux-common")

#: The same, installed without their recommendations: libvirt for the
#: network-boot test machine's BMC, never its host service and NAT
#: network (libvirt-daemon-system, libvirt-daemon-config-network: the
#: tests start a private libvirtd of their own)
TEST_PACKAGES_LEAN: tuple[str, ...] = ("libvirt-daemon",
                                       "libvirt-daemon-driver-qemu",
                                       "libvirt-clients", "python3-libvirt")

#: The system's tool directories, searched after the caller's PATH.
SYSTEM_DIRS = ("/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin",
               "/sbin", "/bin")


def search_path(path: str | None = None) -> str:
    """``path`` (the environment's PATH by default), then the system's
    tool directories it lacks (a ramdisk's init or a user shell may have no
    sbin directories on PATH).  The agent runs its tools from this path,
    and its start-up warning looks for them on it."""
    given = os.environ.get("PATH", "") if path is None else path
    dirs = [d for d in given.split(os.pathsep) if d]
    return os.pathsep.join(dirs + [d for d in SYSTEM_DIRS if d not in dirs])


#: Where tools are looked for (see :func:`search_path`).
SEARCH_PATH = search_path()


def of_scope(scope: str) -> list[Tool]:
    """The tools ``scope`` needs: the tests need the agent's too."""
    return [t for t in TOOLS if t.scope == AGENT or scope == TEST]


def missing(scope: str = AGENT, path: str = SEARCH_PATH) -> list[Tool]:
    """The tools of ``scope`` that are not on ``path``."""
    return [t for t in of_scope(scope) if shutil.which(t.name, path=path)
            is None]


def _installed(package: str) -> bool:
    try:
        out = subprocess.run(
            ["dpkg-query", "-W", "-f=${Status}", package],
            capture_output=True, text=True, check=False).stdout
    except OSError:
        return False
    return "install ok installed" in out


def missing_packages(lean: bool = False) -> list[str]:
    """The Debian packages to install so that every tool (tests' too) is
    there: packages of the tools that are not found, and those of
    :data:`TEST_PACKAGES` that are not installed; (``lean``) those to
    install without their recommendations (and those of
    :data:`TEST_PACKAGES_LEAN`)."""
    wanted = [t.package for t in missing(TEST) if t.package and not
              t.optional and t.lean == lean]
    wanted += [p for p in (TEST_PACKAGES_LEAN if lean else TEST_PACKAGES)
               if not _installed(p)]
    return sorted(set(wanted))


def main(argv: list[str]) -> int:
    usage = ("usage: tools.py missing-packages [lean] | check [agent|test] "
             "| check-for-tests | list")
    if not argv:
        print(usage, file=sys.stderr)
        return 2
    if argv[0] == "missing-packages":
        packages = missing_packages(argv[1:] == ["lean"])
        if packages:         # nothing at all when none: no empty line
            print("\n".join(packages))
        return 0
    if argv[0] == "check":
        scope = argv[1] if len(argv) > 1 else TEST
        absent = [t for t in missing(scope) if not t.optional]
        for t in absent:
            print(f"missing tool {t.name} (Debian package {t.package}): "
                  f"{t.needed_for}", file=sys.stderr)
        return 1 if absent else 0
    if argv[0] == "check-for-tests":
        # before the test run: in CI (IPA_TWISTED_REQUIRE_E2E=1) a missing
        # tool ends the run here, by name, rather than as failures later
        absent = [t for t in missing(TEST) if not t.optional]
        for t in absent:
            print(f"missing tool {t.name} (Debian package {t.package}): "
                  f"{t.needed_for}", file=sys.stderr)
        if not absent:
            return 0
        if os.environ.get("IPA_TWISTED_REQUIRE_E2E") == "1":
            print("tools missing and IPA_TWISTED_REQUIRE_E2E=1: run "
                  "tools/setup-host.sh", file=sys.stderr)
            return 1
        print("the tests that need these tools will skip (run "
              "tools/setup-host.sh)", file=sys.stderr)
        return 0
    if argv[0] == "list":
        for t in TOOLS:
            print(f"{t.name}\t{t.package or '-'}\t{t.scope}\t{t.needed_for}")
        return 0
    print(usage, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
