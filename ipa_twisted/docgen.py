"""Generate the configuration reference from the option table.

    python -m ipa_twisted.docgen > docs/configuration.md
"""

from __future__ import annotations

import sys

from ipa_twisted.config import iter_reference_rows

HEADER = """\
# Configuration reference

Generated from the option table in `ipa_twisted/config.py`
(`python -m ipa_twisted.docgen > docs/configuration.md`); a test checks
that this file is up to date.

Sources, later wins: defaults < INI files (`--config-file`,
`--config-dir`, `[DEFAULT]` section, the option names below) < kernel
command line (`/proc/cmdline` or `--cmdline-file`) < command line flags.
Ironic's lookup answer may then change some behaviour at run time (token,
heartbeat timeout, TLS minimum version, MD5 checksums).

| Option (config file) | Flag | Kernel parameter | Default | Meaning |
|---|---|---|---|---|
"""


def render() -> str:
    rows = []
    for name, flag, kernel, default, help_ in iter_reference_rows():
        kernel_text = f"`{kernel}`" if kernel else ""
        rows.append(f"| `{name}` | `{flag}` | {kernel_text} | `{default}` | "
                    f"{help_.replace('|', '/')} |")
    return HEADER + "\n".join(rows) + "\n"


def main() -> int:
    sys.stdout.write(render())
    return 0


if __name__ == "__main__":
    sys.exit(main())
