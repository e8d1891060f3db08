"""ipa_twisted.lean: a package's submodules without its ``__init__``,
which still runs when the package itself is asked for a name."""

from __future__ import annotations

import os
import sys
import tempfile

from twisted.trial.unittest import SynchronousTestCase

from ipa_twisted.lean import submodules_only

INIT = """
import sys
sys.modules[__name__].__dict__.setdefault("runs", 0)
runs += 1
from .core import VALUE
FULL = "init ran"
"""


class SubmodulesOnlyTests(SynchronousTestCase):

    def setUp(self) -> None:
        self.top = tempfile.mkdtemp()
        self.name = f"leanpkg_{os.getpid()}_{id(self)}"
        package = os.path.join(self.top, self.name)
        os.makedirs(os.path.join(package, "sub"))
        files = {
            "__init__.py": INIT,
            "core.py": "VALUE = 42\n",
            "extra.py": "EXTRA = 'extra'\n",
            "user.py": "from . import extra\nUSED = extra.EXTRA\n",
            "sub/__init__.py": "",
            "sub/leaf.py": "LEAF = 'leaf'\n",
        }
        for path, text in files.items():
            with open(os.path.join(package, path), "w") as f:
                f.write(text)
        sys.path.insert(0, self.top)
        self.addCleanup(self._clean)

    def _clean(self) -> None:
        sys.path.remove(self.top)
        for name in list(sys.modules):
            if name == self.name or name.startswith(self.name + "."):
                del sys.modules[name]
        import shutil
        shutil.rmtree(self.top)

    def test_submodule_without_init(self) -> None:
        submodules_only(self.name)
        core = __import__(f"{self.name}.core", fromlist=["VALUE"])
        self.assertEqual(core.VALUE, 42)
        package = sys.modules[self.name]
        self.assertNotIn("FULL", vars(package))
        self.assertNotIn("runs", vars(package))

    def test_relative_import_of_a_sibling_keeps_init_unrun(self) -> None:
        """``from . import extra`` in a submodule imports that module
        only."""
        submodules_only(self.name)
        user = __import__(f"{self.name}.user", fromlist=["USED"])
        self.assertEqual(user.USED, "extra")
        package = sys.modules[self.name]
        self.assertNotIn("FULL", vars(package))
        self.assertIn(f"{self.name}.extra", sys.modules)

    def test_nested_package(self) -> None:
        submodules_only(self.name)
        leaf = __import__(f"{self.name}.sub.leaf", fromlist=["LEAF"])
        self.assertEqual(leaf.LEAF, "leaf")
        self.assertNotIn("FULL", vars(sys.modules[self.name]))

    def test_a_name_of_the_package_runs_its_init_once(self) -> None:
        submodules_only(self.name)
        __import__(f"{self.name}.core")
        package = __import__(self.name, fromlist=["FULL"])
        self.assertEqual(package.FULL, "init ran")
        self.assertEqual(package.VALUE, 42)
        self.assertEqual(package.runs, 1)
        # the package is the one module object, complete from now on
        self.assertIs(sys.modules[self.name], package)
        self.assertNotIn("__getattr__", vars(package))
        with self.assertRaises(AttributeError):
            package.missing

    def test_a_missing_name_is_an_attribute_error(self) -> None:
        submodules_only(self.name)
        package = sys.modules[self.name]
        with self.assertRaises(AttributeError):
            package.missing
        # the init ran looking for it
        self.assertEqual(package.FULL, "init ran")

    def test_a_failing_init_fails_again(self) -> None:
        """An ``__init__`` that raises leaves no half-made package: the
        next request for a name runs it again and raises the same."""
        with open(os.path.join(self.top, self.name, "__init__.py"),
                  "a") as f:
            f.write("import no_such_module_here\n")
        submodules_only(self.name)
        package = sys.modules[self.name]
        for _ in range(2):
            with self.assertRaises(ModuleNotFoundError):
                package.FULL
            # what the failed run had bound is gone again
            self.assertNotIn("FULL", vars(package))
            self.assertNotIn("runs", vars(package))

    def test_odd_names_are_not_submodules(self) -> None:
        """hasattr() with a name that is no identifier, or a submodule
        that is not there, answers False instead of importing or
        raising."""
        submodules_only(self.name)
        package = sys.modules[self.name]
        self.assertFalse(hasattr(package, "x.y"))
        self.assertFalse(hasattr(package, "nothing_like_it"))
        self.assertNotIn(f"{self.name}.x", sys.modules)

    def test_imported_package_left_alone(self) -> None:
        package = __import__(self.name)
        self.assertEqual(package.FULL, "init ran")
        submodules_only(self.name)
        self.assertIs(sys.modules[self.name], package)
        self.assertNotIn("__getattr__", vars(package))
        self.assertEqual(package.runs, 1)

    def test_not_installed_or_not_a_package(self) -> None:
        was = "colorsys" in sys.modules
        submodules_only(self.name + "_absent", "colorsys")
        self.assertNotIn(self.name + "_absent", sys.modules)
        if not was:
            # a module, not a package: not put in sys.modules
            self.assertNotIn("colorsys", sys.modules)


class DropGeneratedSourcesTests(SynchronousTestCase):

    def test_attrs_sources_dropped_others_kept(self) -> None:
        import linecache

        import attrs

        from ipa_twisted.lean import ATTRS_SOURCE, drop_generated_sources

        @attrs.frozen
        class Point:
            x: int
            y: int

        mine = [k for k in linecache.cache
                if isinstance(k, str) and k.startswith(ATTRS_SOURCE)
                and "Point" in k]
        self.assertNotEqual(mine, [])
        linecache.cache["<not attrs>"] = (3, None, ["x\n"], "<not attrs>")
        self.addCleanup(linecache.cache.pop, "<not attrs>", None)
        dropped = drop_generated_sources()
        self.assertGreaterEqual(dropped, len(mine))
        self.assertEqual([k for k in linecache.cache if isinstance(k, str)
                          and k.startswith(ATTRS_SOURCE)], [])
        self.assertIn("<not attrs>", linecache.cache)
        # the class works without its source
        self.assertEqual(Point(1, 2), Point(1, 2))
        self.assertEqual(repr(Point(1, 2)), "Point(x=1, y=2)")
        self.assertEqual(drop_generated_sources(), 0)


class OnFirstUseTests(SynchronousTestCase):
    """lean.on_first_use: a module's code runs when a name is first
    asked of it."""

    def setUp(self) -> None:
        self.top = tempfile.mkdtemp()
        self.name = f"leanmod_{os.getpid()}_{id(self)}"
        with open(os.path.join(self.top, self.name + ".py"), "w") as f:
            f.write("import sys\n"
                    "sys.modules[__name__].__dict__.setdefault('runs', 0)\n"
                    "runs += 1\n"
                    "VALUE = 7\n")
        sys.path.insert(0, self.top)

        def clean() -> None:
            sys.path.remove(self.top)
            sys.modules.pop(self.name, None)
            import shutil
            shutil.rmtree(self.top)
        self.addCleanup(clean)

    def test_runs_at_the_first_name_asked(self) -> None:
        from ipa_twisted.lean import on_first_use
        on_first_use(self.name)
        module = __import__(self.name)   # as ``import name`` does
        self.assertIs(module, sys.modules[self.name])
        self.assertNotIn("runs", vars(module))
        self.assertEqual(module.__name__, self.name)   # no run for this
        self.assertNotIn("runs", vars(module))
        self.assertEqual(module.VALUE, 7)
        self.assertEqual(module.runs, 1)
        # ``from name import X`` and a missing name: no second run
        self.assertEqual(__import__(self.name, fromlist=["VALUE"]).VALUE, 7)
        with self.assertRaises(AttributeError):
            module.missing
        self.assertEqual(module.runs, 1)

    def test_from_import_runs_it(self) -> None:
        from ipa_twisted.lean import on_first_use
        on_first_use(self.name)
        namespace: dict[str, object] = {}
        exec(f"from {self.name} import VALUE", namespace)
        self.assertEqual(namespace["VALUE"], 7)
        self.assertEqual(sys.modules[self.name].runs, 1)   # type: ignore

    def test_packages_absent_and_imported_modules_left_alone(self) -> None:
        from ipa_twisted.lean import on_first_use
        import json   # a package
        import colorsys
        on_first_use(self.name + "_absent", "json", "colorsys")
        self.assertNotIn(self.name + "_absent", sys.modules)
        self.assertIs(sys.modules["json"], json)
        self.assertIs(sys.modules["colorsys"], colorsys)
        self.assertNotIn("__getattr__", vars(colorsys))
