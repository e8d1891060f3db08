"""Hostile requests against a running agent (issue 12): bodies bounded
before they are read, the token checked before a body is accepted, JSON
answers from the HTTP layer, connections capped under a low open file
limit.  The agent runs standalone, sandboxed (own network, PID and mount
namespaces; only the test's loop device visible)."""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from typing import Any, Iterable

from tests.integration import harness as h
from tests.integration.base import SandboxTestCase

TOKEN = "h" * 43
PORT = 9999
MiB = 1024 * 1024
#: The agent's cap on a command body (ipa_twisted.api.app.MAX_BODY).
MAX_BODY = 96 * MiB


class Answer:
    def __init__(self, raw: bytes, seconds: float) -> None:
        self.raw = raw
        self.seconds = seconds
        head, _, body = raw.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        self.code = int(lines[0].split()[1]) if lines[0].startswith(
            "HTTP/1.1 ") else 0
        self.headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            self.headers[name.strip().lower()] = value.strip()
        if self.headers.get("transfer-encoding") == "chunked":
            plain = b""
            while body:
                size, _, body = body.partition(b"\r\n")
                n = int(size, 16)
                if n == 0:
                    break
                plain, body = plain + body[:n], body[n + 2:]
            body = plain
        self.body = body

    def json(self) -> Any:
        return json.loads(self.body)

    def __repr__(self) -> str:
        return f"<Answer {self.code} {self.raw[:300]!r}>"


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


class HostileRequestTests(SandboxTestCase):
    disk_size = 64 * MiB

    def start_agent(self, nofile: int | None = None) -> h.Agent:
        agent = h.Agent(self.cleanups, self.netns, self.workdir, self.device,
                        None, ["--standalone", "--agent-token", TOKEN,
                               "--listen-host", "127.0.0.1"], nofile=nofile)
        agent.wait_for_log("agent API listening", 60)
        pid = h.child_pid(agent.proc.pid)
        assert pid is not None
        self.pid = pid
        self.agent = agent
        return agent

    def connect(self, source: str = "127.0.0.1",
                timeout: float = 30) -> socket.socket:
        with h.in_netns(self.netns):
            sock = socket.create_connection(("127.0.0.1", PORT),
                                            timeout=timeout,
                                            source_address=(source, 0))
        self.cleanups.add("socket", sock.close)
        return sock

    def exchange(self, pieces: Iterable[bytes], source: str = "127.0.0.1",
                 timeout: float = 30) -> Answer:
        """Send while reading the answer (to its end, or until the agent
        closes): what came back and how long it took to come."""
        sock = self.connect(source, timeout)
        start = time.monotonic()
        got: list[bytes] = []
        took: list[float] = []

        def read() -> None:
            raw = b""
            try:
                while True:
                    more = sock.recv(65536)
                    if not more:
                        break
                    raw += more
                    answer = Answer(raw, 0)
                    length = answer.headers.get("content-length")
                    if length is not None and len(answer.body) >= int(length):
                        break
                    if raw.endswith(b"\r\n0\r\n\r\n"):
                        break
            except OSError:
                pass
            took.append(time.monotonic() - start)
            got.append(raw)

        reader = threading.Thread(target=read)
        reader.start()
        try:
            for piece in pieces:
                if got:
                    break              # answered: stop sending
                sock.sendall(piece)
        except OSError:
            pass                       # the agent answered and closed
        reader.join(timeout + 5)
        sock.close()
        return Answer(got[0] if got else b"", took[0] if took else -1)

    def get(self, path: str, source: str = "127.0.0.1") -> Answer:
        return self.exchange([f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                              f"Connection: close\r\n\r\n".encode()], source)

    def post(self, path: str, body: bytes, source: str = "127.0.0.1",
             ctype: str = "application/json") -> Answer:
        return self.exchange([
            f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: "
            f"{ctype}\r\nContent-Length: {len(body)}\r\nConnection: close"
            f"\r\n\r\n".encode() + body], source)

    def assert_fault(self, answer: Answer, code: int, what: str = "") -> None:
        self.assertEqual(answer.code, code, (what, answer))
        self.assertEqual(answer.headers.get("content-type"),
                         "application/json", (what, answer))
        body = answer.json()
        self.assertEqual(set(body), {"faultcode", "faultstring"})
        self.assertIsInstance(body["faultstring"], str)

    def assert_healthy(self) -> None:
        self.assertIsNone(self.agent.proc.poll(), "the agent died")
        self.assertEqual(self.get("/v1/status").code, 200)
        log = self.agent.read_log()
        self.assertNotIn(TOKEN, log)
        self.assertNotIn("Traceback", log)
        self.assertNotRegex(log, r" - 5\d\d \(")

    # ---------------------------------------------------------------- tests

    def test_bodies_are_bounded_before_they_are_read(self) -> None:
        self.start_agent()
        baseline = rss_kib(self.pid)
        peak = [baseline]
        status: list[tuple[int, float]] = []
        stop = threading.Event()

        def watch() -> None:
            while not stop.is_set():
                peak[0] = max(peak[0], rss_kib(self.pid))
                answer = self.get("/v1/status", "127.0.0.3")
                status.append((answer.code, answer.seconds))
                time.sleep(0.02)

        watcher = threading.Thread(target=watch)
        watcher.start()
        try:
            form = b"a=1&" * (256 * 1024)                   # 1 MiB
            # 1. 200 MiB form POST without a token: 401 before the body
            head = (b"POST /v1/commands/ HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                    b"Content-Type: application/x-www-form-urlencoded\r\n"
                    b"Content-Length: %d\r\n\r\n" % (200 * MiB))
            answer = self.exchange([head] + [form] * 200)
            self.assert_fault(answer, 401, "no token")
            self.assertEqual(answer.headers["connection"], "close")
            # the answer came without waiting for the body to be read
            sock = self.connect()
            sock.sendall(head)
            start = time.monotonic()
            first = sock.recv(65536)
            self.assertLess(time.monotonic() - start, 2.0)
            self.assertTrue(first.startswith(b"HTTP/1.1 401 "), first)
            sock.close()
            # 2. with the token, a Content-Length over the cap: 413 at once
            sock = self.connect()
            sock.sendall(b"POST /v1/commands/?agent_token=%s HTTP/1.1\r\n"
                         b"Host: 127.0.0.1\r\nContent-Length: %d\r\n\r\n"
                         % (TOKEN.encode(), MAX_BODY + 1))
            first = sock.recv(65536)
            self.assert_fault(Answer(first, 0), 413, "content-length")
            sock.close()
            # 3. a chunked body over the cap: 413 as it passes the cap
            chunk = b"%x\r\n" % MiB + b"x" * MiB + b"\r\n"
            answer = self.exchange(
                [b"POST /v1/commands/?agent_token=%s HTTP/1.1\r\n"
                 b"Host: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\n"
                 % TOKEN.encode()] + [chunk] * 120 + [b"0\r\n\r\n"])
            self.assert_fault(answer, 413, "chunked")
            self.assertIn(str(MAX_BODY), answer.json()["faultstring"])
            # 4. a form body is not a command, and its token does not count
            answer = self.post("/v1/commands/",
                               f"agent_token={TOKEN}".encode(),
                               ctype="application/x-www-form-urlencoded")
            self.assert_fault(answer, 401, "token in a form")
            # on a fast machine the refusals are over within a few of the
            # watcher's probes: it takes a few more (which a stuck agent
            # would not answer) before it stops
            deadline = time.monotonic() + 10
            while len(status) < 5 and time.monotonic() < deadline:
                time.sleep(0.02)
        finally:
            stop.set()
            watcher.join()
        growth_mib = (peak[0] - baseline) / 1024
        self.assertLess(growth_mib, 40, "agent memory grew")
        self.assertGreaterEqual(len(status), 5)
        self.assertEqual({code for code, _ in status}, {200})
        self.assertLess(max(t for _, t in status), 2.0,
                        "/v1/status was held up")
        self.assert_healthy()

    def test_http_layer_answers_json(self) -> None:
        self.start_agent()
        t = TOKEN.encode()
        deep = b"[" * 1000 + b"]" * 1000
        cases: list[tuple[str, list[bytes], int]] = [
            ("HTTP/2.0", [b"GET /v1/status HTTP/2.0\r\n\r\n"], 400),
            ("no version", [b"GET /v1/status\r\n\r\n"], 400),
            ("duplicate Content-Length",
             [b"POST /v1/status HTTP/1.1\r\nContent-Length: 1\r\n"
              b"Content-Length: 1\r\n\r\nab"], 400),
            ("1000 headers", [b"GET /v1/status HTTP/1.1\r\n"
                              + b"".join(b"X-%d: y\r\n" % i
                                         for i in range(1000)) + b"\r\n"],
             400),
            ("header without colon",
             [b"GET /v1/status HTTP/1.1\r\nNo colon here\r\n\r\n"], 400),
            ("bad chunk size",
             [b"POST /v1/status HTTP/1.1\r\nTransfer-Encoding: chunked"
              b"\r\n\r\nzz\r\n"], 400),
            ("line over 16 KiB", [b"GET /" + b"a" * 20000 + b" HTTP/1.1"
                                  b"\r\n\r\n"], 431),
            ("%ff%fe in the path",
             [b"GET /v1/%ff%fe HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"], 400),
            ("8 KB Host", [b"GET /v1/status HTTP/1.1\r\nHost: "
                           + b"h" * 8192 + b"\r\n\r\n"], 400),
            ("GET *", [b"GET * HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"], 405),
            ("multipart",
             [b"POST /v1/commands/?agent_token=%s HTTP/1.1\r\nHost: a\r\n"
              b"Content-Type: multipart/form-data; boundary=zz\r\n"
              b"Content-Length: 8\r\n\r\n--broken" % t], 400),
            ("JSON 1000 deep",
             [b"POST /v1/commands/?agent_token=%s HTTP/1.1\r\nHost: a\r\n"
              b"Content-Length: %d\r\n\r\n" % (t, len(deep)) + deep], 400),
            ("unknown route", [b"GET /v2/x HTTP/1.1\r\nHost: a\r\n\r\n"],
             404),
            ("wrong method", [b"PUT /v1/status HTTP/1.1\r\nHost: a\r\n"
                              b"Content-Length: 0\r\n\r\n"], 405),
        ]
        for what, pieces, code in cases:
            self.assert_fault(self.exchange(pieces), code, what)
        # root device hints that do not parse: 400 at once, no disk wait
        step = {"step": "write_image", "interface": "deploy",
                "args": {"image_info": {"id": "i", "urls": ["http://x/i"]}}}
        body = json.dumps({"name": "deploy.execute_deploy_step", "params": {
            "step": step, "ports": [],
            "node": {"instance_info": {"root_device": {"size": "huge"}}}}})
        answer = self.post(f"/v1/commands/?agent_token={TOKEN}",
                           body.encode())
        self.assert_fault(answer, 400, "hints")
        self.assertIn("root device hint", answer.json()["faultstring"])
        self.assertLess(answer.seconds, 2.0)
        self.assert_healthy()

    def test_idle_sockets_cannot_starve_the_agent(self) -> None:
        # 400 idle sockets under a 256 open file limit (hard: the agent
        # cannot raise it) once made the agent fail its commands
        self.start_agent(nofile=256)
        idle = [self.connect("127.0.0.1", timeout=5) for _ in range(400)]
        time.sleep(1.0)
        refused = 0
        for sock in idle:
            sock.settimeout(0.05)
            try:
                data = sock.recv(65536)
            except OSError:
                continue                          # accepted, still idle
            if data.startswith(b"HTTP/1.1 429 "):
                self.assert_fault(Answer(data, 0), 429)
                refused += 1
        self.assertGreaterEqual(refused, 300)
        fds = len(os.listdir(f"/proc/{self.pid}/fd"))
        self.assertLess(fds, 200)
        # another client still gets its commands run
        answer = self.post(f"/v1/commands/?agent_token={TOKEN}",
                           json.dumps({"name": "poll.get_hardware_info",
                                       "params": {}}).encode(),
                           source="127.0.0.2")
        self.assertEqual(answer.code, 200, answer)
        self.assertEqual(answer.json()["command_status"], "SUCCEEDED")
        for sock in idle:
            sock.close()
        self.assert_healthy()
        self.assertIn("refusing connections (429)", self.agent.read_log())
