"""Which checksum an image must have, and checksum files."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from ipa_twisted import errors
from ipa_twisted.image.checksum import (
    ChecksumSpec,
    checksum_spec,
    parse_checksum_file,
)

SHA256 = "a" * 64
SHA512 = "b" * 128
MD5 = "c" * 32


class SpecTests(SynchronousTestCase):
    def test_os_hash_wins(self) -> None:
        spec = checksum_spec({"os_hash_algo": "SHA512", "os_hash_value": SHA512,
                              "checksum": MD5}, md5_enabled=False)
        self.assertEqual(spec, ChecksumSpec("sha512", SHA512))

    def test_legacy_by_length(self) -> None:
        self.assertEqual(checksum_spec({"checksum": SHA256.upper()}, False),
                         ChecksumSpec("sha256", SHA256))
        self.assertEqual(checksum_spec({"checksum": SHA512}, False).algo,
                         "sha512")
        self.assertEqual(checksum_spec({"checksum": MD5}, True).algo, "md5")

    def test_md5_needs_enabling(self) -> None:
        for info in ({"checksum": MD5},
                     {"os_hash_algo": "md5", "os_hash_value": MD5}):
            with self.assertRaises(errors.InvalidCommandParamsError) as cm:
                checksum_spec(info, md5_enabled=False)
            self.assertIn("MD5 checksums are disabled", str(cm.exception))

    def test_urls(self) -> None:
        spec = checksum_spec({"checksum": "http://x/SHA256SUMS"}, False)
        self.assertEqual(spec, ChecksumSpec("", None, "http://x/SHA256SUMS"))
        spec = checksum_spec({"os_hash_algo": "sha256",
                              "os_hash_value": "https://x/sums"}, False)
        self.assertEqual(spec, ChecksumSpec("sha256", None, "https://x/sums"))

    def test_invalid(self) -> None:
        for info in ({}, {"checksum": "xyz"}, {"checksum": "a" * 40},
                     {"os_hash_algo": "sha256"},
                     {"os_hash_algo": "nope", "os_hash_value": SHA256},
                     {"os_hash_algo": "sha256", "os_hash_value": "zz"},
                     {"checksum": 5}):
            with self.assertRaises(errors.InvalidCommandParamsError, msg=info):
                checksum_spec(info, md5_enabled=True)


class ChecksumFileTests(SynchronousTestCase):
    URL = "http://images.example/dir/disk.img?x=1"

    def test_formats(self) -> None:
        self.assertEqual(parse_checksum_file(f"{SHA256}\n", self.URL), SHA256)
        text = (f"# comment\n{SHA512}  other.img\n{SHA256}  disk.img\n")
        self.assertEqual(parse_checksum_file(text, self.URL), SHA256)
        self.assertEqual(parse_checksum_file(f"{SHA256} *disk.img\n", self.URL),
                         SHA256)
        self.assertEqual(parse_checksum_file(
            f"SHA256 (disk.img) = {SHA256.upper()}\n", self.URL), SHA256)
        self.assertEqual(parse_checksum_file(
            f"{SHA256}  ./sub/disk.img\n", self.URL), SHA256)

    def test_missing(self) -> None:
        with self.assertRaises(errors.ImageDownloadError):
            parse_checksum_file(f"{SHA256}  other.img\n{SHA256} b.img",
                                self.URL)
