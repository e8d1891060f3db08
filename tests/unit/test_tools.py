"""The list of external tools (ipa_twisted/tools.py) against the code.

The agent runs tools only through its process runner, so the names are in
the argv lists handed to ``run`` (directly, through a variable, a dict of
commands, a helper returning an argv, or a wrapper such as ``_run``).  A
static reading of the code finds them; every one must be in the list, so
that the set-up script installs it and the agent warns when it is absent.
"""

from __future__ import annotations

import ast
import functools
import gc
import os
import shlex
import textwrap
from typing import Iterable

from twisted.trial.unittest import SynchronousTestCase

from ipa_twisted import config, tools

TOP = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))

#: tools that run the tool named after their ``--``
WRAPPERS = {"setpriv"}

#: calls whose positional arguments may be an argv
RUN_CALLS = {"run", "_run", "_optional", "sandboxed", "Popen",
             "check_output", "check_call"}


class _Module:
    """A parsed module, read in one pass: its function definitions, and
    each call with the function (or lambda) it is in."""

    def __init__(self, name: str, source: str) -> None:
        self.name = name
        self.tree = ast.parse(source)
        self.functions: list[ast.FunctionDef | ast.AsyncFunctionDef] = []
        self.calls: list[tuple[ast.Call, ast.AST]] = []
        # one walk instead of four (a parent map, then a walk for the
        # functions and one for the calls): parsing and walking the code
        # is what this test spends its time on
        stack: list[tuple[ast.AST, ast.AST]] = [(self.tree, self.tree)]
        while stack:
            node, scope = stack.pop()
            if isinstance(node, ast.Call):
                self.calls.append((node, scope))
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                self.functions.append(node)
                scope = node
            elif isinstance(node, ast.Lambda):
                scope = node
            # a node's scope is the innermost function or lambda above it
            # (a decorator's or a default's too, as a parent walk finds)
            stack.extend((child, scope)
                         for child in ast.iter_child_nodes(node))


def _call_name(call: ast.Call) -> str | None:
    if isinstance(call.func, ast.Attribute):
        return call.func.attr
    if isinstance(call.func, ast.Name):
        return call.func.id
    return None


def _bound(scope: ast.AST, name: str) -> list[ast.expr]:
    """Values assigned to ``name`` in ``scope`` (``+=`` extends an argv, so
    it is not where its tool is)."""
    values: list[ast.expr] = []
    for node in ast.walk(scope):
        if isinstance(node, ast.Assign):
            if any(isinstance(t, ast.Name) and t.id == name
                   for t in node.targets):
                values.append(node.value)
        elif (isinstance(node, ast.AnnAssign) and node.value is not None
              and isinstance(node.target, ast.Name)
              and node.target.id == name):
            values.append(node.value)
    return values


def _parameters(scope: ast.AST) -> set[str]:
    args = getattr(scope, "args", None)
    if args is None:
        return set()
    every = args.posonlyargs + args.args + args.kwonlyargs
    return {a.arg for a in every}


class Scan:
    """Tools named by the argv lists the code runs, and the places where an
    argv comes from something that cannot be read statically."""

    def __init__(self, modules: Iterable[_Module]) -> None:
        self.modules = list(modules)
        self.tools: dict[str, set[str]] = {}
        self.dynamic: set[str] = set()
        self._functions: dict[str, list[tuple[_Module, ast.AST]]] = {}
        for module in self.modules:
            for function in module.functions:
                self._functions.setdefault(function.name, []).append(
                    (module, function))
        for module in self.modules:
            for call, scope in module.calls:
                self._call(module, call, scope)

    def _call(self, module: _Module, call: ast.Call, scope: ast.AST) -> None:
        where = f"{module.name}:{call.lineno}"
        name = _call_name(call)
        if name == "which" and call.args and isinstance(
                call.args[0], ast.Constant):
            self.tools.setdefault(str(call.args[0].value), set()).add(where)
        elif name in RUN_CALLS:
            for arg in call.args:
                self._argv(module, arg, scope, where, 0)

    def _wrapped(self, expr: ast.List | ast.Tuple, where: str) -> None:
        words = [e.value if isinstance(e, ast.Constant) else None
                 for e in expr.elts]
        if "--" in words:
            rest = words[words.index("--") + 1:]
            if rest and isinstance(rest[0], str):
                self.tools.setdefault(rest[0], set()).add(where)

    def _argv(self, module: _Module, expr: ast.AST, scope: ast.AST,
              where: str, depth: int, named: bool = False) -> None:
        """Read the tool out of ``expr``; ``named``: it is the value of a
        variable called ``*argv*``, so what cannot be read is reported."""
        if depth > 6:
            return
        if isinstance(expr, (ast.List, ast.Tuple)):
            if not expr.elts:
                return
            first = expr.elts[0]
            if isinstance(first, ast.Constant) and isinstance(first.value,
                                                              str):
                self.tools.setdefault(first.value, set()).add(where)
                if first.value in WRAPPERS:
                    self._wrapped(expr, where)
            else:
                self.dynamic.add(where)
        elif isinstance(expr, ast.BinOp):
            self._argv(module, expr.left, scope, where, depth + 1)
        elif isinstance(expr, ast.Subscript):
            self._argv(module, expr.value, scope, where, depth + 1)
        elif isinstance(expr, ast.Dict):
            for value in expr.values:
                self._argv(module, value, scope, where, depth + 1)
        elif isinstance(expr, ast.Name):
            if expr.id in _parameters(scope):
                return  # a wrapper: its callers are read instead
            values = _bound(scope, expr.id) or _bound(module.tree, expr.id)
            named = "argv" in expr.id
            if not values and named:
                self.dynamic.add(where)
            for value in values:
                self._argv(module, value, scope, where, depth + 1, named)
        elif isinstance(expr, ast.Call):
            name = _call_name(expr)
            for fmodule, function in self._functions.get(name or "", []):
                for node in ast.walk(function):
                    if isinstance(node, ast.Return) and node.value:
                        self._argv(fmodule, node.value, function, where,
                                   depth + 1)
            if name not in self._functions and named:
                self.dynamic.add(where)


def scan_tree(top: str, skip: Iterable[str] = ()) -> Scan:
    modules = []
    # the parser makes hundreds of thousands of nodes and no cycle among
    # them: the cyclic collector, run over and over as they pile up, took
    # half of the time (it runs again once this is done)
    collecting = gc.isenabled()
    gc.disable()
    try:
        for root, dirs, files in os.walk(top):
            dirs[:] = sorted(d for d in dirs
                             if not d.startswith((".", "__")))
            for name in sorted(files):
                if name.endswith(".py") and name not in skip:
                    path = os.path.join(root, name)
                    with open(path, encoding="utf-8") as f:
                        modules.append(_Module(os.path.relpath(path, TOP),
                                               f.read()))
        return Scan(modules)
    finally:
        if collecting:
            gc.enable()


def scan_source(source: str) -> Scan:
    return Scan([_Module("example.py", textwrap.dedent(source))])


class ScannerTests(SynchronousTestCase):
    """The reader finds tools in every shape the code uses, so that the
    checks below can fail."""

    def test_shapes(self) -> None:
        scan = scan_source("""
            COMMANDS = {"a": ["alpha", "-x"], "b": ["beta"]}

            def helper_argv(device):
                argv = ["gamma", device]
                argv += ["not-a-tool", "on"]
                return argv

            class Thing:
                async def _run(self, argv, timeout=1.0):
                    return await self.agent.process.run(argv, timeout=timeout)

                async def go(self, context, device):
                    await self._run(["delta", device])
                    base = ["epsilon", "-v"]
                    await self._run(base + ["--more"])
                    await context.process.run(COMMANDS["a"])
                    await _run(context, ["zeta"])
                    await context.process.run(helper_argv(device))
                    run = context.process.run
                    await run(["eta"], timeout=3)
                    if shutil.which("theta"):
                        pass
                    await self._run(["setpriv", "--x", "--", "iota", "y"])
        """)
        self.assertEqual(
            set(scan.tools),
            {"alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta",
             "theta", "setpriv", "iota"})
        self.assertEqual(scan.dynamic, set())

    def test_dynamic_argv_is_reported(self) -> None:
        scan = scan_source("""
            async def go(self, command):
                argv = shlex.split(command)
                await self.process.run(argv)
        """)
        self.assertEqual(scan.tools, {})
        self.assertEqual(scan.dynamic, {"example.py:4"})

    def test_a_tool_missing_from_the_list_is_caught(self) -> None:
        scan = scan_source("""
            async def go(self):
                await self.agent.process.run(["frobnicate", "--all"])
        """)
        self.assertEqual(unlisted(scan, tools.of_scope(tools.AGENT)),
                         {"frobnicate": ["example.py:3"]})


def unlisted(scan: Scan, listed: Iterable[tools.Tool]) -> dict[str,
                                                               list[str]]:
    names = {t.name for t in listed}
    return {tool: sorted(where) for tool, where in scan.tools.items()
            if tool not in names}


@functools.lru_cache(maxsize=1)
def agent_scan() -> Scan:
    """The agent's code, read once for all the tests below (~1 s)."""
    # tools.py itself asks dpkg-query for the set-up script
    return scan_tree(os.path.join(TOP, "ipa_twisted"), skip=["tools.py"])


class AgentToolsTests(SynchronousTestCase):

    def setUp(self) -> None:
        self.scan = agent_scan()

    def test_the_reader_sees_the_agent_tools(self) -> None:
        for name in ("efibootmgr", "lsblk", "chroot", "sgdisk", "dmesg",
                     "mcopy", "parted", "wipefs"):
            self.assertIn(name, self.scan.tools)

    def test_every_tool_the_agent_runs_is_listed(self) -> None:
        self.assertEqual(unlisted(self.scan, tools.of_scope(tools.AGENT)),
                         {})

    def test_every_listed_agent_tool_is_run(self) -> None:
        """No stale entries: each agent tool is in the code, as an argv or
        a default power command (mkfs.<type> are run through mkfs)."""
        run = set(self.scan.tools)
        for option in config.OPTIONS:
            if option.name.endswith("_command") and option.default:
                run.add(shlex.split(str(option.default))[0])
        stale = {t.name for t in tools.TOOLS if t.scope == tools.AGENT
                 and t.name not in run and not t.name.startswith("mkfs.")}
        self.assertEqual(stale, set())

    def test_argv_from_elsewhere_is_known(self) -> None:
        """Where an argv is built at run time, the tools it can name are
        listed some other way; a new such place must be looked at."""
        self.assertEqual(
            {where.rsplit(":", 1)[0] for where in self.scan.dynamic},
            # the power commands come from the configuration (their
            # defaults are checked above)
            {"ipa_twisted/commands/standby.py"})

    def test_every_listed_tool_has_a_package_or_is_optional(self) -> None:
        for tool in tools.TOOLS:
            self.assertTrue(tool.package or tool.optional, tool)
            self.assertIn(tool.scope, (tools.AGENT, tools.TEST))


class TestToolsTests(SynchronousTestCase):

    def test_every_tool_the_tests_run_is_listed(self) -> None:
        found = Scan(scan_tree(os.path.join(TOP, "tests")).modules
                     + scan_tree(os.path.join(TOP, "benchmarks")).modules
                     + scan_tree(os.path.join(TOP, "ramdisk")).modules)
        names = {t.name for t in tools.of_scope(tools.TEST)}
        # argument lists and a tool that must not exist
        ignored = {"no-such-tool-ipa-twisted"}
        self.assertEqual(
            {tool: sorted(where) for tool, where in found.tools.items()
             if tool not in names and tool not in ignored
             and not tool.startswith("-")},
            {})


class MissingTests(SynchronousTestCase):

    def test_missing_on_an_empty_path(self) -> None:
        absent = tools.missing(tools.AGENT, path=self.mktemp())
        self.assertEqual({t.name for t in absent},
                         {t.name for t in tools.of_scope(tools.AGENT)})

    def test_found_on_a_path(self) -> None:
        directory = self.mktemp()
        os.makedirs(directory)
        for name in ("efibootmgr", "lsblk"):
            path = os.path.join(directory, name)
            with open(path, "w") as f:
                f.write("#!/bin/sh\n")
            os.chmod(path, 0o755)
        absent = {t.name for t in tools.missing(tools.AGENT, path=directory)}
        self.assertNotIn("efibootmgr", absent)
        self.assertNotIn("lsblk", absent)
        self.assertIn("sgdisk", absent)

    def test_tests_need_the_agent_tools_too(self) -> None:
        agent = {t.name for t in tools.of_scope(tools.AGENT)}
        test = {t.name for t in tools.of_scope(tools.TEST)}
        self.assertLess(agent, test)


class PackagesTests(SynchronousTestCase):

    def setUp(self) -> None:
        self.patch(tools, "_installed", lambda package: False)
        self.patch(tools, "missing", lambda scope=tools.AGENT, path="": [])

    def test_libvirt_is_installed_without_recommendations(self) -> None:
        # python3-libvirt recommends libvirt-daemon, which recommends
        # more; the host service (libvirt-daemon-system) only ever comes
        # as a recommendation: the network-boot test starts its own
        lean = tools.missing_packages(lean=True)
        plain = tools.missing_packages()
        for package in ("libvirt-daemon", "libvirt-daemon-driver-qemu",
                        "libvirt-clients", "python3-libvirt"):
            self.assertIn(package, lean)
            self.assertNotIn(package, plain)
        for package in ("libvirt-daemon-system",
                        "libvirt-daemon-config-network"):
            self.assertNotIn(package, lean + plain)


class SearchPathTests(SynchronousTestCase):
    """The agent runs its tools from the path its start-up warning
    searches: a tool the warning found is never 'not found' when run."""

    def test_system_directories_follow_the_callers_path(self) -> None:
        self.assertEqual(tools.search_path("/opt/x:/usr/bin").split(":"),
                         ["/opt/x", "/usr/bin", "/usr/local/sbin",
                          "/usr/local/bin", "/usr/sbin", "/sbin", "/bin"])

    def test_the_process_runner_uses_it(self) -> None:
        from ipa_twisted import process

        self.patch(os, "environ", {"PATH": "/bin"})
        self.assertEqual(process.default_env()["PATH"],
                         tools.search_path("/bin"))
        self.assertIn("/usr/sbin", process.default_env()["PATH"].split(":"))
