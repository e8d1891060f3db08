"""Root device hints that do not parse fail at once: HTTP 400 from the
commands that bring them, and no disk-wait retries when they reach
get_os_install_device anyway."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import ensureDeferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from ipa_twisted import errors
from ipa_twisted.commands.base import CommandRunner
from ipa_twisted.commands.standby import StandbyExtension
from ipa_twisted.commands.steps import DeployExtension
from ipa_twisted.config import load_config
from ipa_twisted.context import RunningAgent
from ipa_twisted.hardware.disks import DeviceGuard
from ipa_twisted.hardware.generic import (
    GenericHardwareManager,
    validate_node_root_hints,
)
from ipa_twisted.hardware.manager import HardwareManagers
from ipa_twisted.testing import FakeHardwareManager, FakeProcessRunner

BAD_HINTS = [{"size": "<range-in> nonsense"}, {"colour": "red"},
             {"name": 5}, {"rotational": "maybe"}, {"size": "-3"}]
IMAGE = {"id": "i", "urls": ["http://x/i.img"], "os_hash_algo": "sha256",
         "os_hash_value": "0" * 64}


def node(hints: Any, where: str = "instance_info") -> dict[str, Any]:
    return {"uuid": "n", where: {"root_device": hints}}


class ValidatorTests(SynchronousTestCase):
    def test_good_hints_pass(self) -> None:
        for hints in ({"name": "/dev/sda"}, {"size": ">= 10"},
                      {"serial": "<or> a <or> b"}, {}):
            validate_node_root_hints(node(hints))
            validate_node_root_hints(node(hints, "properties"))
        validate_node_root_hints(None)
        validate_node_root_hints({"uuid": "n"})

    def test_bad_hints_and_shapes_are_400(self) -> None:
        for bad in ([node(h) for h in BAD_HINTS]
                    + [node(h, "properties") for h in BAD_HINTS]
                    + [node("sda"), node(["name"]), ["not", "a", "node"],
                       {"instance_info": "x"}, {"properties": [1]}]):
            with self.assertRaises(errors.InvalidCommandParamsError, msg=bad):
                validate_node_root_hints(bad)


class CommandTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.context = RunningAgent(
            config=load_config({}), reactor=Clock(),
            process=FakeProcessRunner(), guard=DeviceGuard(None))
        self.context.hardware = HardwareManagers([FakeHardwareManager()])
        self.runner = CommandRunner({
            "standby": StandbyExtension(self.context),
            "deploy": DeployExtension(self.context)})

    def test_prepare_image_refuses_cached_bad_hints(self) -> None:
        for hints in BAD_HINTS:
            self.context.node = node(hints)
            with self.assertRaises(errors.InvalidCommandParamsError) as e:
                self.runner.execute("standby.prepare_image",
                                    {"image_info": dict(IMAGE)})
            self.assertIn("root device hint", str(e.exception))
        self.assertEqual(self.runner.list(), [])

    def test_deploy_step_refuses_bad_hints_of_its_node(self) -> None:
        step = {"step": "write_image", "interface": "deploy", "args": {}}
        with self.assertRaises(errors.InvalidCommandParamsError):
            self.runner.execute("deploy.execute_deploy_step", {
                "step": step, "node": node(BAD_HINTS[0]), "ports": []})
        self.assertEqual(self.runner.list(), [])


class InstallDeviceTests(SynchronousTestCase):
    def test_bad_hints_fail_without_waiting_for_disks(self) -> None:
        clock = Clock()
        context = RunningAgent(
            config=load_config({"disk_wait_attempts": "10",
                                "disk_wait_delay": "3"}),
            reactor=clock, process=FakeProcessRunner(),
            guard=DeviceGuard(None))
        context.node = node({"size": "<range-in> nonsense"})
        manager = GenericHardwareManager()
        manager.agent = context
        listed: list[int] = []

        async def list_block_devices(**kw: Any) -> list[Any]:
            listed.append(1)
            return []

        self.patch(manager, "list_block_devices", list_block_devices)
        d = ensureDeferred(manager.get_os_install_device())
        failure = self.failureResultOf(d, errors.DeviceNotFound)
        self.assertIn("failed to validate", str(failure.value))
        self.assertEqual(listed, [])
        self.assertEqual(clock.getDelayedCalls(), [])


class DiskWaitTests(SynchronousTestCase):
    """The root disk is looked for ``disk_wait_attempts`` times,
    ``disk_wait_delay`` apart; a cancelled wait ends at once."""

    def manager(self) -> tuple[GenericHardwareManager, Clock, list[Any]]:
        from ipa_twisted.hardware.disks import BlockDevice

        clock = Clock()
        context = RunningAgent(
            config=load_config({"disk_wait_attempts": "3",
                                "disk_wait_delay": "5"}),
            reactor=clock, process=FakeProcessRunner(),
            guard=DeviceGuard(None))
        manager = GenericHardwareManager()
        manager.agent = context
        answers: list[Any] = []

        async def list_block_devices(**kw: Any) -> list[Any]:
            found = answers.pop(0) if answers else []
            return [BlockDevice(name=n, model=None, size=8 << 30,
                                rotational=False) for n in found]

        self.patch(manager, "list_block_devices", list_block_devices)
        return manager, clock, answers

    def test_a_disk_that_appears_late_is_found(self) -> None:
        manager, clock, answers = self.manager()
        answers.extend([[], ["/dev/sdb"]])
        d = ensureDeferred(manager.get_os_install_device())
        self.assertNoResult(d)
        clock.advance(5)
        self.assertEqual(self.successResultOf(d), "/dev/sdb")

    def test_gives_up_after_the_attempts(self) -> None:
        manager, clock, _ = self.manager()
        d = ensureDeferred(manager.get_os_install_device())
        clock.advance(5)
        self.assertNoResult(d)
        clock.advance(5)
        self.failureResultOf(d, errors.DeviceNotFound)
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_cancelled_wait_ends_at_once(self) -> None:
        from twisted.internet.defer import CancelledError

        manager, clock, _ = self.manager()
        d = ensureDeferred(manager.get_os_install_device())
        d.cancel()
        self.failureResultOf(d, CancelledError)
        self.assertEqual(clock.getDelayedCalls(), [])
