"""Inspection: the collectors and the callback to the inspector
(:mod:`.inspector`), imported only by an agent that inspects."""

from __future__ import annotations

from typing import Any


def inspection_enabled(config: Any) -> bool:
    """Whether the agent inspects before its lookup: a callback URL, or
    collectors named together with an Ironic URL."""
    return bool(config.inspection_callback_url
                or (config.inspection_collectors and config.api_url))
