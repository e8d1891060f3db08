"""ramdisk/stage.py: a cached stage built in a root of its own, with a
stand-in root (a tarball made here) and a stand-in for running its
script (what the script would leave, written by the test)."""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

TOP = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(TOP, "ramdisk"))
import stage  # noqa: E402


class StageTests(SynchronousTestCase):

    def setUp(self) -> None:
        self.cache = self.mktemp()
        os.makedirs(self.cache)
        self.base = os.path.join(self.cache, "base-x")
        os.makedirs(self.base)
        with tarfile.open(os.path.join(self.base, "root.tar"), "w") as tar:
            info = tarfile.TarInfo("etc")
            info.type = tarfile.DIRTYPE
            tar.addfile(info)
        self.roots: list[list[str]] = []
        self.runs: list[tuple[str, list[str]]] = []
        self.asked = 0
        self.fail = False

    def build_root(self, packages: list[str]) -> str:
        self.roots.append(packages)
        return self.base

    def run_in_root(self, root: str, argv: list[str]) -> Any:
        """What the script would do: read its input, write a result and
        a log; or fail."""
        self.runs.append((root, argv))
        inside = os.path.join(root, "thing")
        self.assertTrue(os.path.exists(os.path.join(root, "etc")))
        with open(os.path.join(inside, "input")) as f:
            text = f.read()
        with open(os.path.join(inside, "result"), "w") as f:
            f.write(text.upper())
        with open(os.path.join(inside, "make.log"), "w") as f:
            f.write("made\n")
        return subprocess.CompletedProcess(argv, 1 if self.fail else 0,
                                           "out", "err")

    def files(self) -> dict[str, stage.Content]:
        self.asked += 1
        source = os.path.join(self.cache, "source")
        with open(source, "w") as f:
            f.write("copied")
        return {"input": "hello", "build.sh": "true\n",
                "copied": stage.Copy(source)}

    def collect(self, inside: str, out: str) -> None:
        with open(os.path.join(inside, "result")) as f:
            result = f.read()
        if result != "HELLO":
            raise ValueError("wrong result")
        with open(os.path.join(inside, "copied")) as f:
            self.assertEqual(f.read(), "copied")
        with open(os.path.join(out, "result"), "w") as f:
            f.write(result)

    def build(self, fresh: bool = False, parts: list[bytes] | None = None
              ) -> str:
        return stage.build(self.cache, "thing", parts or [b"one"], ["pkg"],
                         self.files, self.build_root, self.run_in_root,
                         self.collect, fresh=fresh)

    def test_built_then_cached(self) -> None:
        out = self.build()
        self.assertEqual(self.runs[0][1], ["sh", "/thing/build.sh"])
        with open(os.path.join(out, "result")) as f:
            self.assertEqual(f.read(), "HELLO")
        self.assertTrue(os.path.exists(os.path.join(out, "make.log")))
        self.assertEqual(self.build(), out)
        self.assertEqual((len(self.runs), self.asked), (1, 1))
        # the unpacked root is gone
        self.assertEqual(sorted(os.listdir(self.cache)),
                         sorted(["base-x", "source", os.path.basename(out)]))

    def test_the_key(self) -> None:
        out = self.build()
        self.assertNotEqual(self.build(parts=[b"two"]), out)
        # the build root made again: another key
        tar = os.path.join(self.base, "root.tar")
        os.utime(tar, ns=(0, os.stat(tar).st_mtime_ns + 1))
        self.assertNotEqual(self.build(), out)
        self.assertEqual(len(self.runs), 3)

    def test_fresh_builds_again_elsewhere(self) -> None:
        out = self.build()
        again = self.build(fresh=True)
        self.assertNotEqual(again, out)
        self.assertEqual(len(self.runs), 2)
        with open(os.path.join(again, "result")) as f:
            self.assertEqual(f.read(), "HELLO")

    def test_a_failed_script(self) -> None:
        self.fail = True
        with self.assertRaises(stage.StageError) as e:
            self.build()
        self.assertIn("its script failed", str(e.exception))
        self.assertIn("make.log", str(e.exception))   # kept, and named
        self.assertIn("outerr", str(e.exception))
        outs = [n for n in os.listdir(self.cache) if n.startswith("thing-")]
        self.assertEqual(len(outs), 1)
        self.assertFalse(os.path.exists(os.path.join(
            self.cache, outs[0], "done")))
        # fresh: nothing left behind
        with self.assertRaises(stage.StageError):
            self.build(fresh=True)
        self.assertEqual(len([n for n in os.listdir(self.cache)
                              if n.startswith("thing-")]), 1)

    def test_a_wrong_result(self) -> None:
        self.files = lambda: {"input": "bye", "build.sh": "true\n"}  # type: ignore[method-assign]
        with self.assertRaises(stage.StageError) as e:
            self.build()
        self.assertIn("wrong result", str(e.exception))

    def test_no_build_root(self) -> None:
        def fails(packages: list[str]) -> str:
            raise SystemExit("ramdisk: mmdebstrap ... failed (1)")
        with self.assertRaises(stage.StageError) as e:
            stage.build(self.cache, "thing", [b"one"], ["pkg=1.0"], self.files,
                      fails, self.run_in_root, self.collect)
        self.assertIn("pkg=1.0", str(e.exception))
        self.assertIn("mmdebstrap", str(e.exception))
