"""clean / deploy / service extensions over fake hardware managers."""

from __future__ import annotations

from typing import Any

from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from ipa_twisted import errors
from ipa_twisted.commands.base import CommandRunner
from ipa_twisted.commands.steps import (
    CleanExtension,
    DeployExtension,
    ServiceExtension,
    deduplicate_steps,
)
from ipa_twisted.hardware.generic import GenericHardwareManager
from ipa_twisted.hardware.manager import (
    HardwareManager,
    HardwareManagers,
    HardwareSupport,
    IHardwareManager,
)
from ipa_twisted.testing import FakeHardwareManager


class Agent:
    def __init__(self, hardware: HardwareManagers) -> None:
        self.hardware = hardware
        self.node: Any = None

    def cache_node(self, node: Any) -> None:
        self.node = node


class Mainline(HardwareManager):
    HARDWARE_MANAGER_NAME = "mainline"
    HARDWARE_MANAGER_VERSION = "3"

    def evaluate_hardware_support(self) -> int:
        return HardwareSupport.MAINLINE

    def get_clean_steps(self, node: Any, ports: Any) -> list[dict[str, Any]]:
        return [{"step": "fake_clean", "priority": 50, "interface": "deploy",
                 "reboot_requested": False, "abortable": True},
                {"step": "only_here", "priority": 1, "interface": "deploy",
                 "reboot_requested": False, "abortable": True}]

    def only_here(self, node: Any, ports: Any, **kw: Any) -> None:
        raise RuntimeError("disk exploded")

    def broken_step(self, node: Any, ports: Any) -> None:
        raise errors.IncompatibleHardwareMethodError()


class StepTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.fake = FakeHardwareManager()
        self.hardware = HardwareManagers([Mainline(), self.fake])
        self.agent = Agent(self.hardware)
        self.runner = CommandRunner({
            "clean": CleanExtension(self.agent),
            "deploy": DeployExtension(self.agent),
            "service": ServiceExtension(self.agent),
        })

    def run_cmd(self, name: str, **params: Any) -> Any:
        result = self.runner.execute(name, params)
        return self.successResultOf(result.wait())

    def test_managers_sorted_by_support(self) -> None:
        self.assertEqual([type(m).__name__ for m in self.hardware.managers],
                         ["FakeHardwareManager", "Mainline"])
        self.assertEqual(self.hardware.versions(),
                         {"fake_hardware_manager": "1.0", "mainline": "3"})

    def test_get_clean_steps_deduplicates(self) -> None:
        result = self.run_cmd("clean.get_clean_steps", node={"uuid": "n"},
                              ports=[])
        self.assertEqual(result.status, "SUCCEEDED")
        steps = result.result["clean_steps"]
        # fake_clean: the fake (support 3) beats Mainline (2) despite prio.
        self.assertEqual([s["step"] for s in steps["FakeHardwareManager"]],
                         ["fake_clean"])
        self.assertEqual([s["step"] for s in steps["Mainline"]], ["only_here"])
        self.assertEqual(result.result["hardware_manager_version"],
                         self.hardware.versions())
        self.assertEqual(self.agent.node, {"uuid": "n"})

    def test_deduplicate_ties(self) -> None:
        step = {"step": "s", "priority": 5}
        out = deduplicate_steps({"B": [step], "A": [dict(step)]},
                                {"A": 1, "B": 1})
        self.assertEqual(out, {"B": [], "A": [step]})
        out = deduplicate_steps({"B": [{"step": "s", "priority": 9}],
                                 "A": [step]}, {"A": 1, "B": 1})
        self.assertEqual(out["B"], [{"step": "s", "priority": 9}])

    def test_execute_clean_step(self) -> None:
        step = {"step": "fake_clean", "args": {"x": 1}, "priority": 10,
                "interface": "deploy"}
        result = self.run_cmd("clean.execute_clean_step", step=step, node={},
                              ports=[], clean_version=self.hardware.versions())
        self.assertEqual(result.status, "SUCCEEDED")
        self.assertEqual(result.result, {"clean_result": "cleaned",
                                         "clean_step": step})
        self.assertEqual(self.fake.ran, [("fake_clean", {"x": 1})])

    def test_version_mismatch(self) -> None:
        result = self.run_cmd("deploy.execute_deploy_step",
                              step={"step": "fake_clean"}, node={}, ports=[],
                              deploy_version={"mainline": "2"})
        self.assertEqual(result.status, "CLEAN_VERSION_MISMATCH")
        self.assertEqual(result.error["type"], "VersionMismatch")
        self.assertEqual(self.fake.ran, [])

    def test_unexpected_exception_is_wrapped(self) -> None:
        result = self.run_cmd("clean.execute_clean_step",
                              step={"step": "only_here"}, node={}, ports=[])
        self.assertEqual(result.status, "FAILED")
        self.assertEqual(result.error["type"], "CleaningError")
        self.assertEqual(result.error["details"],
                         "Unexpected exception performing clean step "
                         "only_here. RuntimeError: disk exploded")
        self.flushLoggedErrors()

    def test_a_cancelled_step_says_so(self) -> None:
        # the agent stops during a step: "cancelled", not "unexpected
        # exception ... CancelledError"
        from twisted.internet.defer import Deferred

        pending: list[Deferred[None]] = []

        def slow(node: Any, ports: Any, **kw: Any) -> Deferred[None]:
            d: Deferred[None] = Deferred()
            pending.append(d)
            return d

        self.patch(self.fake, "fake_clean", slow)
        result = self.runner.execute("clean.execute_clean_step", {
            "step": {"step": "fake_clean"}, "node": {}, "ports": []})
        self.assertEqual(len(pending), 1)
        self.successResultOf(self.runner.stop())
        self.assertEqual(result.status, "FAILED")
        self.assertEqual(result.error["type"], "CommandExecutionError")
        self.assertIn("cancelled (the agent is stopping)",
                      result.error["details"])

    def test_unknown_step(self) -> None:
        result = self.run_cmd("clean.execute_clean_step",
                              step={"step": "no_such_step"}, node={},
                              ports=[])
        self.assertEqual(result.status, "FAILED")
        self.assertEqual(result.error["type"], "InvalidCommandParamsError")
        self.assertIn("'no_such_step' was not advertised by get_clean_steps "
                      "(advertised: fake_clean, only_here)",
                      result.error["details"])

    def test_only_advertised_steps_run(self) -> None:
        # methods the managers have, that no get_*_steps advertised: a
        # helper, a method of the manager interface, a clean step asked
        # for as a service step
        for command, step in (
                ("clean.execute_clean_step", "broken_step"),
                ("clean.execute_clean_step", "full_sync"),
                ("clean.execute_clean_step", "list_hardware_info"),
                ("deploy.execute_deploy_step", "fake_clean"),
                ("service.execute_service_step", "only_here")):
            result = self.run_cmd(command, step={"step": step}, node={},
                                  ports=[])
            self.assertEqual(result.status, "FAILED", (command, step))
            self.assertEqual(result.error["type"],
                             "InvalidCommandParamsError")
            self.assertIn(f"{step!r} was not advertised",
                          result.error["details"])
        self.assertEqual(self.fake.ran, [])

    def test_a_step_runs_on_the_manager_that_advertised_it(self) -> None:
        # the better-supported manager has a method of the same name but
        # did not advertise it: Mainline's step runs, not that method
        class Shadow(FakeHardwareManager):
            def only_here(self, node: Any, ports: Any, **kw: Any) -> str:
                self.ran.append(("only_here", kw))
                return "the wrong one"

        shadow = Shadow()
        agent = Agent(HardwareManagers([Mainline(), shadow]))
        runner = CommandRunner({"clean": CleanExtension(agent)})
        result = self.successResultOf(runner.execute(
            "clean.execute_clean_step", {"step": {"step": "only_here"},
                                         "node": {}, "ports": []}).wait())
        self.assertEqual(result.error["details"],
                         "Unexpected exception performing clean step "
                         "only_here. RuntimeError: disk exploded")
        self.assertEqual(shadow.ran, [])
        self.flushLoggedErrors()

    def test_step_args_must_be_an_object(self) -> None:
        result = self.run_cmd("clean.execute_clean_step",
                              step={"step": "fake_clean", "args": ["x"]},
                              node={}, ports=[])
        self.assertEqual(result.status, "FAILED")
        self.assertEqual(result.error["type"], "InvalidCommandParamsError")
        self.assertEqual(self.fake.ran, [])

    def test_missing_or_unknown_argument_is_a_typeerror(self) -> None:
        """What Ironic's _raise_if_typeerror looks for (IPA raises a
        TypeError calling the command)."""
        missing = self.runner.execute("clean.get_clean_steps", {"node": {}})
        self.assertEqual((missing.status, missing.error["type"]),
                         ("FAILED", "TypeError"))
        self.assertIn("ports", missing.error["details"])
        unknown = self.runner.execute("deploy.get_deploy_steps", {
            "node": {}, "ports": [], "new_argument": 1})
        self.assertEqual((unknown.status, unknown.error["type"]),
                         ("FAILED", "TypeError"))
        self.assertEqual([c.id for c in self.runner.list()],
                         [missing.id, unknown.id])

    def test_step_without_name(self) -> None:
        result = self.run_cmd("clean.execute_clean_step", step={}, node={},
                              ports=[])
        self.assertEqual(result.status, "FAILED")
        self.assertEqual(result.error["type"], "InvalidCommandParamsError")

    def test_no_managers(self) -> None:
        class Nothing(HardwareManager):
            pass

        with self.assertRaises(errors.HardwareManagerNotFound):
            HardwareManagers([Nothing()])

    def test_providers(self) -> None:
        for manager in (GenericHardwareManager(), FakeHardwareManager(),
                        Mainline()):
            verifyObject(IHardwareManager, manager)

    def test_generic_steps_are_ipas(self) -> None:
        """IPA 13.0.0's GenericHardwareManager steps (names, priorities,
        interfaces, abortable, reboot_requested, argsinfo), those this
        agent has; the rest are listed as not there yet, never stubbed."""
        from ipa_twisted.hardware.generic import NOT_YET

        generic = GenericHardwareManager()

        from ipa_twisted.hardware import inject

        from ipa_twisted.hardware import raid

        def step(name: str, priority: int, abortable: bool | None = None,
                 argsinfo: object = False, interface: str = "deploy"
                 ) -> dict[str, object]:
            out: dict[str, object] = {"step": name, "priority": priority,
                                      "interface": interface,
                                      "reboot_requested": False}
            if abortable is not None:
                out["abortable"] = abortable
            if isinstance(argsinfo, dict):
                out["argsinfo"] = argsinfo
            elif argsinfo:
                out["argsinfo"] = {"match_patterns": {
                    "description": "Json blob contains a list of regex "
                    "patterns where any UEFI NVRAM entry matching that "
                    "pattern will be deleted. Default value is "
                    "'[\"^HD\\(\", \"shim.*\\.efi\", \"grub.*\\.efi\"]'",
                    "required": False}}
            return out

        self.assertEqual(generic.get_clean_steps({}, []), [
            step("erase_devices", 10, True),
            step("erase_devices_metadata", 99, True),
            step("erase_devices_express", 0, True),
            step("erase_pstore", 0, True),
            step("clean_uefi_nvram", 0, True, argsinfo=True),
            step("delete_configuration", 0, True, interface="raid"),
            step("create_configuration", 0, True, interface="raid"),
            step("burnin_cpu", 0, True),
            step("burnin_gpu", 0, True),
            step("burnin_disk", 0, True),
            step("burnin_memory", 0, True),
            step("burnin_network", 0, True)])
        self.assertEqual(generic.get_deploy_steps({}, []), [
            step("erase_devices_metadata", 0),
            step("apply_configuration", 0, interface="raid",
                 argsinfo=raid.APPLY_ARGSINFO),
            step("clean_uefi_nvram", 0, argsinfo=True),
            step("write_image", 0),
            step("inject_files", 0, argsinfo=inject.ARGSINFO)])
        self.assertEqual(generic.get_service_steps({}, []), [
            step("delete_configuration", 0, True, interface="raid"),
            step("apply_configuration", 0, interface="raid",
                 argsinfo=raid.APPLY_ARGSINFO),
            step("create_configuration", 0, True, interface="raid"),
            # as IPA: no burnin_disk (it would destroy a deployed disk)
            step("burnin_cpu", 0, True),
            step("burnin_gpu", 0, True),
            step("burnin_memory", 0, True),
            step("burnin_network", 0, True),
            step("write_image", 0),
            step("inject_files", 0, argsinfo=inject.ARGSINFO)])
        for kind in ("clean", "deploy", "service"):
            listed = {s["step"] for s in getattr(
                generic, f"get_{kind}_steps")({}, [])}
            self.assertFalse(listed & set(NOT_YET[kind]))
            for name in listed:
                self.assertTrue(callable(getattr(generic, name)), name)
