"""ramdisk/kernel_repack.py's parsing and checks, on inputs made here
(a bzImage header, an ELF's section table, xz streams); the real kernel is
repacked and booted by tests/vm (test_ramdisk_build, test_ramdisk_net)."""

from __future__ import annotations

import lzma
import os
import struct
import sys

from twisted.trial.unittest import SynchronousTestCase

TOP = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(TOP, "ramdisk"))
import kernel_repack as kr  # noqa: E402

DEBIAN = ("6.1.0-57-amd64 (debian-kernel@lists.debian.org) #1 SMP "
          "PREEMPT_DYNAMIC Debian 6.1.192-3 (2026-11-26)")


def bzimage(payload: bytes, version: str = DEBIAN, setup_sects: int = 3,
            init_size: int = 0x3f98000, code: bytes = b"",
            pref_address: int = 0x1000000) -> bytes:
    """A bzImage's header as Documentation/x86/boot.rst lays it out:
    setup sectors, then the protected-mode part holding ``payload``."""
    setup = bytearray(((setup_sects or 4) + 1) * 512)
    setup[0x1f1] = setup_sects
    setup[0x202:0x206] = b"HdrS"
    struct.pack_into("<H", setup, 0x206, 0x20f)
    text = version.encode() + b"\0"
    at = 0x600
    setup[at:at + len(text)] = text
    struct.pack_into("<H", setup, 0x20e, at - 0x200)
    offset = 0x2cc
    struct.pack_into("<II", setup, 0x248, offset, len(payload))
    struct.pack_into("<I", setup, 0x260, init_size)
    struct.pack_into("<I", setup, 0x230, 0x200000)   # kernel_alignment
    struct.pack_into("<Q", setup, 0x258, pref_address)
    decompressor = (code + b"\x90" * offset)[:offset]
    return bytes(setup) + decompressor + payload + b"\xcc" * 64


def xz_payload(data: bytes) -> bytes:
    """As Kbuild's xzkern_with_size writes it: the stream, then its size."""
    return lzma.compress(data, format=lzma.FORMAT_XZ,
                         check=lzma.CHECK_CRC32) + struct.pack("<I", len(data))


# name, type, flags, address, size: x86's vmlinux layout, smaller
SECTIONS = [(".text", 1, 6, 0xffffffff81000000, 0x100),
            (".rodata", 1, 2, 0xffffffff82000000, 0x80),
            (".bss", 8, 3, 0xffffffff83310000, 0x1000),
            (".brk", 8, 3, 0xffffffff84400000, 0x30100),
            (".init.scratch", 1, 3, 0xffffffff84600000, 0x40)]


def elf(sections: list[tuple[str, int, int, int, int]] = SECTIONS) -> bytes:
    """An ELF64 (little endian) holding ``sections`` and a section name
    table, the section headers last, as objcopy writes vmlinux.bin."""
    names = b"\0" + b"".join(s[0].encode() + b"\0" for s in sections) + \
        b".shstrtab\0"
    body = bytearray(64)
    headers = [struct.pack("<IIQQQQIIQQ", 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)]
    name_at = 1
    for name, kind, flags, addr, size in sections:
        offset = len(body)
        if kind != 8:
            body += b"\xab" * size
        headers.append(struct.pack("<IIQQQQIIQQ", name_at, kind, flags, addr,
                                   offset, size, 0, 0, 16, 0))
        name_at += len(name) + 1
    offset = len(body)
    body += names
    headers.append(struct.pack("<IIQQQQIIQQ", name_at, 3, 0, 0, offset,
                               len(names), 0, 0, 1, 0))
    shoff = len(body)
    body[0:16] = b"\x7fELF\x02\x01\x01" + b"\0" * 9
    struct.pack_into("<HHIQQQIHHHHHH", body, 16, 2, 62, 1, 0x1000000, 0,
                     shoff, 0, 64, 56, 0, 64, len(headers), len(headers) - 1)
    return bytes(body) + b"".join(headers)


RELOCS = struct.pack("<6I", 0, 0x1234, 0, 0x5678, 0, 0x9abc)


class BzImageTests(SynchronousTestCase):

    def test_header_fields(self) -> None:
        image = kr.read_bzimage(bzimage(b"PAYLOAD", init_size=0x4000))
        self.assertEqual(image.payload, b"PAYLOAD")
        self.assertEqual(image.version, DEBIAN)
        self.assertEqual(image.init_size, 0x4000)
        self.assertEqual(image.fields["kernel_alignment"], 0x200000)
        self.assertEqual(image.fields["pref_address"], 0x1000000)
        # the protected-mode part without the payload
        self.assertEqual(len(image.decompressor), 0x2cc + 64)
        self.assertNotIn(b"PAYLOAD", image.decompressor)
        # setup_sects 0 means 4
        self.assertEqual(kr.read_bzimage(bzimage(b"P", setup_sects=0)
                                         ).payload, b"P")

    def test_not_a_bzimage(self) -> None:
        self.assertRaises(ValueError, kr.read_bzimage, b"\x7fELF" + b"\0" *
                          1024)
        data = bytearray(bzimage(b"P"))
        struct.pack_into("<H", data, 0x206, 0x206)  # too old a protocol
        self.assertRaises(ValueError, kr.read_bzimage, bytes(data))
        self.assertRaises(ValueError, kr.read_bzimage,
                          bzimage(b"PAYLOAD")[:0x800])  # cut short

    def test_version(self) -> None:
        self.assertEqual(kr.parse_version(DEBIAN), {
            "release": "6.1.0-57-amd64", "user": "debian-kernel",
            "host": "lists.debian.org",
            "uts": "#1 SMP PREEMPT_DYNAMIC Debian 6.1.192-3 (2026-11-26)"})
        self.assertRaises(ValueError, kr.parse_version, "6.1.0 #1 SMP")


class XzTests(SynchronousTestCase):

    def test_stream_and_size(self) -> None:
        data = os.urandom(1000) * 20
        self.assertEqual(kr.unpack_xz(xz_payload(data)), data)

    def test_wrong_size_fails(self) -> None:
        payload = xz_payload(b"kernel")
        self.assertRaises(ValueError, kr.unpack_xz,
                          payload[:-4] + struct.pack("<I", 7))
        self.assertRaises(ValueError, kr.unpack_xz, payload[:-4])

    def test_not_xz_fails(self) -> None:
        self.assertRaises(ValueError, kr.unpack_xz, b"\x02\x21\x4c\x18....")


class VmlinuxTests(SynchronousTestCase):

    def test_split_at_the_end_of_the_elf(self) -> None:
        image = elf()
        got, relocs = kr.split_vmlinux(image + RELOCS)
        self.assertEqual(got, image)
        self.assertEqual(relocs, RELOCS)

    def test_no_relocation_table_fails(self) -> None:
        image = elf()
        self.assertRaises(ValueError, kr.split_vmlinux, image)
        self.assertRaises(ValueError, kr.split_vmlinux, image + b"\1\0\0\0")
        self.assertRaises(ValueError, kr.split_vmlinux, image + b"\0\0\0")

    def test_voffset_from_the_sections(self) -> None:
        symbols = kr.voffset(elf())
        self.assertEqual(symbols, {
            "_text": 0xffffffff81000000, "__start_rodata": 0xffffffff82000000,
            "__bss_start": 0xffffffff83310000,
            # the page after .brk's end, .init.scratch (SEV) left out
            "_end": 0xffffffff84431000})
        # in the form Kbuild's sed makes of nm's lines
        self.assertIn("#define VO__end _AC(0xffffffff84431000,UL)\n",
                      kr.voffset_header(symbols))
        self.assertEqual(len(kr.voffset_header(symbols).splitlines()), 4)

    def test_debian_decompressor_confirms_the_size(self) -> None:
        """misc.c's kernel_total_size (_end - _text) is in Debian's
        decompressor: build_inputs() checks voffset()'s _end with it."""
        raw = elf() + RELOCS
        size = struct.pack("<Q", 0xffffffff84431000 - 0xffffffff81000000)
        config = ('CONFIG_CC_VERSION_TEXT="gcc-12 (Debian 12.2.0-14+deb12u1) '
                  '12.2.0"\nCONFIG_KERNEL_XZ=y\n# CONFIG_KERNEL_LZ4 is not set\n')
        _, files = kr.build_inputs(
            bzimage(xz_payload(raw), code=b"\0" * 8 + size), config, "6.1",
            2)
        self.assertEqual(files["vmlinux"] + files["relocs"], raw)
        self.assertIn("CONFIG_KERNEL_LZ4=y\n", files["config"])
        self.assertIn("# CONFIG_KERNEL_XZ is not set\n", files["config"])
        self.assertIn("KERNELRELEASE=6.1.0-57-amd64", files["build.sh"])
        # Debian's compiler, by the name Debian's build gave it
        self.assertIn("make -s CC=gcc-12 olddefconfig", files["build.sh"])
        self.assertIn("CC=gcc-12 ipa-twisted-bzimage", files["build.sh"])
        self.assertIn('"#1 SMP PREEMPT_DYNAMIC Debian 6.1.192-3 (2026-11-26)"',
                      files["utsversion.h"])
        # one page off: not Debian's kernel size
        wrong = struct.pack("<Q", 0xffffffff84430000 - 0xffffffff81000000)
        with self.assertRaises(ValueError) as e:
            kr.build_inputs(bzimage(xz_payload(raw), code=wrong), config,
                            "6.1", 2)
        self.assertIn("_end", str(e.exception))
        # not Debian's xz kernel config
        self.assertRaises(ValueError, kr.build_inputs,
                          bzimage(xz_payload(raw), code=size),
                          "CONFIG_KERNEL_GZIP=y\n", "6.1", 2)
        self.assertRaises(ValueError, kr.build_inputs,
                          bzimage(xz_payload(raw), code=size),
                          config.replace("gcc-12", "clang"), "6.1", 2)

    def test_voffset_refuses_an_unexpected_layout(self) -> None:
        missing = [s for s in SECTIONS if s[0] != ".brk"]
        self.assertRaises(ValueError, kr.voffset, elf(missing))
        beyond = SECTIONS + [(".late", 1, 2, 0xffffffff84500000, 0x10)]
        self.assertRaises(ValueError, kr.voffset, elf(beyond))
        # not allocated: not part of the kernel's memory
        kr.voffset(elf(SECTIONS + [(".comment", 1, 0, 0, 0x10)]))


class ConfigTests(SynchronousTestCase):

    WANTED = ("CONFIG_A=y\n# CONFIG_KERNEL_XZ is not set\nCONFIG_KERNEL_LZ4=y\n"
              "# CONFIG_DEBUG_INFO_BTF is not set\nCONFIG_RANDOMIZE_BASE=y\n")

    def test_allowed_changes(self) -> None:
        got = self.WANTED + ("CONFIG_MODULE_SIG_KEY=\"certs/signing_key.pem\"\n"
                             "CONFIG_SYSTEM_TRUSTED_KEYS=\"\"\n")
        self.assertEqual(kr.unexpected_config_changes(
            self.WANTED + "CONFIG_PAHOLE_HAS_SPLIT_BTF=y\n", got), [])

    def test_a_change_to_the_boot_code_fails(self) -> None:
        got = self.WANTED.replace("CONFIG_RANDOMIZE_BASE=y",
                                  "# CONFIG_RANDOMIZE_BASE is not set")
        self.assertEqual(kr.unexpected_config_changes(self.WANTED, got),
                         ["CONFIG_RANDOMIZE_BASE"])
        self.assertEqual(kr.unexpected_config_changes(
            self.WANTED, self.WANTED + "CONFIG_NEW=y\n"), ["CONFIG_NEW"])

    def test_lz4_must_stay(self) -> None:
        got = self.WANTED.replace("CONFIG_KERNEL_LZ4=y",
                                  "# CONFIG_KERNEL_LZ4 is not set")
        self.assertEqual(kr.unexpected_config_changes(self.WANTED, got),
                         ["CONFIG_KERNEL_LZ4"])


class CheckTests(SynchronousTestCase):

    def setUp(self) -> None:
        self.raw = elf() + RELOCS
        self.original = bzimage(xz_payload(self.raw))
        # an lz4 legacy frame's magic and a stand-in body: check() compares
        # bytes; the real lz4 is tested on the real kernel in tests/vm
        self.lz4 = kr.LZ4_LEGACY_MAGIC + b"frames" + struct.pack(
            "<I", len(self.raw))
        self.repacked = bzimage(self.lz4, init_size=0x3f97000)

    def test_the_same_kernel_passes(self) -> None:
        kr.check(self.original, self.repacked, self.raw, self.lz4, self.raw)

    def test_another_version_fails(self) -> None:
        other = bzimage(self.lz4, version=DEBIAN.replace("-57-", "-58-"))
        with self.assertRaises(ValueError) as e:
            kr.check(self.original, other, self.raw, self.lz4, self.raw)
        self.assertIn("version", str(e.exception))

    def test_another_payload_fails(self) -> None:
        with self.assertRaises(ValueError) as e:
            kr.check(self.original, self.repacked, self.raw,
                     self.lz4 + b"x", self.raw)
        self.assertIn("not the lz4 file", str(e.exception))
        with self.assertRaises(ValueError) as e:
            kr.check(self.original, self.repacked, self.raw, self.lz4,
                     self.raw[:-1] + b"\1")
        self.assertIn("does not unpack", str(e.exception))
        xz = bzimage(xz_payload(self.raw))
        with self.assertRaises(ValueError) as e:
            kr.check(self.original, xz, self.raw, self.lz4, self.raw)
        self.assertIn("not lz4", str(e.exception))

    def test_other_header_fields_fail(self) -> None:
        moved = bzimage(self.lz4, pref_address=0x2000000)
        with self.assertRaises(ValueError) as e:
            kr.check(self.original, moved, self.raw, self.lz4, self.raw)
        self.assertIn("header fields", str(e.exception))

    def test_a_wrong_size_fails(self) -> None:
        lz4 = self.lz4[:-4] + struct.pack("<I", len(self.raw) + 1)
        with self.assertRaises(ValueError) as e:
            kr.check(self.original, bzimage(lz4), self.raw, lz4, self.raw)
        self.assertIn("size", str(e.exception))
