"""``ironic-collect-introspection-data`` on an ACTIVE node, against a real
ironic-inspector 12.5.0 beside a real Ironic 39.0.0 (Ironic's own endpoint
answers 404 for ACTIVE nodes by design): once, as a daemon, and with the
inspector found by mDNS (published with zeroconf inside the namespace)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from typing import Any


from tests.integration import harness as h
from tests.integration import scenarios
from tests.integration.base import IronicTestCase, unavailable

POSTED = re.compile(r"^(\S+) .*posting inspection data to", re.M)


class _ActiveNode(IronicTestCase):
    listen = "127.0.0.1"

    def setUp(self) -> None:
        super().setUp()
        try:
            self.inspector = h.Inspector(self.env.cleanups, self.env.netns,
                                         self.env.workdir,
                                         self.env.ironic.port, self.listen)
        except h.Unavailable as e:
            unavailable(e)
        self.node = scenarios.active_node(self.env)

    def stored_data(self) -> Any:
        return self.inspector.api.call(
            "GET", f"/v1/introspection/{self.node['uuid']}/data")


class ActiveIntrospectionTests(_ActiveNode):
    def test_post_once(self) -> None:
        result = subprocess.run(scenarios.collect_command(self.env, [
            "--inspection_callback_url", "http://127.0.0.1:5050/v1/continue"]),
            capture_output=True, text=True, timeout=120)
        self.assertEqual(result.returncode, 0, result.stderr[-3000:])
        self.assertIn("inspection data accepted by "
                      "http://127.0.0.1:5050/v1/continue (200): node "
                      + self.node["uuid"], result.stderr)
        data = self.stored_data()
        self.assertEqual([i["mac_address"] for i in
                          data["inventory"]["interfaces"]], [h.NODE_MAC])
        self.assertEqual(data["inventory"]["disks"][0]["name"],
                         self.env.device)
        node = self.env.api.node("e2e-active")
        self.assertEqual(node["provision_state"], "active")
        props = node["properties"]
        self.assertEqual(props["cpu_arch"],
                         data["inventory"]["cpu"]["architecture"])
        self.assertEqual(int(props["cpus"]), os.cpu_count())
        self.assertEqual(int(props["memory_mb"]),
                         data["inventory"]["memory"]["physical_mb"])
        self.assertEqual(int(props["local_gb"]), 4)  # 5 GiB disk, minus 1

    def test_daemon_posts_evenly_then_stops_on_sigterm(self) -> None:
        log_path = os.path.join(self.env.workdir, "collect-daemon.log")
        with open(log_path, "w") as log:
            proc = subprocess.Popen(scenarios.collect_command(self.env, [
                "--inspection-callback-url",
                "http://127.0.0.1:5050/v1/continue",
                "--introspection-daemon",
                "--introspection-daemon-post-interval", "3"]),
                stdout=log, stderr=log, start_new_session=True)
        self.env.cleanups.add("collect daemon", lambda: h.stop_process(proc))
        deadline = time.monotonic() + 60
        while len(POSTED.findall(read(log_path))) < 4:
            self.assertLess(time.monotonic(), deadline, read(log_path)[-3000:])
            self.assertIsNone(proc.poll(), read(log_path)[-3000:])
            time.sleep(0.2)
        child = h.child_pid(proc.pid)
        self.assertIsNotNone(child)
        os.kill(child, signal.SIGTERM)   # the daemon itself, in its sandbox
        self.assertEqual(proc.wait(30), 0)
        text = read(log_path)
        self.assertIn("introspection daemon stopped after", text)
        stamps = [parse_time(s) for s in POSTED.findall(text)]
        gaps = [b - a for a, b in zip(stamps, stamps[1:])]
        self.assertGreaterEqual(len(gaps), 3)
        for gap in gaps:  # 3 s +- 10 % jitter on each end, 1 s log stamps
            self.assertTrue(1.0 <= gap <= 5.0, gaps)
        # the grid does not drift: post k is near 3k s after the first
        self.assertLessEqual(abs((stamps[-1] - stamps[0])
                                 - 3.0 * (len(stamps) - 1)), 2.0, stamps)
        self.assertEqual(self.env.api.node("e2e-active")["provision_state"],
                         "active")


class MDNSIntrospectionTests(_ActiveNode):
    listen = "0.0.0.0"  # the namespace's addresses only

    def test_inspector_found_by_mdns(self) -> None:
        import zeroconf

        h.run(["ip", "netns", "exec", self.env.netns, "ip", "addr", "add",
               "192.0.2.1/24", "dev", "ipapeer"])
        with h.in_netns(self.env.netns):
            zc = zeroconf.Zeroconf(interfaces=["192.0.2.1"])
        self.addCleanup(zc.close)
        info = zeroconf.ServiceInfo(
            "_openstack._tcp.local.",
            "baremetal-introspection._openstack._tcp.local.",
            addresses=[bytes([192, 0, 2, 1])], port=5050,
            properties={"protocol": "http", "ipa_debug": "1"},
            server="inspector-e2e.local.")
        zc.register_service(info)
        self.addCleanup(zc.unregister_service, info)
        result = subprocess.run(scenarios.collect_command(self.env, [
            "--inspection-callback-url", "mdns"]),
            capture_output=True, text=True, timeout=120)
        self.assertEqual(result.returncode, 0, result.stderr[-3000:])
        self.assertIn("mDNS: inspector at http://192.0.2.1:5050",
                      result.stderr)
        self.assertIn("inspection data accepted by "
                      "http://192.0.2.1:5050/v1/continue (200)",
                      result.stderr)
        # the unknown TXT override is refused
        self.assertIn("not allowed to override debug", result.stderr)
        self.assertEqual(
            self.stored_data()["inventory"]["interfaces"][0]["mac_address"],
            h.NODE_MAC)


def read(path: str) -> str:
    with open(path, errors="replace") as f:
        return f.read()


def parse_time(stamp: str) -> float:
    from datetime import datetime

    return datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S%z").timestamp()
