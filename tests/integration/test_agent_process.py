"""The agent as a process: command line, start-up errors, the API over a
real socket.  Agents that start are sandboxed (own network, PID and mount
namespaces; only the test's loop device visible and allow-listed)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from tests.integration import harness as h
from tests.integration.base import SandboxTestCase, unavailable

TOKEN = "s" * 40


def bin_path(name: str) -> str:
    return os.path.join(os.path.dirname(sys.executable), name)


class CommandLineTests(SynchronousTestCase):
    """These exit before any service starts (nothing looks at disks)."""

    def run_agent(self, *args: str) -> subprocess.CompletedProcess[str]:
        if not os.path.exists(bin_path("twistd")):
            unavailable(h.Unavailable("ipa-twisted is not installed here"))
        cwd = self.mktemp()
        os.makedirs(cwd)
        return subprocess.run([bin_path("twistd"), "--nodaemon", "--pidfile=",
                               "ipa", *args], capture_output=True, text=True,
                              cwd=cwd, timeout=60)

    def test_help(self) -> None:
        result = self.run_agent("--help")
        self.assertEqual(result.returncode, 0, result.stderr)
        for flag in ("--api-url", "--listen-port", "--device-allowlist",
                     "--no-auto-tls", "--standalone", "--lookup-timeout"):
            self.assertIn(flag, result.stdout)
        script = subprocess.run([bin_path("ipa-twisted-agent"), "--help"],
                                capture_output=True, text=True, timeout=60)
        self.assertEqual(script.returncode, 0, script.stderr)
        self.assertIn("--device-allowlist", script.stdout)

    def test_bad_flag_value_is_one_line(self) -> None:
        result = self.run_agent("--listen-port", "70000")
        self.assertEqual(result.returncode, 2)
        self.assertEqual(result.stderr.splitlines(), [
            "ipa-twisted: configuration error: invalid value '70000' for "
            "option listen-port (command line --listen-port): must be a TCP "
            "port number (1-65535)"])

    def test_bad_kernel_parameter_is_one_line(self) -> None:
        cmdline = os.path.abspath(self.mktemp())
        with open(cmdline, "w") as f:
            f.write("quiet ipa-api-url=ftp://x BOOTIF=01-52-54-00-12-34-56\n")
        result = self.run_agent("--cmdline-file", cmdline)
        self.assertEqual(result.returncode, 2)
        lines = result.stderr.splitlines()
        self.assertEqual(len(lines), 1, result.stderr)
        self.assertIn("api-url (kernel parameter ipa-api-url)", lines[0])
        self.assertNotIn("Traceback", result.stderr)


class SandboxedAgentTests(SandboxTestCase):
    disk_size = 1 << 30

    def setUp(self) -> None:
        super().setUp()

    def agent(self, api_url: str | None, *extra: str) -> h.Agent:
        return h.Agent(self.cleanups, self.netns, self.workdir, self.device,
                       api_url, list(extra))

    def request(self, method: str, path: str, body: Any = None,
                port: int = 9999) -> tuple[int, dict[str, str], Any]:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(f"http://127.0.0.1:{port}{path}",
                                     data=data, method=method)

        class NoRedirect(urllib.request.HTTPRedirectHandler):
            def redirect_request(self, *args: Any, **kw: Any) -> None:
                return None

        opener = urllib.request.build_opener(NoRedirect)
        with h.in_netns(self.netns):
            try:
                with opener.open(req, timeout=30) as r:
                    status, headers, raw = r.status, dict(r.headers), r.read()
            except urllib.error.HTTPError as e:
                status, headers, raw = e.code, dict(e.headers), e.read()
        return status, headers, json.loads(raw) if raw else None

    def test_standalone_api_on_a_real_socket(self) -> None:
        agent = self.agent(None, "--standalone", "--agent-token", TOKEN,
                           "--listen-host", "127.0.0.1")
        agent.wait_for_log("agent API listening on http://127.0.0.1:9999", 30)
        status, _, body = self.request("GET", "/v1/status")
        self.assertEqual(status, 200)
        self.assertEqual(set(body), {"started_at", "version"})
        status, headers, body = self.request("GET", "/v1")
        self.assertEqual(status, 308)
        self.assertEqual(headers["Location"], "http://127.0.0.1:9999/v1/")
        status, headers, _ = self.request(
            "GET", f"/v1/commands?agent_token={TOKEN}")
        self.assertEqual(status, 308)
        self.assertEqual(headers["Location"],
                         f"http://127.0.0.1:9999/v1/commands/?agent_token={TOKEN}")
        status, _, body = self.request("GET", "/v1/commands/")
        self.assertEqual(status, 401)
        status, _, body = self.request(
            "POST", f"/v1/commands/?agent_token={TOKEN}",
            {"name": "poll.get_hardware_info", "params": {}})
        self.assertEqual(status, 200)
        inventory = body["command_result"]
        # Only the allow-listed loop device, only the namespace's veth.
        self.assertEqual([d["name"] for d in inventory["disks"]], [self.device])
        self.assertEqual(inventory["disks"][0]["size"], 1 << 30)
        self.assertEqual([i["mac_address"] for i in inventory["interfaces"]],
                         [h.NODE_MAC])
        self.assertEqual(inventory["cpu"]["architecture"], os.uname().machine)
        log = agent.read_log()
        self.assertIn("GET /v1/commands/ - 401", log)
        self.assertNotIn(TOKEN, log)

    def test_collected_logs_do_not_hold_the_token(self) -> None:
        # ps shows the agent's --agent-token; the kernel log shows a
        # command line with ipa-agent-token (written to /dev/kmsg here,
        # as the kernel prints its command line at boot)
        token = "Tk" + os.urandom(24).hex()
        with open("/dev/kmsg", "w") as kmsg:
            kmsg.write(f"ipa-twisted test: Command line: BOOT_IMAGE=/vmlinuz "
                       f"ipa-agent-token={token} ipa-debug=1\n")
        agent = self.agent(None, "--standalone", "--agent-token", token,
                           "--listen-host", "127.0.0.1")
        agent.wait_for_log("agent API listening", 30)
        status, _, body = self.request(
            "POST", f"/v1/commands/?wait=true&agent_token={token}",
            {"name": "log.collect_system_logs", "params": {}})
        self.assertEqual(status, 200, body)
        self.assertEqual(body["command_status"], "SUCCEEDED", body)
        import base64
        import io
        import tarfile

        raw = base64.b64decode(body["command_result"]["system_logs"])
        with tarfile.open(fileobj=io.BytesIO(raw), mode="r:gz") as tar:
            texts = {m.name: tar.extractfile(m).read()  # type: ignore
                     for m in tar.getmembers() if m.isfile()}
        self.assertNotIn(token.encode(), b"\n".join(texts.values()))
        self.assertNotIn(token[:20].encode(), raw)
        # the lines were there, scrubbed
        self.assertIn(b"--agent-token ***", texts["ps"])
        self.assertIn(b"ipa-agent-token=*** ipa-debug=1", texts["dmesg"])

    def test_token_from_a_file(self) -> None:
        token = "Tf" + os.urandom(24).hex()
        path = os.path.join(self.workdir, "token")
        with open(path, "w") as f:
            f.write(token + "\n")
        agent = self.agent(None, "--standalone", "--agent-token-file", path,
                           "--listen-host", "127.0.0.1")
        agent.wait_for_log("agent API listening", 30)
        status, _, body = self.request(
            "POST", f"/v1/commands/?wait=true&agent_token={token}",
            {"name": "log.collect_system_logs", "params": {}})
        self.assertEqual(status, 200, body)
        self.assertEqual(self.request("GET", "/v1/commands/")[0], 401)
        import base64
        import io
        import tarfile

        raw = base64.b64decode(body["command_result"]["system_logs"])
        with tarfile.open(fileobj=io.BytesIO(raw), mode="r:gz") as tar:
            ps = tar.extractfile("ps").read()  # type: ignore
        self.assertIn(b"--agent-token-file", ps)
        self.assertNotIn(token.encode(), ps)

    def test_static_tls_with_minimum_version(self) -> None:
        import ssl

        from ipa_twisted import tls

        cert = tls.save_certificate(
            tls.generate_certificate("127.0.0.1", "test"),
            os.path.join(self.workdir, "tls"))
        agent = self.agent(None, "--standalone", "--agent-token", TOKEN,
                           "--listen-host", "127.0.0.1", "--listen-tls",
                           "--tls-cert-file", str(cert.cert_path),
                           "--tls-key-file", str(cert.key_path),
                           "--tls-min-version", "1.3")
        agent.wait_for_log("agent API listening on https://127.0.0.1:9999", 30)

        def get(max_version: ssl.TLSVersion) -> Any:
            ctx = ssl.create_default_context(cafile=cert.cert_path)
            ctx.maximum_version = max_version
            with h.in_netns(self.netns):
                with urllib.request.urlopen("https://127.0.0.1:9999/v1/status",
                                            context=ctx, timeout=30) as r:
                    return r.status

        self.assertEqual(get(ssl.TLSVersion.TLSv1_3), 200)
        with self.assertRaises((ssl.SSLError, urllib.error.URLError)):
            get(ssl.TLSVersion.TLSv1_2)

    def test_lookup_timeout_ends_the_process_with_status_1(self) -> None:
        port = h.free_port()
        agent = self.agent(f"http://127.0.0.1:{port}", "--lookup-timeout", "3",
                           "--lookup-interval", "0.5",
                           "--interface-wait-timeout", "0")
        deadline = time.monotonic() + 60
        while agent.proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        self.assertEqual(agent.proc.returncode, 1)
        log = agent.read_log()
        self.assertIn("agent cannot start: Error getting configuration from "
                      "Ironic: Could not look up node info", log)
        self.assertIn("Ironic unreachable", log)
