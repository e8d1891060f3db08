"""Debian's kernel, repacked to start sooner (``ramdisk/builder.py``).

Debian's ``vmlinuz`` is a bzImage whose kernel (``vmlinux``, 66 MB with
its relocation table) is compressed with xz.  Before the kernel prints a
line, the bzImage's own decompressor unpacks it: ~0.5 s on a server's
CPU, ~2.5 s in a QEMU TCG guest (docs/ramdisk.md has the measurements).
This module makes a bzImage with the *same* ``vmlinux``, byte for byte,
behind a decompressor built for lz4, which unpacks it ~40 times faster:

1. the xz payload is unpacked here, and split into the stripped
   ``vmlinux`` and its relocation table (``vmlinux.bin`` and
   ``vmlinux.relocs`` in the kernel's own build);
2. in a Debian root holding ``linux-source-X.Y`` at the kernel package's
   own version, its compiler and Kbuild's tools, Kbuild builds only the
   boot part (``arch/x86/boot``: the real-mode setup, the decompressor and
   its EFI stub) with Debian's own configuration of that kernel, changed
   to ``CONFIG_KERNEL_LZ4``.  The steps that would read the full
   ``vmlinux`` (its symbols, its relocations) are given what step 1 read
   from Debian's image instead;
3. the result is checked: its payload unpacks to exactly Debian's
   ``vmlinux`` and relocations, and it names the same kernel version.

What is lost: Debian's signature for UEFI Secure Boot (the image is
rebuilt, so it is unsigned); ``ramdisk/build --stock-kernel`` ships the
signed image as it is.  Standard library only.
"""

from __future__ import annotations

import hashlib
import lzma
import os
import re
import struct
import subprocess
import time
from typing import Any, Callable, NamedTuple

import stage

#: bumped when what this module builds changes
RECIPE = 1
#: what the Debian root that builds the boot part holds, besides
#: linux-source-X.Y (python3 and pahole are not needed: BTF is switched
#: off)
PACKAGES = ["make", "gcc", "libc6-dev", "binutils", "flex", "bison", "bc",
            "libelf-dev", "libssl-dev", "lz4", "xz-utils",
            "mount"]  # in_image mounts /proc and /tmp in it
#: magic numbers of the payload's codecs (the kernel's own list)
XZ_MAGIC = b"\xfd7zXZ\x00"
LZ4_LEGACY_MAGIC = b"\x02\x21\x4c\x18"
#: what changes in Debian's configuration.  BTF only matters when
#: vmlinux is linked, and would need python3 and pahole to prepare
CONFIG_CHANGES = [("CONFIG_KERNEL_XZ=y", "# CONFIG_KERNEL_XZ is not set"),
                  ("# CONFIG_KERNEL_LZ4 is not set", "CONFIG_KERNEL_LZ4=y"),
                  ("CONFIG_DEBUG_INFO_BTF=y",
                   "# CONFIG_DEBUG_INFO_BTF is not set")]
#: what olddefconfig may change besides CONFIG_CHANGES: BTF's and pahole's
#: options (BTF is off) and module signing's (no module is built).  Any
#: other change fails the build: it could change the boot code
CONFIG_MAY_CHANGE = re.compile(
    r"CONFIG_(KERNEL_(XZ|LZ4)|DEBUG_INFO_BTF\w*|PAHOLE_\w+|"
    r"MODULE_ALLOW_BTF_MISMATCH|MODULE_SIG_(KEY|ALL)|SYSTEM_TRUSTED_KEYS|"
    r"SYSTEM_REVOCATION_KEYS|BUILD_SALT)$")
#: a target added to the copy of arch/x86/Makefile: the boot part and the
#: three things it needs from elsewhere in the tree, without vmlinux
MAKE_TARGET = """
PHONY += ipa-twisted-bzimage
ipa-twisted-bzimage: prepare
\t$(Q)$(MAKE) $(build)=arch/x86/kernel/cpu arch/x86/kernel/cpu/capflags.c
\t$(Q)$(MAKE) $(build)=arch/x86/lib arch/x86/lib/inat-tables.c
\t$(Q)$(MAKE) $(build)=drivers/firmware/efi/libstub
\t$(Q)$(MAKE) $(build)=arch/x86/boot arch/x86/boot/bzImage
"""
#: run in the build root as /repack/build.sh.  The two overrides on make's
#: command line reach every sub-make of the target; of the directories it
#: builds, only arch/x86/boot/compressed defines those commands (so does
#: arch/x86/realmode, which the target does not build)
BUILD_SCRIPT = """\
set -e
cd /usr/src
tar -xf linux-source-{series}.tar.xz
cd linux-source-{series}
cp /repack/config .config
make -s CC={cc} olddefconfig
cp .config /repack/config.after
cat /repack/make-target >> arch/x86/Makefile
cp /repack/vmlinux vmlinux
mkdir -p include/generated
cp /repack/utsversion.h include/generated/utsversion.h
make -j{jobs} CC={cc} ipa-twisted-bzimage \\
    'cmd_relocs=cp /repack/relocs $@' \\
    'cmd_voffset=cp /repack/voffset.h $@' \\
    KERNELRELEASE={release} KBUILD_BUILD_USER={user} \\
    KBUILD_BUILD_HOST={host} >/repack/make.log 2>&1 \\
    || {{ tail -n 30 /repack/make.log; exit 1; }}
cmp arch/x86/boot/compressed/vmlinux.bin /repack/vmlinux
cp arch/x86/boot/compressed/vmlinux.bin.lz4 /repack/payload.lz4
head -c -4 /repack/payload.lz4 | lz4 -dc > /repack/unpacked
cp arch/x86/boot/bzImage /repack/bzImage
"""


#: header fields (Documentation/x86/boot.rst) that say how a boot loader
#: places and starts the kernel: a repacked image must keep Debian's
HEADER_FIELDS = {"kernel_alignment": (0x230, "<I"),
                 "relocatable_kernel": (0x234, "<B"),
                 "min_alignment": (0x235, "<B"), "xloadflags": (0x236, "<H"),
                 "cmdline_size": (0x238, "<I"), "pref_address": (0x258, "<Q")}


class BzImage(NamedTuple):
    """What a bzImage's header says (Documentation/x86/boot.rst)."""
    version: str       # the kernel_version string
    payload: bytes     # the compressed kernel
    init_size: int
    fields: dict[str, int]   # HEADER_FIELDS
    decompressor: bytes      # the protected-mode part but the payload


def read_bzimage(data: bytes) -> BzImage:
    if len(data) < 0x270 or data[0x202:0x206] != b"HdrS":
        raise ValueError("not a bzImage (no HdrS header)")
    protocol = struct.unpack_from("<H", data, 0x206)[0]
    if protocol < 0x208:
        raise ValueError(f"boot protocol {protocol:#x}: no payload fields")
    setup = ((data[0x1f1] or 4) + 1) * 512
    offset, length = struct.unpack_from("<II", data, 0x248)
    pointer = struct.unpack_from("<H", data, 0x20e)[0] + 0x200
    end = data.index(b"\0", pointer)
    payload = data[setup + offset:setup + offset + length]
    if len(payload) != length:
        raise ValueError("payload beyond the end of the image")
    fields = {name: struct.unpack_from(form, data, at)[0]
              for name, (at, form) in HEADER_FIELDS.items()}
    return BzImage(data[pointer:end].decode("ascii", "replace"), payload,
                   struct.unpack_from("<I", data, 0x260)[0], fields,
                   data[setup:setup + offset] + data[setup + offset + length:])


def unpack_xz(payload: bytes) -> bytes:
    """The kernel's xz payload: one stream, then its size (u32, little
    endian), as Kbuild's ``xzkern_with_size`` writes it."""
    if not payload.startswith(XZ_MAGIC):
        raise ValueError(f"the payload is not xz (starts {payload[:6].hex()})")
    decomp = lzma.LZMADecompressor(format=lzma.FORMAT_XZ)
    raw = decomp.decompress(payload)
    if not decomp.eof or len(decomp.unused_data) != 4:
        raise ValueError("the xz payload is not one stream and its size")
    if struct.unpack("<I", decomp.unused_data)[0] != len(raw):
        raise ValueError("the xz payload's size does not match")
    return raw


class Section(NamedTuple):
    name: str
    flags: int
    addr: int
    offset: int
    size: int
    nobits: bool


SHF_ALLOC = 2
SHT_NOBITS = 8


def sections(elf: bytes) -> list[Section]:
    if elf[:4] != b"\x7fELF" or elf[4] != 2 or elf[5] != 1:
        raise ValueError("not a 64-bit little-endian ELF")
    shoff = struct.unpack_from("<Q", elf, 0x28)[0]
    entsize, count, names = struct.unpack_from("<HHH", elf, 0x3a)
    raw = [struct.unpack_from("<IIQQQQ", elf, shoff + i * entsize)
           for i in range(count)]
    strtab = raw[names][4]
    result = []
    for name, kind, flags, addr, offset, size in raw:
        end = elf.index(b"\0", strtab + name)
        result.append(Section(elf[strtab + name:end].decode(), flags, addr,
                              offset, size, kind == SHT_NOBITS))
    return result


def split_vmlinux(raw: bytes) -> tuple[bytes, bytes]:
    """Kbuild's payload is ``vmlinux.bin`` (the stripped ELF) followed by
    ``vmlinux.relocs``: cut where the ELF's last part ends."""
    shoff = struct.unpack_from("<Q", raw, 0x28)[0]
    entsize, count = struct.unpack_from("<HH", raw, 0x3a)
    end = shoff + entsize * count
    phoff = struct.unpack_from("<Q", raw, 0x20)[0]
    phentsize, phnum = struct.unpack_from("<HH", raw, 0x36)
    for i in range(phnum):
        offset, filesz = struct.unpack_from("<Q24xQ", raw,
                                            phoff + i * phentsize + 8)
        end = max(end, offset + filesz)
    for sec in sections(raw):
        if not sec.nobits:
            end = max(end, sec.offset + sec.size)
    relocs = raw[end:]
    # x86-64's table (arch/x86/tools/relocs.c): u32 entries in three
    # lists, each opened by a zero; the decompressor reads it backwards
    if not relocs or len(relocs) % 4 or relocs[:4] != b"\0\0\0\0":
        raise ValueError(f"no relocation table after the ELF "
                         f"({len(relocs)} bytes)")
    return raw[:end], relocs


def voffset(elf: bytes) -> dict[str, int]:
    """The four symbols Kbuild's voffset.h takes from ``nm vmlinux``,
    found from the sections that x86's vmlinux.lds.S puts them at:
    ``_text`` and ``__start_rodata`` and ``__bss_start`` open .text,
    .rodata and .bss; ``_end`` is the page after .brk, the last section
    of the kernel proper (only AMD SEV's .init.scratch lies beyond)."""
    by_name = {s.name: s for s in sections(elf)}
    for name in (".text", ".rodata", ".bss", ".brk"):
        if name not in by_name:
            raise ValueError(f"vmlinux has no {name} section")
    brk = by_name[".brk"]
    end = (brk.addr + brk.size + 4095) & ~4095
    beyond = [s.name for s in by_name.values() if s.flags & SHF_ALLOC
              and s.addr + s.size > brk.addr + brk.size
              and s.name != ".init.scratch"]
    if beyond:
        raise ValueError(f"sections after .brk: {beyond}")
    return {"_text": by_name[".text"].addr,
            "__start_rodata": by_name[".rodata"].addr,
            "__bss_start": by_name[".bss"].addr, "_end": end}


def voffset_header(symbols: dict[str, int]) -> str:
    return "".join(f"#define VO_{name} _AC(0x{value:016x},UL)\n"
                   for name, value in sorted(symbols.items()))


def holds_constant(image: BzImage, value: int) -> bool:
    """Whether the decompressor holds ``value`` as a 64-bit constant.
    misc.c keeps ``kernel_total_size = VO__end - VO__text`` so: Debian's
    own image confirms the ``_end`` that voffset() derives."""
    return struct.pack("<Q", value) in image.decompressor


def config_values(text: str) -> dict[str, str]:
    """A .config as {option: value}; "is not set" is "n"."""
    values = {}
    for line in text.splitlines():
        match = re.match(r"# (CONFIG_\w+) is not set$", line)
        if match:
            values[match.group(1)] = "n"
        elif line.startswith("CONFIG_") and "=" in line:
            name, value = line.split("=", 1)
            values[name] = value
    return values


def unexpected_config_changes(wanted: str, got: str) -> list[str]:
    """Options olddefconfig changed in ``wanted`` (``got``) that
    CONFIG_MAY_CHANGE does not allow; and CONFIG_CHANGES not kept."""
    a, b = config_values(wanted), config_values(got)
    changed = sorted(name for name in set(a) | set(b)
                     if a.get(name, "n") != b.get(name, "n")
                     and not CONFIG_MAY_CHANGE.match(name))
    for _, line in CONFIG_CHANGES:
        name, _, value = line.partition("=")
        if value and b.get(name) != value:
            changed.append(name)
    return changed


VERSION = re.compile(r"(?P<release>\S+) \((?P<user>[^@\s]+)@(?P<host>\S+)\) "
                     r"(?P<uts>#.*)$")


def parse_version(text: str) -> dict[str, str]:
    """``6.1.0-57-amd64 (debian-kernel@lists.debian.org) #1 SMP ...``"""
    match = VERSION.match(text)
    if not match:
        raise ValueError(f"unexpected kernel version string {text!r}")
    return match.groupdict()


def check(original: bytes, repacked: bytes, raw: bytes, lz4: bytes,
          unpacked: bytes) -> None:
    """The repacked image names the same kernel, and its payload is the
    lz4 file Kbuild wrote (``lz4``), which ``lz4 -d`` unpacked to
    ``unpacked``: Debian's vmlinux and relocations (``raw``), byte for
    byte."""
    old, new = read_bzimage(original), read_bzimage(repacked)
    if old.version != new.version:
        raise ValueError(f"kernel version {new.version!r}, not "
                         f"{old.version!r}")
    if old.fields != new.fields:
        raise ValueError(f"header fields {new.fields}, not {old.fields}")
    if not new.payload.startswith(LZ4_LEGACY_MAGIC):
        raise ValueError("the repacked payload is not lz4 (legacy frames)")
    if new.payload != lz4:
        raise ValueError("the repacked payload is not the lz4 file")
    if unpacked != raw:
        raise ValueError("the repacked payload does not unpack to Debian's "
                         "vmlinux")
    if struct.unpack("<I", new.payload[-4:])[0] != len(raw):
        raise ValueError("the repacked payload's size does not match")


def kernel_config(deb: str, release: str) -> str:
    """boot/config-RELEASE from the kernel package ``deb``."""
    name = f"./boot/config-{release}"
    with subprocess.Popen(["dpkg-deb", "--fsys-tarfile", deb],
                          stdout=subprocess.PIPE) as listing:
        config = subprocess.run(["tar", "-xO", name], stdin=listing.stdout,
                                capture_output=True)
        listing.stdout.close()  # type: ignore[union-attr]
    if listing.returncode != 0 or config.returncode != 0:
        raise ValueError(f"no {name} in {deb}: "
                         f"{config.stderr.decode(errors='replace')[-300:]}")
    return config.stdout.decode()


def build_inputs(original: bytes, config: str, series: str,
                 jobs: int) -> tuple[bytes, dict[str, Any]]:
    """Debian's raw payload, and the files /repack holds in the build root
    (the build script among them)."""
    image = read_bzimage(original)
    raw = unpack_xz(image.payload)
    elf, relocs = split_vmlinux(raw)
    symbols = voffset(elf)
    if not holds_constant(image, symbols["_end"] - symbols["_text"]):
        raise ValueError(f"Debian's decompressor does not hold the kernel's "
                         f"size {symbols['_end'] - symbols['_text']:#x} "
                         f"(_end - _text): the derived _end is wrong")
    names = parse_version(image.version)
    lines = config.split("\n")
    if "CONFIG_KERNEL_XZ=y" not in lines:
        raise ValueError("Debian's config lacks CONFIG_KERNEL_XZ=y")
    changes = dict(CONFIG_CHANGES)
    # the compiler as Debian's build named it ("gcc-12 (Debian ...) ..."):
    # the same text in the config, and the same compiler
    text = re.search(r'^CONFIG_CC_VERSION_TEXT="(\S+) ', config, re.M)
    if not text or not re.match(r"gcc(-\d+)?$", text.group(1)):
        raise ValueError("Debian's config names no gcc "
                         "(CONFIG_CC_VERSION_TEXT)")
    return raw, {
        "vmlinux": elf, "relocs": relocs,
        "config": "\n".join(changes.get(line, line) for line in lines),
        "voffset.h": voffset_header(symbols),
        "utsversion.h": f'#define UTS_VERSION "{names["uts"]}"\n',
        "make-target": MAKE_TARGET,
        "build.sh": BUILD_SCRIPT.format(series=series, jobs=jobs,
                                        cc=text.group(1), **names)}


def repack(vmlinuz: str, deb: str, cache: str,
           build_root: Callable[[list[str]], str],
           run_in_root: Callable[[str, list[str]], Any],
           say: Callable[[str], None], mirror: str = "",
           fresh: bool = False) -> str:
    """The lz4 bzImage of ``vmlinuz`` (from the kernel package ``deb``),
    a cached stage (stage.py: ``build_root``, ``run_in_root`` and
    ``fresh`` as there); returns its path.  Raises ValueError or
    stage.StageError when it cannot."""
    with open(vmlinuz, "rb") as f:
        original = f.read()
    fields = subprocess.run(["dpkg-deb", "-f", deb, "Version"], check=True,
                            capture_output=True, text=True).stdout.strip()
    version = fields.split()[-1] if fields else ""
    if not re.match(r"\d+\.\d+\.", version):
        raise ValueError(f"{deb}: unexpected version {fields!r}")
    series = ".".join(version.split(".")[:2])
    packages = PACKAGES + [f"linux-source-{series}={version}"]
    with open(__file__, "rb") as f:
        me = f.read()
    image = read_bzimage(original)
    made: dict[str, Any] = {}

    def files() -> dict[str, Any]:
        config = kernel_config(deb, parse_version(image.version)["release"])
        made["raw"], inputs = build_inputs(
            original, config, series, max(1, min(4, os.cpu_count() or 1)))
        return inputs

    def collect(inside: str, out: str) -> None:
        with open(os.path.join(inside, "config")) as f:
            wanted = f.read()
        with open(os.path.join(inside, "config.after")) as f:
            unexpected = unexpected_config_changes(wanted, f.read())
        if unexpected:
            raise ValueError(f"olddefconfig changed {unexpected} in Debian's "
                             f"configuration")
        contents = {}
        for name in ("bzImage", "payload.lz4", "unpacked"):
            with open(os.path.join(inside, name), "rb") as f:
                contents[name] = f.read()
        check(original, contents["bzImage"], made["raw"],
              contents["payload.lz4"], contents["unpacked"])
        with open(os.path.join(out, "vmlinuz"), "wb") as f:
            f.write(contents["bzImage"])
        made["size"] = len(contents["bzImage"])

    t0 = time.monotonic()
    out = stage.build(
        cache, "repack",
        [f"repack {RECIPE} {version} {mirror}".encode(),
         hashlib.sha256(original).hexdigest().encode(), me],
        packages, files, build_root, run_in_root, collect, fresh=fresh)
    if "size" in made:
        say(f"kernel repacked with lz4: {len(original) / 2**20:.1f} -> "
            f"{made['size'] / 2**20:.1f} MiB, the same vmlinux "
            f"({len(made['raw']) / 2**20:.0f} MiB unpacked); "
            f"{time.monotonic() - t0:.0f} s")
    return os.path.join(out, "vmlinuz")
