"""Root device hints: the expression grammar."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from ipa_twisted.hardware import hints

GiB = 1024 ** 3
DEVICES = [
    {"name": "/dev/sda", "size": 10 * GiB, "model": "Samsung SSD 860",
     "vendor": "ATA", "serial": ["S1", "S1-long"], "wwn": None,
     "rotational": False, "hctl": "1:0:0:0"},
    {"name": "/dev/sdb", "size": 100 * GiB, "model": "HGST HUS726",
     "vendor": "ATA", "serial": "H2", "wwn": "0x5000cca", "rotational": True,
     "hctl": "2:0:0:0"},
    {"name": "/dev/nvme0n1", "size": 1000 * GiB, "model": "INTEL SSDPE2KX",
     "vendor": None, "serial": "N3", "wwn": "eui.0123", "rotational": False,
     "hctl": None},
]


def names(h: dict) -> list[str]:
    return [d["name"] for d in hints.find_devices(DEVICES, h)]


class GrammarTests(SynchronousTestCase):
    def test_equality_is_default_and_case_insensitive(self) -> None:
        self.assertEqual(names({"model": "samsung ssd 860"}), ["/dev/sda"])
        self.assertEqual(names({"model": "s== HGST HUS726"}), ["/dev/sdb"])
        self.assertEqual(names({"size": 100}), ["/dev/sdb"])
        self.assertEqual(names({"size": "100"}), ["/dev/sdb"])

    def test_string_operators(self) -> None:
        self.assertEqual(names({"model": "<in> ssd"}), ["/dev/sda", "/dev/nvme0n1"])
        self.assertEqual(names({"model": "s!= hgst hus726"}),
                         ["/dev/sda", "/dev/nvme0n1"])
        self.assertEqual(names({"model": "<or> hgst hus726 <or> intel ssdpe2kx"}),
                         ["/dev/sdb", "/dev/nvme0n1"])
        self.assertEqual(names({"model": "<all-in> intel ssd"}), ["/dev/nvme0n1"])
        self.assertEqual(names({"name": "s>= /dev/sdb"}), ["/dev/sdb"])

    def test_numeric_operators_on_size(self) -> None:
        self.assertEqual(names({"size": ">= 100"}), ["/dev/sdb", "/dev/nvme0n1"])
        self.assertEqual(names({"size": "> 100"}), ["/dev/nvme0n1"])
        self.assertEqual(names({"size": "< 100"}), ["/dev/sda"])
        self.assertEqual(names({"size": "<= 100"}), ["/dev/sda", "/dev/sdb"])
        self.assertEqual(names({"size": "!= 100"}), ["/dev/sda", "/dev/nvme0n1"])
        self.assertEqual(names({"size": "= 100"}), ["/dev/sdb", "/dev/nvme0n1"])

    def test_size_or_and_range_work(self) -> None:
        # IPA 13.0.0 rejects or never matches these; Ironic accepts them.
        self.assertEqual(names({"size": "<or> 10 <or> 1000"}),
                         ["/dev/sda", "/dev/nvme0n1"])
        self.assertEqual(names({"size": "<range-in> [ 10 100 )"}), ["/dev/sda"])
        self.assertEqual(names({"size": "<range-in> ( 10 100 ]"}), ["/dev/sdb"])

    def test_lists_match_any(self) -> None:
        self.assertEqual(names({"serial": "s1-long"}), ["/dev/sda"])
        self.assertEqual(names({"serial": "s1"}), ["/dev/sda"])

    def test_empty_device_value_never_matches(self) -> None:
        self.assertEqual(names({"vendor": "<in> a"}), ["/dev/sda", "/dev/sdb"])
        self.assertEqual(names({"wwn": "s!= nothing"}),
                         ["/dev/sdb", "/dev/nvme0n1"])

    def test_rotational(self) -> None:
        self.assertEqual(names({"rotational": True}), ["/dev/sdb"])
        self.assertEqual(names({"rotational": "false"}),
                         ["/dev/sda", "/dev/nvme0n1"])

    def test_all_hints_must_match(self) -> None:
        self.assertEqual(names({"rotational": False, "size": "> 50"}),
                         ["/dev/nvme0n1"])

    def test_quoting(self) -> None:
        devices = [{"name": "/dev/sda", "model": "Big Disk (x)"}]
        self.assertEqual(len(hints.find_devices(devices, {"model": "big disk (x)"})), 1)
        self.assertEqual(hints.normalize_string(" A b "), "a%20b")

    def test_invalid(self) -> None:
        for bad in ({"colour": "red"}, {"size": "ten"}, {"size": 0},
                    {"size": "-3"}, {"size": 1.5}, {"rotational": "maybe"},
                    {"model": 42}, {"model": ""}, {"size": "s== 10"},
                    {"size": "<range-in> 1 2"}, {"model": "<or>"}):
            with self.assertRaises(hints.HintError, msg=bad):
                hints.parse_hints(bad)
