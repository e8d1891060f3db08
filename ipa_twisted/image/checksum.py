"""Which checksum an image must have (contract section 5.2).

``os_hash_algo`` + ``os_hash_value`` win over the legacy ``checksum``.  The
legacy one names its algorithm by its length (32 hex digits: MD5, only when
MD5 is enabled; 64: SHA-256; 128: SHA-512).  Either value may instead be an
``http(s)://`` URL of a checksums file, in which the line for the image's
file name is used.
"""

from __future__ import annotations

import hashlib
import os
import re
from typing import Any, Mapping
from urllib.parse import urlparse

import attrs

from ipa_twisted import errors

_HEX = re.compile(r"^[0-9a-fA-F]+$")
_BY_LENGTH = {32: "md5", 64: "sha256", 128: "sha512"}

#: What ``os_hash_algo`` may name: the fixed-length digests Python always
#: has (Glance's ``hashing_algorithm`` choices).  Nothing else reaches a
#: hasher: ``shake_128`` and ``shake_256`` cannot give a digest without a
#: length, and other OpenSSL names may not exist on the ramdisk.  MD5 is
#: further gated by ``agent_md5_checksum_enable``.
ALGORITHMS = ("md5", "sha1", "sha224", "sha256", "sha384", "sha512",
              "sha3_224", "sha3_256", "sha3_384", "sha3_512", "blake2b",
              "blake2s")


def new_hasher(algo: str) -> Any:
    """A hashlib object for an allowed algorithm (else
    InvalidCommandParamsError)."""
    if algo not in ALGORITHMS:
        raise errors.InvalidCommandParamsError(
            f"unsupported os_hash_algo {algo!r} (supported: "
            f"{', '.join(ALGORITHMS)})")
    return hashlib.new(algo)


@attrs.frozen
class ChecksumSpec:
    algo: str
    #: The expected hex digest, or None when ``url`` must be fetched first.
    value: str | None
    url: str | None = None


def is_url(value: str) -> bool:
    return value.startswith(("http://", "https://"))


def checksum_spec(image_info: Mapping[str, Any], md5_enabled: bool
                  ) -> ChecksumSpec:
    """The checksum to verify, or InvalidCommandParamsError."""
    algo = image_info.get("os_hash_algo")
    value = image_info.get("os_hash_value")
    if algo or value:
        if not (algo and value):
            raise errors.InvalidCommandParamsError(
                "image_info needs both os_hash_algo and os_hash_value"
            )
        if not isinstance(algo, str) or not isinstance(value, str):
            raise errors.InvalidCommandParamsError(
                "os_hash_algo and os_hash_value must be strings"
            )
        algo = algo.lower()
        if algo not in ALGORITHMS:
            raise errors.InvalidCommandParamsError(
                f"unsupported os_hash_algo {algo!r} (supported: "
                f"{', '.join(ALGORITHMS)})"
            )
        if algo == "md5" and not md5_enabled:
            raise errors.InvalidCommandParamsError(
                "MD5 checksums are disabled (agent_md5_checksum_enable)"
            )
        if is_url(value):
            return ChecksumSpec(algo, None, value)
        _check_hex(value, "os_hash_value")
        return ChecksumSpec(algo, value.lower())
    checksum = image_info.get("checksum")
    if not checksum:
        raise errors.InvalidCommandParamsError(
            "image_info needs a checksum: os_hash_algo and os_hash_value, "
            "or checksum"
        )
    if not isinstance(checksum, str):
        raise errors.InvalidCommandParamsError("checksum must be a string")
    if is_url(checksum):
        # The algorithm is known once the file is read (by digest length).
        return ChecksumSpec("", None, checksum)
    return ChecksumSpec(algo_for_digest(checksum, md5_enabled),
                        checksum.lower())


def _check_hex(value: str, what: str) -> None:
    if not _HEX.match(value):
        raise errors.InvalidCommandParamsError(
            f"{what} is not a hexadecimal digest: {value!r}"
        )


def algo_for_digest(digest: str, md5_enabled: bool) -> str:
    _check_hex(digest, "checksum")
    algo = _BY_LENGTH.get(len(digest))
    if algo is None:
        raise errors.InvalidCommandParamsError(
            f"cannot tell the algorithm of a {len(digest)}-digit checksum "
            f"(32: md5, 64: sha256, 128: sha512)"
        )
    if algo == "md5" and not md5_enabled:
        raise errors.InvalidCommandParamsError(
            "MD5 checksums are disabled (agent_md5_checksum_enable)"
        )
    return algo


def parse_checksum_file(text: str, image_url: str) -> str:
    """The digest for ``image_url``'s file name in a checksums file.

    Accepts a file holding only a digest, ``<digest>  <name>``,
    ``<digest> *<name>`` and BSD style ``ALGO (<name>) = <digest>``;
    ``#`` comments are skipped.
    """
    lines = [ln.strip() for ln in text.splitlines()
             if ln.strip() and not ln.strip().startswith("#")]
    if len(lines) == 1 and _HEX.match(lines[0]):
        return lines[0].lower()
    name = os.path.basename(urlparse(image_url).path)
    for line in lines:
        bsd = re.match(r"^\S+\s*\((.+)\)\s*=\s*([0-9a-fA-F]+)$", line)
        if bsd:
            if os.path.basename(bsd.group(1)) == name:
                return bsd.group(2).lower()
            continue
        parts = line.split(None, 1)
        if len(parts) == 2 and _HEX.match(parts[0]):
            listed = parts[1].strip().lstrip("*")
            if listed == name or os.path.basename(listed) == name:
                return parts[0].lower()
    raise errors.ImageDownloadError(
        name, f"no checksum for {name!r} in the checksums file"
    )
