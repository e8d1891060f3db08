"""The ramdisk's own network and debug options, booted (issue #16): a
static address on a VLAN (``ip=``, ``vlan=``, ``nameserver=``), and the
debug access ramdisk/build builds in (``--ssh-key``: dropbear); and a
boot under UEFI firmware (OVMF).

QEMU loads our kernel and initramfs itself (``-kernel``/``-initrd``/
``-append``): no Ironic, no network boot.  This machine's kernel has no
802.1Q support (no ``vlan`` link type, no bridge VLAN filtering), so the
host end of the VLAN is :class:`VlanSwitch`, a one-port 802.1Q switch in
this process: QEMU's NIC is a UDP socket (``-netdev socket``) whose
frames the switch reads as they left the guest (tags included); frames
tagged with the VLAN's id go, untagged, to a tap device in the test's
network namespace that holds the host's address, and the host's replies
go back tagged.  Untagged frames from the guest are counted and dropped,
so nothing reaches the host unless the guest tagged it.

::

    netns ipa-e2e-*:  vlhost 192.0.2.1/24 (tap, opened by the switch)
        the lookup listener     192.0.2.1:6385 (records requests)
        switch <-> 127.0.0.1 UDP <-> QEMU virtio NIC
    guest: eth0 (untagged: dropped), eth0.100 192.0.2.50/24
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import select
import shutil
import socket
import struct
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from twisted.trial.unittest import SynchronousTestCase

from tests.integration import harness as h
from tests.integration import uefi_vm
from tests.integration.base import unavailable
from tests.vm import netboot as nb

HOST_IP = "192.0.2.1"
GUEST_IP = "192.0.2.50"
API_PORT = 6385
VID = 100
HOST_TAP = "vlhost"
MAC = "52:54:00:4e:e7:01"
TUNSETIFF = 0x400454CA
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000


class VlanSwitch:
    """Frames between QEMU (UDP) and a tap device in ``netns``: with
    ``vid``, only frames tagged ``vid`` pass, untagged, to the tap, and
    what the host sends goes back tagged ``vid``; with ``vid`` None,
    untagged frames pass both ways.  Counts what the guest sent, by VLAN
    id (None: untagged) and ethertype."""

    def __init__(self, cleanups: h.Cleanups, netns: str,
                 vid: int | None) -> None:
        self.vid = vid
        #: {(vid or None, ethertype): frames} sent by the guest
        self.seen: dict[tuple[int | None, int], int] = {}
        self.lock = threading.Lock()
        with h.in_netns(netns):
            self.tap = os.open("/dev/net/tun", os.O_RDWR)
            fcntl.ioctl(self.tap, TUNSETIFF, struct.pack(
                "16sH", HOST_TAP.encode(), IFF_TAP | IFF_NO_PI))
            self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            self.udp.bind(("127.0.0.1", 0))
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.bind(("127.0.0.1", 0))
                self.qemu_port = s.getsockname()[1]
        self.port = self.udp.getsockname()[1]
        ns = ["ip", "netns", "exec", netns]
        h.run(ns + ["ip", "addr", "add", f"{HOST_IP}/24", "dev", HOST_TAP])
        h.run(ns + ["ip", "link", "set", HOST_TAP, "up"])
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        cleanups.add("VLAN switch", self.close)

    @property
    def netdev(self) -> str:
        """QEMU's -netdev for the guest's NIC."""
        return (f"socket,id=n0,udp=127.0.0.1:{self.port},"
                f"localaddr=127.0.0.1:{self.qemu_port}")

    def _run(self) -> None:
        while not self._stop.is_set():
            ready, _, _ = select.select([self.udp.fileno(), self.tap], [],
                                        [], 0.2)
            if self.udp.fileno() in ready:
                self._from_guest(self.udp.recv(65536))
            if self.tap in ready:
                frame = os.read(self.tap, 65536)
                if self.vid is not None:
                    frame = frame[:12] + struct.pack(
                        "!HH", 0x8100, self.vid) + frame[12:]
                self.udp.sendto(frame, ("127.0.0.1", self.qemu_port))

    def _from_guest(self, frame: bytes) -> None:
        if len(frame) < 14:
            return
        vid: int | None = None
        (ethertype,) = struct.unpack("!H", frame[12:14])
        if ethertype == 0x8100 and len(frame) >= 18:
            tci, ethertype = struct.unpack("!HH", frame[14:18])
            vid = tci & 0xFFF
            inner = frame[:12] + frame[16:]
        else:
            inner = frame
        with self.lock:
            self.seen[(vid, ethertype)] = self.seen.get((vid, ethertype),
                                                        0) + 1
        if vid == self.vid:
            os.write(self.tap, inner)

    def frames(self, vid: int | None, ethertype: int) -> int:
        with self.lock:
            return self.seen.get((vid, ethertype), 0)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.udp.close()
        os.close(self.tap)


class LookupListener:
    """A stand-in for Ironic's API on HOST_IP:API_PORT in ``netns``: the
    version document, and 404 to every lookup (the agent keeps trying),
    each request recorded with the address it came from."""

    def __init__(self, cleanups: h.Cleanups, netns: str) -> None:
        self.requests: list[dict[str, Any]] = []
        listener = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                url = urlsplit(self.path)
                listener.requests.append({
                    "client": self.client_address[0], "path": url.path,
                    "query": parse_qs(url.query), "at": time.monotonic()})
                body: dict[str, Any]
                if url.path == "/":
                    code, body = 200, {"default_version": {
                        "id": "v1", "version": "1.68",
                        "min_version": "1.1"}}
                else:
                    code, body = 404, {"error_message": json.dumps({
                        "faultstring": "Node not found"})}
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        with h.in_netns(netns):
            self.server = ThreadingHTTPServer((HOST_IP, API_PORT), Handler)
        self._thread = threading.Thread(target=self.server.serve_forever,
                                        daemon=True)
        self._thread.start()
        cleanups.add("lookup listener", self.close)

    def lookups(self) -> list[dict[str, Any]]:
        return [r for r in list(self.requests) if r["path"] == "/v1/lookup"]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class RamdiskNetworkTests(SynchronousTestCase):

    def setUp(self) -> None:
        try:
            h.require_prerequisites()
            for tool in ("ssh", "ssh-keygen"):
                if subprocess.run(["sh", "-c", f"command -v {tool}"],
                                  capture_output=True).returncode != 0:
                    raise h.Unavailable(f"needs {tool} "
                                        f"(tools/setup-host.sh)")
            if not os.path.exists("/dev/net/tun"):
                raise h.Unavailable("needs /dev/net/tun")
            self.default = nb.ramdisk()
        except h.Unavailable as e:
            unavailable(e)
        self.cleanups = h.Cleanups()
        self.addCleanup(self.cleanups.run)
        self.workdir = h.workdir(
            self.cleanups, keep=os.environ.get("IPA_TWISTED_KEEP") == "1")
        self.netns = h.make_netns(self.cleanups)

    def boot(self, built: dict[str, Any], switch: VlanSwitch,
             params: str, console_socket: bool = False,
             firmware: list[str] | None = None) -> nb.Machine:
        append = (f"console=ttyS0,115200n8 net.ifnames=0 BOOTIF={MAC} "
                  f"ipa-api-url=http://{HOST_IP}:{API_PORT} {params}")
        machine = nb.Machine(
            self.cleanups, self.netns, self.workdir, MAC, [],
            memory_mb=1536, kernel_boot=(built["kernel"],
                                         built["initramfs"], append),
            netdev=switch.netdev, console_socket=console_socket,
            firmware=firmware)
        machine.power_on(from_network=False)
        return machine

    def ovmf(self) -> list[str]:
        """QEMU's arguments for OVMF: its code, and a fresh copy of its
        NVRAM in the work directory."""
        nvram = os.path.join(self.workdir, "OVMF_VARS.fd")
        shutil.copy(uefi_vm.OVMF_VARS, nvram)
        return ["-drive", f"if=pflash,format=raw,unit=0,readonly=on,"
                          f"file={uefi_vm.OVMF_CODE}",
                "-drive", f"if=pflash,format=raw,unit=1,file={nvram}"]

    def first_lookup(self, machine: nb.Machine, api: LookupListener,
                     switch: VlanSwitch) -> dict[str, Any]:
        """The agent's first lookup (within 180 s), or a failure with what
        the switch saw and the end of the console."""
        t0 = machine.boot.started
        try:
            nb.wait_for(lambda: bool(api.lookups()) or not machine.running(),
                        180, "the agent's lookup")
        except AssertionError as e:
            raise AssertionError(
                f"{e}; the switch saw {switch.seen}; the console ends:\n"
                f"{machine.read_serial()[-3000:]}") from None
        self.assertTrue(api.lookups(), machine.read_serial()[-3000:])
        lookup: dict[str, Any] = api.lookups()[0]
        h.say(f"lookup {lookup['at'] - t0:.1f} s after QEMU started, from "
              f"{lookup['client']}; the switch saw {switch.seen}")
        return lookup

    def test_static_address_on_a_vlan(self) -> None:
        """ip=... on vlan=eth0.100:eth0: the agent's lookup reaches the
        host from the static address, in frames tagged 100 (the switch
        passes nothing else)."""
        switch = VlanSwitch(self.cleanups, self.netns, VID)
        api = LookupListener(self.cleanups, self.netns)
        machine = self.boot(self.default, switch, (
            f"vlan=eth0.{VID}:eth0 "
            f"ip={GUEST_IP}::{HOST_IP}:255.255.255.0:ramdisk-vlan:"
            f"eth0.{VID}:none nameserver={HOST_IP}"))
        lookup = self.first_lookup(machine, api, switch)
        serial = machine.read_serial()
        self.assertEqual(lookup["client"], GUEST_IP)
        self.assertIn(MAC, lookup["query"]["addresses"][0].split(","))
        self.assertIn(f"VLAN eth0.{VID} (id {VID} on eth0)", serial)
        self.assertIn(f"static address {GUEST_IP}/24 on eth0.{VID}, "
                      f"gateway {HOST_IP}", serial)
        # the lookup's TCP/IP went tagged (the switch drops the rest)
        self.assertGreater(switch.frames(VID, 0x0800), 0)
        self.assertGreater(switch.frames(VID, 0x0806), 0)
        self.assertEqual(switch.frames(None, 0x0800), 0)

    def test_dhcp_on_a_named_interface(self) -> None:
        """ip=:::::eth0:dhcp: DHCP on eth0 (/init took any ip= of seven
        fields for a static address: no address at all), and the lookup
        comes from the address dnsmasq leased."""
        switch = VlanSwitch(self.cleanups, self.netns, None)
        h.run(["ip", "netns", "exec", self.netns, "ip", "-6", "addr", "add",
               f"{nb.HOST_IP6}/64", "dev", HOST_TAP, "nodad"])
        nb.start_dnsmasq(self.cleanups, self.netns, self.workdir,
                         os.path.join(self.workdir, "tftp"),
                         interface=HOST_TAP)
        api = LookupListener(self.cleanups, self.netns)
        machine = self.boot(self.default, switch, "ip=:::::eth0:dhcp")
        lookup = self.first_lookup(machine, api, switch)
        self.assertRegex(lookup["client"], r"^192\.0\.2\.(1\d\d|200)$")
        self.assertIn("DHCP on eth0", machine.read_serial())

    def test_uefi(self) -> None:
        """Under UEFI (OVMF): OVMF's loader starts a kernel it is given
        only through the kernel's EFI stub (the repacked kernel's stub is
        rebuilt from Debian's source: ramdisk/kernel_repack.py); the
        kernel finds EFI, and the agent looks itself up over DHCP."""
        try:
            uefi_vm.require_qemu()
        except h.Unavailable as e:
            unavailable(e)
        switch = VlanSwitch(self.cleanups, self.netns, None)
        nb.start_dnsmasq(self.cleanups, self.netns, self.workdir,
                         os.path.join(self.workdir, "tftp"),
                         interface=HOST_TAP)
        api = LookupListener(self.cleanups, self.netns)
        machine = self.boot(self.default, switch, "ip=:::::eth0:dhcp",
                            firmware=self.ovmf())
        lookup = self.first_lookup(machine, api, switch)
        self.assertRegex(lookup["client"], r"^192\.0\.2\.(1\d\d|200)$")
        serial = machine.read_serial()
        # booted by the firmware's EFI, not by a BIOS's boot protocol
        self.assertRegex(serial, r"efi: EFI v\d+\.\d+ by EDK II")
        self.assertIn("DHCP on eth0", serial)

    def test_iso(self) -> None:
        """ramdisk/build --iso: the ISO boots from a CD drive and, written
        to a disk as it is (a USB stick's ``dd``), from that disk; each
        under BIOS (ISOLINUX) and under UEFI (GRUB, from the ISO's EFI
        image), with the command line it was built with: the agent looks
        itself up over DHCP every time."""
        try:
            uefi_vm.require_qemu()
            built = nb.ramdisk(
                "--iso", "--iso-params",
                f"net.ifnames=0 BOOTIF={MAC} ip=:::::eth0:dhcp "
                f"ipa-api-url=http://{HOST_IP}:{API_PORT}")
        except h.Unavailable as e:
            unavailable(e)
        size = os.path.getsize(built["iso"])
        h.say(f"ISO {size / nb.MiB:.1f} MiB")
        with open(built["iso"], "rb") as f:
            head = f.read(0x8006)
        self.assertEqual(head[0x1fe:0x200], b"\x55\xaa")   # hybrid: an MBR
        self.assertEqual(head[0x8001:0x8006], b"CD001")    # ISO 9660
        stick = nb.Disk(os.path.join(self.workdir, "stick.img"), "STICK")
        shutil.copy(built["iso"], stick.path)   # the guest may write to it
        switch = VlanSwitch(self.cleanups, self.netns, None)
        nb.start_dnsmasq(self.cleanups, self.netns, self.workdir,
                         os.path.join(self.workdir, "tftp"),
                         interface=HOST_TAP)
        api = LookupListener(self.cleanups, self.netns)
        for name, medium in (("BIOS", "CD"), ("UEFI", "CD"),
                             ("BIOS", "disk"), ("UEFI", "disk")):
            # a fresh NVRAM each time: no boot entry kept
            firmware = self.ovmf() if name == "UEFI" else []
            before = len(api.lookups())
            machine = nb.Machine(
                self.cleanups, self.netns, self.workdir, MAC,
                [stick] if medium == "disk" else [], memory_mb=1536,
                netdev=switch.netdev, firmware=firmware,
                cdrom=built["iso"] if medium == "CD" else None)
            machine.boot_disk_serial = stick.serial
            boot = machine.power_on(from_network=False)
            what = f"{name}, the ISO on a {medium}"
            try:
                nb.wait_for(lambda: len(api.lookups()) > before
                            or not machine.running(), 300,
                            f"the agent's lookup ({what})")
            except AssertionError as e:
                raise AssertionError(f"{e}; the console ends:\n"
                                     f"{machine.read_serial()[-3000:]}")
            serial = machine.read_serial()
            machine.close()
            self.assertGreater(len(api.lookups()), before,
                               f"{what}: QEMU stopped; the console ends:\n"
                               f"{serial[-3000:]}")
            lookup = api.lookups()[before]
            h.say(f"{what}: lookup {lookup['at'] - boot.started:.1f} s "
                  f"after QEMU started, from {lookup['client']}")
            self.assertRegex(lookup["client"], r"^192\.0\.2\.(1\d\d|200)$")
            self.assertIn(f"BOOTIF={MAC} ip=:::::eth0:dhcp", serial)
            efi = re.search(r"efi: EFI v\d+\.\d+ by EDK II", serial)
            self.assertEqual(bool(efi), name == "UEFI", serial[:3000])

    def test_debug_access(self) -> None:
        """A ramdisk built with --ssh-key and --debug-password: root logs
        in over SSH (dropbear) with the key, and on the serial console
        with the password; on a static address without VLAN.  The
        default build is untouched by the variant's."""
        keydir = os.path.join(h.cache_dir(), "ramdisk-debug-key")
        key = os.path.join(keydir, "id_ed25519")
        os.makedirs(keydir, exist_ok=True)
        if not os.path.exists(key):
            # kept in the cache: a new key would be a new ramdisk build
            h.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "",
                   "-C", "ipa-twisted-vm-test", "-f", key])
        default_sha = h.file_sha256(self.default["initramfs"])
        debug = nb.ramdisk("--ssh-key", key + ".pub",
                           "--debug-password", PASSWORD)
        self.assertNotEqual(os.path.dirname(debug["initramfs"]),
                            os.path.dirname(self.default["initramfs"]))
        self.assertEqual(h.file_sha256(self.default["initramfs"]),
                         default_sha)
        self.assertNotEqual(h.file_sha256(debug["initramfs"]), default_sha)
        switch = VlanSwitch(self.cleanups, self.netns, None)
        LookupListener(self.cleanups, self.netns)
        machine = self.boot(debug, switch, (
            f"ip={GUEST_IP}::{HOST_IP}:24:ramdisk-debug:eth0:none "
            f"nameserver=198.51.100.53"), console_socket=True)
        t0 = machine.boot.started
        machine.wait_for_serial("SSH \\(dropbear\\) on port 22", 300)
        ssh = ["ip", "netns", "exec", self.netns, "ssh", "-i", key,
               "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no",
               "-o", "UserKnownHostsFile=/dev/null", "-o",
               "ConnectTimeout=20", "-o", "LogLevel=ERROR",
               f"root@{GUEST_IP}",
               "id -u; hostname; cat /run/resolv.conf; ip -o -4 addr show "
               "dev eth0; grep ' /usr/lib/ipa-twisted/cold squashfs ' "
               "/proc/mounts; stress-ng --version"]
        deadline = time.monotonic() + 120
        while True:
            result = subprocess.run(ssh, capture_output=True, text=True,
                                    timeout=120)
            if result.returncode == 0 or time.monotonic() > deadline:
                break
            time.sleep(2)
        self.assertEqual(result.returncode, 0,
                         result.stderr + machine.read_serial()[-3000:])
        h.say(f"ssh root@{GUEST_IP}: shell {time.monotonic() - t0:.1f} s "
              f"after QEMU started")
        lines = result.stdout.splitlines()
        self.assertEqual(lines[0], "0")
        self.assertEqual(lines[1], "ramdisk-debug")
        self.assertIn("nameserver 198.51.100.53", lines[2:])
        self.assertIn(f"{GUEST_IP}/24", result.stdout)
        # the cold part is mounted, and a tool in it runs
        self.assertIn("/usr/lib/ipa-twisted/cold squashfs ro", result.stdout)
        self.assertIn("stress-ng, version", result.stdout)
        # udev's other devices were triggered at start-agent's cue (its
        # imports done), not at /init's 10 s limit
        machine.wait_for_serial(
            "udev: the other devices triggered \\(imports done\\)", 60)
        # and start-agent used the compile cache the build recorded with
        # the image's own Python (ramdisk/start-agent's CompileCache)
        _, used = machine.wait_for_serial(
            r"start-agent: imports done \(compile cache: (\d+) used", 10)
        self.assertGreater(int(used.group(1)), 100)
        # and no VLAN: the guest's frames went untagged
        self.assertGreater(switch.frames(None, 0x0800), 0)
        self.assertFalse([k for k in switch.seen if k[0] is not None])

        # the serial console: a login prompt, root's password, a shell
        assert machine.console is not None
        with socket.socket(socket.AF_UNIX) as console:
            console.settimeout(1)
            console.connect(machine.console)
            typed = Typist(console)
            typed.line("")
            typed.expect("ramdisk-debug login:", 120)
            typed.line("root")
            typed.expect("Password:", 60)
            typed.line(PASSWORD)
            typed.expect("#", 60)
            typed.line("echo proof-$((6 * 7)) uid=$(id -u)")
            typed.expect("proof-42 uid=0", 60)
        h.say(f"serial console: root shell {time.monotonic() - t0:.1f} s "
              f"after QEMU started")


PASSWORD = "ipa-debug-pw"


class Typist:
    """Types on a serial console (a socket) and waits for its answers."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.text = ""
        self.mark = 0

    def line(self, text: str) -> None:
        self.sock.sendall(text.encode() + b"\r")

    def expect(self, what: str, timeout: float) -> None:
        """Wait for ``what`` after what the last expect found."""
        deadline = time.monotonic() + timeout
        while True:
            found = self.text.find(what, self.mark)
            if found >= 0:
                self.mark = found + len(what)
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"{what!r} not on the serial console "
                                     f"in {timeout:.0f} s; it ends:\n"
                                     f"{self.text[-2000:]}")
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                continue
            self.text += data.decode("utf-8", errors="replace")
