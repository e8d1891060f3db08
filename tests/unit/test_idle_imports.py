"""An idle agent does not hold what only some commands need.

Memory matters in a ramdisk: the image pipeline (qcow2 reader, device
sink, decompressors), config drives, partition images, log tarballs, mDNS
and the optional codecs are imported when a command or an option needs
them.  The agent's start-up runs here in a fresh interpreter (a
subprocess: this test process has imported everything already), in
standalone mode on a memory reactor with fake tools, until it serves;
then its ``sys.modules`` is read.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

TOP = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))

START = """
import json, linecache, sys
from twisted.internet.testing import MemoryReactorClock
from ipa_twisted.agent import AgentService
from ipa_twisted.config import load_config
from ipa_twisted.testing import FakeProcessRunner

reactor = MemoryReactorClock()
config = load_config({"standalone": True, "agent_token": "t" * 40,
                      "listen_host": "127.0.0.1"}, cmdline="")
agent = AgentService(config, reactor, exit_on_fatal=False)
agent.context.process = FakeProcessRunner()
agent.startService()
ready = []
agent.when_ready().addBoth(ready.append)
print(json.dumps({"ready": ready == [None], "outcome": repr(ready),
                  "listening": len(reactor.tcpServers),
                  "extensions": sorted(agent.context.extensions),
                  "attrs_sources": [k for k in linecache.cache
                                    if str(k).startswith("<attrs gen")],
                  "modules": sorted(sys.modules)}))
"""

#: what an idle agent must not have imported
LAZY = (
    "ipa_twisted.image.writer",
    "ipa_twisted.image.pipeline",
    "ipa_twisted.image.qcow2",
    "ipa_twisted.image.sink",
    "ipa_twisted.image.stream",
    "ipa_twisted.image.configdrive",
    "ipa_twisted.image.partition_image",
    "tarfile",
    "gzip",
    "zeroconf",
    "zstandard",
    "hypothesis",
    # erasing disks (hardware/generic.py imports them in the erase step)
    "ipa_twisted.hardware.eraser",
    "ipa_twisted.hardware.erase",
    "ipa_twisted.hardware.erase_check",
    "ipa_twisted.hardware.overwrite",
    # the burn-in steps
    "ipa_twisted.hardware.burnin",
    # the inject_files step (and its steps' argsinfo)
    "ipa_twisted.hardware.inject",
    # twisted.application.internet: its ClientService imports automat (the
    # API service listens by itself, api/service.py)
    "twisted.application.internet",
    "automat",
    # inspection (only an agent given an inspection callback URL or
    # collectors inspects) and mDNS (only api_url=mdns or use_mdns)
    "ipa_twisted.inspection.inspector",
    "ipa_twisted.inspection.collectors",
    "ipa_twisted.mdns",
    # only config files need it (config.py)
    "configparser",
    # the entry points of extensions and hardware managers are read
    # without it (entrypoints.py)
    "importlib.metadata",
    "csv",
    # install_bootloader's code (commands/image.py imports it to run)
    "ipa_twisted.commands.bootloader",
    "ipa_twisted.confined",
    # the API's OpenAPI document, built when asked for (api/app.py)
    "ipa_twisted.api.openapi",
    # the image's checksum parsers and the power command's splitter
    # (commands/standby.py imports them when a command needs them)
    "ipa_twisted.image.checksum",
    "shlex",
    # the inventory's parsers (hardware/probes.py, generic.py import
    # them when an inventory is taken; the lookup does not wait for one)
    "ipa_twisted.hardware.system",
    "ipa_twisted.hardware.ipmi",
    "ipa_twisted.hardware.dmi",
    "ipa_twisted.hardware.lshw",
    # software RAID (only assembling runs at start-up: hardware/
    # mdassemble.py) and the root device hints it and the steps use
    "ipa_twisted.hardware.raid",
    "ipa_twisted.hardware.hints",
    "ipa_twisted.hardware.partinfo",
)


def run_script(script: str) -> dict[str, Any]:
    """Run ``script`` in a fresh interpreter on this checkout; its last
    line of output, as JSON."""
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=TOP, capture_output=True,
        text=True, timeout=120,
        env={**os.environ, "PYTHONPATH": TOP})
    if result.returncode != 0:
        raise AssertionError(f"the script failed:\n"
                             f"{result.stderr[-3000:]}")
    answer: dict[str, Any] = json.loads(result.stdout.splitlines()[-1])
    return answer


def idle_agent() -> dict[str, Any]:
    return run_script(START)


class IdleImportsTests(SynchronousTestCase):

    def test_idle_agent_does_not_import_what_commands_need(self) -> None:
        idle = idle_agent()
        # it really started: serving, with the extensions that lazily
        # import the write path loaded
        self.assertTrue(idle["ready"], idle["outcome"])
        self.assertEqual(idle["listening"], 1)
        extensions = idle["extensions"]
        assert isinstance(extensions, list)
        self.assertIn("standby", extensions)
        self.assertIn("log", extensions)
        modules = idle["modules"]
        assert isinstance(modules, list)
        self.assertIn("ipa_twisted.commands.standby", modules)
        self.assertEqual([m for m in LAZY if m in modules], [])

    def test_idle_agent_holds_no_attrs_generated_source(self) -> None:
        """attrs keeps the source of every method it generates in
        linecache (for debuggers, ~0.2 MiB); a started agent dropped it
        (lean.drop_generated_sources)."""
        idle = idle_agent()
        self.assertTrue(idle["ready"], idle["outcome"])
        self.assertEqual(idle["attrs_sources"], [])


OPTIONS = """
import json, sys
from ipa_twisted.cli import server_options

options = server_options()()
options.parseOptions(["--nodaemon", "--pidfile=", "ipa", "--standalone"])
print(json.dumps({"command": options.subCommand,
                  "options": type(options.subOptions).__module__,
                  "modules": sorted(sys.modules)}))
"""


class EntryPointTests(SynchronousTestCase):

    def test_agent_entry_point_reads_no_other_plugin(self) -> None:
        """``ipa-twisted-agent`` finds the ``ipa`` plugin without twistd's
        scan of every plugin (which imports trial, words, cred...)."""
        answer = run_script(OPTIONS)
        self.assertEqual(answer["command"], "ipa")
        self.assertEqual(answer["options"], "ipa_twisted.tap")
        self.assertEqual([m for m in ("twisted.trial", "unittest",
                                      "twisted.words", "twisted.cred.strcred")
                          if m in answer["modules"]], [])


SCRIPT = """
import contextlib, io, json, sys
from ipa_twisted.cli import agent_main

out = io.StringIO()
with contextlib.redirect_stdout(out):
    try:
        agent_main(["--help"])
    except SystemExit as e:
        code = e.code
print(json.dumps({"code": code, "help": out.getvalue(),
                  "modules": sorted(sys.modules)}))
"""


class ConsoleScriptTests(SynchronousTestCase):

    def test_console_script_runs_without_twistds_runner(self) -> None:
        """``ipa-twisted-agent`` runs the agent's service itself: twistd's
        application runner (``twisted.application.app``,
        ``twisted.scripts``) imports ``pdb`` and more, ~0.5 MiB held for
        nothing."""
        answer = run_script(SCRIPT)
        self.assertEqual(answer["code"], 0)
        self.assertIn("--device-allowlist", answer["help"])
        self.assertEqual([m for m in ("twisted.application.app",
                                      "twisted.scripts.twistd",
                                      "twisted.scripts._twistd_unix", "pdb")
                          if m in answer["modules"]], [])


DISKS = """
import json, sys, tempfile
from twisted.internet.testing import MemoryReactorClock
from ipa_twisted.hardware import disks, udev

control = tempfile.NamedTemporaryFile()  # udev runs
events = udev.device_events(MemoryReactorClock(), control=control.name)
names = [n for n in ("loop0", "vda", "sda", "nvme0n1")
         if disks.udev_properties(n)]
print(json.dumps({"events": type(events).__name__, "read": names,
                  "modules": sorted(sys.modules)}))
"""


class DiskListingTests(SynchronousTestCase):

    def test_udev_properties_without_pyudev(self) -> None:
        """The inventory's disks (every agent lists them to register) read
        udev's properties without pyudev, and knowing that udev runs does
        not import it: pyudev and libudev (~0.5 MiB) are loaded only
        when a command watches for disks."""
        answer = run_script(DISKS)
        self.assertEqual(answer["events"], "Udev")
        self.assertEqual([m for m in answer["modules"]
                          if m.split(".")[0] == "pyudev"], [])


API = """
import json, sys
from ipa_twisted.api.app import AgentAPI

print(json.dumps({"api": AgentAPI.__name__, "modules": sorted(sys.modules)}))
"""

#: what Klein's and Werkzeug's ``__init__`` import that the API's router
#: does not use (ipa_twisted/lean.py)
ROUTER_UNUSED = (
    "klein._plating", "klein._form", "klein._session", "klein._requirer",
    "klein.resource", "werkzeug.serving", "werkzeug.test",
    "werkzeug.wrappers", "werkzeug.formparser", "http.server",
    "socketserver",
)


class RouterImportsTests(SynchronousTestCase):

    def test_api_imports_only_the_router_of_klein_and_werkzeug(self) -> None:
        """The API imports Klein's app and Werkzeug's routing and
        exceptions, not the rest their packages' ``__init__`` import
        (~1.2 MiB of an idle agent: Plating, forms, sessions, the
        development server, the test client)."""
        answer = run_script(API)
        self.assertEqual(answer["api"], "AgentAPI")
        modules = answer["modules"]
        self.assertIn("klein._app", modules)
        self.assertIn("werkzeug.routing", modules)
        self.assertEqual([m for m in ROUTER_UNUSED if m in modules], [])


SERVE = """
import json, sys
from ipa_twisted.api.app import AgentAPI
from ipa_twisted.commands.base import CommandRunner

from treq.testing import StubTreq

api = AgentAPI(CommandRunner({}), lambda: "t" * 40, started_at=1.0,
               version="9.9")
stub = StubTreq(api.resource())
answers = {}
for method, path in (("GET", "/v1/status"), ("GET", "/v1/nowhere"),
                     ("DELETE", "/v1/status"), ("GET", "/v1/commands"),
                     ("POST", "/v1/commands/?agent_token=" + "t" * 40)):
    response = []
    stub.request(method, "http://agent" + path, data=b"{" if method ==
                 "POST" else None).addCallback(response.append)
    body = []
    stub.content(response[0]).addCallback(body.append)
    answers[method + " " + path.split("?")[0]] = [
        response[0].code, json.loads(body[0])]
print(json.dumps({"answers": answers, "modules": sorted(sys.modules)}))
"""


class LeanRouterServesTests(SynchronousTestCase):

    def test_routes_and_errors_without_the_packages_init(self) -> None:
        """Served from Klein's app and Werkzeug's routing alone (a fresh
        interpreter: the tests' own imports load all of Klein): routes,
        unknown paths, wrong methods, a missing token and a bad body are
        answered exactly as with the whole packages imported first, and
        answering does not load the rest."""
        lean = run_script(SERVE)
        whole = run_script("import klein, werkzeug\n" + SERVE)
        self.assertEqual(lean["answers"], whole["answers"])
        answers = lean["answers"]
        self.assertEqual(answers["GET /v1/status"],
                         [200, {"started_at": 1.0, "version": "9.9"}])
        for key, code in (("GET /v1/nowhere", 404),
                          ("DELETE /v1/status", 405),
                          ("GET /v1/commands", 401),
                          ("POST /v1/commands/", 400)):
            self.assertEqual(answers[key][0], code, key)
            self.assertEqual(sorted(answers[key][1]),
                             ["faultcode", "faultstring"], key)
        self.assertEqual([m for m in ROUTER_UNUSED
                          if m in lean["modules"]], [])
        self.assertIn("werkzeug.serving", whole["modules"])
