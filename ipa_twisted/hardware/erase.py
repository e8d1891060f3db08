"""How to erase a disk: what the tools say it can do, and what to run.

Pure functions, no I/O: the parsers read the outputs of ``hdparm -I``,
``smartctl``, ``nvme id-ctrl``, ``nvme id-ns`` and ``nvme sanitize-log``
(as captured from real devices: tests/fixtures/erase), and
:func:`plan_erase` turns the capabilities found and the node's options into
the methods to try, best first, each with the reason it was chosen.

The choice, per disk (as ironic-python-agent 13.0.0, and beyond it where
said):

* NVMe (``agent_enable_nvme_secure_erase``, default on): a sanitize of the
  controller (crypto erase, else block erase) when SANICAP offers one and
  the controller holds this namespace only (beyond IPA: a sanitize erases
  every namespace); else a Format NVM with secure erase, crypto erase when
  FNA says so, else user data erase (as IPA), unless FNA says a format
  reaches every namespace and there are others.
* ATA (``agent_enable_ata_secure_erase``, default on; a disk smartctl
  cannot reach with ATA commands is no ATA disk, as IPA): SECURITY ERASE
  UNIT (enhanced when supported) on a drive that is not frozen, unlocking a
  drive left locked by an earlier attempt, as IPA; else (beyond IPA) ATA
  SANITIZE, crypto scramble, else block erase.
* Otherwise a discard of the whole device when the device guarantees that
  discarded blocks read back as zeroes (NVMe DLFEAT, ATA "deterministic
  read zeroes after TRIM", a loop device), beyond IPA; else an overwrite
  (what IPA runs ``shred`` for: ``agent_erase_devices_iterations`` random
  passes, then zeroes if ``agent_erase_devices_zeroize``; see
  :mod:`.overwrite`).
* A secure erase that is offered but cannot run (frozen, locked, failed)
  falls back to the discard and overwrite only when the node allows it
  (``agent_continue_if_secure_erase_failed``, or
  ``agent_enable_discard_erase`` for the discard), as IPA; otherwise the
  device fails.

Every method is followed by a read-back check (see :mod:`.erase_check`);
``expect_zeroes`` says whether the device must then read as zeroes or only
no longer hold what was there.
"""

from __future__ import annotations

import json
import re
from typing import Any, Mapping

import attrs

# ----------------------------------------------------------------- ATA


@attrs.frozen
class AtaSecurity:
    """The ``Security:`` section of ``hdparm -I``."""

    supported: bool
    enabled: bool
    locked: bool
    frozen: bool
    enhanced: bool
    #: minutes the drive estimates for SECURITY ERASE UNIT (normal, enhanced)
    erase_minutes: int | None = None
    enhanced_minutes: int | None = None

    @property
    def lines(self) -> list[str]:
        return [f"{'' if v else 'not '}{k}" for k, v in (
            ("supported", self.supported), ("enabled", self.enabled),
            ("locked", self.locked), ("frozen", self.frozen),
            ("supported: enhanced erase", self.enhanced))]


@attrs.frozen
class AtaInfo:
    """What ``hdparm -I`` says about erasing an ATA drive."""

    ata: bool
    security: AtaSecurity | None
    sanitize: bool = False
    crypto_scramble: bool = False
    block_erase: bool = False
    overwrite: bool = False
    trim: bool = False
    trim_zeroes: bool = False
    serial: str | None = None

    def serialize(self) -> dict[str, Any]:
        return {
            "ata": self.ata,
            "security": self.security.lines if self.security else None,
            "sanitize": [name for name, ok in (
                ("crypto scramble", self.crypto_scramble),
                ("block erase", self.block_erase),
                ("overwrite", self.overwrite)) if ok]
            if self.sanitize else None,
            "trim": self.trim,
            "trim_reads_zeroes": self.trim_zeroes,
        }


_MINUTES = re.compile(r"(\d+)min for (ENHANCED )?SECURITY ERASE UNIT")


def parse_hdparm_identify(text: str) -> AtaInfo:
    """``hdparm -I DEV``.  Whitespace-tolerant: hdparm indents with tabs,
    copies of its output often have spaces."""
    lines = text.splitlines()
    ata = any(line.strip().startswith("ATA device") for line in lines)
    serial = next((line.split(":", 1)[1].strip() for line in lines
                   if line.strip().startswith("Serial Number:")), None)
    features: set[str] = set()
    security: list[str] = []
    section = ""
    for line in lines:
        if line and not line[0].isspace():
            section = line.split(":", 1)[0].strip()
            continue
        item = " ".join(line.split())
        if not item:
            continue
        if section == "Commands/features":
            features.add(item.lstrip("* ").strip())
        elif section == "Security":
            security.append(item)
    sec = None
    if security:
        states = set(security)

        def state(name: str) -> bool:
            return name in states and f"not {name}" not in states

        minutes = dict.fromkeys(("", "ENHANCED "), None)
        for item in security:
            for match in _MINUTES.finditer(item):
                minutes[match.group(2) or ""] = int(match.group(1))
        sec = AtaSecurity(
            supported=state("supported"), enabled=state("enabled"),
            locked=state("locked"), frozen=state("frozen"),
            enhanced=state("supported: enhanced erase"),
            erase_minutes=minutes[""],
            enhanced_minutes=minutes["ENHANCED "])
    # an excerpt may lack the "ATA device" line: a Security section or the
    # SANITIZE feature set are ATA's alone
    ata = ata or sec is not None or "SANITIZE feature set" in features
    return AtaInfo(
        ata=ata, security=sec,
        sanitize="SANITIZE feature set" in features,
        crypto_scramble="CRYPTO_SCRAMBLE_EXT command" in features,
        block_erase="BLOCK_ERASE_EXT command" in features,
        overwrite="OVERWRITE_EXT command" in features,
        trim=any(f.startswith("Data Set Management TRIM supported")
                 for f in features),
        trim_zeroes="Deterministic read ZEROs after TRIM" in features,
        serial=serial or None,
    )


@attrs.frozen
class SmartctlInfo:
    """``smartctl -d ata -i -g security DEV``: can ATA commands reach the
    drive, and its TRIM line."""

    reachable: bool
    security: str | None
    trim_zeroes: bool

    def serialize(self) -> dict[str, Any]:
        return {"ata_commands": self.reachable, "security": self.security,
                "trim_reads_zeroes": self.trim_zeroes}


def parse_smartctl(text: str, exit_code: int) -> SmartctlInfo:
    """As IPA: "Unavailable" security, or a failing smartctl, means ATA
    security commands must not be tried (a bridge smartctl cannot talk ATA
    through would not pass them either).  smartctl's exit status is a bit
    mask: bits 0-1 are "command line" and "device open / identify" errors;
    the higher bits are SMART health findings, not communication errors."""
    security = None
    trim_zeroes = False
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "ATA Security is":
            security = value.strip()
        elif key.strip() == "TRIM Command":
            words = [w.strip() for w in value.split(",")]
            trim_zeroes = "Available" in words and "zeroed" in words
    reachable = (exit_code & 0x3) == 0 and security is not None \
        and not security.startswith("Unavailable")
    return SmartctlInfo(reachable, security, trim_zeroes)


# ---------------------------------------------------------------- NVMe


def _json_or_fields(text: str) -> dict[str, Any]:
    """``nvme ... -o json`` output, or the plain ``name : value`` form
    (``nvme id-ctrl DEV [-H]``) as a flat dict of ints/strings."""
    stripped = text.strip()
    if stripped.startswith("{"):
        data = json.loads(stripped)
        if isinstance(data, dict):
            return data
        raise ValueError("not a JSON object")
    fields: dict[str, Any] = {}
    for line in text.splitlines():
        match = re.match(r"^([a-z][a-z0-9_]*)\s*:\s*(\S.*)?$", line)
        if not match:
            continue
        value = (match.group(2) or "").strip()
        try:
            fields[match.group(1)] = int(value, 0)
        except ValueError:
            fields[match.group(1)] = value
    if not fields:
        raise ValueError("no fields found")
    return fields


def _int(data: Mapping[str, Any], key: str) -> int:
    value = data.get(key, 0)
    if isinstance(value, str):
        try:
            return int(value, 0)
        except ValueError:
            return 0
    return int(value or 0)


@attrs.frozen
class NvmeController:
    """The erase facts of ``nvme id-ctrl``."""

    model: str
    serial: str
    format: bool            # OACS bit 1: Format NVM supported
    format_all_ns: bool     # FNA bit 0: a format reaches every namespace
    crypto_all_ns: bool     # FNA bit 1: a crypto erase reaches every ns
    crypto_format: bool     # FNA bit 2: crypto erase as part of a format
    sanitize_crypto: bool   # SANICAP bit 0
    sanitize_block: bool    # SANICAP bit 1
    sanitize_overwrite: bool  # SANICAP bit 2
    sanicap: int = 0
    oacs: int = 0
    fna: int = 0

    def serialize(self) -> dict[str, Any]:
        return {"oacs": self.oacs, "fna": self.fna, "sanicap": self.sanicap,
                "format": self.format, "crypto_format": self.crypto_format,
                "format_reaches_all_namespaces": self.format_all_ns,
                "sanitize": [name for name, ok in (
                    ("crypto erase", self.sanitize_crypto),
                    ("block erase", self.sanitize_block),
                    ("overwrite", self.sanitize_overwrite)) if ok]}


def parse_nvme_id_ctrl(text: str) -> NvmeController:
    data = _json_or_fields(text)
    oacs, fna, sanicap = (_int(data, k) for k in ("oacs", "fna", "sanicap"))
    return NvmeController(
        model=str(data.get("mn", "")).strip(),
        serial=str(data.get("sn", "")).strip(),
        format=bool(oacs & 0x2),
        format_all_ns=bool(fna & 0x1), crypto_all_ns=bool(fna & 0x2),
        crypto_format=bool(fna & 0x4),
        sanitize_crypto=bool(sanicap & 0x1),
        sanitize_block=bool(sanicap & 0x2),
        sanitize_overwrite=bool(sanicap & 0x4),
        sanicap=sanicap, oacs=oacs, fna=fna)


@attrs.frozen
class NvmeNamespace:
    dlfeat: int
    #: DLFEAT bits 2:0 = 001b: a deallocated block reads as zeroes
    deallocated_reads_zeroes: bool


def parse_nvme_id_ns(text: str) -> NvmeNamespace:
    data = _json_or_fields(text)
    dlfeat = _int(data, "dlfeat")
    return NvmeNamespace(dlfeat, (dlfeat & 0x7) == 0x1)


#: SSTAT bits 2:0 (NVMe base specification, Sanitize Status log page)
SANITIZE_NEVER = 0
SANITIZE_DONE = 1
SANITIZE_RUNNING = 2
SANITIZE_FAILED = 3
SANITIZE_DONE_NO_DEALLOCATE = 4


@attrs.frozen
class SanitizeStatus:
    state: int
    #: SPROG / 65536 (only meaningful while running)
    fraction: float


def parse_sanitize_log(text: str) -> SanitizeStatus:
    """``nvme sanitize-log DEV -o json``.  nvme-cli 2.x nests the page under
    the device name and makes ``sstat`` an object whose ``status`` reads
    "(N) ..."; 1.x printed ``sstat`` as a number."""
    data = _json_or_fields(text)
    page: Any = data
    if "sprog" not in page:
        page = next((v for v in data.values()
                     if isinstance(v, dict) and "sprog" in v), None)
        if page is None:
            raise ValueError("no sanitize status in the log")
    sstat = page.get("sstat", 0)
    if isinstance(sstat, dict):
        match = re.match(r"\((\d+)\)", str(sstat.get("status", "")))
        if not match:
            raise ValueError(f"unreadable sanitize status {sstat!r}")
        state = int(match.group(1))
    else:
        state = int(sstat) & 0x7
    return SanitizeStatus(state, _int(page, "sprog") / 65536.0)


# ------------------------------------------------------------- hdparm


@attrs.frozen
class AtaSanitizeStatus:
    running: bool
    fraction: float | None
    failed: bool


def parse_hdparm_sanitize_status(text: str) -> AtaSanitizeStatus:
    """``hdparm --sanitize-status DEV`` (hdparm 9.x: a "State:" line naming
    SD0 idle / SD1 frozen / SD2 in process, a "Progress:" line while
    running, and a line on the last operation)."""
    running = bool(re.search(r"\bSD2\b", text))
    match = re.search(r"Progress:\s*0x([0-9a-fA-F]+)", text)
    fraction = int(match.group(1), 16) / 65536.0 if match else None
    failed = "Completed with error" in text or "completed with error" in text
    return AtaSanitizeStatus(running, fraction, failed)


# ------------------------------------------------------------ options


@attrs.frozen
class EraseOptions:
    """The node's erase settings, read as IPA reads them (Ironic puts them
    in ``driver_internal_info`` before cleaning)."""

    nvme_secure_erase: bool = True
    ata_secure_erase: bool = True
    continue_if_secure_erase_failed: bool = False
    #: None: ours by default (discard where the device guarantees zeroes);
    #: True/False: the node says so (IPA's agent_enable_discard_erase)
    discard: bool | None = None
    iterations: int = 1
    zeroize: bool = True
    skip_read_only: bool = False
    concurrency: int = 1

    @classmethod
    def from_node(cls, node: Mapping[str, Any] | None) -> "EraseOptions":
        info = (node or {}).get("driver_internal_info") or {}
        cont = info.get("agent_continue_if_secure_erase_failed")
        if cont is None:
            cont = info.get("agent_continue_if_ata_erase_failed", False)
        discard = info.get("agent_enable_discard_erase")

        def number(key: str, default: int, low: int) -> int:
            try:
                return max(low, int(info.get(key, default)))
            except (TypeError, ValueError):
                return default

        return cls(
            nvme_secure_erase=_truthy(info.get(
                "agent_enable_nvme_secure_erase", True)),
            ata_secure_erase=_truthy(info.get(
                "agent_enable_ata_secure_erase", True)),
            continue_if_secure_erase_failed=_truthy(cont),
            discard=None if discard is None else _truthy(discard),
            iterations=number("agent_erase_devices_iterations", 1, 0),
            zeroize=_truthy(info.get("agent_erase_devices_zeroize", True)),
            skip_read_only=_truthy(info.get("agent_erase_skip_read_only",
                                            False)),
            concurrency=number("disk_erasure_concurrency", 1, 1),
        )


def _truthy(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "on", "y", "t")
    return bool(value)


# --------------------------------------------------------- the choice


@attrs.frozen
class Capabilities:
    """Everything the probes found about one disk."""

    name: str
    size: int
    kind: str                       # "nvme", "ata", "other"
    nvme: NvmeController | None = None
    nvme_ns: NvmeNamespace | None = None
    #: namespaces on this namespace's controller (None: unknown)
    nvme_namespaces: int | None = None
    ata: AtaInfo | None = None
    smartctl: SmartctlInfo | None = None
    discard: bool = False           # queue/discard_max_bytes > 0
    loop: bool = False              # a loop device (discard punches holes)
    notes: tuple[str, ...] = ()     # probes that failed, and why

    @property
    def discard_zeroes(self) -> str | None:
        """Why a discard of this device reads back as zeroes, or None."""
        if not self.discard:
            return None
        if self.nvme_ns is not None and self.nvme_ns.deallocated_reads_zeroes:
            return "NVMe DLFEAT: deallocated blocks read as zeroes"
        if self.ata is not None and self.ata.trim_zeroes:
            return "ATA: deterministic read zeroes after TRIM"
        if self.smartctl is not None and self.smartctl.trim_zeroes:
            return "ATA: TRIM deterministic, zeroed (smartctl)"
        if self.loop:
            return "loop device: a discard punches holes in its backing file"
        return None

    def serialize(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind,
                               "discard": self.discard,
                               "discard_reads_zeroes": self.discard_zeroes}
        if self.nvme is not None:
            out["nvme"] = self.nvme.serialize()
            out["nvme_namespaces_on_controller"] = self.nvme_namespaces
        if self.nvme_ns is not None:
            out["nvme_dlfeat"] = self.nvme_ns.dlfeat
        if self.ata is not None:
            out["hdparm"] = self.ata.serialize()
        if self.smartctl is not None:
            out["smartctl"] = self.smartctl.serialize()
        if self.notes:
            out["notes"] = list(self.notes)
        return out


#: methods; their names are those the erase report shows
NVME_SANITIZE_CRYPTO = "nvme-sanitize-crypto-erase"
NVME_SANITIZE_BLOCK = "nvme-sanitize-block-erase"
NVME_FORMAT_CRYPTO = "nvme-format-crypto-erase"
NVME_FORMAT_USER_DATA = "nvme-format-user-data-erase"
ATA_SECURITY_ERASE_ENHANCED = "ata-security-erase-enhanced"
ATA_SECURITY_ERASE = "ata-security-erase"
ATA_SANITIZE_CRYPTO = "ata-sanitize-crypto-scramble"
ATA_SANITIZE_BLOCK = "ata-sanitize-block-erase"
DISCARD = "discard"
OVERWRITE = "overwrite"
METADATA = "metadata"

#: fast enough for erase_devices_express
EXPRESS = {NVME_SANITIZE_CRYPTO, NVME_FORMAT_CRYPTO, NVME_FORMAT_USER_DATA,
           DISCARD}


@attrs.frozen
class Method:
    name: str
    why: str
    #: the device must read zeroes afterwards (else: only changed)
    expect_zeroes: bool
    #: bytes the method writes or covers (shred: every pass)
    covers: int = 0


@attrs.frozen
class Plan:
    """Methods to try in order; ``refused`` says why a secure erase the
    device offers cannot be used (the fallbacks then need the node's
    consent, which ``methods`` already reflects)."""

    methods: tuple[Method, ...]
    refused: tuple[str, ...] = ()


def _nvme_methods(caps: Capabilities, express: bool
                  ) -> tuple[list[Method], list[str]]:
    ctrl = caps.nvme
    methods: list[Method] = []
    refused: list[str] = []
    if ctrl is None:
        refused.append("nvme id-ctrl gave no answer")
        return methods, refused
    alone = caps.nvme_namespaces == 1
    if ctrl.sanitize_crypto or ctrl.sanitize_block:
        if not alone:
            refused.append(
                f"sanitize not used: it erases every namespace of the "
                f"controller, which has {caps.nvme_namespaces or 'unknown'}")
        else:
            if ctrl.sanitize_crypto:
                methods.append(Method(
                    NVME_SANITIZE_CRYPTO, "SANICAP: crypto erase sanitize "
                    "supported; this namespace is the controller's only one",
                    False, caps.size))
            if ctrl.sanitize_block and not express:
                methods.append(Method(
                    NVME_SANITIZE_BLOCK, "SANICAP: block erase sanitize "
                    "supported; this namespace is the controller's only one",
                    False, caps.size))
    if ctrl.format:
        if ctrl.format_all_ns and not alone:
            refused.append("format not used: FNA says it reaches every "
                           "namespace, and the controller has others")
        elif ctrl.crypto_format:
            methods.append(Method(
                NVME_FORMAT_CRYPTO, "OACS: Format NVM supported; FNA: crypto "
                "erase supported as part of a format (ses=2)", False,
                caps.size))
        else:
            methods.append(Method(
                NVME_FORMAT_USER_DATA, "OACS: Format NVM supported; FNA: no "
                "crypto erase, so user data erase (ses=1)", False, caps.size))
    elif not methods:
        refused.append("nvme-cli did not return any supported format modes "
                       "(OACS bit 1 clear) and no sanitize")
    return methods, refused


def _ata_methods(caps: Capabilities) -> tuple[list[Method], list[str]]:
    info = caps.ata
    methods: list[Method] = []
    refused: list[str] = []
    if info is None or (caps.smartctl is not None
                        and not caps.smartctl.reachable):
        return methods, refused
    sec = info.security
    if sec is not None and sec.supported:
        if sec.frozen:
            refused.append(f"Block device {caps.name} is frozen and cannot "
                           f"be erased (ATA security)")
        elif sec.enhanced:
            methods.append(Method(
                ATA_SECURITY_ERASE_ENHANCED, "ATA security supported, not "
                "frozen, enhanced erase supported", False, caps.size))
        else:
            methods.append(Method(
                ATA_SECURITY_ERASE, "ATA security supported, not frozen; "
                "no enhanced erase", False, caps.size))
    if info.sanitize:
        if info.crypto_scramble:
            methods.append(Method(
                ATA_SANITIZE_CRYPTO, "ATA SANITIZE feature set with "
                "CRYPTO_SCRAMBLE_EXT", False, caps.size))
        elif info.block_erase:
            methods.append(Method(
                ATA_SANITIZE_BLOCK, "ATA SANITIZE feature set with "
                "BLOCK_ERASE_EXT", False, caps.size))
    return methods, refused


def _overwrite(caps: Capabilities, options: EraseOptions) -> Method | None:
    passes = options.iterations + (1 if options.zeroize else 0)
    if not passes:
        return None
    why = [f"overwrite (IPA's shred): {options.iterations} random pass(es)"
           + (" and a pass of zeroes" if options.zeroize else "")]
    if not caps.discard:
        why.append("no discard")
    elif not caps.discard_zeroes:
        why.append("a discard does not guarantee zeroes")
    elif options.discard is False:
        why.append("discard disabled by the node")
    return Method(OVERWRITE, "; ".join(why), options.zeroize,
                  caps.size * passes)


def plan_erase(caps: Capabilities, options: EraseOptions,
               express: bool = False) -> Plan:
    """The methods for one disk, best first (see the module's text); the
    executor tries them in order until one erases the disk and passes the
    read-back check."""
    hardware: list[Method] = []
    refused: list[str] = []
    if caps.kind == "nvme" and options.nvme_secure_erase:
        hardware, refused = _nvme_methods(caps, express)
    elif caps.kind == "ata" and options.ata_secure_erase and not express:
        hardware, refused = _ata_methods(caps)
    zeroes = caps.discard_zeroes
    discard = Method(DISCARD, f"discard of the whole device; {zeroes}",
                     True, caps.size) if zeroes and \
        options.discard is not False else None
    if express:
        # as IPA: a fast hardware erase, else the metadata only
        fast = [m for m in hardware if m.name in EXPRESS]
        rest = [discard] if discard is not None else []
        return Plan(tuple(fast + rest + [Method(
            METADATA, "express: partition tables and signatures only (no "
            "fast erase left)", False, 0)]), tuple(refused))
    # a secure erase the device offers comes first; the software methods
    # after it (or after a refusal) need the node's consent, as IPA
    offered = bool(hardware or refused)
    consent = not offered or options.continue_if_secure_erase_failed
    software: list[Method] = []
    if discard is not None and (consent or options.discard is True):
        software.append(discard)
    overwrite = _overwrite(caps, options)
    if overwrite is not None and consent:
        software.append(overwrite)
    return Plan(tuple(hardware + software), tuple(refused))
