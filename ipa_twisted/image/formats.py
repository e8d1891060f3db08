"""What an image really is, from its first bytes.

The conductor's ``disk_format`` is a claim; the bytes are the truth.  A
"raw" image that is really qcow2 (perhaps with a backing file pointing at
a host path) must never be written as raw, and a format outside
``permitted_image_formats`` must never be written at all.
"""

from __future__ import annotations

import struct

from ipa_twisted import errors

#: Bytes needed to recognize every format below (ISO's signature is at
#: 32769).
HEAD_SIZE = 64 * 1024

COMPRESSIONS = ("gzip", "xz", "zstd", "bzip2")
DEFAULT_PERMITTED = ("raw", "gpt", "qcow2")


def detect(head: bytes) -> str:
    """The format of an image from its first bytes (``raw`` when nothing
    else matches)."""
    if head.startswith(b"QFI\xfb"):
        return "qcow2"
    if head.startswith(b"\x1f\x8b"):
        return "gzip"
    if head.startswith(b"\xfd7zXZ\x00"):
        return "xz"
    if head.startswith(b"\x28\xb5\x2f\xfd"):
        return "zstd"
    if head.startswith(b"BZh") and head[3:4].isdigit():
        return "bzip2"
    if head.startswith(b"KDMV") or head.startswith(b"# Disk DescriptorFile"):
        return "vmdk"
    if head.startswith(b"vhdxfile"):
        return "vhdx"
    if head.startswith(b"QED\x00"):
        return "qed"
    if head.startswith(b"LUKS\xba\xbe"):
        return "luks"
    if len(head) >= 0x44 and struct.unpack_from("<I", head, 0x40)[0] \
            == 0xBEDA107F:
        return "vdi"
    if head.startswith(b"conectix"):
        return "vpc"
    if len(head) >= 0x8006 and head[0x8001:0x8006] == b"CD001":
        return "iso"
    for sector in (512, 4096):
        if head[sector:sector + 8] == b"EFI PART":
            return "gpt"
    return "raw"


def claimed_matches(claimed: str | None, detected: str) -> bool:
    """Does the conductor's ``disk_format`` agree with the bytes?"""
    if claimed in (None, ""):
        return True
    claimed = claimed.lower()
    if claimed == "raw":
        return detected in ("raw", "gpt", "iso")
    return claimed == detected


def check(claimed: str | None, detected: str,
          permitted: tuple[str, ...] | list[str]) -> None:
    """Refuse an image (InvalidImage) that is not what it claims to be or
    whose real format is not permitted."""
    if not claimed_matches(claimed, detected):
        raise errors.InvalidImage(
            f"the image claims to be {claimed} but its content is "
            f"{detected}: refused")
    if detected not in permitted:
        raise errors.InvalidImage(
            f"image format {detected} is not permitted (permitted: "
            f"{', '.join(permitted)})")
