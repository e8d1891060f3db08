"""What the agent does with a lookup answer."""

from __future__ import annotations

from typing import Any

import os

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.task import Clock
from twisted.logger import capturedLogs
from twisted.trial.unittest import SynchronousTestCase

from ipa_twisted.agent import AgentService, format_callback_url
from ipa_twisted.registration import accept_lookup
from ipa_twisted.config import load_config
from ipa_twisted.ironic import LookupResult
from ipa_twisted.testing import FakeProcessRunner

NODE = {"uuid": "n-1", "properties": {"root_device": {"name": "/dev/sdb"}}}


def service(**cli: Any) -> AgentService:
    return AgentService(load_config(cli), Clock(), http=object())


def accept(agent: AgentService, config: dict[str, Any]) -> bool:
    serve, token = accept_lookup(agent.context, None, agent.token,
                                 LookupResult(NODE, config))
    agent.token = token
    return serve


class LookupTests(SynchronousTestCase):
    def test_token_and_config_applied(self) -> None:
        agent = service()
        ok = accept(agent, {
            "heartbeat_timeout": 60, "agent_token": "t" * 43,
            "agent_md5_checksum_enable": True, "tls_min_version": "1.3"})
        self.assertTrue(ok)
        self.assertEqual(agent.token, "t" * 43)
        self.assertEqual(agent.context.node, NODE)
        self.assertTrue(agent.context.md5_enabled)
        self.assertEqual(agent.context.lookup_config["tls_min_version"], "1.3")
        self.assertNotIn("agent_token", agent.context.lookup_config)

    def test_masked_token_without_our_own_refuses(self) -> None:
        agent = service()
        ok = accept(agent, {"heartbeat_timeout": 60, "agent_token": "******"})
        self.assertFalse(ok)
        self.assertIsNone(agent.token)

    def test_masked_token_with_preshared_keeps_it(self) -> None:
        agent = service(agent_token="p" * 32)
        ok = accept(agent, {"heartbeat_timeout": 60, "agent_token": "******"})
        self.assertTrue(ok)
        self.assertEqual(agent.token, "p" * 32)

    def test_short_token_ignored(self) -> None:
        agent = service()
        accept(agent, {"heartbeat_timeout": 60, "agent_token": "short"})
        self.assertIsNone(agent.token)


class CallbackTests(SynchronousTestCase):
    def test_format(self) -> None:
        self.assertEqual(format_callback_url("https", "10.0.0.1", 9999),
                         "https://10.0.0.1:9999")
        self.assertEqual(format_callback_url("http", "fd00::1", 9999),
                         "http://[fd00::1]:9999")
        self.assertEqual(format_callback_url("http", "agent.example", 1),
                         "http://agent.example:1")


class MissingToolsTests(SynchronousTestCase):
    def test_each_missing_tool_named_once(self) -> None:
        path = self.mktemp()
        os.makedirs(path)
        with open(os.path.join(path, "lsblk"), "w") as f:
            f.write("#!/bin/sh\n")
        os.chmod(os.path.join(path, "lsblk"), 0o755)
        with capturedLogs() as events:
            absent = service().warn_missing_tools(path)
        self.assertIn("efibootmgr", absent)
        self.assertNotIn("lsblk", absent)
        self.assertNotIn("biosdevname", absent)  # optional: no warning
        warned = [e["tool"] for e in events if "tool" in e]
        self.assertEqual(sorted(warned), sorted(absent))
        efi = next(e for e in events if e.get("tool") == "efibootmgr")
        self.assertEqual(efi["package"], "efibootmgr")
        self.assertIn("install_bootloader", efi["needed_for"])


class StartupCancelTests(SynchronousTestCase):
    """Stopping the agent during start-up."""

    def stuck_agent(self) -> tuple[AgentService, Deferred[None]]:
        from ipa_twisted.hardware.manager import HardwareManagers
        from ipa_twisted.testing import FakeHardwareManager

        stuck: Deferred[None] = Deferred()

        class Stuck(FakeHardwareManager):
            def initialize(self, agent: Any) -> Any:
                return stuck

        agent = AgentService(load_config({}), Clock(),
                             http=object(),
                             hardware=HardwareManagers([Stuck()]),
                             exit_on_fatal=False)
        return agent, stuck

    def test_ready_fails_when_start_up_is_cancelled(self) -> None:
        agent, stuck = self.stuck_agent()
        agent.startService()
        early = agent.when_ready()
        self.assertNoResult(early)
        self.successResultOf(agent.stopService())
        self.failureResultOf(early, CancelledError)
        self.failureResultOf(agent.when_ready(), CancelledError)

    def test_stop_waits_for_the_tools_it_stops(self) -> None:
        agent, _ = self.stuck_agent()
        stopping: Deferred[None] = Deferred()

        class Runner(FakeProcessRunner):
            def stop(self) -> Deferred[None]:
                return stopping

        agent.context.process = Runner()
        agent.startService()
        done = agent.stopService()
        self.assertNoResult(done)
        stopping.callback(None)
        self.successResultOf(done)
