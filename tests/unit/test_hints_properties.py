"""Root device hints: a reference table of cases, and properties
(hypothesis) that must hold for any values (how many examples each runs:
tests/properties.py)."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from ipa_twisted.hardware import hints
from tests.properties import examples

GiB = 1024 ** 3

# (hint name, hint expression, device value, expected match)
REFERENCE: list[tuple[str, Any, Any, bool]] = [
    ("model", "Big Disk", "big disk", True),
    ("model", "  Big Disk ", "BIG DISK", True),
    ("model", "s== big disk", "big disk", True),
    ("model", "s!= big disk", "small disk", True),
    ("model", "s!= big disk", "big disk", False),
    ("model", "s< m", "a", True),
    ("model", "s<= a", "a", True),
    ("model", "s> a", "b", True),
    ("model", "s>= b", "a", False),
    ("model", "<in> disk", "big disk", True),
    ("model", "<in> ssd", "big disk", False),
    ("model", "<or> a <or> b <or> c", "b", True),
    ("model", "<or> a <or> b", "ab", False),
    ("model", "<all-in> big disk", "big fat disk", True),
    ("model", "<all-in> big ssd", "big fat disk", False),
    ("model", "x", None, False),
    ("model", "x", "", False),
    ("vendor", "<in> ata", "ATA", True),
    ("name", "/dev/sda", "/dev/sda", True),
    ("name", "sda", "/dev/sda", True),
    ("name", "/dev/sdb", "/dev/sda", False),
    ("hctl", "1:0:0:0", "1:0:0:0", True),
    ("by_path", "/dev/disk/by-path/pci-0000:00:1f.2-ata-1",
     "/dev/disk/by-path/pci-0000:00:1f.2-ata-1", True),
    ("tran", "sas", "SAS", True),
    ("serial", "abc", ["XYZ", "ABC"], True),
    ("serial", "abc", ["XYZ", None], False),
    ("serial", "abc", [None], False),
    ("wwn", "0x5000c500a1b2c3d4", "0x5000C500A1B2C3D4", True),
    ("wwn_with_extension", "<in> 0x5000", ["0x5000c5", "x"], True),
    ("size", 10, 10 * GiB, True),
    ("size", "10", 10 * GiB, True),
    ("size", "== 10", 10 * GiB + 1, False),
    ("size", ">= 10", 10 * GiB, True),
    ("size", "> 10", 10 * GiB, False),
    ("size", "> 10", 10 * GiB + 1, True),
    ("size", "< 10", 10 * GiB - 1, True),
    ("size", "<= 10", 10 * GiB, True),
    ("size", "!= 10", 11 * GiB, True),
    ("size", "= 10", 20 * GiB, True),
    ("size", "= 10", 9 * GiB, False),
    ("size", "<or> 10 <or> 20", 20 * GiB, True),
    ("size", "<or> 10 <or> 20", 15 * GiB, False),
    ("size", "<range-in> [ 10 20 ]", 20 * GiB, True),
    ("size", "<range-in> [ 10 20 )", 20 * GiB, False),
    ("size", "<range-in> ( 10 20 ]", 10 * GiB, False),
    ("size", "<range-in> ( 10 20 ]", 15 * GiB, True),
    ("rotational", True, True, True),
    ("rotational", "true", False, False),
    ("rotational", "0", False, True),
    ("rotational", False, "false", True),
]


class ReferenceTableTests(SynchronousTestCase):
    def test_reference_table(self) -> None:
        failures = []
        for name, expression, value, expected in REFERENCE:
            hint = hints.parse_hint(name, expression)
            got = hints.device_matches({name: value}, [hint])
            if got != expected:
                failures.append((name, expression, value, expected, got))
        self.assertEqual(failures, [])


text = st.text(
    alphabet=st.characters(blacklist_categories=("Cs", "Cc"),
                           blacklist_characters="<>=!"),
    min_size=1, max_size=20,
).filter(lambda s: s.strip() and not s.strip().lower().startswith("s"))
sizes_gib = st.integers(min_value=1, max_value=100000)
device_bytes = st.integers(min_value=0, max_value=200000 * GiB)


class PropertyTests(SynchronousTestCase):
    @settings(max_examples=examples(300), deadline=None)
    @given(text)
    def test_a_value_matches_itself_whatever_the_case(self, value: str
                                                      ) -> None:
        variants = [value, f"  {value}  "]
        if value.upper().lower() == value.lower():  # not so for "ß"
            variants.append(value.upper())
        for variant in variants:
            hint = hints.parse_hint("model", variant)
            self.assertTrue(hints.match_value(hint, value))

    @settings(max_examples=examples(300), deadline=None)
    @given(text, text)
    def test_equal_and_not_equal_are_complements(self, a: str, b: str
                                                 ) -> None:
        eq = hints.match_value(hints.parse_hint("vendor", f"s== {a}"), b)
        ne = hints.match_value(hints.parse_hint("vendor", f"s!= {a}"), b)
        self.assertNotEqual(eq, ne)

    @settings(max_examples=examples(300), deadline=None)
    @given(text, text, text)
    def test_in_is_substring(self, prefix: str, word: str, suffix: str
                             ) -> None:
        hint = hints.parse_hint("model", f"<in> {word}")
        value = prefix + word.strip() + suffix
        self.assertTrue(hints.match_value(hint, value))

    @settings(max_examples=examples(200), deadline=None)
    @given(st.lists(text, min_size=1, max_size=5), st.data())
    def test_or_matches_each_alternative(self, alternatives: list[str],
                                         data: Any) -> None:
        expression = " ".join(f"<or> {a.strip()}" for a in alternatives)
        hint = hints.parse_hint("model", expression)
        chosen = data.draw(st.sampled_from(alternatives))
        self.assertTrue(hints.match_value(hint, chosen.strip()))

    @settings(max_examples=examples(500), deadline=None)
    @given(sizes_gib, device_bytes)
    def test_numeric_operators_agree_with_python(self, size: int,
                                                 value: int) -> None:
        gib = value / GiB
        expected = {"==": gib == size, "!=": gib != size, "<": gib < size,
                    "<=": gib <= size, ">": gib > size, ">=": gib >= size,
                    "=": gib >= size}
        for op, result in expected.items():
            hint = hints.parse_hint("size", f"{op} {size}")
            self.assertEqual(hints.match_value(hint, value), result, op)

    @settings(max_examples=examples(500), deadline=None)
    @given(sizes_gib, sizes_gib, device_bytes, st.booleans(), st.booleans())
    def test_range_agrees_with_inequalities(self, a: int, b: int, value: int,
                                            lo_in: bool, hi_in: bool) -> None:
        low, high = min(a, b), max(a, b)
        gib = value / GiB
        expression = (f"<range-in> {'[' if lo_in else '('} {low} {high} "
                      f"{']' if hi_in else ')'}")
        expected = ((gib >= low if lo_in else gib > low)
                    and (gib <= high if hi_in else gib < high))
        self.assertEqual(
            hints.match_value(hints.parse_hint("size", expression), value),
            expected)

    @settings(max_examples=examples(200), deadline=None)
    @given(st.lists(st.one_of(st.none(), text), min_size=1, max_size=4),
           text)
    def test_list_values_match_if_any_does(self, values: list[str | None],
                                           hint_value: str) -> None:
        hint = hints.parse_hint("serial", hint_value)
        expected = any(v is not None and hints.match_value(hint, v)
                       for v in values)
        self.assertEqual(hints.device_matches({"serial": values}, [hint]),
                         expected)

    @settings(max_examples=examples(200), deadline=None)
    @given(st.integers(max_value=0))
    def test_sizes_must_be_positive(self, size: int) -> None:
        with self.assertRaises(hints.HintError):
            hints.parse_hint("size", size)
