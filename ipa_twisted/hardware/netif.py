"""Network interfaces: sysfs, one ethtool ioctl, and getifaddrs(3).

Which interfaces, as ironic-python-agent: those with a ``device`` link
(real NICs), VLAN-named ones (``<x>.<digits>``) and bonds; never ``lo``;
in the order the kernel lists them in /sys/class/net (not sorted, so that
the inventory matches IPA's).  The MAC is the permanent one
(``ETHTOOL_GPERMADDR``), else the current one; an interface whose MAC
starts with ``fa:`` is left out (IPA does so).  Addresses are the first of
each family that ``getifaddrs`` gives (what psutil, hence IPA, uses);
link-local IPv6 addresses carry ``%<ifname>``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import fcntl
import ipaddress
import os
import re
import socket
import struct
from typing import Any

import attrs

SYS_NET = "/sys/class/net"
SIOCETHTOOL = 0x8946
ETHTOOL_GPERMADDR = 0x20
MAX_ADDR_LEN = 32
_VLAN_NAME = re.compile(r"^[^.]+\.\d+$")


@attrs.frozen
class NetworkInterface:
    name: str
    mac_address: str
    ipv4_address: str | None = None
    ipv6_address: str | None = None
    has_carrier: bool = False
    lldp: list[list[Any]] | None = None
    vendor: str | None = None
    product: str | None = None
    client_id: str | None = None
    biosdevname: str | None = None
    speed_mbps: int | None = None
    pci_address: str | None = None
    driver: str | None = None

    def serialize(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "mac_address": self.mac_address,
            "ipv4_address": self.ipv4_address,
            "ipv6_address": self.ipv6_address,
            "has_carrier": self.has_carrier,
            "lldp": self.lldp,
            "vendor": self.vendor,
            "product": self.product,
            "client_id": self.client_id,
            "biosdevname": self.biosdevname,
            "speed_mbps": self.speed_mbps,
            "pci_address": self.pci_address,
            "driver": self.driver,
        }


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read().strip() or None
    except OSError:
        return None


def is_vlan_name(name: str) -> bool:
    return bool(_VLAN_NAME.match(name))


def is_candidate(name: str, sys_net: str = SYS_NET) -> bool:
    if name == "lo":
        return False
    base = os.path.join(sys_net, name)
    return (
        os.path.exists(os.path.join(base, "device"))
        or is_vlan_name(name)
        or os.path.exists(os.path.join(base, "bonding"))
    )


def permanent_mac(name: str) -> str | None:
    """The permanent hardware address (ethtool), None when the driver has
    none (veth, most virtual NICs) or the call fails."""
    # struct ethtool_perm_addr { u32 cmd; u32 size; u8 data[32]; }
    request = bytearray(struct.pack("II", ETHTOOL_GPERMADDR, MAX_ADDR_LEN)
                        + bytes(MAX_ADDR_LEN))
    buf = ctypes.create_string_buffer(bytes(request), len(request))
    # struct ifreq { char name[16]; void *data; ... } (40 bytes)
    ifreq = struct.pack("16sP", name.encode()[:15], ctypes.addressof(buf))
    ifreq += bytes(40 - len(ifreq))
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            fcntl.ioctl(s.fileno(), SIOCETHTOOL, ifreq)
    except OSError:
        return None
    size = struct.unpack_from("I", buf.raw, 4)[0]
    data = buf.raw[8:8 + min(size, MAX_ADDR_LEN)]
    if not data or not any(data):
        return None
    return ":".join(f"{b:02x}" for b in data)


# --------------------------------------------------------------- getifaddrs


class _sockaddr(ctypes.Structure):
    _fields_ = [("sa_family", ctypes.c_ushort), ("sa_data", ctypes.c_char * 14)]


class _ifaddrs(ctypes.Structure):
    pass


_ifaddrs._fields_ = [
    ("ifa_next", ctypes.POINTER(_ifaddrs)),
    ("ifa_name", ctypes.c_char_p),
    ("ifa_flags", ctypes.c_uint),
    ("ifa_addr", ctypes.POINTER(_sockaddr)),
    ("ifa_netmask", ctypes.POINTER(_sockaddr)),
    ("ifa_ifu", ctypes.POINTER(_sockaddr)),
    ("ifa_data", ctypes.c_void_p),
]

_libc: Any = None


def _load_libc() -> Any:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(ctypes.util.find_library("c") or None,
                            use_errno=True)
        _libc.getifaddrs.argtypes = [ctypes.POINTER(ctypes.POINTER(_ifaddrs))]
        _libc.freeifaddrs.argtypes = [ctypes.POINTER(_ifaddrs)]
    return _libc


def interface_addresses() -> dict[str, dict[int, list[str]]]:
    """``{ifname: {AF_INET: [...], AF_INET6: [...]}}`` in getifaddrs order."""
    libc = _load_libc()
    head = ctypes.POINTER(_ifaddrs)()
    if libc.getifaddrs(ctypes.byref(head)) != 0:
        return {}
    found: dict[str, dict[int, list[str]]] = {}
    try:
        node = head
        while node:
            entry = node.contents
            node = entry.ifa_next
            if not entry.ifa_addr:
                continue
            family = entry.ifa_addr.contents.sa_family
            name = entry.ifa_name.decode("utf-8", "replace")
            raw = ctypes.cast(entry.ifa_addr, ctypes.c_void_p).value or 0
            if family == socket.AF_INET:
                packed = ctypes.string_at(raw + 4, 4)
                text = socket.inet_ntop(socket.AF_INET, packed)
            elif family == socket.AF_INET6:
                packed = ctypes.string_at(raw + 8, 16)
                text = socket.inet_ntop(socket.AF_INET6, packed)
                if ipaddress.IPv6Address(packed).is_link_local:
                    text += f"%{name}"
            else:
                continue
            found.setdefault(name, {}).setdefault(family, []).append(text)
    finally:
        libc.freeifaddrs(head)
    return found


def ipv4_address(name: str) -> str | None:
    """The first IPv4 address of ``name``, or None."""
    addrs = interface_addresses().get(name, {}).get(socket.AF_INET)
    return addrs[0] if addrs else None


# ----------------------------------------------------------------- listing


def list_interfaces(sys_net: str = SYS_NET) -> list[NetworkInterface]:
    """The NICs (without biosdevname, speed and LLDP: see the manager)."""
    try:
        names = os.listdir(sys_net)
    except OSError:
        return []
    addresses = interface_addresses()
    found = []
    for name in names:
        if not is_candidate(name, sys_net):
            continue
        base = os.path.join(sys_net, name)
        mac = permanent_mac(name) or _read(os.path.join(base, "address"))
        if not mac or not any(c not in "0:" for c in mac):
            continue
        mac = mac.lower()
        if mac.startswith("fa:"):
            continue
        device = os.path.join(base, "device")
        pci = os.path.basename(os.path.realpath(device)) \
            if os.path.exists(device) else None
        driver_link = os.path.join(device, "driver")
        driver = os.path.basename(os.path.realpath(driver_link)) \
            if os.path.exists(driver_link) else None
        families = addresses.get(name, {})
        v4 = families.get(socket.AF_INET) or []
        v6 = families.get(socket.AF_INET6) or []
        found.append(NetworkInterface(
            name=name,
            mac_address=mac,
            ipv4_address=v4[0] if v4 else None,
            ipv6_address=v6[0] if v6 else None,
            has_carrier=_read(os.path.join(base, "carrier")) == "1",
            vendor=_read(os.path.join(device, "vendor")),
            product=_read(os.path.join(device, "device")),
            pci_address=pci,
            driver=driver,
        ))
    return found


def route_source(ip: str) -> str | None:
    """The local address the kernel would use to reach ``ip`` (no traffic:
    connecting a UDP socket only asks the routing table)."""
    family = socket.AF_INET6 if ":" in ip else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as s:
            s.connect((ip, 9))
            source = s.getsockname()[0]
    except OSError:
        return None
    try:
        if ipaddress.ip_address(source.split("%")[0]).is_link_local:
            return None
    except ValueError:
        return None
    return str(source)
