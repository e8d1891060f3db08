"""The BMC's addresses, from ``ipmitool lan print`` / ``lan6 print``.

Semantics as ironic-python-agent's (contract section 7): no IPMI device
node -> None; channels 1 to 11 are tried in order ("Invalid channel" skips
one); the IPv4 address is the first that is not 0.0.0.0, else "0.0.0.0"
(IPMI present, nothing configured); the IPv6 address is the first active,
enabled, non-``::`` address of a channel whose addressing enables IPv6
(dynamic addresses from DHCPv6/SLAAC first, then static ones), else
"::/0"; the MAC is reported only for a channel that has an address.

Unlike IPA (which runs one awk pipeline per field) each channel is asked
once per protocol, and the full outputs are parsed here.
"""

from __future__ import annotations

import glob
import ipaddress
import os
import re
import stat
from typing import Awaitable, Callable

import attrs

CHANNELS = range(1, 12)
IPMI_DEVICES = ("/dev/ipmi*", "/dev/ipmi/*", "/dev/ipmidev/*")
_MAC = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$", re.I)
_NO_V6 = re.compile(r"^::(/\d{1,3})*$")


def has_ipmi_device() -> bool:
    for pattern in IPMI_DEVICES:
        for path in glob.glob(pattern):
            try:
                if stat.S_ISCHR(os.stat(path).st_mode):
                    return True
            except OSError:
                continue
    return False


def parse_colon_blocks(text: str) -> list[tuple[str, str, dict[str, str]]]:
    """``Key : value`` lines; an indented or key-less line belongs to the
    block above (``ipmitool lan print`` and ``lan6 print`` both)."""
    blocks: list[tuple[str, str, dict[str, str]]] = []
    for line in text.splitlines():
        if not line.strip():
            continue
        indented = line[:1] in (" ", "\t")
        key, sep, value = line.partition(":")
        key, value = key.strip(), value.strip()
        if not sep:
            continue
        if (indented or not key) and blocks:
            sub_key, _, sub_value = (value.partition(":") if not key
                                     else (key, "", value))
            blocks[-1][2][sub_key.strip()] = sub_value.strip()
            continue
        blocks.append((key, value, {}))
    return blocks


@attrs.frozen
class LanInfo:
    ip: str | None
    mac: str | None


def parse_lan_print(text: str) -> LanInfo:
    ip = mac = None
    for key, value, _ in parse_colon_blocks(text):
        if key == "IP Address" and ip is None:
            ip = value
        elif key == "MAC Address" and mac is None:
            mac = value
    return LanInfo(ip, mac)


def valid_ip(text: str | None) -> str | None:
    if not text:
        return None
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return None
    return text


def parse_lan6_addresses(text: str) -> tuple[bool, list[str]]:
    """(does the channel enable IPv6, its usable addresses in order:
    dynamic ones first, then static)."""
    enabled = False
    dynamic: list[str] = []
    static: list[str] = []
    for key, value, sub in parse_colon_blocks(text):
        if key == "IPv6/IPv4 Addressing Enables":
            enabled = value.lower() in ("ipv6", "both")
            continue
        address = sub.get("Address", "")
        if not address or _NO_V6.match(address):
            continue
        if sub.get("Status", "").lower() != "active":
            continue
        if key.startswith("IPv6 Dynamic Address"):
            if sub.get("Source/Type", "").lower() in ("dhcpv6", "slaac"):
                dynamic.append(address)
        elif key.startswith("IPv6 Static Address"):
            if sub.get("Enabled", "").lower() == "yes":
                static.append(address)
    return enabled, [str(ipaddress.ip_interface(a).ip)
                     for a in dynamic + static]


def lan6_has_global_address(text: str) -> bool:
    """Any configured IPv6 address that is not ``::`` or link-local?"""
    for key, _, sub in parse_colon_blocks(text):
        if not (key.startswith("IPv6 Dynamic Address")
                or key.startswith("IPv6 Static Address")):
            continue
        address = sub.get("Address", "")
        if address and not address.startswith(("::", "fe80")):
            return True
    return False


Run = Callable[[list[str]], Awaitable[tuple[int, str, str]]]


@attrs.define
class BMCInfo:
    address: str | None = None
    v6address: str | None = None
    mac: str | None = None


async def probe_bmc(run: Run) -> BMCInfo:
    """Ask channels 1..11; ``run(argv)`` gives (exit code, stdout, stderr).

    Raises whatever ``run`` raises when ipmitool cannot be run at all
    (the caller reports the BMC as unknown then).
    """
    info = BMCInfo()
    v4: str | None = None
    v6: str | None = None
    mac: str | None = None
    for channel in CHANNELS:
        code, out, err = await run(["ipmitool", "lan", "print", str(channel)])
        if err.strip().startswith("Invalid channel") or code != 0:
            continue
        lan = parse_lan_print(out)
        ip = valid_ip(lan.ip)
        code6, out6, _ = await run(["ipmitool", "lan6", "print",
                                    str(channel)])
        lan6 = out6 if code6 == 0 else ""
        if v4 is None and ip and ip != "0.0.0.0":
            v4 = ip
        if v6 is None:
            enabled, addresses = parse_lan6_addresses(lan6)
            if enabled and addresses:
                v6 = addresses[0]
        has_address = bool(ip and ip != "0.0.0.0") or \
            lan6_has_global_address(lan6)
        if mac is None and has_address and lan.mac and _MAC.match(lan.mac) \
                and lan.mac != "00:00:00:00:00:00":
            mac = lan.mac
        if v4 and v6 and mac:
            break
    info.address = v4 or "0.0.0.0"
    info.v6address = v6 or "::/0"
    info.mac = mac
    return info
