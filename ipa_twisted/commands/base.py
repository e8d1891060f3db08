"""Extensions, their commands, and the command runner.

An extension is an object with a ``name`` (the command prefix) whose methods
are marked with :func:`sync_command` or :func:`async_command`.  The runner
executes ``<extension>.<command>`` requests one at a time, keeps every result
in order (the conductor reads the *last* one), and turns every outcome into
the wire's five-field result object.

The history is bounded: at most :data:`MAX_HISTORY` commands, and the
oldest are forgotten while the results kept weigh more than
:data:`MAX_HISTORY_BYTES` (the last command is always kept).  A command's
params are kept with their large values (config drives, big image_info
fields) and secret-looking ones elided: they are never sent back (the wire
shape of a command is IPA's five fields), only kept for the record.

Sync commands answer with their final result (they may still return a
Deferred or be coroutines: the answer waits for them).  Async commands answer
``RUNNING`` at once and finish in the background; when they end, the agent
is asked for a heartbeat so that the conductor notices quickly.
"""

from __future__ import annotations

import inspect
import json
import re
import uuid
from collections import OrderedDict
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping, TypeVar

import attrs
from twisted.internet.defer import (
    CancelledError,
    Deferred,
    DeferredList,
    ensureDeferred,
)
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import Attribute, Interface, implementer

from ipa_twisted import encoding, errors
from ipa_twisted.observer import OneShotObserver

if TYPE_CHECKING:
    from ipa_twisted.context import RunningAgent

log = Logger()

RUNNING = "RUNNING"
SUCCEEDED = "SUCCEEDED"
FAILED = "FAILED"
VERSION_MISMATCH = "CLEAN_VERSION_MISMATCH"

F = TypeVar("F", bound=Callable[..., Any])

_MARK = "_ipa_command"

#: How many commands the runner remembers (the conductor reads the last).
MAX_HISTORY = 32
#: How much the remembered results may weigh (their JSON), the last
#: command's aside (a log tarball can be tens of MiB).
MAX_HISTORY_BYTES = 64 * 1024 * 1024
#: A param string longer than this is not kept in the history.
MAX_PARAM_CHARS = 1024
#: Nor more than this many items of a list or object, nor deeper than this.
MAX_PARAM_ITEMS = 64
MAX_PARAM_DEPTH = 8
_SECRET_KEY = re.compile(r"(?i)password|passwd|token|secret|authorization"
                         r"|credential")


def elide_params(value: Any, depth: int = 0) -> Any:
    """A small copy of command params, for the history: long strings,
    large or deep containers and secret-looking fields replaced by a note
    saying what was there."""
    if isinstance(value, (str, bytes)):
        if len(value) > MAX_PARAM_CHARS:
            return f"<{len(value)} characters elided>"
        return value
    if isinstance(value, (dict, list, tuple)):
        if depth >= MAX_PARAM_DEPTH:
            return "<nested too deep, elided>"
        if len(value) > MAX_PARAM_ITEMS:
            return f"<{len(value)} items elided>"
        if isinstance(value, dict):
            return {k: "***" if isinstance(k, str) and _SECRET_KEY.search(k)
                    and v not in (None, "") else elide_params(v, depth + 1)
                    for k, v in value.items()}
        return [elide_params(v, depth + 1) for v in value]
    return value


@attrs.frozen
class CommandSpec:
    name: str
    is_async: bool
    validator: Callable[..., None] | None


def sync_command(name: str, validator: Callable[..., None] | None = None
                 ) -> Callable[[F], F]:
    """Mark a method as a synchronous command called ``name``."""

    def mark(func: F) -> F:
        setattr(func, _MARK, CommandSpec(name, False, validator))
        return func

    return mark


def async_command(name: str, validator: Callable[..., None] | None = None
                  ) -> Callable[[F], F]:
    """Mark a method as an asynchronous command called ``name``.

    ``validator(self, **params)`` runs before the command is accepted; an
    :class:`~ipa_twisted.errors.InvalidContentError` from it is answered
    with HTTP 400 and nothing is recorded.
    """

    def mark(func: F) -> F:
        setattr(func, _MARK, CommandSpec(name, True, validator))
        return func

    return mark


class IExtension(Interface):
    name = Attribute("The command prefix, e.g. 'standby'.")

    def commands() -> Mapping[str, "BoundCommand"]:
        """The commands of this extension, by bare name."""


@attrs.frozen
class BoundCommand:
    spec: CommandSpec
    func: Callable[..., Any]
    owner: Any

    def signature_error(self, params: Mapping[str, Any]) -> TypeError | None:
        """The TypeError that calling the command with ``params`` would
        raise (an unknown or a missing argument), or None."""
        try:
            inspect.signature(self.func).bind(**params)
        except TypeError as e:
            return TypeError(f"{self.spec.name}() {e}")
        return None

    def validate(self, params: Mapping[str, Any]) -> None:
        """Run the command's validator (400 when it refuses)."""
        if self.spec.validator is None:
            return
        try:
            self.spec.validator(self.owner, **params)
        except errors.AgentError:
            raise
        except Exception as e:
            # A validator that trips over hostile params: still the
            # client's mistake (400), never a 500.
            log.warn("validator of {name} failed with {kind} (answered "
                     "400)", name=self.spec.name, kind=type(e).__name__)
            raise errors.InvalidCommandParamsError(
                f"{self.spec.name}: {type(e).__name__}: {e}") from None


@implementer(IExtension)
class Extension:
    """Base class: collects the marked methods of subclasses."""

    name: str = ""

    def __init__(self, agent: RunningAgent) -> None:
        self.agent = agent

    def commands(self) -> Mapping[str, BoundCommand]:
        found: dict[str, BoundCommand] = {}
        for attr in dir(type(self)):
            func = getattr(type(self), attr, None)
            spec = getattr(func, _MARK, None)
            if isinstance(spec, CommandSpec):
                found[spec.name] = BoundCommand(spec, getattr(self, attr), self)
        return found


@attrs.define(eq=False)
class CommandResult:
    """One command, as stored and as sent (five fields, in wire order)."""

    command_name: str
    params: Mapping[str, Any] = attrs.field(repr=False)
    is_async: bool = False
    id: str = attrs.field(factory=lambda: str(uuid.uuid4()))
    status: str = RUNNING
    error: dict[str, Any] | None = None
    result: Any = None
    #: Free-form progress of long work (bytes written, rate...), for logs
    #: and operators; not part of the five wire fields.
    progress: dict[str, Any] | None = None
    #: The size of the result's JSON (for bounding the history).
    weight: int = 0
    _ended: OneShotObserver[CommandResult] = attrs.field(
        factory=OneShotObserver, repr=False)

    @property
    def done(self) -> bool:
        return self.status != RUNNING

    def serialize(self) -> dict[str, Any]:
        result = self.result
        if self.status == RUNNING and self.progress is not None:
            # beyond IPA (which sends null while running): how far it got
            result = {"progress": self.progress}
        return {
            "id": self.id,
            "command_name": self.command_name,
            "command_status": self.status,
            "command_error": self.error,
            "command_result": result,
        }

    def wait(self) -> Deferred[CommandResult]:
        """A Deferred that fires with this result once it is done.

        Each caller gets its own Deferred: cancelling it (a client that went
        away) only forgets that waiter, never the command.
        """
        return self._ended.when_fired()

    def _finish(self, status: str, result: Any = None,
                error: dict[str, Any] | None = None) -> None:
        self.status = status
        self.result = result
        self.error = error
        self._ended.fire(self)


def _normalize(result: Any, command_name: str, is_async: bool) -> Any:
    if isinstance(result, bytes):
        result = result.decode("utf-8", "replace")
    if isinstance(result, str):
        return {"result": f"{command_name}: {result}" if is_async else result}
    return result


class CommandRunner:
    """Runs commands one at a time and keeps every result, in order."""

    def __init__(
        self,
        extensions: Mapping[str, Any],
        on_async_done: Callable[[], None] = lambda: None,
        max_history: int = MAX_HISTORY,
        max_history_bytes: int = MAX_HISTORY_BYTES,
    ) -> None:
        self._extensions = dict(extensions)
        self._history: OrderedDict[str, CommandResult] = OrderedDict()
        self._max_history = max(1, max_history)
        self._max_history_bytes = max_history_bytes
        self._on_async_done = on_async_done
        self._running: dict[str, Deferred[Any]] = {}

    @property
    def extensions(self) -> Mapping[str, Any]:
        return self._extensions

    def list(self) -> list[CommandResult]:
        return list(self._history.values())

    def __iter__(self) -> Iterator[CommandResult]:
        return iter(self._history.values())

    def get(self, command_id: str) -> CommandResult:
        try:
            return self._history[command_id]
        except KeyError:
            raise errors.RequestedObjectNotFoundError(
                "Command Result", command_id
            ) from None

    def last(self) -> CommandResult | None:
        if not self._history:
            return None
        return next(reversed(self._history.values()))

    def find_command(self, name: str) -> BoundCommand:
        return find_command(self._extensions, name)

    def execute(self, name: str, params: Mapping[str, Any]) -> CommandResult:
        """Start a command; raise an AgentError for a request-level failure.

        Order of checks, as the conductor expects: the agent is busy (409,
        nothing stored); the name is valid (400/404, nothing stored); the
        params fit the command's signature (else a FAILED result of type
        "TypeError", stored, HTTP 200); the validator accepts them (400,
        nothing stored); then the command is recorded as RUNNING *before* it runs,
        so that a conductor that lost our answer finds it at the end of the
        list.
        """
        last = self.last()
        if last is not None and not last.done:
            raise errors.AgentIsBusy(last.command_name)
        command = self.find_command(name)
        mismatch = command.signature_error(params)
        if mismatch is not None:
            # As IPA: a FAILED result typed "TypeError", answered with 200
            # and kept in the list; Ironic's _raise_if_typeerror relies on
            # it to detect an older agent and retry without the argument.
            failed = CommandResult(command_name=command.spec.name,
                                   params=elide_params(dict(params)))
            self._history[failed.id] = failed
            self._trim()
            log.warn("command {name} refused: {error}", name=name,
                     error=str(mismatch))
            failed._finish(FAILED, None, errors.serialize_exception(mismatch))
            return failed
        command.validate(params)
        result = CommandResult(
            command_name=command.spec.name,
            params=elide_params(dict(params)),
            is_async=command.spec.is_async,
        )
        self._history[result.id] = result
        self._trim()
        log.info("running command {name} ({id})", name=name, id=result.id)
        d = ensureDeferred(call_command(command.func, params))
        self._running[result.id] = d
        d.addBoth(self._completed, result, name)
        return result

    def _completed(self, outcome: Any, result: CommandResult,
                   name: str) -> None:
        self._running.pop(result.id, None)
        if isinstance(outcome, Failure):
            exc: BaseException = outcome.value  # type: ignore[assignment]
            if isinstance(exc, errors.VersionMismatch):
                status, error = VERSION_MISMATCH, exc.serialize()
            elif isinstance(exc, errors.AgentError):
                status, error = FAILED, exc.serialize()
            elif isinstance(exc, CancelledError):
                status = FAILED
                error = errors.CommandExecutionError(
                    "the command was cancelled (the agent is stopping)"
                ).serialize()
            elif result.is_async:
                status = FAILED
                error = errors.CommandExecutionError(str(exc)).serialize()
            else:
                status, error = FAILED, errors.serialize_exception(exc)
            if isinstance(exc, errors.AgentError):
                log.error("command {name} failed: {error}", name=name,
                          error=str(exc))
            elif isinstance(exc, CancelledError):
                log.warn("command {name} cancelled (the agent is stopping)",
                         name=name)
            else:
                log.failure("command {name} failed", outcome, name=name)
            result._finish(status, None, error)
        else:
            value = _normalize(outcome, result.command_name, result.is_async)
            try:
                text = encoding.dumps(value)
                value = json.loads(text)
                result.weight = len(text)
            except (TypeError, ValueError) as e:
                log.error("command {name} returned a result that cannot be "
                          "sent: {error}", name=name, error=e)
                result._finish(FAILED, None, errors.serialize_exception(
                    errors.CommandExecutionError(
                        f"result is not serializable: {e}")))
            else:
                log.info("command {name} succeeded", name=name)
                result._finish(SUCCEEDED, value, None)
                self._trim()
        if result.is_async:
            try:
                self._on_async_done()
            except Exception:
                log.failure("could not request a heartbeat")

    def _trim(self) -> None:
        """Forget the oldest finished commands beyond the bounds."""
        weight = sum(r.weight for r in self._history.values())
        while len(self._history) > 1:
            oldest = next(iter(self._history.values()))
            if not oldest.done or (
                    len(self._history) <= self._max_history
                    and weight <= self._max_history_bytes):
                break
            del self._history[oldest.id]
            weight -= oldest.weight

    def stop(self) -> Deferred[None]:
        """Cancel whatever still runs; fires when everything has ended."""
        pending = list(self._running.values())
        for d in pending:
            d.cancel()
        return DeferredList(pending, consumeErrors=True).addCallback(
            lambda _: None
        )


def find_command(extensions: Mapping[str, Any], name: Any) -> BoundCommand:
    """``<ext>.<cmd>`` among ``extensions`` -> the command, or the wire's
    400/404 errors."""
    if not isinstance(name, str) or name.count(".") != 1:
        raise errors.InvalidCommandError(
            "Command name must be of the form <extension>.<name>"
        )
    ext_name, cmd_name = name.split(".")
    ext = extensions.get(ext_name)
    if ext is None:
        raise errors.RequestedObjectNotFoundError("Extension", ext_name)
    command = ext.commands().get(cmd_name)
    if command is None:
        raise errors.InvalidCommandError(f"Unknown command: {cmd_name}")
    return command


async def call_command(func: Callable[..., Any], params: Mapping[str, Any]
                       ) -> Any:
    """``func(**params)``, awaited until it is a value (a command may
    answer a coroutine or a Deferred)."""
    value = func(**params)
    while inspect.isawaitable(value):
        value = await value
    return value
