"""Skips that CI does not allow: with IPA_TWISTED_REQUIRE_E2E=1 a missing
prerequisite fails the test instead of skipping it."""

from __future__ import annotations

import os
from typing import Any, Mapping

from twisted.trial.unittest import SkipTest, SynchronousTestCase

from tests.integration import harness as h
from tests.integration import scenarios


def unavailable(e: h.Unavailable) -> None:
    if os.environ.get("IPA_TWISTED_REQUIRE_E2E") == "1":
        raise AssertionError(f"e2e prerequisite missing in CI: {e}")
    raise SkipTest(str(e))


class SandboxTestCase(SynchronousTestCase):
    """A test with its own work directory and network namespace (and, when
    ``disk_size`` is set, a loop device of that size as ``self.device``),
    all undone at the end."""

    disk_size: int | None = None

    def setUp(self) -> None:
        try:
            h.require_prerequisites()
        except h.Unavailable as e:
            unavailable(e)
        self.cleanups = h.Cleanups()
        self.addCleanup(self.cleanups.run)
        self.workdir = h.workdir(self.cleanups)
        self.netns = h.make_netns(self.cleanups)
        if self.disk_size is not None:
            self.device = h.make_loop_device(self.cleanups, self.workdir,
                                             self.disk_size)


class IronicTestCase(SynchronousTestCase):
    """A test with a real Ironic in its own namespace (``self.env``, a
    scenarios.Environment made with ``environment``), closed at the end."""

    environment: Mapping[str, Any] = {}

    def setUp(self) -> None:
        try:
            self.prerequisites()
            self.env = scenarios.Environment(**self.environment)
        except h.Unavailable as e:
            unavailable(e)
        self.addCleanup(self.env.close)

    def prerequisites(self) -> None:
        """What else the test needs, checked before Ironic starts (raise
        harness.Unavailable)."""
