"""ramdisk/builder.py's pure parts: the tool check that fails a build, the
kernel module selection, the cache key's inputs."""

from __future__ import annotations

import os
import sys
import threading
import time
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from ipa_twisted import tools

TOP = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(TOP, "ramdisk"))
import builder  # noqa: E402


class ToolCheckTests(SynchronousTestCase):

    def root_with(self, names: list[str]) -> str:
        root = self.mktemp()
        for d in ("usr/bin", "usr/sbin", "usr/local/bin"):
            os.makedirs(os.path.join(root, d))
        for name in names:
            open(os.path.join(root, "usr/sbin", name), "w").close()
        return root

    def needed(self) -> list[str]:
        return [t.name for t in tools.of_scope(tools.AGENT)
                if not t.optional] + ["twistd", "python3"]

    def test_every_needed_tool_present_passes(self) -> None:
        builder.check_tools(self.root_with(self.needed()))

    def test_a_missing_agent_tool_fails_the_build(self) -> None:
        names = [n for n in self.needed() if n != "sgdisk"]
        with self.assertRaises(SystemExit) as e:
            builder.check_tools(self.root_with(names))
        self.assertIn("sgdisk (gdisk", str(e.exception))

    def test_optional_tools_are_not_required(self) -> None:
        optional = {t.name for t in tools.TOOLS if t.optional}
        self.assertIn("biosdevname", optional)
        builder.check_tools(self.root_with(self.needed()))

    def test_the_base_installs_the_agent_tools_packages(self) -> None:
        packages = builder.agent_packages()
        for tool in tools.of_scope(tools.AGENT):
            if tool.package and not tool.optional:
                self.assertIn(tool.package, packages)
        self.assertNotIn("systemd", packages)  # journalctl is optional


class InImageTests(SynchronousTestCase):

    def test_writable_leaves_out_the_read_only_remount(self) -> None:
        self.assertIn("remount,bind,ro", builder.IN_IMAGE)
        self.assertNotIn("remount", builder.IN_IMAGE_RW)
        self.assertTrue(builder.IN_IMAGE_RW.startswith(
            'mount --bind "$0" "$0" && \\\nexec chroot "$0"'))


class ModuleTests(SynchronousTestCase):

    def test_wanted_modules_and_their_dependencies(self) -> None:
        moddir = self.mktemp()
        os.makedirs(moddir)
        with open(os.path.join(moddir, "modules.dep"), "w") as f:
            f.write("kernel/drivers/nvme/host/nvme.ko: "
                    "kernel/drivers/nvme/host/nvme-core.ko\n"
                    "kernel/drivers/nvme/host/nvme-core.ko:\n"
                    "kernel/sound/core/snd.ko: kernel/sound/core/snd-timer.ko\n"
                    "kernel/sound/core/snd-timer.ko:\n"
                    "kernel/drivers/net/ethernet/intel/ice/ice.ko: "
                    "kernel/drivers/dpll/dpll.ko\n"
                    "kernel/drivers/dpll/dpll.ko:\n")
        self.assertEqual(builder.module_closure(moddir), [
            "kernel/drivers/dpll/dpll.ko",
            "kernel/drivers/net/ethernet/intel/ice/ice.ko",
            "kernel/drivers/nvme/host/nvme-core.ko",
            "kernel/drivers/nvme/host/nvme.ko"])


    def test_left_out_unless_needed(self) -> None:
        moddir = self.mktemp()
        os.makedirs(moddir)
        with open(os.path.join(moddir, "modules.dep"), "w") as f:
            f.write("kernel/drivers/block/floppy.ko:\n"
                    "kernel/drivers/block/virtio_blk.ko:\n")
        self.assertEqual(builder.module_closure(moddir),
                         ["kernel/drivers/block/virtio_blk.ko"])


class SourceTests(SynchronousTestCase):

    def test_the_agent_sources_are_in_the_key(self) -> None:
        files = builder.source_files(builder.AGENT_SOURCES)
        self.assertIn("ipa_twisted/agent.py", files)
        self.assertIn("twisted/plugins/ipa_twisted_plugin.py", files)
        self.assertIn("setup.cfg", files)
        self.assertFalse([f for f in files if f.endswith(".pyc")])
        self.assertEqual(files, sorted(files))


class SlimTests(SynchronousTestCase):
    """What the build cuts from our ramdisk, on a made-up root."""

    def make(self, root: str, rel: str, data: bytes = b"x") -> str:
        path = os.path.join(root, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(data)
        return path

    def test_cuts_and_keeps(self) -> None:
        root = self.mktemp()
        gconv = builder.LIBDIR + "/gconv/"
        stdlib = "usr/lib/python3.11/"
        cut = ["usr/bin/perl", "usr/bin/perl5.36.0",
               builder.LIBDIR + "/perl-base/strict.pm",
               "usr/share/perl5/Debconf/Db.pm",
               "usr/lib/udev/hwdb.d/20-OUI.hwdb",
               "var/lib/dpkg/info/udev.list",
               gconv + "EUC-JP.so", gconv + "ISO8859-2.so",
               stdlib + "turtle.py",
               stdlib + "__pycache__/turtle.cpython-311.pyc",
               stdlib + "lib-dynload/_testcapi.cpython-311-x86_64-linux-gnu.so"]
        kept = ["usr/bin/python3.11", "var/lib/dpkg/status",
                gconv + "IBM850.so", gconv + "IBM437.so",
                gconv + "gconv-modules.cache",
                stdlib + "os.py", stdlib + "__pycache__/os.cpython-311.pyc",
                stdlib + "json/__init__.py",
                stdlib + "json/__pycache__/__init__.cpython-311.pyc",
                "usr/lib/udev/rules.d/80-net-setup-link.rules"]
        for rel in cut + kept:
            self.make(root, rel)
        builder.slim(root, self.mktemp())
        self.assertEqual([r for r in cut
                          if os.path.lexists(os.path.join(root, r))], [])
        self.assertEqual([r for r in kept
                          if not os.path.exists(os.path.join(root, r))], [])

    def test_debian_bytecode_made_unchecked(self) -> None:
        root = self.mktemp()
        body = b"\x00" * 8 + b"code"
        checked = self.make(root, "a.pyc", b"\xa7\r\r\n\x03\0\0\0" + body)
        timestamp = self.make(root, "b.pyc", b"\xa7\r\r\n\x00\0\0\0" + body)
        builder.trust_bytecode(checked)
        builder.trust_bytecode(timestamp)
        with open(checked, "rb") as f:
            self.assertEqual(f.read(), b"\xa7\r\r\n\x01\0\0\0" + body)
        with open(timestamp, "rb") as f:   # not hash-based: left alone
            self.assertEqual(f.read(), b"\xa7\r\r\n\x00\0\0\0" + body)

    def test_smoke_test_runs_every_needed_tool(self) -> None:
        # every non-optional agent tool has a way to run it that exits 0
        names = [t.name for t in tools.of_scope(tools.AGENT)
                 if not t.optional]
        self.assertEqual(sorted(set(builder.SMOKE_ARGS) - set(names)), [])
        self.assertIn("bsdtar -xf", builder.SMOKE_SCRIPT)
        self.assertIn("mcopy", builder.SMOKE_SCRIPT)


def load_start_agent() -> Any:
    """ramdisk/start-agent (a script: no .py) as a module."""
    return builder.load_start_agent(os.path.join(TOP, "ramdisk",
                                                 "start-agent"))


class ImportedCueTests(SynchronousTestCase):
    """start-agent's cue to /init (a FIFO /init waits to read)."""

    def setUp(self) -> None:
        self.start_agent = load_start_agent()
        self.fifo = self.mktemp()
        os.mkfifo(self.fifo)

    def test_the_waiting_reader_goes_on(self) -> None:
        said: list[bytes] = []
        reader = threading.Thread(target=lambda: said.append(
            open(self.fifo, "rb").read()))
        reader.start()
        try:
            # the reader is in open(2) (or about to be): opening for
            # writing without it fails, so the cue is sent until it is
            deadline = time.monotonic() + 10
            while reader.is_alive() and time.monotonic() < deadline:
                self.start_agent.imported(self.fifo)
                reader.join(0.01)
            self.assertFalse(reader.is_alive())
            self.assertEqual(said, [b""])
        finally:
            if reader.is_alive():           # let it go, whatever happened
                os.close(os.open(self.fifo, os.O_RDWR))
                reader.join()

    def test_without_a_reader_it_does_not_block(self) -> None:
        cue = threading.Thread(target=lambda: (
            self.start_agent.imported(self.fifo),
            self.start_agent.imported(self.fifo + ".absent")), daemon=True)
        cue.start()
        cue.join(10)
        alive = cue.is_alive()
        if alive:                       # it blocked in open(2): free it
            os.close(os.open(self.fifo, os.O_RDONLY | os.O_NONBLOCK))
        self.assertFalse(alive)
        self.assertFalse(os.path.exists(self.fifo + ".absent"))


class StartAgentTests(SynchronousTestCase):
    """ramdisk/start-agent's preload: what twistd needs first, then the
    rest of the agent only while the network is not up yet."""

    def setUp(self) -> None:
        self.start_agent = load_start_agent()
        self.imported: list[str] = []
        self.patch(self.start_agent.importlib, "import_module",
                   self.imported.append)

    def test_core_only_once_the_network_is_up(self) -> None:
        self.assertEqual(self.start_agent.preload(stop=lambda: True), [])
        self.assertEqual(self.imported, list(self.start_agent.CORE))

    def test_prepare_makes_pdb_run_on_first_use(self) -> None:
        """twistd's pdb (for --debug) is made to run when first used,
        before CORE is imported (prepare(), which the boot, the build's
        recording and its listing of what the boot imports run)."""
        from ipa_twisted import lean
        calls = []
        self.patch(lean, "on_first_use", lambda *names: calls.append(names))
        self.start_agent.prepare()
        self.assertEqual(calls, [("pdb",)])

    def test_everything_but_tests_while_waiting(self) -> None:
        self.start_agent.preload(stop=lambda: False)
        core = list(self.start_agent.CORE)
        self.assertEqual(self.imported[:len(core)], core)
        self.assertIn("ipa_twisted.image.pipeline", self.imported)
        self.assertIn("ipa_twisted.api.app", self.imported)
        self.assertFalse([n for n in self.imported
                          if n.startswith(self.start_agent.SKIP)])

    def test_stops_as_soon_as_the_network_is_up(self) -> None:
        checks = []

        def stop() -> bool:
            checks.append(len(self.imported))
            return len(checks) > 3

        self.start_agent.preload(stop=stop)
        self.assertEqual(len(checks), 4)
        # no import after the check that said stop
        self.assertEqual(len(self.imported), checks[-1])
        self.assertLess(len(self.imported), len(self.start_agent.CORE) + 4)

    def test_the_rest_once_settled(self) -> None:
        """Nothing but CORE before settle() (the cold part is mounted)."""
        settled = []
        self.start_agent.preload(
            stop=lambda: False,
            settle=lambda: settled.append(len(self.imported)))
        self.assertEqual(settled, [len(self.start_agent.CORE)])
        self.assertGreater(len(self.imported), len(self.start_agent.CORE))

    def test_core_tried_again_once_settled(self) -> None:
        """A CORE module that failed before the cold part was mounted is
        imported again after, and is not reported if it then works."""
        mounted = []
        tried: list[str] = []

        def load(name: str) -> None:
            tried.append(name)
            if name == "ipa_twisted.tap" and not mounted:
                raise ImportError("a file not there yet")

        self.patch(self.start_agent.importlib, "import_module", load)
        failed = self.start_agent.preload(stop=lambda: True,
                                          settle=lambda: mounted.append(1))
        self.assertEqual(failed, [])
        self.assertEqual(tried, list(self.start_agent.CORE)
                         + ["ipa_twisted.tap"])

    def test_waits_for_the_cold_part(self) -> None:
        flag = self.mktemp()
        self.patch(self.start_agent, "COLD_FLAG", flag)
        clock = [0.0]
        self.patch(self.start_agent.time, "monotonic", lambda: clock[0])

        def sleep(seconds: float) -> None:
            clock[0] += seconds
            if clock[0] >= 1.0:
                open(flag, "w").close()

        self.patch(self.start_agent.time, "sleep", sleep)
        self.start_agent.cold_ready()
        self.assertTrue(1.0 <= clock[0] < 1.1)
        # no flag at all: it gives up at the limit
        os.unlink(flag)
        self.patch(self.start_agent.time, "sleep",
                   lambda s: clock.__setitem__(0, clock[0] + s))
        clock[0] = 0.0
        self.start_agent.cold_ready(limit=3.0)
        self.assertTrue(3.0 <= clock[0] < 3.1)

    def test_a_failing_import_is_reported(self) -> None:
        def fail(name: str) -> None:
            raise ImportError(f"no {name}")

        self.patch(self.start_agent.importlib, "import_module", fail)
        failed = self.start_agent.preload(stop=lambda: True)
        self.assertEqual(len(failed), len(self.start_agent.CORE))
        self.assertIn("ipa_twisted.agent: ImportError", failed[-1])


#: compile()d by a function of this module, which has the annotations
#: future: the annotation stays a string
ANNOTATED = "def f(x: NotDefinedAnywhere) -> None:\n    pass\n"


def compile_here(source: str) -> Any:
    """compile() called from code with this module's future flags."""
    return compile(source, "<test>", "exec")


#: the same call from code without any future flag (not even this
#: module's, which exec() would pass on)
_plain: dict[str, Any] = {}
exec(compile("def compile_plain(source):\n"
             "    return compile(source, '<test>', 'exec')\n",
             "<plain>", "exec", dont_inherit=True), _plain)
compile_plain = _plain["compile_plain"]


class CompileCacheTests(SynchronousTestCase):
    """start-agent's CompileCache: what the build records, the boot
    uses."""

    PATTERNS = [(r"(?P<key>ipa-[a-z-]+)=(?P<value>\S*)", 0),
                (rb"^\x00+(..)$", 0),
                (r"disk (\d+) of (\d+)", 2),   # re.IGNORECASE
                (r"disk (\d+) of (\d+)", 0),
                ("ab+", 0), (b"ab+", 0)]         # str and bytes

    def setUp(self) -> None:
        import builtins
        import re
        self.start_agent = load_start_agent()
        self.re = re
        compile_before = builtins.compile
        re_before = re._compiler.compile

        def restore() -> None:
            builtins.compile = compile_before
            re._compiler.compile = re_before
            re.purge()
        self.addCleanup(restore)
        re.purge()

    def recording(self, sources: list[str] = [ANNOTATED]) -> bytes:
        cache = self.start_agent.CompileCache()
        cache.record()
        try:
            for pattern, flags in self.PATTERNS:
                self.re.compile(pattern, flags)
            codes = [compile_here(s) for s in sources]
        finally:
            cache.uninstall()
        self.re.purge()
        self.recorded = codes
        return cache.dump()

    def test_a_recorded_pattern_is_not_parsed_again(self) -> None:
        data = self.recording()
        expected = [self.re.compile(p, f) for p, f in self.PATTERNS]
        self.re.purge()
        cache = self.start_agent.CompileCache()
        self.assertTrue(cache.load(data))

        def parse(*args: Any) -> None:
            raise AssertionError("parsed again")
        self.patch(self.re._parser, "parse", parse)
        for (pattern, flags), want in zip(self.PATTERNS, expected):
            got = self.re.compile(pattern, flags)
            # equal patterns: the same program, flags and pattern
            self.assertEqual(got, want)
            self.assertEqual((type(got.pattern), got.groupindex),
                             (type(want.pattern), want.groupindex))
        self.assertEqual(
            self.re.compile(self.PATTERNS[0][0]).match(
                "ipa-api-url=http://x").groupdict(),
            {"key": "ipa-api-url", "value": "http://x"})
        self.assertEqual(self.re.compile(*self.PATTERNS[1]).match(
            b"\0\0ab").group(1), b"ab")
        self.assertTrue(self.re.compile(*self.PATTERNS[2]).search(
            "DISK 1 OF 2"))
        self.assertFalse(self.re.compile(*self.PATTERNS[3]).search(
            "DISK 1 OF 2"))
        self.assertEqual((cache.hits, cache.misses), (6, 0))
        # one it does not hold goes to re's own compiler
        self.assertRaises(AssertionError, self.re.compile, "not recorded")
        self.assertEqual(cache.misses, 1)

    def test_a_recorded_source_is_not_compiled_again(self) -> None:
        data = self.recording()
        cache = self.start_agent.CompileCache()
        self.assertTrue(cache.load(data))
        compiled = []
        real = cache._compile

        def counting(*args: Any) -> Any:
            compiled.append(args[0])
            return real(*args)
        cache._compile = counting
        code = compile_here(ANNOTATED)
        self.assertEqual(code, self.recorded[0])
        self.assertEqual(compiled, [])
        namespace: dict[str, Any] = {}
        exec(code, namespace)
        self.assertEqual(namespace["f"].__annotations__,
                         {"x": "NotDefinedAnywhere", "return": "None"})
        # again: still there
        compile_here(ANNOTATED)
        self.assertEqual((cache.hits, cache.misses, compiled), (2, 0, []))

    def test_the_callers_future_flags_are_kept(self) -> None:
        """compile() takes the future flags of the code calling it: the
        cache's own compile() must not hide them, and a source recorded
        under one set of flags is not used under another."""
        data = self.recording()
        cache = self.start_agent.CompileCache()
        self.assertTrue(cache.load(data))
        code = compile_plain(ANNOTATED)   # not from the cache
        self.assertEqual((cache.hits, cache.misses), (0, 1))
        self.assertRaises(NameError, exec, code, {})
        # not recorded, from code with the future: a string annotation
        namespace: dict[str, Any] = {}
        exec(compile_here(ANNOTATED.replace("f(", "g(")), namespace)
        self.assertEqual(namespace["g"].__annotations__["x"],
                         "NotDefinedAnywhere")
        # not cached at all (bytes): the caller's flags too
        exec(compile_here(ANNOTATED.encode()), namespace)  # type: ignore
        self.assertEqual(namespace["f"].__annotations__["x"],
                         "NotDefinedAnywhere")
        self.assertEqual((cache.hits, cache.misses), (0, 2))

    def test_another_pythons_recording_is_not_used(self) -> None:
        import builtins
        import marshal
        tag, patterns, sources = marshal.loads(self.recording())
        before = builtins.compile
        cache = self.start_agent.CompileCache()
        self.assertFalse(cache.load(marshal.dumps(
            ("3.99.0|1|0", patterns, sources))))
        self.assertFalse(cache.load(b"not a recording"))
        self.assertIs(builtins.compile, before)
        self.assertTrue(cache.load(marshal.dumps((tag, patterns, sources))))
        self.assertIsNot(builtins.compile, before)

    def test_a_damaged_recording_or_entry_is_compiled_as_usual(
            self) -> None:
        import builtins
        import marshal
        tag, patterns, sources = marshal.loads(self.recording())
        before = builtins.compile
        cache = self.start_agent.CompileCache()
        # not a list of pairs: refused, nothing installed
        self.assertFalse(cache.load(marshal.dumps((tag, [1, 2], []))))
        self.assertIs(builtins.compile, before)
        # entries that fail: compiled by Python itself
        broken_patterns = [(k, (v[0], [999999], v[2], v[3], v[4]))
                           for k, v in patterns]
        broken_sources = [(k, b"not marshal") for k, v in sources]
        self.assertTrue(cache.load(marshal.dumps(
            (tag, broken_patterns, broken_sources))))
        for pattern, flags in self.PATTERNS:
            self.assertEqual(self.re.compile(pattern, flags).pattern,
                             pattern)
        namespace: dict[str, Any] = {}
        exec(compile_here(ANNOTATED), namespace)
        self.assertIn("f", namespace)
        self.assertEqual((cache.hits, cache.misses),
                         (0, len(self.PATTERNS) + 1))

    def test_use_and_close(self) -> None:
        import builtins
        path = self.mktemp()
        self.assertIsNone(self.start_agent.use_compile_cache(path))
        with open(path, "wb") as f:
            f.write(self.recording()[:-20])      # cut short
        self.assertIsNone(self.start_agent.use_compile_cache(path))
        before = builtins.compile
        with open(path, "wb") as f:
            f.write(self.recording())
        cache = self.start_agent.use_compile_cache(path)
        self.assertIsNotNone(cache)
        self.assertIsNot(builtins.compile, before)
        self.assertTrue(cache.patterns)
        cache.close()
        self.assertIs(builtins.compile, before)
        self.assertEqual((cache.patterns, cache.sources), ({}, {}))

    def test_merge_keeps_what_both_recordings_agree_on(self) -> None:
        import marshal
        first = self.recording(["x = 1\n", "y = {'a', 'b'}\n"])
        tag, patterns, sources = marshal.loads(first)
        # the second: one source missing (it held a hash), one pattern's
        # program different, the set's code in another order
        other_patterns = [(k, v if n else (v[0], v[1] + [0]) + v[2:])
                          for n, (k, v) in enumerate(patterns)]
        other_sources = [(k, b"another order") for k, v in sources[1:]]
        merged = marshal.loads(self.start_agent.merge_recordings(
            first, marshal.dumps((tag, other_patterns, other_sources))))
        self.assertEqual(merged[0], tag)
        self.assertEqual(merged[1], patterns[1:])
        self.assertEqual(merged[2], sources[1:])
        self.assertRaises(ValueError, self.start_agent.merge_recordings,
                          first, marshal.dumps(("other", [], [])))
