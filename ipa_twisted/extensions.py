"""Finding the command extensions (entry point group
``ipa_twisted.extensions``; the entry point name is the command prefix)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.logger import Logger
from zope.interface.verify import verifyObject

from ipa_twisted.commands.base import IExtension
from ipa_twisted.entrypoints import entry_points

if TYPE_CHECKING:
    from ipa_twisted.context import RunningAgent

log = Logger()

ENTRY_POINT_GROUP = "ipa_twisted.extensions"


def builtin_extensions() -> dict[str, type]:
    """Our own extensions, for when the package's entry points are not
    installed (running from a source tree)."""
    from ipa_twisted.commands.flow import FlowExtension
    from ipa_twisted.commands.image import ImageExtension
    from ipa_twisted.commands.log import LogExtension
    from ipa_twisted.commands.poll import PollExtension
    from ipa_twisted.commands.rescue import RescueExtension
    from ipa_twisted.commands.standby import StandbyExtension
    from ipa_twisted.commands.steps import (
        CleanExtension,
        DeployExtension,
        ServiceExtension,
    )
    from ipa_twisted.commands.system import SystemExtension

    return {cls.name: cls for cls in (
        CleanExtension, DeployExtension, ServiceExtension, StandbyExtension,
        PollExtension, LogExtension, ImageExtension, RescueExtension,
        SystemExtension, FlowExtension,
    )}


def load_extensions(agent: RunningAgent) -> dict[str, Any]:
    classes: dict[str, Any] = dict(builtin_extensions())
    for ep in entry_points(ENTRY_POINT_GROUP):
        try:
            classes[ep.name] = ep.load()
        except Exception:
            log.failure("cannot load extension {name}", name=ep.name)
    loaded = {}
    for name, cls in sorted(classes.items()):
        ext = cls(agent)
        verifyObject(IExtension, ext)
        loaded[name] = ext
    log.info("extensions: {names}", names=", ".join(sorted(loaded)))
    return loaded
