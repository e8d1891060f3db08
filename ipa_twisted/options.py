"""Command line options shared by every entry point (``twistd ipa``,
``ipa-inventory``, ``ironic-collect-introspection-data``): where the other
configuration sources are, and how they combine."""

from __future__ import annotations

from typing import Any

from twisted.python import usage

from ipa_twisted.config import Config, ConfigError, load_config


class SourceOptions(usage.Options):
    """``--config-file`` (repeatable), ``--config-dir`` and
    ``--cmdline-file``; subclasses add their flags and say, in
    :meth:`cli_values`, which options those set."""

    optParameters: list[list[Any]] = [
        ["config-dir", None, None,
         "Read every *.conf file of this directory (after --config-file)."],
        ["cmdline-file", None, "/proc/cmdline",
         "Where to read the kernel command line from."],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["config-file"] = []

    def opt_config_file(self, path: str) -> None:
        """Read options from this INI file ([DEFAULT] section); repeatable."""
        self["config-file"].append(path)

    def cli_values(self) -> dict[str, Any]:
        """Option name -> value given by a flag (None: not given)."""
        return {}

    def resolve(self) -> Config:
        """The configuration, or ConfigError with a one-line message."""
        cmdline = ""
        path = self["cmdline-file"]
        if path:
            try:
                with open(path, encoding="utf-8", errors="replace") as f:
                    cmdline = f.read()
            except OSError as e:
                if path != "/proc/cmdline":
                    raise ConfigError(
                        f"cannot read --cmdline-file {path}: {e.strerror}"
                    ) from None
        return load_config(self.cli_values(), self["config-file"],
                           self["config-dir"], cmdline)
