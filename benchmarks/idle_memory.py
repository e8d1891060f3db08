#!/usr/bin/env python3
"""Idle memory: our agent against ironic-python-agent 13.0.0, in one run.

Run as root from the repository root:

    python benchmarks/idle_memory.py [--rounds 3] [--settle 5]
        [--heartbeats 3] [--heartbeat-timeout 10] [--standalone]

Each round starts, one after the other and the same way
(benchmarks/agents.py: in a private network namespace and the
disk-masking sandbox, the only disk a loop device, serving their API on
loopback): our agent by its console script ``ipa-twisted-agent`` and by
``twistd ipa``, IPA 13.0.0 by its own, and a bare Klein app importing
treq on the same interpreter (the floor of this stack).  Both agents are
in the idle state of a deployed agent: they look up their node at a
small fake Ironic (:data:`FAKE_IRONIC`, API 1.96, so both do auto-TLS
and serve https) and have sent ``--heartbeats`` heartbeats
(``heartbeat_timeout`` ``--heartbeat-timeout`` s); ``--standalone``
measures them without Ironic instead (no lookup, no heartbeat, no TLS).
Before the rounds, the compiled libraries of every environment measured
are dropped from the page cache (:func:`evict_libraries`: how a library
got there, written by ``pip`` or read back, changes the RSS that maps
it by ~1 MiB).  Each is then left alone ``--settle`` seconds, its RSS
(VmRSS, all threads) and PSS are read five times a second apart (the
last counts), and it is stopped.  Prints the medians and the ratios to
IPA; the goal (issue 14) is at most 0.75x.  Also prints which of the
modules that an idle agent does not need our agent imported, read from
a ``-X importtime`` trace of its start-up.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from typing import Any

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                os.pardir))

from benchmarks import agents  # noqa: E402
from tests.integration import harness as h  # noqa: E402

#: imported by an idle agent, they would be memory for nothing
LAZY = ("zeroconf", "zstandard", "gzip", "tarfile", "hypothesis",
        "unittest", "twisted.trial", "ipa_twisted.image.writer",
        "ipa_twisted.image.pipeline", "ipa_twisted.image.qcow2",
        "ipa_twisted.image.configdrive", "ipa_twisted.hardware.eraser",
        "ipa_twisted.hardware.inject", "ipa_twisted.inspection.collectors",
        "ipa_twisted.mdns", "automat", "pdb", "twisted.application.app",
        "twisted.scripts.twistd", "importlib.metadata", "configparser",
        "pyudev", "encodings.idna", "klein._plating", "werkzeug.serving",
        "werkzeug.test", "ipa_twisted.hardware.raid",
        "ipa_twisted.hardware.hints")


def evict_libraries(*prefixes: str) -> int:
    """Drop the compiled libraries (``*.so``) under ``prefixes`` from the
    page cache (``POSIX_FADV_DONTNEED``, those files only); how many.

    A process's RSS counts the library pages it maps, and how many a
    fault maps depends on how the file sits in the page cache: with
    cryptography's 14 MiB Rust library as ``pip`` had just written it,
    an agent's RSS was ~0.9 MiB higher than after the library was
    evicted and read back by the agent's own faults (measured: 55.4 ->
    54.5 MiB, same agent, same environment; likely the larger folios of
    written files, a fault maps a whole folio).  IPA's environment was
    installed long before, so a fresh ``.tox`` read heavier.  Evicting
    every measured environment's libraries before a run brings each back
    the same way.
    """
    count = 0
    for prefix in prefixes:
        if not os.path.exists(os.path.join(prefix, "pyvenv.cfg")):
            # only virtual environments: never a whole /usr or /usr/local
            print(f"  {prefix}: not a virtual environment, its libraries "
                  f"stay cached", flush=True)
            continue
        for top, _, files in os.walk(prefix):
            for name in files:
                if not (name.endswith(".so") or ".so." in name):
                    continue
                try:
                    fd = os.open(os.path.join(top, name), os.O_RDONLY)
                except OSError:
                    continue
                try:
                    # pages still being written back are not dropped:
                    # a library pip has just written is exactly that
                    os.fdatasync(fd)
                    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                    count += 1
                finally:
                    os.close(fd)
    return count


def imported(stderr_path: str) -> set[str]:
    """Module names in a ``-X importtime`` trace."""
    names = set()
    try:
        with open(stderr_path, errors="replace") as f:
            for line in f:
                if line.startswith("import time:") and "|" in line:
                    names.add(line.rsplit("|", 1)[1].strip())
    except OSError:
        pass
    return names


#: the floor: a bare Klein app that imports treq, served by twistd's
#: reactor the same way (sandboxed, loopback)
BARE = """
import sys
import treq  # noqa: F401  (what an agent's HTTP client costs)
from klein import Klein
from twisted.internet import endpoints, reactor
from twisted.web.server import Site

app = Klein()


@app.route("/v1/status")
def status(request):
    return b"{}"


endpoints.serverFromString(reactor, "tcp:%s:interface=127.0.0.1" %
                           sys.argv[1]).listen(Site(app.resource()))
print("listening", flush=True)
reactor.run()
"""


#: What the agents' lookup and heartbeats need of Ironic, on loopback in
#: the benchmark's namespace: version discovery (a version with auto-TLS,
#: >= 1.68, as a current Ironic), a lookup answer (a fresh node each time),
#: and heartbeats, each logged as a JSON line (node, callback URL, whether
#: it carried an auto-TLS certificate).
FAKE_IRONIC = """
import json, sys, time, uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

port, log = int(sys.argv[1]), sys.argv[2]
VERSION = {"id": "v1", "status": "CURRENT", "version": "1.96",
           "min_version": "1.1",
           "links": [{"href": "http://127.0.0.1:%d/v1/" % port,
                      "rel": "self"}]}


class Ironic(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def answer(self, code, body=None):
        data = json.dumps(body).encode() if body is not None else b""
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("X-OpenStack-Ironic-API-Version", "1.96")
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        if self.path.rstrip("/") == "":
            self.answer(200, {"name": "OpenStack Ironic API",
                              "versions": [VERSION],
                              "default_version": VERSION})
        elif self.path.startswith("/v1/lookup"):
            self.answer(200, {
                "node": {"uuid": str(uuid.uuid4()), "properties": {},
                         "instance_info": {}, "driver_internal_info": {},
                         "provision_state": "deploy wait"},
                "config": {"heartbeat_timeout": @TIMEOUT@,
                           "agent_token": "******",
                           "agent_token_required": True}})
        else:
            self.answer(404, {"error_message": "not found"})

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        if self.path.startswith("/v1/heartbeat/"):
            data = json.loads(body or b"{}")
            with open(log, "a") as f:
                f.write(json.dumps({
                    "time": time.time(), "node": self.path.split("/")[3],
                    "callback_url": data.get("callback_url"),
                    "verify_ca": bool(data.get("agent_verify_ca"))}) + "\\n")
            self.answer(202)
        else:
            self.answer(404, {"error_message": "not found"})

    def log_message(self, *args):
        pass


server = ThreadingHTTPServer(("127.0.0.1", port), Ironic)
print("listening", flush=True)
server.serve_forever()
"""


class FakeIronic:
    """:data:`FAKE_IRONIC` in the namespace; :meth:`heartbeats` reads its
    log."""

    def __init__(self, cleanups: h.Cleanups, netns: str, work: str,
                 port: int, heartbeat_timeout: int) -> None:
        import subprocess

        script = os.path.join(work, "fake_ironic.py")
        with open(script, "w") as f:
            f.write(FAKE_IRONIC.replace("@TIMEOUT@", str(heartbeat_timeout)))
        self.log = os.path.join(work, "heartbeats.jsonl")
        open(self.log, "w").close()
        self.url = f"http://127.0.0.1:{port}"
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", netns, sys.executable, script, str(port),
             self.log], stdout=subprocess.PIPE, start_new_session=True)
        cleanups.add("fake ironic", lambda: h.stop_process(self.proc))
        assert self.proc.stdout is not None
        self.proc.stdout.readline()

    def heartbeats(self) -> list[dict[str, Any]]:
        import json

        with open(self.log) as f:
            return [json.loads(line) for line in f if line.strip()]


class Bare:
    name = "bare Klein + treq"

    def __init__(self, cleanups: h.Cleanups, netns: str, work: str,
                 device: str, port: int) -> None:
        import subprocess
        import time

        script = os.path.join(work, "bare.py")
        with open(script, "w") as f:
            f.write(BARE)
        stubs = os.path.join(work, "stubs")
        h.make_stubs(stubs)
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", netns, "unshare", "--pid", "--mount",
             "--fork", "--mount-proc", "--kill-child=SIGTERM", h.SANDBOX,
             device, stubs, "--", sys.executable, script, str(port)],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            start_new_session=True)
        cleanups.add("bare app", self.stop)
        started = time.monotonic()
        assert self.proc.stdout is not None
        self.proc.stdout.readline()
        self.ready_after = time.monotonic() - started
        pid = h.child_pid(self.proc.pid)
        assert pid is not None
        self.pid = pid

    def stop(self) -> None:
        h.stop_process(self.proc)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--settle", type=float, default=5.0)
    parser.add_argument("--standalone", action="store_true",
                        help="agents without Ironic (no lookup, no "
                        "heartbeat, no auto-TLS) instead of the idle state "
                        "of a deployed agent")
    parser.add_argument("--heartbeats", type=int, default=3,
                        help="heartbeats each agent sends before it is "
                        "left alone --settle seconds (not --standalone)")
    parser.add_argument("--compare", metavar="SCRIPT",
                        help="also measure another build of ours in the "
                        "same run: the ipa-twisted-agent console script "
                        "of another environment (e.g. main's)")
    parser.add_argument("--heartbeat-timeout", type=int, default=10,
                        help="the lookup's heartbeat_timeout: both agents "
                        "heartbeat every 0.3-0.6 times it")
    args = parser.parse_args()
    try:
        h.require_prerequisites()
        h.ipa_venv()
    except h.Unavailable as e:
        print(f"benchmark cannot run here: {e}", file=sys.stderr)
        return 2
    cleanups = h.Cleanups()
    kinds: tuple[str, ...] = ("ipa-twisted-agent", "twistd ipa",
                              "ironic-python-agent", "bare Klein + treq")
    if args.compare:
        kinds += ("compared build",)
    results: dict[str, list[tuple[int, int]]] = {k: [] for k in kinds}
    try:
        work = h.workdir(cleanups)
        netns = h.make_netns(cleanups)
        device = h.make_loop_device(cleanups, work, 5 * agents.GiB)
        tmpdir = os.path.join(work, "ipa-tmp")
        os.makedirs(tmpdir)
        ironic = None if args.standalone else FakeIronic(
            cleanups, netns, work, 6385, args.heartbeat_timeout)
        api_url = ironic.url if ironic else None

        def heartbeats_since(mark: int) -> list[dict[str, Any]]:
            return ironic.heartbeats()[mark:] if ironic else []

        def wait_for_heartbeats(mark: int, what: str) -> None:
            deadline = time.monotonic() + 60 + 2 * args.heartbeats * (
                args.heartbeat_timeout)
            while len(heartbeats_since(mark)) < args.heartbeats:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{what}: only "
                                       f"{len(heartbeats_since(mark))} "
                                       f"heartbeats")
                time.sleep(0.2)

        # every agent's libraries in the same page-cache state (see
        # evict_libraries): ours, IPA's, the compared build's
        envs = [sys.prefix, h.ipa_venv()]
        if args.compare:
            envs.append(os.path.dirname(os.path.dirname(
                os.path.abspath(args.compare))))
        print(f"  {evict_libraries(*envs)} libraries of {len(envs)} "
              f"environments evicted from the page cache", flush=True)
        # unmeasured: what our agent imports (a -X importtime trace)
        mark = len(ironic.heartbeats()) if ironic else 0
        traced = agents.OurAgent(cleanups, netns, work, device, 9999,
                                 env={"PYTHONPROFILEIMPORTTIME": "1"},
                                 entry="ipa-twisted-agent", api_url=api_url)
        if ironic:
            wait_for_heartbeats(mark, "ipa-twisted-agent")
        traced.stop()
        seen = imported(os.path.join(work, "ours.stderr"))
        for n in range(args.rounds):
            # rotate the order, so that order does not bias
            order = kinds[n % len(kinds):] + kinds[:n % len(kinds)]
            for kind in order:
                agent: Any
                mark = len(ironic.heartbeats()) if ironic else 0
                if kind == "ipa-twisted-agent":
                    agent = agents.OurAgent(cleanups, netns, work, device,
                                            9999, entry=kind,
                                            api_url=api_url)
                elif kind == "compared build":
                    agent = agents.OurAgent(cleanups, netns, work, device,
                                            9999, entry="ipa-twisted-agent",
                                            api_url=api_url,
                                            script=args.compare)
                elif kind == "twistd ipa":
                    agent = agents.OurAgent(cleanups, netns, work, device,
                                            9999, entry="twistd",
                                            api_url=api_url)
                elif kind == "ironic-python-agent":
                    agent = agents.IPAAgent(
                        cleanups, netns, work, device, 9998, tmpdir,
                        api_url=api_url,
                        ready=(lambda m=mark: bool(heartbeats_since(m)))
                        if ironic else None)
                else:
                    agent = Bare(cleanups, netns, work, device, 9997)
                state = ""
                if ironic and kind != "bare Klein + treq":
                    # the same idle state for both agents: looked up, a
                    # few heartbeats sent (with auto-TLS if they do it)
                    wait_for_heartbeats(mark, kind)
                rss, pss = agents.idle_rss(agent.pid, args.settle)
                if ironic and kind != "bare Klein + treq":
                    beats = heartbeats_since(mark)
                    state = (f", {len(beats)} heartbeats, auto-TLS "
                             f"{'yes' if beats[-1]['verify_ca'] else 'no'}")
                results[kind].append((rss, pss))
                print(f"  round {n + 1}: {kind:20s} idle RSS "
                      f"{rss / 1024:5.1f} MiB, PSS {pss / 1024:5.1f} MiB "
                      f"(up after {agent.ready_after:.1f} s{state})",
                      flush=True)
                agent.stop()
    finally:
        cleanups.run()

    def med(kind: str, i: int) -> float:
        return statistics.median(r[i] for r in results[kind]) / 1024

    ipa = med("ironic-python-agent", 0)
    print(f"idle memory, median of {args.rounds} (one run; the machine is "
          f"shared, compare only within one run):")
    for kind in kinds:
        print(f"  {kind:20s} RSS {med(kind, 0):5.1f} MiB "
              f"({med(kind, 0) / ipa:.2f}x IPA), PSS {med(kind, 1):5.1f} "
              f"MiB ({med(kind, 1) / med('ironic-python-agent', 1):.2f}x)")
    if args.compare:
        print(f"  compared build: {args.compare}")
    print(f"  goal: ours <= 0.75x IPA's RSS = {0.75 * ipa:.1f} MiB")
    heavy = sorted(m for m in LAZY if m in seen)
    print(f"  modules an idle agent need not hold, imported by ours "
          f"(ipa-twisted-agent): {', '.join(heavy) if heavy else 'none'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
