"""ramdisk/builder.py's stub libraries, on a made-up root: a program
linked (bind-now, versioned symbols, a data object) against a library
that is replaced by a stub still starts and runs what it uses of others;
calling into the stub says which library and symbol and exits 127; what
only the stubbed library needed is left out, nothing else."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

from twisted.trial.unittest import SynchronousTestCase

TOP = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(TOP, "ramdisk"))

import builder  # noqa: E402

BAR = "int bar_value(void) { return 42; }\n"
FOO = """\
extern int bar_value(void);
int foo_table[16] = {7};
int foo_old(void) { return 1; }
int foo_new(void) { return bar_value(); }
int common(void) { return 5; }
"""
FOO_MAP = "FOO_1 { global: foo_old; foo_table; local: *; };\n" \
          "FOO_2 { global: foo_new; common; } FOO_1;\n"
KEEP = "int keep_value(void) { return 3; }\nint common(void) { return 9; }\n"
PROG = """\
#include <stdio.h>
extern int foo_old(void), foo_new(void), keep_value(void), common(void);
extern int foo_table[16];
int main(int argc, char **argv)
{
    if (argc > 1)
        printf("%d\\n", foo_new());
    printf("ok %d %d %d\\n", keep_value(), common(), (int)sizeof foo_table);
    return 0;
}
"""


class StubLibraryTests(SynchronousTestCase):
    def setUp(self) -> None:
        if not (shutil.which("cc") and shutil.which("nm")
                and shutil.which("readelf")):
            self.fail("cc, nm and readelf are needed (tools/setup-host.sh "
                      "installs gcc and binutils)")
        self.root = os.path.abspath(self.mktemp())
        self.lib = os.path.join(self.root, "usr", "lib")
        os.makedirs(self.lib)
        os.makedirs(os.path.join(self.root, "usr", "bin"))
        src = os.path.abspath(self.mktemp())
        os.makedirs(src)

        def write(name: str, text: str) -> str:
            path = os.path.join(src, name)
            with open(path, "w") as f:
                f.write(text)
            return path

        def cc(*argv: str) -> None:
            subprocess.run(["cc", "-O2", "-fPIC"] + list(argv), check=True)

        cc("-shared", "-Wl,-soname,libbar.so.1", "-o",
           os.path.join(self.lib, "libbar.so.1"), write("bar.c", BAR))
        cc("-shared", "-Wl,-soname,libfoo.so.1",
           f"-Wl,--version-script={write('foo.map', FOO_MAP)}",
           "-o", os.path.join(self.lib, "libfoo.so.1"), write("foo.c", FOO),
           f"-L{self.lib}", "-l:libbar.so.1")
        cc("-shared", "-Wl,-soname,libkeep.so.1", "-o",
           os.path.join(self.lib, "libkeep.so.1"), write("keep.c", KEEP))
        # common() comes from libkeep (linked first): not the stub's
        cc("-o", os.path.join(self.root, "usr", "bin", "prog"),
           write("prog.c", PROG), "-Wl,-z,now", f"-L{self.lib}",
           f"-Wl,-rpath-link,{self.lib}", "-l:libkeep.so.1",
           "-l:libfoo.so.1")

    def run_prog(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [os.path.join(self.root, "usr", "bin", "prog")] + list(args),
            env={"LD_LIBRARY_PATH": self.lib}, capture_output=True,
            text=True)

    def test_stubbed(self) -> None:
        self.assertEqual(self.run_prog("call").stdout, "42\nok 3 9 64\n")
        work = os.path.abspath(self.mktemp())
        os.makedirs(work)
        builder.stub_engine_libraries(self.root, work, ["libfoo.so.1"])
        # libbar: only libfoo needed it; libkeep stays
        self.assertEqual(sorted(os.listdir(self.lib)),
                         ["libfoo.so.1", "libkeep.so.1"])
        result = self.run_prog()
        self.assertEqual((result.returncode, result.stdout, result.stderr),
                         (0, "ok 3 9 64\n", ""))
        result = self.run_prog("call")
        self.assertEqual((result.returncode, result.stderr), (
            127, "libfoo.so.1 is a stub in this ramdisk: foo_new called\n"))

    def test_nothing_to_stub(self) -> None:
        work = os.path.abspath(self.mktemp())
        os.makedirs(work)
        builder.stub_engine_libraries(self.root, work, ["libnone.so.1"])
        self.assertEqual(sorted(os.listdir(self.lib)),
                         ["libbar.so.1", "libfoo.so.1", "libkeep.so.1"])
        self.assertEqual(self.run_prog("call").stdout, "42\nok 3 9 64\n")
