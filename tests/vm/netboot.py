"""A machine that Ironic network-boots: QEMU (TCG, SeaBIOS) on a bridge,
with a real Ironic, an HTTP server for its /httpboot and dnsmasq, all in a
network namespace the test makes.

::

    netns ipa-e2e-*:  br0 192.0.2.1/24, fd00:ab::1/64
        Ironic 39 API + conductor   192.0.2.1:6385
        HTTP (Ironic's http_root)  192.0.2.1:8089   boot.ipxe, per-MAC
                                   iPXE configs, deploy kernel/ramdisk,
                                   images/
        dnsmasq                    DHCP 192.0.2.100-200 (``ipxe``: iPXE
                                   clients get http://192.0.2.1:8089/
                                   boot.ipxe, others undionly.kpxe;
                                   ``pxe``: pxelinux.0), TFTP of Ironic's
                                   tftp_root, IPv6 router advertisements
        tapvm ── QEMU's virtio NIC (its option ROM is iPXE)
        sushy-emulator             127.0.0.1:8000 (Redfish; ``redfish``)
        libvirtd                   its own mount and PID namespace, its
                                   socket in the work directory

Power, with ``Netboot(redfish=True)`` (:mod:`tests.vm.bmc`): Ironic's
``redfish`` hardware type talks to sushy-emulator, whose libvirt driver
switches the machine, a TCG libvirt domain (:class:`LibvirtMachine`), on
and off and sets its boot device (Pxe, Hdd); the test never starts or
stops it, it only watches the domain's events and its console.

Otherwise (no libvirt here): Ironic's ``fake`` power interface, followed
by the test (:class:`PowerFollower` reads Ironic's log: "Successfully set
node ... power state to power on|off"): power off stops QEMU
(:class:`Machine`), power on starts it, from the network while Ironic's
per-MAC boot config exists, from its disk otherwise (what a BMC's boot
device does on a real machine).
"""

from __future__ import annotations

import configparser
import hashlib
import os
import re
import socket
import subprocess
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable
from xml.etree import ElementTree

from tests.integration import harness as h
from tests.vm import bmc

BRIDGE = "br0"
TAP = "tapvm"
HOST_IP = "192.0.2.1"
HOST_IP6 = "fd00:ab::1"
HTTP_PORT = 8089
TOP = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
MiB = 1024 ** 2
GiB = 1024 ** 3


# ------------------------------------------------------------ the ramdisk

_built: dict[tuple[str, ...], dict[str, Any]] = {}


def ramdisk(*options: str) -> dict[str, Any]:
    """ramdisk/build's kernel and initramfs (built once per cache: the
    build caches by content), with the build's own report.  ``options``:
    more of ramdisk/build's options (``--ssh-key FILE``, ...): a variant
    with its own output directory, so that it never replaces the files
    of the default build."""
    if options in _built:
        return _built[options]
    if os.geteuid() != 0:
        raise h.Unavailable("building the ramdisk needs root")
    for tool in ("mmdebstrap", "cpio", "zstd", "lz4", "qemu-system-x86_64",
                 "dnsmasq"):
        if subprocess.run(["sh", "-c", f"command -v {tool}"],
                          capture_output=True).returncode != 0:
            raise h.Unavailable(f"needs {tool} (tools/setup-host.sh)")
    for path in TFTP_FILES.values():
        if not os.path.exists(path):
            raise h.Unavailable(f"needs {path} (apt install ipxe pxelinux "
                                f"syslinux-common: tools/setup-host.sh)")
    # one output directory per checkout: the cache is shared, and another
    # checkout's build must not replace the files this one boots
    out = os.path.join(h.cache_dir(), "ramdisk-out-" + hashlib.sha256(
        os.path.realpath(TOP).encode()).hexdigest()[:12])
    if options:
        out += "-" + hashlib.sha256("\0".join(options).encode()
                                    ).hexdigest()[:8]
    t0 = time.monotonic()
    result = subprocess.run([os.path.join(TOP, "ramdisk", "build"),
                             "-o", out, *options],
                            capture_output=True, text=True)
    took = time.monotonic() - t0
    if result.returncode != 0:
        raise AssertionError(f"ramdisk/build failed:\n{result.stdout[-3000:]}"
                             f"\n{result.stderr[-3000:]}")
    report = [ln for ln in result.stdout.splitlines()
              if ln.startswith("ramdisk: ")]
    for line in report:
        h.say(line)
    h.say(f"ramdisk/build took {took:.1f} s")
    _built[options] = {
        "kernel": os.path.join(out, "ipa-twisted.kernel"),
        "initramfs": os.path.join(out, "ipa-twisted.initramfs"),
        "iso": os.path.join(out, "ipa-twisted.iso"),   # with --iso
        "seconds": took, "report": report}
    return _built[options]


# --------------------------------------------------------- the boot disk

def boot_sector_image(path: str, message: str, size: int = 16 * MiB) -> str:
    """A whole-disk image whose MBR boot code writes ``message`` to the
    first serial port (COM1, 0x3F8) and halts; one partition after the
    first MiB.  This is how the test sees that the machine booted the
    image Ironic deployed.  Returns its sha256."""
    text = ("\r\n" + message + "\r\n").encode() + b"\0"
    code = bytes([
        0xFA,                    # cli
        0x31, 0xC0,              # xor ax, ax
        0x8E, 0xD8,              # mov ds, ax
        0xFC,                    # cld
        0xBE, 0x17, 0x7C,        # mov si, 0x7c17 (the message)
        0xBA, 0xF8, 0x03,        # mov dx, 0x3f8
        0xAC,                    # next: lodsb
        0x84, 0xC0,              # test al, al
        0x74, 0x03,              # jz halt
        0xEE,                    # out dx, al
        0xEB, 0xF8,              # jmp next
        0xF4,                    # halt: hlt
        0xEB, 0xFD,              # jmp halt
    ])
    assert len(code) == 0x17 and len(code) + len(text) <= 446
    sector = bytearray(512)
    sector[:len(code)] = code
    sector[len(code):len(code) + len(text)] = text
    sectors = size // 512
    entry = bytes([0x00, 0, 0, 0, 0x83, 0, 0, 0]) \
        + (2048).to_bytes(4, "little") + (sectors - 2048).to_bytes(4, "little")
    sector[446:462] = entry
    sector[510:512] = b"\x55\xaa"
    with open(path, "wb") as f:
        f.write(sector)
        f.write(os.urandom(1 * MiB - 512))
        f.truncate(size)
    return h.file_sha256(path)


# ------------------------------------------------------------- the network

def make_network(cleanups: h.Cleanups) -> str:
    """The namespace, its bridge and the VM's tap device."""
    netns = h.make_netns(cleanups)
    ns = ["ip", "netns", "exec", netns]
    h.run(ns + ["ip", "link", "add", BRIDGE, "type", "bridge",
                "forward_delay", "0"])
    h.run(ns + ["ip", "addr", "add", f"{HOST_IP}/24", "dev", BRIDGE])
    h.run(ns + ["ip", "-6", "addr", "add", f"{HOST_IP6}/64", "dev", BRIDGE,
                "nodad"])
    h.run(ns + ["ip", "link", "set", BRIDGE, "up"])
    h.run(ns + ["ip", "tuntap", "add", "dev", TAP, "mode", "tap"])
    h.run(ns + ["ip", "link", "set", TAP, "master", BRIDGE])
    h.run(ns + ["ip", "link", "set", TAP, "up"])
    return netns


DNSMASQ = """\
interface={bridge}
bind-interfaces
except-interface=lo
port=0
user=root
dhcp-range={first},{last},255.255.255.0,1h
dhcp-range={prefix},ra-only,64
enable-ra
dhcp-leasefile={workdir}/dnsmasq.leases
dhcp-authoritative
log-dhcp
log-facility={workdir}/dnsmasq.log
enable-tftp
tftp-root={tftp}
"""
#: Ironic's iPXE chain-load rules: iPXE (DHCP option 175) gets Ironic's
#: boot.ipxe over HTTP; a plain PXE ROM gets iPXE itself over TFTP first
IPXE_RULES = """\
dhcp-match=set:ipxe,175
dhcp-boot=tag:ipxe,http://{host}:{port}/boot.ipxe
dhcp-boot=tag:!ipxe,undionly.kpxe
"""
#: the ``pxe`` boot interface (BIOS): pxelinux over TFTP for every client;
#: it reads Ironic's pxelinux.cfg/01-<mac> and loads the kernel and the
#: initramfs over TFTP
PXE_RULES = """\
dhcp-boot=pxelinux.0
"""
TFTP_FILES = {"undionly.kpxe": "/usr/lib/ipxe/undionly.kpxe",
              "pxelinux.0": "/usr/lib/PXELINUX/pxelinux.0",
              "ldlinux.c32": "/usr/lib/syslinux/modules/bios/ldlinux.c32"}


def start_dnsmasq(cleanups: h.Cleanups, netns: str, workdir: str,
                  tftp: str, mode: str = "ipxe",
                  interface: str = BRIDGE) -> subprocess.Popen[bytes]:
    """dnsmasq on the bridge (or ``interface``): DHCP with the rules of
    ``mode`` (ipxe or pxe), TFTP of Ironic's tftp_root, router
    advertisements."""
    conf = os.path.join(workdir, f"dnsmasq-{mode}.conf")
    rules = IPXE_RULES if mode == "ipxe" else PXE_RULES
    with open(conf, "w") as f:
        f.write((DNSMASQ + rules).format(
            bridge=interface, first="192.0.2.100", last="192.0.2.200",
            prefix="fd00:ab::", workdir=workdir, host=HOST_IP,
            port=HTTP_PORT, tftp=tftp))
    os.makedirs(tftp, exist_ok=True)
    for name, source in TFTP_FILES.items():
        if os.path.exists(source):
            with open(source, "rb") as src, \
                    open(os.path.join(tftp, name), "wb") as dst:
                dst.write(src.read())
    proc = subprocess.Popen(
        ["ip", "netns", "exec", netns, "dnsmasq", "--keep-in-foreground",
         f"--conf-file={conf}"], stdout=subprocess.DEVNULL,
        stderr=open(os.path.join(workdir, "dnsmasq.stderr"), "w"),
        start_new_session=True)
    cleanups.add("dnsmasq", lambda: h.stop_process(proc))
    time.sleep(0.5)
    if proc.poll() is not None:
        with open(os.path.join(workdir, "dnsmasq.stderr")) as f:
            raise RuntimeError(f"dnsmasq exited: {f.read()[-500:]}")
    return proc


def set_options(path: str, options: dict[str, dict[str, str]]) -> None:
    """Set ``options`` ({section: {key: value}}) in an INI file."""
    parser = configparser.ConfigParser(interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(path)
    for section, values in options.items():
        if section != "DEFAULT" and not parser.has_section(section):
            parser.add_section(section)
        for key, value in values.items():
            parser.set(section, key, value)
    with open(path, "w") as f:
        parser.write(f)


class Netboot:
    """The namespace, Ironic (listening on the bridge), the HTTP server
    and dnsmasq; ``close()`` undoes it all."""

    def __init__(self, kernel_params: str = "",
                 heartbeat_timeout: int = 30,
                 automated_clean: bool = True,
                 redfish: bool = False) -> None:
        h.require_prerequisites()
        if redfish:
            bmc.prerequisites()
        self.cleanups = h.Cleanups()
        #: with ``redfish``: the private libvirtd, the UUID of the one
        #: domain sushy-emulator serves, and sushy-emulator
        self.libvirtd: bmc.Libvirtd | None = None
        self.domain_uuid: str | None = None
        self.sushy: bmc.SushyEmulator | None = None
        try:
            self._start(kernel_params, heartbeat_timeout, automated_clean,
                        redfish)
        except BaseException:
            self.cleanups.run()
            raise

    def _start(self, kernel_params: str, heartbeat_timeout: int,
               automated_clean: bool, redfish: bool) -> None:
        self.workdir = h.workdir(self.cleanups,
                                 keep=os.environ.get("IPA_TWISTED_KEEP") == "1")
        h.say(f"work directory {self.workdir}")
        self.netns = make_network(self.cleanups)
        if redfish:
            t0 = time.monotonic()
            self.libvirtd = bmc.Libvirtd(self.cleanups, self.netns,
                                         self.workdir)
            self.domain_uuid = str(uuid.uuid4())
            self.sushy = bmc.SushyEmulator(
                self.cleanups, self.netns, self.workdir, self.libvirtd.uri,
                [self.domain_uuid])
            h.say(f"libvirtd and sushy-emulator ({self.sushy.url}) up in "
                  f"{time.monotonic() - t0:.1f} s")
        self.ironic = h.Ironic(self.cleanups, self.netns, self.workdir,
                               heartbeat_timeout=heartbeat_timeout,
                               listen=HOST_IP,
                               automated_clean=automated_clean)
        self.httpboot = os.path.join(self.workdir, "httpboot")
        self.tftp = os.path.join(self.workdir, "tftp")
        os.makedirs(os.path.join(self.httpboot, "images"), exist_ok=True)
        api = f"http://{HOST_IP}:{self.ironic.port}"
        set_options(self.ironic.conf, {
            "DEFAULT": {"my_ip": HOST_IP,
                        "enabled_boot_interfaces": "fake,pxe,ipxe"},
            "service_catalog": {"endpoint_override": api},
            "deploy": {"http_url": f"http://{HOST_IP}:{HTTP_PORT}",
                       "http_root": self.httpboot,
                       # metadata only: a whole-disk erase under TCG is
                       # minutes per GiB
                       "erase_devices_priority": "0"},
            "pxe": {"tftp_server": HOST_IP, "tftp_root": self.tftp,
                    "kernel_append_params":
                        f"console=ttyS0,115200n8 {kernel_params}".strip()},
            "conductor": {"disable_zstandard_decompression": "true",
                          "automated_clean": str(automated_clean).lower(),
                          "deploy_callback_timeout": "600"},
            "inspector": {"power_off": "true"},
        })
        if redfish:
            set_options(self.ironic.conf, {"DEFAULT": {
                "enabled_hardware_types":
                    "fake-hardware,manual-management,redfish",
                "enabled_power_interfaces": "fake,redfish",
                "enabled_management_interfaces": "fake,noop,redfish"}})
        self.ironic.api = h.IronicAPI(self.netns, api)
        t0 = time.monotonic()
        self.ironic.start()
        self.api = self.ironic.api
        h.say(f"Ironic {h.IRONIC_VERSION} up on {api} in "
              f"{time.monotonic() - t0:.1f} s")
        # nginx (sendfile), as Ironic deployments serve /httpboot
        self.access_log = os.path.join(self.workdir, "nginx-access.log")
        h.serve_nginx(self.cleanups, self.netns, HTTP_PORT, self.httpboot,
                      self.workdir, bind="0.0.0.0",
                      access_log=self.access_log)
        self.dhcp = start_dnsmasq(self.cleanups, self.netns, self.workdir,
                                  self.tftp)

    def dhcp_for(self, mode: str) -> None:
        """DHCP boot rules for Ironic's ``ipxe`` or ``pxe`` interface."""
        h.stop_process(self.dhcp)
        self.dhcp = start_dnsmasq(self.cleanups, self.netns, self.workdir,
                                  self.tftp, mode)
        h.say(f"dnsmasq: {mode} boot rules")

    def url(self, name: str) -> str:
        return f"http://{HOST_IP}:{HTTP_PORT}/{name}"

    def publish(self, path: str) -> str:
        """Hard-link (or copy) a file into images/; its URL."""
        target = os.path.join(self.httpboot, "images", os.path.basename(path))
        try:
            os.link(path, target)
        except OSError:
            with open(path, "rb") as src, open(target, "wb") as dst:
                while chunk := src.read(8 * MiB):
                    dst.write(chunk)
        return self.url("images/" + os.path.basename(path))

    def boot_config_exists(self, mac: str) -> bool:
        """Ironic's per-MAC network boot config (iPXE or pxelinux)."""
        hyphen = mac.lower().replace(":", "-")
        return any(os.path.exists(p) for p in (
            os.path.join(self.httpboot, "pxelinux.cfg", hyphen),
            os.path.join(self.tftp, "pxelinux.cfg", "01-" + hyphen)))

    def redfish_driver_info(self) -> dict[str, str]:
        """The node's driver_info for the ``redfish`` hardware type:
        sushy-emulator on the namespace's loopback, no authentication."""
        assert self.sushy is not None
        return {"redfish_address": self.sushy.url,
                "redfish_system_id": f"/redfish/v1/Systems/"
                                     f"{self.domain_uuid}",
                "redfish_username": "admin", "redfish_password": "unused"}

    def close(self) -> None:
        self.cleanups.run()


# ------------------------------------------------------------ the machine

@dataclass
class Disk:
    path: str
    serial: str
    size: int = 5 * GiB
    ident: str = ""

    def create(self) -> None:
        with open(self.path, "wb") as f:
            f.truncate(self.size)


@dataclass
class Boot:
    number: int
    from_network: bool
    started: float
    #: the console file, and where this boot's part of it starts and ends
    #: (a libvirt domain appends every boot to one file)
    serial: str
    seen: dict[str, float] = field(default_factory=dict)
    offset: int = 0
    end: int | None = None
    #: when it started, by the wall clock (to match nginx's access log)
    wall: float = field(default_factory=time.time)


#: Serial console lines whose first appearance each boot records.
MARKERS = {
    "ipxe": "iPXE",
    "kernel": "Linux version",
    "init": "ipa-twisted-init: started",
    "agent": "ipa-twisted-init: starting the agent",
    "lookup": "lookup found node",
    "heartbeat": "first heartbeat accepted",
}


class Console:
    """The test machine's hardware and its serial console, boot by boot:
    SeaBIOS, a virtio NIC on the bridge (iPXE ROM), virtio disks with
    serial numbers, SMBIOS identity."""

    def __init__(self, netns: str, workdir: str, mac: str,
                 disks: list[Disk], memory_mb: int = 2048, cpus: int = 2,
                 smbios: dict[str, str] | None = None,
                 markers: dict[str, str] | None = None) -> None:
        self.netns = netns
        #: console lines whose first appearance each boot records
        self.markers = markers or MARKERS
        self.workdir = workdir
        self.mac = mac
        self.disks = list(disks)
        for i, disk in enumerate(self.disks):
            disk.ident = disk.ident or f"disk{i}"
        self.memory_mb = memory_mb
        self.cpus = cpus
        self.smbios = smbios or {}
        #: the disk booted from when not from the network (what a BMC's
        #: boot device does; SeaBIOS tries no further disk after an empty
        #: first one)
        self.boot_disk_serial: str | None = None
        self.boots: list[Boot] = []
        self.lock = threading.RLock()
        self._stop = threading.Event()
        self._watcher = threading.Thread(target=self._watch, daemon=True)
        self._watcher.start()

    def running(self) -> bool:
        raise NotImplementedError

    def hot_add(self, disk: Disk) -> float:
        raise NotImplementedError

    # the serial console

    @property
    def boot(self) -> Boot:
        return self.boots[-1]

    def read_serial(self, boot: Boot | None = None) -> str:
        boot = boot or self.boot
        try:
            with open(boot.serial, "rb") as f:
                f.seek(boot.offset)
                data = f.read() if boot.end is None else \
                    f.read(boot.end - boot.offset)
        except OSError:
            return ""
        return data.decode("utf-8", errors="replace")

    def _watch(self) -> None:
        """Record when each marker first shows on each boot's console."""
        while not self._stop.wait(0.2):
            with self.lock:
                boot = self.boots[-1] if self.boots else None
            if boot is None or len(boot.seen) == len(self.markers):
                continue
            text = self.read_serial(boot)
            now = time.monotonic()
            for name, marker in self.markers.items():
                if name not in boot.seen and marker in text:
                    boot.seen[name] = now - boot.started

    def wait_for_serial(self, pattern: str, timeout: float,
                        since_boot: int = 0) -> tuple[Boot, re.Match[str]]:
        """The first boot numbered ``since_boot`` or later whose console
        matches ``pattern``; waits up to ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            for boot in list(self.boots):
                if boot.number < since_boot:
                    continue
                match = re.search(pattern, self.read_serial(boot))
                if match:
                    return boot, match
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{pattern!r} not on the console within {timeout:.0f} s;"
                    f" the last boot's console ends:\n"
                    f"{self.read_serial()[-3000:] if self.boots else ''}")
            time.sleep(0.25)

    def close(self) -> None:
        self._stop.set()


class Machine(Console):
    """The QEMU guest started and stopped by the test (fake power: see
    :class:`PowerFollower`)."""

    def __init__(self, cleanups: h.Cleanups, netns: str, workdir: str,
                 mac: str, disks: list[Disk], memory_mb: int = 2048,
                 cpus: int = 2, smbios: dict[str, str] | None = None,
                 markers: dict[str, str] | None = None,
                 kernel_boot: tuple[str, str, str] | None = None,
                 netdev: str | None = None,
                 console_socket: bool = False,
                 firmware: list[str] | None = None,
                 cdrom: str | None = None) -> None:
        self.monitor = os.path.join(workdir, "qemu-monitor.sock")
        #: QEMU's arguments for the firmware (OVMF's pflash drives for
        #: UEFI); none: SeaBIOS
        self.firmware = firmware or []
        #: an ISO in a CD drive, booted first (virtual media)
        self.cdrom = cdrom
        self.proc: subprocess.Popen[bytes] | None = None
        #: (kernel, initramfs, command line): QEMU loads them itself (no
        #: network boot, no Ironic)
        self.kernel_boot = kernel_boot
        #: QEMU's -netdev for the NIC (id n0) instead of the tap on the
        #: bridge
        self.netdev = netdev or (f"tap,id=n0,ifname={TAP},script=no,"
                                 f"downscript=no")
        #: the serial console also on a Unix socket (``console``), to
        #: type on; its output still goes to the boot's file
        self.console = (os.path.join(workdir, "console.sock")
                        if console_socket else None)
        super().__init__(netns, workdir, mac, disks, memory_mb, cpus,
                         smbios, markers)
        cleanups.add("qemu", self.close)

    # power

    def power_on(self, from_network: bool) -> Boot:
        with self.lock:
            self.power_off()
            boot = Boot(len(self.boots) + 1, from_network, time.monotonic(),
                        os.path.join(self.workdir,
                                     f"serial-{len(self.boots) + 1}.log"))
            net_boot = ",bootindex=1" if from_network else ""
            argv = ["ip", "netns", "exec", self.netns, "qemu-system-x86_64",
                    "-machine", "pc", "-accel", "tcg", "-cpu", "max",
                    "-smp", str(self.cpus), "-m", str(self.memory_mb),
                    "-nodefaults", "-display", "none", "-vga", "none",
                    "-boot", "strict=on",
                    "-smbios", "type=1," + ",".join(
                        f"{k}={v}" for k, v in self.smbios.items()),
                    "-netdev", self.netdev,
                    "-device", f"virtio-net-pci,netdev=n0,mac={self.mac}"
                               f"{net_boot}",
                    "-monitor", f"unix:{self.monitor},server=on,wait=off"]
            argv += self.firmware
            if self.cdrom:
                argv += ["-drive", f"if=none,id=cd0,media=cdrom,readonly=on,"
                                   f"format=raw,file={self.cdrom}",
                         "-device", "ide-cd,drive=cd0,bootindex=0"]
            if self.console:
                argv += ["-chardev", f"socket,id=s0,path={self.console},"
                                     f"server=on,wait=off,"
                                     f"logfile={boot.serial}",
                         "-serial", "chardev:s0"]
            else:
                argv += ["-serial", f"file:{boot.serial}"]
            if self.kernel_boot:
                kernel, initramfs, append = self.kernel_boot
                argv += ["-kernel", kernel, "-initrd", initramfs,
                         "-append", append]
            disks = sorted(self.disks, key=lambda d: d.serial !=
                           self.boot_disk_serial)
            for i, disk in enumerate(disks):
                index = i + 2 if from_network else i + 1
                argv += ["-drive", f"if=none,id={disk.ident},format=raw,"
                                   f"file={disk.path},cache=unsafe",
                         "-device", f"virtio-blk-pci,drive={disk.ident},"
                                    f"id=dev-{disk.ident},"
                                    f"serial={disk.serial},"
                                    f"bootindex={index}"]
            h.say(f"machine: power on #{boot.number} from "
                  f"{'the network' if from_network else 'its disk'}")
            self.proc = subprocess.Popen(
                argv, stdout=subprocess.DEVNULL,
                stderr=open(boot.serial + ".qemu", "w"),
                start_new_session=True)
            self.boots.append(boot)
            return boot

    def power_off(self) -> None:
        with self.lock:
            if self.proc is not None and self.proc.poll() is None:
                h.say("machine: power off")
                h.stop_process(self.proc, timeout=10)
            self.proc = None

    def running(self) -> bool:
        with self.lock:
            return self.proc is not None and self.proc.poll() is None

    def hot_add(self, disk: Disk) -> float:
        """Attach ``disk`` to the running machine (QEMU monitor:
        drive_add + device_add); it stays attached on later boots.
        Returns the monotonic time of the device_add."""
        disk.ident = disk.ident or f"disk{len(self.disks)}"
        commands = [
            f"drive_add 0 if=none,id={disk.ident},format=raw,"
            f"file={disk.path},cache=unsafe",
            f"device_add virtio-blk-pci,drive={disk.ident},"
            f"id=dev-{disk.ident},serial={disk.serial}",
        ]
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(10)
            s.connect(self.monitor)
            reply = b""
            for command in commands:
                s.sendall(command.encode() + b"\n")
                time.sleep(0.3)
                try:
                    reply += s.recv(65536)
                except socket.timeout:
                    pass
            added = time.monotonic()
        text = reply.decode(errors="replace")
        if "Error" in text or "error" in text:
            raise RuntimeError(f"QEMU monitor: {text[-500:]}")
        self.disks.append(disk)
        h.say(f"machine: disk {disk.serial} attached (device_add)")
        return added

    def close(self) -> None:
        self._stop.set()
        self.power_off()


DOMAIN = """\
<domain type='qemu'>
  <name>{name}</name>
  <uuid>{uuid}</uuid>
  <memory unit='MiB'>{memory_mb}</memory>
  <vcpu>{cpus}</vcpu>
  <sysinfo type='smbios'><system>{smbios}</system></sysinfo>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <smbios mode='sysinfo'/>
  </os>
  <features><acpi/></features>
  <cpu mode='maximum' migratable='off'/>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>restart</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <interface type='ethernet'>
      <mac address='{mac}'/>
      <target dev='{tap}' managed='no'/>
      <model type='virtio'/>
      <boot order='1'/>
    </interface>
    {disks}
    <serial type='file'>
      <source path='{serial}' append='on'/>
      <target port='0'/>
    </serial>
    <memballoon model='none'/>
  </devices>
</domain>
"""

DISK = """\
<disk type='file' device='disk'>
  <driver name='qemu' type='raw' cache='unsafe'/>
  <source file='{path}'/>
  <target dev='{target}' bus='virtio'/>
  <serial>{serial}</serial>{boot}
</disk>
"""


class LibvirtMachine(Console):
    """The same machine as a libvirt domain (TCG) that only Ironic
    switches, through Redfish (sushy-emulator): the test never starts
    or stops it.  Its boots are seen in libvirt's domain events (``virsh
    event``); each boot's console is the part of the one console file
    (appended to) written since; whether a boot is from the network is
    read from the domain's definition at start, as the BMC left it."""

    NAME = "ipa-netboot-vm"

    def __init__(self, cleanups: h.Cleanups, env: Netboot, mac: str,
                 disks: list[Disk], memory_mb: int = 2048, cpus: int = 2,
                 smbios: dict[str, str] | None = None,
                 markers: dict[str, str] | None = None) -> None:
        assert env.libvirtd is not None and env.domain_uuid is not None
        self.libvirtd = env.libvirtd
        self.uuid = env.domain_uuid
        self.serial = os.path.join(env.workdir, "serial.log")
        self._active = False
        self.events: list[str] = []
        super().__init__(env.netns, env.workdir, mac, disks, memory_mb,
                         cpus, smbios, markers)
        entries = "".join(f"<entry name='{k}'>{v}</entry>"
                          for k, v in self.smbios.items())
        xml = DOMAIN.format(
            name=self.NAME, uuid=self.uuid, memory_mb=self.memory_mb,
            cpus=self.cpus, smbios=entries, mac=self.mac, tap=TAP,
            serial=self.serial, disks="".join(
                self._disk_xml(d, i, 2 + i) for i, d in
                enumerate(self.disks)))
        path = os.path.join(self.workdir, "domain.xml")
        with open(path, "w") as f:
            f.write(xml)
        self._events: subprocess.Popen[str] | None = None
        cleanups.add("libvirt domain", self.close)
        self.libvirtd.virsh(["define", path])
        self._events = subprocess.Popen(
            ["virsh", "-q", "-c", self.libvirtd.uri, "event", "--domain",
             self.NAME, "--all", "--loop", "--timestamp"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
            start_new_session=True)
        self._reader = threading.Thread(target=self._read_events,
                                        daemon=True)
        self._reader.start()
        h.say(f"machine: libvirt domain {self.NAME} ({self.uuid}) defined")

    @staticmethod
    def _disk_xml(disk: Disk, index: int, order: int | None) -> str:
        return DISK.format(path=disk.path, target="vd" + chr(ord("a") +
                                                             index),
                           serial=disk.serial,
                           boot=f"\n  <boot order='{order}'/>" if order
                           else "")

    def _read_events(self) -> None:
        assert self._events is not None and self._events.stdout is not None
        for line in self._events.stdout:
            line = line.strip()
            self.events.append(line)
            if "'lifecycle'" in line and line.endswith(": Started Booted"):
                self._started()
            elif "'lifecycle'" in line and ": Stopped " in line:
                with self.lock:
                    self._active = False
                h.say("machine: stopped (" + line.rsplit(": ", 1)[1] + ")")
            elif "'reboot'" in line:       # a reset: a new boot, same QEMU
                self._started(reset=True)

    def _started(self, reset: bool = False) -> None:
        now = time.monotonic()
        try:
            offset = os.path.getsize(self.serial)
        except OSError:
            offset = 0
        live = self.libvirtd.virsh(["dumpxml", self.NAME], check=False).stdout
        from_network = first_boot_device(live) == "interface"
        with self.lock:
            if self.boots:
                self.boots[-1].end = offset
            boot = Boot(len(self.boots) + 1, from_network, now, self.serial,
                        offset=offset)
            self.boots.append(boot)
            self._active = True
        h.say(f"machine: {'reset' if reset else 'power on'} #{boot.number} "
              f"(by the BMC), boots from "
              f"{'the network' if from_network else 'its disk'}")

    def running(self) -> bool:
        with self.lock:
            return self._active

    def hot_add(self, disk: Disk) -> float:
        """Attach ``disk`` to the running domain and to its definition
        (``virsh attach-device --live --config``: device_add for QEMU);
        with ``boot_disk_serial`` naming it, it is put first among the
        disks the BMC boots from.  Returns the monotonic time the attach
        returned."""
        index = len(self.disks)
        disk.ident = disk.ident or f"disk{index}"
        path = os.path.join(self.workdir, f"{disk.ident}.xml")
        with open(path, "w") as f:
            f.write(self._disk_xml(disk, index, None))
        self.libvirtd.virsh(["attach-device", self.NAME, path, "--live",
                             "--config"])
        added = time.monotonic()
        self.disks.append(disk)
        h.say(f"machine: disk {disk.serial} attached (virsh attach-device)")
        if self.boot_disk_serial is not None:
            self._boot_disk_first()
        return added

    def _boot_disk_first(self) -> None:
        """Make the disk ``boot_disk_serial`` names the first disk in the
        domain's definition (its next start): the BMC's disk boot device
        makes every disk bootable in the order they are listed, and
        SeaBIOS tries only the first.  libvirt lists disks by their
        target names, so the disks trade names (only libvirt's labels:
        the guest names virtio disks in PCI order)."""
        xml = self.libvirtd.virsh(["dumpxml", "--inactive", "--security-info",
                                   self.NAME]).stdout
        tree = ElementTree.fromstring(xml)
        devices = tree.find("devices")
        assert devices is not None
        disks = [d for d in devices.findall("disk")
                 if d.get("device") == "disk"]
        first = [d for d in disks
                 if d.findtext("serial") == self.boot_disk_serial]
        if not first or disks[0] is first[0]:
            return
        targets = [d.find("target") for d in disks]
        names = [t.get("dev", "") for t in targets if t is not None]
        assert len(names) == len(disks)
        ordered = first + [d for d in disks if d is not first[0]]
        for disk, name in zip(ordered, names):
            target = disk.find("target")
            assert target is not None
            target.set("dev", name)
        path = os.path.join(self.workdir, "domain-boot-disk.xml")
        with open(path, "w") as f:
            f.write(ElementTree.tostring(tree, encoding="unicode"))
        self.libvirtd.virsh(["define", path])
        h.say(f"machine: disk {self.boot_disk_serial} is the first disk "
              f"from its next start")

    def close(self) -> None:
        self._stop.set()
        self.libvirtd.virsh(["destroy", self.NAME], check=False)
        self.libvirtd.virsh(["undefine", self.NAME], check=False)
        if self._events is not None:
            h.stop_process(self._events, timeout=5)


def first_boot_device(xml: str) -> str | None:
    """The kind of device (``interface``, ``disk``) with the lowest boot
    order in a domain's XML."""
    try:
        devices = ElementTree.fromstring(xml).find("devices")
    except ElementTree.ParseError:
        return None
    if devices is None:
        return None
    ordered = [(int(boot.get("order", "0")), device.tag)
               for device in devices for boot in device.findall("boot")]
    return min(ordered)[1] if ordered else None


class PowerFollower:
    """Follows Ironic's power actions on one node (its log) and switches
    the machine accordingly; every action is recorded."""

    PATTERN = re.compile(r"Successfully set node (\S+) power state to "
                         r"(power on|power off) by ([\w ]+)\.")

    def __init__(self, cleanups: h.Cleanups, env: Netboot, machine: Machine,
                 node_uuid: str) -> None:
        self.env = env
        self.machine = machine
        self.uuid = node_uuid
        self.actions: list[tuple[float, str, str]] = []
        self.offset = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._follow, daemon=True)
        self._thread.start()
        cleanups.add("power follower", self.stop)

    def _follow(self) -> None:
        while not self._stop.wait(0.2):
            try:
                with open(self.env.ironic.log, errors="replace") as f:
                    f.seek(self.offset)
                    chunk = f.read()
            except OSError:
                continue
            end = chunk.rfind("\n")
            if end < 0:
                continue
            self.offset += len(chunk[:end + 1].encode())
            for match in self.PATTERN.finditer(chunk[:end + 1]):
                uuid, state, how = match.groups()
                if uuid != self.uuid:
                    continue
                self.actions.append((time.monotonic(), state, how))
                h.say(f"Ironic: {state} by {how}")
                if state == "power off":
                    self.machine.power_off()
                else:
                    self.machine.power_on(
                        self.env.boot_config_exists(self.machine.mac))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


def wait_for(condition: Callable[[], bool], timeout: float,
             what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out ({timeout:.0f} s): {what}")
        time.sleep(0.25)
