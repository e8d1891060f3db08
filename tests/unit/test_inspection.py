"""Inspection: payload, collectors, posting with retries (in memory)."""

from __future__ import annotations

import json
import random
from typing import Any

from klein import Klein
from treq.testing import StubTreq
from twisted.internet.defer import CancelledError, ensureDeferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from ipa_twisted.config import load_config
from ipa_twisted.context import RunningAgent
from ipa_twisted.hardware.disks import DeviceGuard
from ipa_twisted.hardware.manager import HardwareManagers
from ipa_twisted.inspection import collectors, daemon, inspector
from ipa_twisted.testing import (
    FakeHardwareManager,
    FakeProcessRunner,
    HangingHTTP,
)

GiB = 1024 ** 3


class Inspector:
    app = Klein()

    def __init__(self) -> None:
        self.answers: list[tuple[int, Any]] = [(202, {"uuid": "node-1"})]
        self.posts: list[dict[str, Any]] = []

    @app.route("/v1/continue", methods=["POST"])
    def post(self, request: Any) -> bytes:
        self.posts.append(json.loads(request.content.read()))
        status, body = self.answers.pop(0) if len(self.answers) > 1 \
            else self.answers[0]
        request.setResponseCode(status)
        return json.dumps(body).encode()


def context(stub: Any, clock: Clock, **cli: Any) -> RunningAgent:
    fake = FakeHardwareManager(inventory={
        "interfaces": [{"name": "eth0", "mac_address": "aa:bb:cc:dd:ee:ff"}],
        "disks": [{"name": "/dev/sdb", "size": 8 * GiB},
                  {"name": "/dev/sda", "size": 2 * GiB},
                  {"name": "/dev/sdc", "size": 8 * GiB}],
        "boot": {"current_boot_mode": "bios", "pxe_interface": "01-aa"},
    })
    ctx = RunningAgent(config=load_config(cli), reactor=clock,
                       process=FakeProcessRunner(), guard=DeviceGuard(None),
                       http=stub)
    ctx.hardware = HardwareManagers([fake])
    return ctx


class InspectTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.server = Inspector()
        self.stub = StubTreq(self.server.app.resource())
        self.clock = Clock()

    def run_inspect(self, **cli: Any) -> inspector.InspectionResult | None:
        cli.setdefault("inspection_callback_url", "http://insp:5050/v1/continue")
        cli.setdefault("inspection_dhcp_wait_timeout", "0")
        ctx = context(self.stub, self.clock, **cli)
        d = ensureDeferred(inspector.inspect(ctx, None))
        for _ in range(200):
            self.stub.flush()
            if d.called:
                break
            self.clock.advance(1)
        return self.successResultOf(d)

    def test_payload(self) -> None:
        result = self.run_inspect(inspection_collectors="default")
        assert result is not None
        self.assertEqual(result.node_uuid, "node-1")
        post, = self.server.posts
        self.assertEqual(set(post), {"inventory", "root_disk",
                                     "boot_interface", "configuration",
                                     "error"})
        # the smallest disk of at least 4 GiB, ties by name
        self.assertEqual(post["root_disk"]["name"], "/dev/sdb")
        self.assertEqual(post["boot_interface"], "01-aa")
        self.assertEqual(post["configuration"], {
            "collectors": ["default"],
            "managers": [{"name": "fake_hardware_manager", "version": "1.0"}]})
        self.assertIsNone(post["error"])

    def test_unknown_collector_still_posts_inventory(self) -> None:
        self.run_inspect(inspection_collectors="default,nope")
        post, = self.server.posts
        self.assertIn("inventory", post)
        self.assertEqual(post["error"], "The following errors were "
                         "encountered:\n* unknown inspection collector "
                         "'nope' (known: default, dmi-decode, lldp, logs, "
                         "numa-topology, pci-devices, usb-devices)")
        self.flushLoggedErrors()

    def test_retries_on_5xx_and_409(self) -> None:
        self.server.answers = [(503, {}), (409, {}), (202, {"uuid": "u"})]
        result = self.run_inspect(inspection_collectors="default")
        assert result is not None
        self.assertEqual((result.status, result.node_uuid), (202, "u"))
        self.assertEqual(len(self.server.posts), 3)

    def test_client_error_is_not_retried_and_not_fatal(self) -> None:
        self.server.answers = [(400, {"error": {"message": "Look up error"}})]
        result = self.run_inspect(inspection_collectors="default")
        assert result is not None
        self.assertEqual(result.status, 400)
        self.assertIsNone(result.node_uuid)
        self.assertEqual(len(self.server.posts), 1)
        self.flushLoggedErrors()

    def test_gives_up_after_five_attempts(self) -> None:
        self.server.answers = [(500, {})]
        result = self.run_inspect(inspection_collectors="default")
        assert result is not None
        self.assertIsNone(result.status)
        self.assertEqual(len(self.server.posts), 5)
        self.flushLoggedErrors()

    def test_cancelled_post_stops_at_once(self) -> None:
        http = HangingHTTP()
        ctx = context(http, self.clock)
        d = ensureDeferred(inspector.post(
            ctx, ["http://a:1/v1/continue", "http://b:1/v1/continue"],
            b"{}", 30.0))
        d.cancel()
        self.failureResultOf(d, CancelledError)
        self.assertEqual((len(http.calls), http.pending), (1, []))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_cancelled_collector_cancels_inspection(self) -> None:
        # waiting for DHCP when the agent stops: nothing is posted (the
        # cancellation was taken for a collector's failure, and the data
        # posted anyway)
        ctx = context(self.stub, self.clock,
                      inspection_callback_url="http://insp:5050/v1/continue",
                      inspection_collectors="default",
                      inspection_dhcp_wait_timeout="60",
                      bootif="01-02-00-00-00-00-42")
        d = ensureDeferred(inspector.inspect(ctx, None))
        self.assertNoResult(d)
        d.cancel()
        self.failureResultOf(d, CancelledError)
        self.stub.flush()
        self.assertEqual(self.server.posts, [])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_logs_collector_packs_the_system_logs(self) -> None:
        import base64
        import io
        import tarfile

        from twisted.internet.defer import maybeDeferred

        ctx = context(self.stub, self.clock)
        assert isinstance(ctx.process, FakeProcessRunner)
        ctx.process.add("dmesg", "kernel says hi\n")
        ctx.process.add("journalctl", "journal line\n")
        ctx.thread_runner = maybeDeferred
        data: dict[str, Any] = {}
        self.successResultOf(ensureDeferred(collectors.LogsCollector().collect(
            ctx, data, collectors.Failures(), ["logs"])))
        raw = base64.b64decode(data["logs"])
        with tarfile.open(fileobj=io.BytesIO(raw), mode="r:gz") as tar:
            self.assertEqual(tar.extractfile("dmesg").read(),  # type: ignore
                             b"kernel says hi\n")
            self.assertIn("journal", tar.getnames())
        # no command extension was made for it
        self.assertEqual(ctx.extensions, {})

    def test_disabled(self) -> None:
        ctx = context(self.stub, self.clock)
        self.assertIsNone(self.successResultOf(
            ensureDeferred(inspector.inspect(ctx, None))))

    def test_urls(self) -> None:
        ctx = context(self.stub, self.clock, inspection_collectors="default",
                      api_url="http://ironic:6385")
        self.assertTrue(inspector.is_enabled(ctx.config))
        urls = self.successResultOf(ensureDeferred(
            inspector.callback_urls(ctx, ["http://ironic:6385/"])))
        self.assertEqual(urls, ["http://ironic:6385/v1/continue_inspection"])

    def test_post_delays(self) -> None:
        self.assertEqual([inspector.post_delay(n) for n in range(1, 7)],
                         [5, 5, 6, 12, 24, 30])


class CollectorTests(SynchronousTestCase):
    def test_normalize_mac(self) -> None:
        self.assertEqual(collectors.normalize_mac("01-AA-bb-cc-dd-ee-ff"),
                         "aa:bb:cc:dd:ee:ff")
        self.assertEqual(collectors.normalize_mac("AA:BB:CC:DD:EE:FF"),
                         "aa:bb:cc:dd:ee:ff")

    def test_numa_topology_of_this_machine(self) -> None:
        topology = collectors.numa_topology()
        assert topology is not None
        self.assertEqual(set(topology), {"ram", "cpus", "nics"})
        self.assertTrue(topology["ram"])
        threads = sorted(t for c in topology["cpus"]
                         for t in c["thread_siblings"])
        import os

        self.assertEqual(len(threads), os.cpu_count())

    def test_failures_text(self) -> None:
        f = collectors.Failures()
        self.assertIsNone(f.error())
        f.add("one")
        f.add("two")
        self.assertEqual(f.error(), "The following errors were encountered:"
                         "\n* one\n* two")
        self.flushLoggedErrors()


class DaemonScheduleTests(SynchronousTestCase):
    def test_no_drift_over_many_posts(self) -> None:
        clock = Clock()
        posted: list[float] = []

        async def post() -> bool:
            posted.append(clock.seconds())
            clock.advance(7.0)  # a slow post does not push the grid
            return True

        d = daemon.IntrospectionDaemon(clock, post, 300.0, random.Random(3))
        d.start()
        for _ in range(100 * 300):
            clock.advance(1)
            if len(posted) >= 101:
                break
        d.stop()
        self.assertEqual(posted[0], 0.0)
        for k, when in enumerate(posted[1:101], start=1):
            self.assertLessEqual(abs(when - k * 300.0), 30.0 + 1.0, k)
        gaps = [b - a for a, b in zip(posted, posted[1:101])]
        self.assertLess(abs(sum(gaps) / len(gaps) - 300.0), 1.0)

    def test_backoff_skips_slots_then_recovers(self) -> None:
        self.assertEqual([daemon.slot_step(n) for n in range(5)],
                         [1, 2, 4, 4, 4])
        rng = random.Random(1)
        slot, when = daemon.next_post(0.0, 100.0, 3, 2, 301.0, rng)
        self.assertEqual(slot, 7)
        self.assertTrue(690 <= when <= 710)
        # late: the next slot whose window is still ahead
        slot, _ = daemon.next_post(0.0, 100.0, 1, 0, 555.0, rng)
        self.assertEqual(slot, 6)

    def test_errors_and_stop(self) -> None:
        clock = Clock()
        results = iter([False, False, True, True])
        times: list[float] = []

        async def post() -> bool:
            times.append(clock.seconds())
            return next(results)

        d = daemon.IntrospectionDaemon(clock, post, 10.0,
                                       random.Random(0))
        done = d.start()
        for _ in range(200):
            clock.advance(1)
            if len(times) == 4:
                break
        d.stop()
        self.successResultOf(done)
        # 0, then 2 slots later (~20), then 4 slots later (~60), then 1
        slots = [round(t / 10.0) for t in times]
        self.assertEqual(slots, [0, 2, 6, 7])
