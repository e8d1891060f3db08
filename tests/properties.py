"""How many examples a property test (hypothesis) runs.

CI runs each property's full count: ``.ci/run`` exports
``IPA_TWISTED_REQUIRE_E2E=1`` and runs the whole suite, tests.unit
included, so every property below gets all its examples on every CI run.
A developer's unit run (``tox -e py3 -- tests.unit``, without that
variable) runs a fifth of them, to stay within seconds; set
``IPA_TWISTED_FULL_PROPERTIES=1`` to run the full counts locally.
"""

from __future__ import annotations

import os

#: the full counts: in CI, or when asked for
FULL = (os.environ.get("IPA_TWISTED_REQUIRE_E2E") == "1"
        or os.environ.get("IPA_TWISTED_FULL_PROPERTIES") == "1")


def examples(full: int) -> int:
    """``full`` examples in CI, a fifth of them (at least 20) otherwise."""
    return full if FULL else min(full, max(full // 5, 20))
