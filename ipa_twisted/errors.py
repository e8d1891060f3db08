"""One error model for the whole agent.

Every error that can travel over the wire is a :class:`AgentError`: it knows
its HTTP status code, its fixed ``message``, its variable ``details`` and
whether retrying can help.  ``serialize()`` gives the wire form that the
Ironic conductor reads inside ``command_error``::

    {"type": <class name>, "code": <status>, "message": ..., "details": ...}

and ``str(error)`` is ``"<message>: <details>"``, used as the ``faultstring``
of HTTP error bodies.  The class names, codes and messages are those of
ironic-python-agent, because the conductor matches on some of them.
"""

from __future__ import annotations

from typing import Any, ClassVar, Mapping


class AgentError(Exception):
    """Base of every error that can be serialized onto the wire."""

    message: ClassVar[str] = "An error occurred"
    default_details: ClassVar[str] = (
        "An unexpected error occurred. Please try back later."
    )
    status_code: ClassVar[int] = 500
    #: Whether the same operation may succeed when tried again.
    retryable: ClassVar[bool] = False

    def __init__(self, details: str | None = None) -> None:
        self.details = details if details else self.default_details
        super().__init__(self.details)

    @property
    def code(self) -> int:
        return self.status_code

    @property
    def type(self) -> str:
        return type(self).__name__

    def serialize(self) -> dict[str, Any]:
        return {
            "type": self.type,
            "code": self.code,
            "message": self.message,
            "details": self.details,
        }

    def __str__(self) -> str:
        return f"{self.message}: {self.details}"

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self)!r})"


# The upstream name of the base class; kept so that error types read the same.
RESTError = AgentError


class InvalidContentError(AgentError):
    message = "Invalid request body"
    status_code = 400


class InvalidCommandError(InvalidContentError):
    message = "Invalid command"


class InvalidCommandParamsError(InvalidContentError):
    message = "Invalid command parameters"


class NotFound(AgentError):
    message = "Not found"
    default_details = "The requested URL was not found."
    status_code = 404


class RequestedObjectNotFoundError(NotFound):
    def __init__(self, what: str, ident: str) -> None:
        super().__init__(f"{what} with id {ident} not found.")


class DeviceNotFound(NotFound):
    message = (
        "Error finding the disk or partition device to deploy the image onto"
    )


class Unauthorized(AgentError):
    message = "401 Unauthorized"
    default_details = "Token invalid."
    status_code = 401


class CommandExecutionError(AgentError):
    message = "Command execution failed"


class AgentIsBusy(CommandExecutionError):
    message = "Agent is busy"
    status_code = 409
    retryable = True

    def __init__(self, command_name: str) -> None:
        super().__init__(f"executing command {command_name}")


class IronicAPIError(AgentError):
    message = "Error in call to ironic-api"
    retryable = True


class HeartbeatError(IronicAPIError):
    message = "Error heartbeating to agent API"


class HeartbeatConflictError(IronicAPIError):
    message = "ConflictError heartbeating to agent API"


class HeartbeatConnectionError(IronicAPIError):
    message = (
        "Error attempting to heartbeat - Possible transitory network failure "
        "or blocking port may be present."
    )


class LookupNodeError(IronicAPIError):
    message = "Error getting configuration from Ironic"


class LookupAgentIPError(IronicAPIError):
    message = "Error finding IP for Ironic Agent"


class ImageDownloadError(AgentError):
    message = "Error downloading image"
    retryable = True

    def __init__(self, image_id: str, reason: str) -> None:
        self.reason = reason
        super().__init__(f"Download of image {image_id} failed: {reason}")


class ImageDownloadFatalError(ImageDownloadError):
    """A download error that no retry can mend (a 4xx answer, ENOSPC)."""

    retryable = False


class ImageDownloadOutofSpaceError(ImageDownloadFatalError):
    pass


class ImageDownloadTimeoutError(AgentError):
    message = "Image download timeout"
    status_code = 408
    retryable = True

    def __init__(self, image_id: str, reason: str) -> None:
        self.reason = reason
        super().__init__(f"Download of image {image_id} failed: {reason}")


class ImageChecksumError(AgentError):
    message = "Error verifying image checksum"

    def __init__(
        self, image_id: str, location: str, expected: str, actual: str
    ) -> None:
        # Upstream formats location and image id in this (swapped) order;
        # we give both a label so that the text is right whichever way.
        super().__init__(
            f"Image failed to verify against checksum. location: {location}; "
            f"image ID: {image_id}; image checksum: {expected}; "
            f"verification checksum: {actual}"
        )


class ImageWriteError(AgentError):
    message = "Error writing image to device"

    def __init__(
        self, device: str, exit_code: object, stdout: str, stderr: str
    ) -> None:
        super().__init__(
            f"Writing image to device {device} failed with exit code "
            f"{exit_code}. stdout: {stdout}. stderr: {stderr}"
        )


class SystemRebootError(AgentError):
    message = "Error rebooting system"

    def __init__(self, exit_code: object, stdout: str, stderr: str) -> None:
        super().__init__(
            f"Reboot script failed with exit code {exit_code}. "
            f"stdout: {stdout}. stderr: {stderr}."
        )


class BlockDeviceEraseError(AgentError):
    message = "Error erasing block device"


class BlockDeviceError(AgentError):
    message = "Block device caused unknown error"


class UnknownNodeError(AgentError):
    message = "Agent is not associated with an Ironic node"


class HardwareManagerNotFound(AgentError):
    message = "No valid HardwareManager found"


class HardwareManagerMethodNotFound(AgentError):
    message = "No HardwareManager found to handle method"

    def __init__(self, method: str) -> None:
        super().__init__(f"Could not find method: {method}")


class HardwareManagerConfigurationError(AgentError):
    message = "Hardware manager configuration error"


class IncompatibleHardwareMethodError(AgentError):
    message = "HardwareManager method is not compatible with hardware"


class VersionMismatch(AgentError):
    message = (
        "Hardware managers version mismatch, reload agent with correct version"
    )
    status_code = 409

    def __init__(
        self, agent_version: Mapping[str, str], node_version: Mapping[str, str]
    ) -> None:
        super().__init__(
            f"Current versions: {dict(agent_version)!r}, "
            f"versions used by ironic: {dict(node_version)!r}"
        )


class CleaningError(AgentError):
    message = "Clean step failed"


class DeploymentError(AgentError):
    message = "Deploy step failed"


class ServicingError(AgentError):
    message = "Service step failed"


class InvalidImage(DeploymentError):
    message = "The provided image is not valid for use"


class ProtectedDeviceError(CleaningError):
    """Refuse to touch a device: not allow-listed, or holding data we guard."""

    message = "Protected device located, cleaning aborted."

    def __init__(self, device: str, what: str) -> None:
        super().__init__(f"Refusing to touch {device}: {what}")


class DeviceNotAllowed(AgentError):
    """The device is not in ``device_allowlist``: never touched."""

    message = "Refusing to touch a device that is not allow-listed"


class ExtensionError(AgentError):
    message = "Extension error"


class ClockSyncError(AgentError):
    message = "Error syncing system clock"


def serialize_exception(exc: BaseException) -> dict[str, Any]:
    """The wire form of any exception.

    Agent errors serialize themselves; a plain Python exception keeps its
    class name as ``type`` (the conductor looks for ``TypeError`` there) and
    its text as ``details``, so the command list always stays valid JSON.
    """
    if isinstance(exc, AgentError):
        return exc.serialize()
    return {
        "type": type(exc).__name__,
        "code": 500,
        "message": CommandExecutionError.message,
        "details": str(exc) or type(exc).__name__,
    }
