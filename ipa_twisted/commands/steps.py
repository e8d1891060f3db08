"""The clean, deploy and service extensions: list and run steps.

All three share one shape (contract 5.1): ``get_<type>_steps(node, ports)``
collects steps from every hardware manager and keeps, for each step name,
the one from the best-supported manager (then the highest priority, then
the first class name); ``execute_<type>_step(step, node, ports,
<type>_version=None)`` checks the managers' versions against Ironic's and
dispatches the step.

Only advertised steps run: ``execute_<type>_step`` asks the managers for
their ``<type>`` steps again (for the node and ports given) and runs the
step on the manager that advertised it (then on the others that did), never
on a manager that merely has a method of that name: a hardware manager's
helpers and the methods of the manager interface (``erase_block_device``,
``list_hardware_info``...) are not steps.
"""

from __future__ import annotations

from typing import Any, Mapping

from twisted.internet.defer import CancelledError
from twisted.logger import Logger

from ipa_twisted import errors
from ipa_twisted.commands.base import Extension, async_command, sync_command
from ipa_twisted.hardware.generic import validate_node_root_hints

log = Logger()


def deduplicate_steps(
    steps_by_manager: Mapping[str, list[dict[str, Any]]],
    support: Mapping[str, int],
) -> dict[str, list[dict[str, Any]]]:
    """Keep one step per name: best support, then priority, then name."""
    best: dict[str, tuple[tuple[int, int, str], str, dict[str, Any]]] = {}
    for manager, steps in steps_by_manager.items():
        for step in steps or []:
            name = step.get("step")
            if not name:
                continue
            key = (-support.get(manager, 0), -int(step.get("priority") or 0),
                   manager)
            if name not in best or key < best[name][0]:
                best[name] = (key, manager, step)
    result: dict[str, list[dict[str, Any]]] = {m: [] for m in steps_by_manager}
    for _, manager, step in best.values():
        result[manager].append(step)
    return result


class StepsExtension(Extension):
    step_type = ""
    error_class: type[errors.AgentError] = errors.CleaningError

    async def _advertised(self, node: Any, ports: Any
                          ) -> tuple[dict[str, list[dict[str, Any]]],
                                     dict[str, Any]]:
        """(the steps by manager, deduplicated; what each manager gave)."""
        hardware = self.agent.hardware
        found = await hardware.dispatch_all(f"get_{self.step_type}_steps",
                                            node, ports)
        return deduplicate_steps(found, hardware.support), found

    async def _get_steps(self, node: Any, ports: Any) -> dict[str, Any]:
        self.agent.cache_node(node)
        steps, _ = await self._advertised(node, ports)
        return {
            f"{self.step_type}_steps": steps,
            "hardware_manager_version": self.agent.hardware.versions(),
        }

    async def _advertisers(self, name: str, node: Any, ports: Any
                           ) -> list[str]:
        """The managers that advertise step ``name``, the one whose step
        Ironic was given first; refused when none does."""
        steps, found = await self._advertised(node, ports)
        winners = [m for m, listed in steps.items()
                   if any(s.get("step") == name for s in listed)]
        others = [m for m in (type(x).__name__
                              for x in self.agent.hardware.managers)
                  if m not in winners and any(
                      isinstance(s, dict) and s.get("step") == name
                      for s in found.get(m) or [])]
        if not winners:
            known = sorted({s["step"] for listed in steps.values()
                            for s in listed})
            raise errors.InvalidCommandParamsError(
                f"{self.step_type} step {name!r} was not advertised by "
                f"get_{self.step_type}_steps (advertised: "
                f"{', '.join(known) or 'none'})")
        return winners + others

    def _check_versions(self, given: Any) -> None:
        if given is None:
            return
        current = self.agent.hardware.versions()
        if given != current:
            raise errors.VersionMismatch(current, given)

    async def _execute_step(self, step: Any, node: Any, ports: Any,
                            version: Any, extra: Mapping[str, Any]) -> Any:
        self.agent.cache_node(node)
        self._check_versions(version)
        if not isinstance(step, dict) or not step.get("step"):
            raise errors.InvalidCommandParamsError(
                f"{self.step_type} step must be an object with a 'step' "
                f"name, got {step!r}"
            )
        args = step.get("args") or {}
        name = step["step"]
        if not isinstance(name, str) or not isinstance(args, dict):
            raise errors.InvalidCommandParamsError(
                f"{self.step_type} step must have a string 'step' and an "
                f"object 'args', got {step!r}")
        kwargs = {**extra, **args}
        managers = await self._advertisers(name, node, ports)
        log.info("executing {kind} step {name} (args: {args})",
                 kind=self.step_type, name=name, args=sorted(kwargs))
        try:
            result = await self.agent.hardware.dispatch_to(
                managers, name, node, ports, **kwargs)
        except CancelledError:
            raise
        except errors.AgentError:
            raise
        except Exception as e:
            raise self.error_class(
                f"Unexpected exception performing {self.step_type} step "
                f"{name}. {type(e).__name__}: {e}"
            ) from e
        log.info("{kind} step {name} done", kind=self.step_type, name=name)
        return {
            f"{self.step_type}_result": result,
            f"{self.step_type}_step": step,
        }


class CleanExtension(StepsExtension):
    name = "clean"
    step_type = "clean"
    error_class = errors.CleaningError

    @sync_command("get_clean_steps")
    async def get_clean_steps(self, node: Any, ports: Any) -> dict[str, Any]:
        return await self._get_steps(node, ports)

    @async_command("execute_clean_step")
    async def execute_clean_step(self, step: Any, node: Any, ports: Any,
                                 clean_version: Any = None,
                                 **kwargs: Any) -> Any:
        return await self._execute_step(step, node, ports, clean_version,
                                        kwargs)


class DeployExtension(StepsExtension):
    name = "deploy"
    step_type = "deploy"
    error_class = errors.DeploymentError

    @sync_command("get_deploy_steps")
    async def get_deploy_steps(self, node: Any, ports: Any) -> dict[str, Any]:
        return await self._get_steps(node, ports)

    def _validate_step(self, step: Any, node: Any, ports: Any,
                       deploy_version: Any = None, **kwargs: Any) -> None:
        # The deploy steps that reach the agent write to the root device.
        validate_node_root_hints(node)

    @async_command("execute_deploy_step", _validate_step)
    async def execute_deploy_step(self, step: Any, node: Any, ports: Any,
                                  deploy_version: Any = None,
                                  **kwargs: Any) -> Any:
        return await self._execute_step(step, node, ports, deploy_version,
                                        kwargs)


class ServiceExtension(StepsExtension):
    name = "service"
    step_type = "service"
    error_class = errors.ServicingError

    @sync_command("get_service_steps")
    async def get_service_steps(self, node: Any, ports: Any
                                ) -> dict[str, Any]:
        return await self._get_steps(node, ports)

    @async_command("execute_service_step")
    async def execute_service_step(self, step: Any, node: Any, ports: Any,
                                   service_version: Any = None,
                                   **kwargs: Any) -> Any:
        return await self._execute_step(step, node, ports, service_version,
                                        kwargs)
