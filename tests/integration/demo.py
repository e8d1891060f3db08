"""The demo: a real Ironic deploys a raw image with our agent, then cleans.

    python -m tests.integration.demo [--keep]

Needs root (network namespace, loop device).  Everything it creates is
removed at the end (with --keep, the work directory and its logs stay).
"""

from __future__ import annotations

import sys

from tests.integration import harness as h
from tests.integration import scenarios

MiB = 1024 ** 2


def main(argv: list[str]) -> int:
    keep = "--keep" in argv
    try:
        env = scenarios.Environment(keep=keep)
    except h.Unavailable as e:
        print(f"demo cannot run here: {e}", file=sys.stderr)
        return 2
    try:
        result = scenarios.deploy(env, 256 * MiB)
        if result["disk_sha256"] != result["image_sha256"]:
            h.say("FAILED: the disk does not hold the image")
            return 1
        h.say(f"deploy: lookup {result['lookup_s']:.2f} s after agent start, "
              f"active {result['deploy_to_active_s']:.1f} s after the request")
        clean = scenarios.clean_metadata(env, "e2e-node")
        if clean["after"] or clean["signatures"]:
            h.say(f"FAILED: still on the disk after cleaning: "
                  f"{clean['after']} {clean['signatures']}")
            return 1
        h.say("clean: the partition table is gone")
        h.say("demo finished: deploy and clean both worked")
        return 0
    finally:
        h.say("cleaning up")
        env.close()
        if keep:
            h.say(f"kept {env.workdir}")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
