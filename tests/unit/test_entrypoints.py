"""Entry points read without importlib.metadata: the same answer as it."""

from __future__ import annotations

import os
import os.path
import zipfile
from importlib import metadata

from twisted.trial.unittest import SynchronousTestCase

from ipa_twisted.entrypoints import entry_points

GROUP = "ipa_twisted.hardware_managers"


def dist(directory: str, dirname: str, entry_points_txt: str | None
         ) -> None:
    path = os.path.join(directory, dirname)
    os.makedirs(path)
    name = dirname.partition("-")[0].partition(".")[0]
    with open(os.path.join(path, "METADATA" if "dist-info" in dirname
                           else "PKG-INFO"), "w") as f:
        f.write(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    if entry_points_txt is not None:
        with open(os.path.join(path, "entry_points.txt"), "w") as f:
            f.write(entry_points_txt)


def importlib_answer(group: str, path: list[str]) -> list[tuple[str, str]]:
    seen = set()
    out = []
    for d in metadata.distributions(path=path):
        key = d._normalized_name  # type: ignore[attr-defined]
        if key in seen:
            continue
        seen.add(key)
        out += [(ep.name, ep.value) for ep in d.entry_points
                if ep.group == group]
    return out


class EntryPointTests(SynchronousTestCase):

    def setUp(self) -> None:
        self.one, self.two = self.mktemp(), self.mktemp()
        os.makedirs(self.one)
        os.makedirs(self.two)
        dist(self.one, "Vendor_HWM-2.0.dist-info",
             "# managers\n[ipa_twisted.hardware_managers]\n"
             "vendor = vendor_hwm.manager:VendorManager\n"
             "  other=vendor_hwm.other : Other.factory [extra1, extra2]\n"
             "\n[console_scripts]\nvendor-tool = x:y\n")
        dist(self.one, "plain-1.0.dist-info", None)
        dist(self.one, "legacy.egg-info",
             "[ipa_twisted.hardware_managers]\nlegacy = legacy:Manager\n")
        # shadowed by the first directory's (same normalized name)
        dist(self.two, "vendor.hwm-1.0.dist-info",
             "[ipa_twisted.hardware_managers]\nold = vendor_hwm:Old\n")
        dist(self.two, "another-3.dist-info",
             "[ipa_twisted.hardware_managers]\nanother = another:M\n")

    def answer(self, group: str, path: list[str]) -> list[tuple[str, str]]:
        return [(ep.name, ep.value) for ep in entry_points(group, path)]

    def test_as_importlib_metadata(self) -> None:
        path = [self.one, self.mktemp(), self.two]
        for group in (GROUP, "console_scripts", "nothing"):
            self.assertEqual(self.answer(group, path),
                             importlib_answer(group, path), group)
        self.assertEqual(sorted(self.answer(GROUP, path)), [
            ("another", "another:M"),
            ("legacy", "legacy:Manager"),
            ("other", "vendor_hwm.other : Other.factory [extra1, extra2]"),
            ("vendor", "vendor_hwm.manager:VendorManager"),
        ])

    def test_order_of_the_path(self) -> None:
        path = [self.two, self.one]
        self.assertEqual(self.answer(GROUP, path),
                         importlib_answer(GROUP, path))
        self.assertIn(("old", "vendor_hwm:Old"), self.answer(GROUP, path))

    def test_zip_archive_on_the_path(self) -> None:
        archive = self.mktemp() + ".zip"
        with zipfile.ZipFile(archive, "w") as z:
            z.writestr("zipped-1.0.dist-info/METADATA",
                       "Metadata-Version: 2.1\nName: zipped\nVersion: 1.0\n")
            z.writestr("zipped-1.0.dist-info/entry_points.txt",
                       "[ipa_twisted.hardware_managers]\nz = zipped:M\n")
        path = [archive, self.one]
        self.assertEqual(self.answer(GROUP, path),
                         importlib_answer(GROUP, path))
        self.assertIn(("z", "zipped:M"), self.answer(GROUP, path))

    def test_load(self) -> None:
        ep, = [e for e in entry_points(GROUP, [self.one])
               if e.name == "vendor"]
        self.assertEqual(ep.group, GROUP)
        for value, expected in (("os.path:join", os.path.join),
                                ("os.path", os.path),
                                ("os:path.join [x]", os.path.join)):
            self.assertIs(type(ep)("n", value, GROUP).load(), expected)
        self.assertRaises(ValueError, type(ep)("n", "no good", GROUP).load)

    def test_installed_groups(self) -> None:
        """This environment's: the agent's generic manager, and more."""
        for group in (GROUP, "ipa_twisted.extensions", "console_scripts"):
            self.assertEqual(
                [(e.name, e.value) for e in entry_points(group)],
                [(e.name, e.value)
                 for e in metadata.entry_points(group=group)])
