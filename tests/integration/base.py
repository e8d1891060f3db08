"""Skips that CI does not allow: with IPA_TWISTED_REQUIRE_E2E=1 a missing
prerequisite fails the test instead of skipping it."""

from __future__ import annotations

import os

from twisted.trial.unittest import SkipTest

from tests.integration import harness as h


def unavailable(e: h.Unavailable) -> None:
    if os.environ.get("IPA_TWISTED_REQUIRE_E2E") == "1":
        raise AssertionError(f"e2e prerequisite missing in CI: {e}")
    raise SkipTest(str(e))
