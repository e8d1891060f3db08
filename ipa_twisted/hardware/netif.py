"""Network interfaces from sysfs (and one ioctl for the IPv4 address).

Which interfaces: as ironic-python-agent, those with a ``device`` link
(real NICs), VLAN-named ones (``<x>.<n>``) and bonds; never ``lo``.
"""

from __future__ import annotations

import fcntl
import ipaddress
import os
import re
import socket
import struct
from typing import Any

import attrs

SYS_NET = "/sys/class/net"
SIOCGIFADDR = 0x8915
_VLAN_NAME = re.compile(r"^.+\.\d+$")


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


def is_candidate(name: str, sys_net: str = SYS_NET) -> bool:
    if name == "lo":
        return False
    base = os.path.join(sys_net, name)
    return (
        os.path.exists(os.path.join(base, "device"))
        or bool(_VLAN_NAME.match(name))
        or os.path.exists(os.path.join(base, "bonding"))
    )


def ipv4_address(name: str) -> str | None:
    """The primary IPv4 address of ``name`` (SIOCGIFADDR), or None."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            packed = fcntl.ioctl(
                s.fileno(), SIOCGIFADDR,
                struct.pack("256s", name.encode()[:15]),
            )
    except OSError:
        return None
    return socket.inet_ntoa(packed[20:24])


def ipv6_addresses(path: str = "/proc/net/if_inet6") -> dict[str, str]:
    """``{ifname: first IPv6 address}``; link-local ones carry ``%ifname``."""
    found: dict[str, str] = {}
    try:
        with open(path) as f:
            lines = f.read().splitlines()
    except OSError:
        return found
    for line in lines:
        parts = line.split()
        if len(parts) < 6:
            continue
        addr = ipaddress.IPv6Address(int(parts[0], 16))
        name = parts[5]
        text = str(addr)
        if addr.is_link_local:
            text += f"%{name}"
        found.setdefault(name, text)
    return found


def list_interfaces(sys_net: str = SYS_NET) -> list[NetworkInterface]:
    try:
        names = sorted(os.listdir(sys_net))
    except OSError:
        return []
    v6 = ipv6_addresses()
    found = []
    for name in names:
        if not is_candidate(name, sys_net):
            continue
        base = os.path.join(sys_net, name)
        mac = _read(os.path.join(base, "address"))
        if not mac or mac == "00:00:00:00:00:00" or mac.startswith("fa:"):
            continue
        device = os.path.join(base, "device")
        pci = os.path.basename(os.path.realpath(device)) \
            if os.path.exists(device) else None
        driver_link = os.path.join(device, "driver")
        driver = os.path.basename(os.path.realpath(driver_link)) \
            if os.path.exists(driver_link) else None
        found.append(NetworkInterface(
            name=name,
            mac_address=mac.lower(),
            ipv4_address=ipv4_address(name),
            ipv6_address=v6.get(name),
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
