"""Generate from the option table: the configuration reference, and the
typed class of the options' values.

    python -m ipa_twisted.docgen > docs/configuration.md
    python -m ipa_twisted.docgen settings > ipa_twisted/settings.py
"""

from __future__ import annotations

import sys
import textwrap

from ipa_twisted.config import OPTIONS, iter_reference_rows, option_type

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


SETTINGS_HEADER = '''"""The options' values, typed: one field per option of
:data:`ipa_twisted.config.OPTIONS`, in its order, of the type its parser
returns (``| None`` when the default is None).  The defaults stay in the
table.

Generated (do not edit): ``python -m ipa_twisted.docgen settings >
ipa_twisted/settings.py``; tests/unit/test_config.py fails when the table
and this file disagree.  So a misspelt option is an attribute error for
mypy.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import attrs

if TYPE_CHECKING:
    typed = attrs.frozen(kw_only=True)
else:
    def typed(cls: Any) -> Any:
        """At run time the fields are made once, on Config (config.py):
        attrs would make this class's methods too, for nothing."""
        return cls


@typed
class Settings:
'''


def render_settings() -> str:
    lines: list[str] = []
    for o in OPTIONS:
        lines.extend(f"    #: {h}" for h in textwrap.wrap(o.help, 70))
        lines.append(f"    {o.name}: {option_type(o)}")
    return SETTINGS_HEADER + "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args == ["settings"]:
        sys.stdout.write(render_settings())
    else:
        sys.stdout.write(render())
    return 0


if __name__ == "__main__":
    sys.exit(main())
