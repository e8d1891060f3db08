#!/usr/bin/env python3
"""Print "N passed, N failed" from the trial summaries in a log.

Every trial run ends with a line like ``PASSED (successes=12)`` or
``FAILED (failures=1, errors=2, skips=1, successes=40)``; the counts of all
runs in the log are added.  No summary at all counts as a failure (a run
that executed no test must be noticed).
"""

from __future__ import annotations

import re
import sys

LINE = re.compile(r"^(PASSED|FAILED) \((.*)\)\s*$")


def main(path: str) -> int:
    passed = failed = skipped = runs = 0
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            m = LINE.match(line.strip())
            if not m:
                continue
            runs += 1
            counts = dict(
                (k.strip(), int(v)) for k, v in
                (item.split("=") for item in m.group(2).split(",") if "=" in item))
            passed += counts.get("successes", 0) + counts.get("expectedFailures", 0)
            failed += (counts.get("failures", 0) + counts.get("errors", 0)
                       + counts.get("unexpectedSuccesses", 0))
            skipped += counts.get("skips", 0)
    if runs == 0:
        print("no trial summary found: no test ran", file=sys.stderr)
        print("0 passed, 1 failed")
        return 1
    if skipped:
        print(f"({skipped} skipped)")
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
