"""The flow extension: ``start_flow``, a list of commands run in order.

``flow`` is IPA's shape: a list of tasks, each an object of
``{"<extension>.<command>": {params}}`` (one entry as a rule; several run
in the object's order).  Every command named is checked before anything
runs (an unknown extension is a 404, an unknown command a 400, as for a
single command); then they run one after the other, each to its end, and
the first that fails ends the flow, which fails naming it and its error.

The commands run inside the flow (the agent runs one command at a time,
and the flow is that command): they are not added to the command list,
as in IPA.  A command whose params do not fit it, or that its validator
refuses, fails the flow at its turn.
"""

from __future__ import annotations

from typing import Any

from twisted.logger import Logger

from ipa_twisted import errors
from ipa_twisted.commands.base import (
    Extension,
    async_command,
    call_command,
    find_command,
)

log = Logger()


def _steps(flow: Any) -> list[tuple[str, dict[str, Any]]]:
    """``(name, params)`` of every command of ``flow``, in order."""
    if flow is None:
        return []
    if not isinstance(flow, list):
        raise errors.InvalidCommandParamsError(
            f"flow must be a list of tasks, not {type(flow).__name__}")
    steps = []
    for task in flow:
        if not isinstance(task, dict):
            raise errors.InvalidCommandParamsError(
                f"each task of a flow must be an object of "
                f"{{command: params}}, not {task!r}")
        for name, params in task.items():
            if params is None:
                params = {}
            if not isinstance(params, dict):
                raise errors.InvalidCommandParamsError(
                    f"the params of {name} must be an object, not "
                    f"{type(params).__name__}")
            steps.append((name, params))
    return steps


def _check_flow(extension: Any, flow: Any = None) -> None:
    for name, _ in _steps(flow):
        find_command(extension.agent.extensions, name)
        if name == "flow.start_flow":
            raise errors.InvalidCommandParamsError(
                "a flow cannot start another flow")


class FlowExtension(Extension):
    name = "flow"

    @async_command("start_flow", validator=_check_flow)
    async def start_flow(self, flow: Any = None) -> None:
        steps = _steps(flow)
        for number, (name, params) in enumerate(steps, 1):
            command = find_command(self.agent.extensions, name)
            log.info("flow: command {n}/{total}: {name}", n=number,
                     total=len(steps), name=name)
            try:
                mismatch = command.signature_error(params)
                if mismatch is not None:
                    raise mismatch
                command.validate(params)
                await call_command(command.func, params)
            except Exception as e:
                text = str(e) if isinstance(e, errors.AgentError) \
                    else f"{type(e).__name__}: {e}"
                log.error("flow: {name} failed: {error}", name=name,
                          error=text)
                raise errors.CommandExecutionError(
                    f"{name} was failed: {text}") from e
            log.info("flow: {name} done", name=name)
