"""poll, log and the power commands of standby, over fakes."""

from __future__ import annotations

import base64
import io
import tarfile
from typing import Any

from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from ipa_twisted.api.site import mask_query
from ipa_twisted.commands.base import CommandRunner, IExtension
from ipa_twisted.commands.log import LogExtension
from ipa_twisted.commands.poll import PollExtension
from ipa_twisted.commands.standby import StandbyExtension
from ipa_twisted.config import load_config
from ipa_twisted.context import RunningAgent
from ipa_twisted.extensions import builtin_extensions
from ipa_twisted.hardware.disks import DeviceGuard
from ipa_twisted.hardware.manager import HardwareManagers
from ipa_twisted.testing import FakeHardwareManager, FakeProcessRunner


class Reactor(Clock):
    """A Clock whose thread pool runs work at once (synchronous tests)."""

    def getThreadPool(self) -> Any:
        return self

    def callInThreadWithCallback(self, onResult: Any, func: Any, *a: Any,
                                 **kw: Any) -> None:
        try:
            result = func(*a, **kw)
        except BaseException as e:
            onResult(False, Failure(e))
        else:
            onResult(True, result)

    def callFromThread(self, f: Any, *a: Any, **kw: Any) -> None:
        f(*a, **kw)


class ExtensionTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.process = FakeProcessRunner()
        self.fake = FakeHardwareManager()
        self.context = RunningAgent(
            config=load_config({"standalone": True, "agent_token": "x" * 32,
                                "power_off_command": "my-poweroff --now",
                                "sysrq_fallback": False}),
            reactor=Reactor(), disk_threads=Reactor(),
            process=self.process, guard=DeviceGuard(None))
        self.context.hardware = HardwareManagers([self.fake])
        self.context.extensions = {
            "poll": PollExtension(self.context),
            "log": LogExtension(self.context),
            "standby": StandbyExtension(self.context),
        }
        self.runner = CommandRunner(self.context.extensions)

    def run_(self, name: str, **params: Any) -> Any:
        return self.successResultOf(self.runner.execute(name, params).wait())

    def test_every_builtin_extension_provides_the_interface(self) -> None:
        for name, cls in builtin_extensions().items():
            ext = cls(self.context)
            verifyObject(IExtension, ext)
            self.assertEqual(ext.name, name)
            self.assertTrue(ext.commands())

    def test_get_hardware_info(self) -> None:
        result = self.run_("poll.get_hardware_info")
        self.assertEqual(result.result, self.fake.inventory)

    def test_set_node_info_standalone(self) -> None:
        result = self.run_("poll.set_node_info", node_info={
            "node": {"uuid": "u"}, "config": {"agent_md5_checksum_enable": True}})
        self.assertEqual(result.status, "SUCCEEDED")
        self.assertEqual(self.context.node, {"uuid": "u"})
        self.assertTrue(self.context.md5_enabled)

    def test_collect_system_logs(self) -> None:
        self.process.add("dmesg", "kernel says hi\n")
        self.process.add("journalctl", "journal line\n")
        self.process.add("ps", "", exit_code=1, stderr="ps broke")
        result = self.run_("log.collect_system_logs")
        self.assertEqual(result.status, "SUCCEEDED")
        raw = base64.b64decode(result.result["system_logs"])
        with tarfile.open(fileobj=io.BytesIO(raw), mode="r:gz") as tar:
            names = tar.getnames()
            dmesg = tar.extractfile("dmesg").read()  # type: ignore[union-attr]
            df = tar.extractfile("df").read()  # type: ignore[union-attr]
            ps = tar.extractfile("ps").read()  # type: ignore[union-attr]
        self.assertIn("journal", names)
        self.assertEqual(dmesg, b"kernel says hi\n")
        self.assertEqual(df, b"not collected: command not found\n")
        self.assertIn(b"ps broke", ps)
        # journald answered: /var/log is not packed
        self.assertFalse(any(n.startswith("var/log") for n in names))

    def collect(self, context: RunningAgent) -> dict[str, bytes]:
        self.runner = CommandRunner({"log": LogExtension(context)})
        result = self.run_("log.collect_system_logs")
        self.assertEqual(result.status, "SUCCEEDED")
        raw = base64.b64decode(result.result["system_logs"])
        with tarfile.open(fileobj=io.BytesIO(raw), mode="r:gz") as tar:
            return {m.name: tar.extractfile(m).read()  # type: ignore
                    for m in tar.getmembers()}

    def test_collected_logs_hold_no_secret_option(self) -> None:
        # every spelling of every secret option, as the tools print them
        token = "T0ken-" + "q" * 40
        context = RunningAgent(
            config=load_config({"agent_token": token,
                                "image_server_user": "alice",
                                "image_server_password": "s3cr3t pass"}),
            reactor=Reactor(), disk_threads=Reactor(),
            process=self.process, guard=DeviceGuard(None))
        self.process.add("ps", (
            f"root 1 0.3 twistd --nodaemon ipa --agent-token {token} "
            f"--listen-host 127.0.0.1\n"
            f"root 2 0.0 ipa --agent-token={token[:-1]} --image-server-user "
            f"bob --image-server-password='an0ther pass'\n"))
        self.process.add("dmesg", (
            f"[    0.000000] Command line: BOOT_IMAGE=/vmlinuz "
            f"ipa-agent-token={token}X ipa-api-url=http://k:6385 quiet\n"))
        self.process.add("journalctl", (
            "agent_token = from-an-ini-file\n"
            "image_server_password=s3cr3t pass\n"
            '{"image_server_password": "json-pass"}\n'
            "GET /v1/commands?wait=true&agent_token=from-a-query&x=1\n"))
        texts = self.collect(context)
        everything = b"\n".join(texts.values())
        for secret in (token[:-1], "s3cr3t", "alice", "bob", "an0ther",
                       "from-an-ini-file", "json-pass", "from-a-query"):
            self.assertNotIn(secret.encode(), everything)
        # what is not secret stays
        self.assertIn(b"--listen-host 127.0.0.1", texts["ps"])
        self.assertIn(b"ipa-api-url=http://k:6385 quiet", texts["dmesg"])
        self.assertIn(b"ipa-agent-token=*** ", texts["dmesg"])
        self.assertIn(b"&x=1", texts["journal"])

    def test_collected_logs_hold_not_the_token_ironic_gave(self) -> None:
        issued = "issued" + "Z" * 37
        context = RunningAgent(
            config=load_config({}), reactor=Reactor(), disk_threads=Reactor(),
            process=self.process,
            guard=DeviceGuard(None), current_token=lambda: issued)
        self.process.add("journalctl", f"something printed {issued}\n")
        texts = self.collect(context)
        self.assertNotIn(issued.encode(), texts["journal"])
        self.assertEqual(texts["journal"], b"something printed ***\n")

    def test_power_off_runs_the_configured_command(self) -> None:
        self.process.add("my-poweroff")
        result = self.run_("standby.power_off")
        self.assertEqual(result.status, "SUCCEEDED")
        self.assertIn(("my-poweroff", "--now"), self.process.calls)
        self.assertIn(("full_sync", {}), self.fake.ran)

    def test_power_off_failure(self) -> None:
        self.process.add("my-poweroff", exit_code=1, stderr="denied")
        result = self.run_("standby.power_off")
        self.assertEqual(result.status, "FAILED")
        self.assertEqual(result.error["type"], "SystemRebootError")
        self.assertIn("denied", result.error["details"])

    def test_sync(self) -> None:
        result = self.run_("standby.sync")
        self.assertEqual((result.status, result.result), ("SUCCEEDED", None))

    def test_partition_uuids_before_any_image(self) -> None:
        self.assertEqual(self.run_("standby.get_partition_uuids").result, {})


class MaskTests(SynchronousTestCase):
    def test_mask_query(self) -> None:
        self.assertEqual(mask_query("wait=true&agent_token=abc"),
                         "wait=true&agent_token=***")
        self.assertEqual(mask_query(""), "")
        self.assertEqual(mask_query("agent_token="), "agent_token=***")
