"""Configuration: the option table, sources and their precedence, bad values."""

from __future__ import annotations

import os

from twisted.trial.unittest import SynchronousTestCase

from ipa_twisted import config as cfg
from ipa_twisted.tap import Options


class PrecedenceTests(SynchronousTestCase):
    def write(self, text: str, name: str = "a.conf") -> str:
        directory = self.mktemp()
        os.makedirs(directory)
        path = os.path.join(directory, name)
        with open(path, "w") as f:
            f.write(text)
        return path

    def test_defaults(self) -> None:
        c = cfg.load_config()
        self.assertEqual(c.listen_port, 9999)
        self.assertIsNone(c.api_url)
        self.assertEqual(c.lookup_timeout, 600.0)
        self.assertTrue(c.enable_auto_tls)
        self.assertEqual(c.source("listen_port"), "default")

    def test_file_then_kernel_then_cli(self) -> None:
        path = self.write("[DEFAULT]\nlisten_port = 1000\nlookup_timeout = 5\n"
                          "api_url = http://file:6385\nsome_oslo_option = x\n")
        c = cfg.load_config(config_files=[path])
        self.assertEqual((c.listen_port, c.lookup_timeout), (1000, 5.0))
        self.assertEqual(c.unknown_file_keys, ["some_oslo_option"])
        c = cfg.load_config(config_files=[path],
                            cmdline="ro ipa-listen-port=2000 BOOTIF=01-aa-bb-cc-dd-ee-ff")
        self.assertEqual(c.listen_port, 2000)
        self.assertEqual(c.api_url, ["http://file:6385"])
        self.assertEqual(c.bootif, "01-aa-bb-cc-dd-ee-ff")
        self.assertEqual(c.source("listen_port"), "kernel parameter ipa-listen-port")
        c = cfg.load_config({"listen_port": "3000"}, config_files=[path],
                            cmdline="ipa-listen-port=2000")
        self.assertEqual(c.listen_port, 3000)
        self.assertEqual(c.source("listen_port"), "command line --listen-port")

    def test_config_dir_after_files(self) -> None:
        first = self.write("[DEFAULT]\nlisten_port = 1000\n")
        directory = os.path.dirname(self.write("[DEFAULT]\nlisten_port = 1001\n",
                                               "z.conf"))
        self.write("[DEFAULT]\nlisten_port = 1002\n", "ignored.txt")
        c = cfg.load_config(config_files=[first], config_dir=directory)
        self.assertEqual(c.listen_port, 1001)

    def test_api_urls(self) -> None:
        c = cfg.load_config(cmdline="ipa-api-url=http://a:6385/,https://b/x/")
        self.assertEqual(c.api_url, ["http://a:6385", "https://b/x"])
        c = cfg.load_config(cmdline="ipa-api-url=mdns")
        self.assertEqual(c.api_url, ["mdns"])

    def test_bool_flags(self) -> None:
        c = cfg.load_config({"enable_auto_tls": False, "insecure": True})
        self.assertFalse(c.enable_auto_tls)
        self.assertTrue(c.insecure)
        c = cfg.load_config(cmdline="ipa-insecure=1 ipa-debug=yes")
        self.assertTrue(c.insecure and c.debug)

    def test_describe_masks_secrets(self) -> None:
        c = cfg.load_config({"agent_token": "supersecret123" * 3})
        text = "\n".join(c.describe())
        self.assertNotIn("supersecret123", text)
        self.assertIn("agent_token = '***'", text)

    def test_token_from_a_file(self) -> None:
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("  " + "k" * 43 + "\n")
        c = cfg.load_config({"agent_token_file": path, "standalone": True})
        self.assertEqual(c.agent_token, "k" * 43)
        self.assertEqual(c.source("agent_token"), f"file {path}")
        c = cfg.load_config(cmdline=f"ipa-agent-token-file={path}")
        self.assertEqual(c.agent_token, "k" * 43)
        ini = self.mktemp()
        with open(ini, "w") as f:
            f.write(f"[DEFAULT]\nagent_token_file = {path}\n")
        c = cfg.load_config(config_files=[ini])
        self.assertEqual(c.agent_token, "k" * 43)



class BadValueTests(SynchronousTestCase):
    def check(self, expected: str, **kw: object) -> None:
        with self.assertRaises(cfg.ConfigError) as cm:
            cfg.load_config(**kw)  # type: ignore[arg-type]
        text = str(cm.exception)
        self.assertNotIn("\n", text)
        self.assertIn(expected, text)

    def test_port(self) -> None:
        self.check("invalid value '70000' for option listen-port (command "
                   "line --listen-port): must be a TCP port number",
                   cli={"listen_port": "70000"})
        self.check("listen-port", cli={"listen_port": "ninety"})

    def test_api_url_from_kernel(self) -> None:
        self.check("invalid value 'ftp://x' for option api-url (kernel "
                   "parameter ipa-api-url)", cmdline="ipa-api-url=ftp://x")
        self.check("cannot be mixed", cmdline="ipa-api-url=mdns,http://a")

    def test_bool_and_numbers(self) -> None:
        self.check("must be a boolean", cmdline="ipa-insecure=maybe")
        self.check("must be a number", cmdline="ipa-lookup-timeout=soon")
        self.check("must be a number, zero or more",
                   cmdline="ipa-lookup-timeout=-1")
        self.check("must be one of 1.2, 1.3", cmdline="ipa-tls-min-version=1.1")

    def test_file_errors(self) -> None:
        self.check("cannot read config file /nonexistent.conf",
                   config_files=["/nonexistent.conf"])
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("no section here\n")
        self.check(f"cannot parse config file {path}", config_files=[path])
        with open(path, "w") as f:
            f.write("[DEFAULT]\nlisten_port = 0\n")
        self.check(f"listen-port (config file {path})", config_files=[path])

    def test_allowlist_paths(self) -> None:
        self.check("is not a /dev/... block device path",
                   cmdline="ipa-device-allowlist=sda")

    def test_consistency(self) -> None:
        self.check("standalone needs --agent-token", cli={"standalone": True})
        self.check("listen-tls needs both", cli={"listen_tls": True})

    def test_secret_values_are_not_echoed(self) -> None:
        with self.assertRaises(cfg.ConfigError) as cm:
            cfg.load_config({"agent_token": "short"})
        self.assertNotIn("short'", str(cm.exception))

    def test_token_file_errors_are_one_line(self) -> None:
        missing = self.mktemp()
        self.check(f"cannot read option agent-token-file {missing} "
                   f"(command line --agent-token-file): No such file",
                   cli={"agent_token_file": missing})
        empty = self.mktemp()
        open(empty, "w").close()
        self.check("is empty", cli={"agent_token_file": empty})
        short = self.mktemp()
        with open(short, "w") as f:
            f.write("tooShortToken\n")
        self.check(f"agent-token (file {short}): 13 characters, must be 32 "
                   f"or more", cli={"agent_token_file": short})
        self.check("exclude each other", cli={"agent_token_file": short,
                                              "agent_token": "t" * 40})

    def test_allowlist(self) -> None:
        c = cfg.load_config(cmdline="ipa-device-allowlist=/dev/loop3,/dev/loop4")
        self.assertEqual(c.device_allowlist, ["/dev/loop3", "/dev/loop4"])

    def test_a_token_has_32_characters_or_more(self) -> None:
        # Ironic's are 43 (secrets.token_urlsafe()); 31 is refused
        self.check("agent-token (kernel parameter ipa-agent-token): 31 "
                   "characters, must be 32 or more",
                   cmdline="ipa-agent-token=" + "a" * 31)
        self.check("agent-token (command line --agent-token): 12 "
                   "characters", cli={"agent_token": "abcdefghijkl"})
        self.assertEqual(cfg.load_config({"agent_token": "a" * 32}
                                         ).agent_token, "a" * 32)


class OptionsTests(SynchronousTestCase):
    def test_flags_from_table(self) -> None:
        cmdline = self.mktemp()
        with open(cmdline, "w") as f:
            f.write("ipa-api-url=http://k:6385 ipa-listen-port=1234\n")
        o = Options()
        o.parseOptions(["--listen-port", "4321", "--no-auto-tls",
                        "--cmdline-file", cmdline, "--device-allowlist",
                        "/dev/loop7", "--insecure"])
        c = o.resolve()
        self.assertEqual(c.listen_port, 4321)
        self.assertEqual(c.api_url, ["http://k:6385"])
        self.assertFalse(c.enable_auto_tls)
        self.assertTrue(c.insecure)
        self.assertEqual(c.device_allowlist, ["/dev/loop7"])

    def test_every_option_has_a_flag_and_help(self) -> None:
        o = Options()
        names = {p[0] for p in o.optParameters} | {f[0] for f in o.optFlags}
        for option in cfg.OPTIONS:
            self.assertIn(option.flag, names)
            self.assertTrue(option.help)
            if option.is_bool:
                self.assertIn("no-" + option.flag, names)

    def test_missing_cmdline_file(self) -> None:
        o = Options()
        o.parseOptions(["--cmdline-file", "/nonexistent"])
        with self.assertRaises(cfg.ConfigError):
            o.resolve()

    def test_reference_rows(self) -> None:
        rows = list(cfg.iter_reference_rows())
        self.assertEqual(len(rows), len(cfg.OPTIONS))
        self.assertIn(("api_url", "--api-url", "ipa-api-url", "None"),
                      [r[:4] for r in rows])


class DocsTests(SynchronousTestCase):
    def test_configuration_reference_is_current(self) -> None:
        from ipa_twisted.docgen import render

        path = os.path.join(os.path.dirname(__file__), os.pardir, os.pardir,
                            "docs", "configuration.md")
        with open(path, encoding="utf-8") as f:
            committed = f.read()
        self.assertEqual(committed, render(),
                         "docs/configuration.md is stale: run "
                         "python -m ipa_twisted.docgen > docs/configuration.md")


class TypedSettingsTests(SynchronousTestCase):
    """The typed class of the values (ipa_twisted/settings.py, generated)
    and the option table agree: same names, same order, the type each
    parser returns; every default is of that type."""

    def test_fields_are_the_options(self) -> None:
        import attrs

        from ipa_twisted.settings import Settings

        fields = list(Settings.__annotations__.items())
        self.assertEqual([name for name, _ in fields],
                         [o.name for o in cfg.OPTIONS])
        for (_, kind), option in zip(fields, cfg.OPTIONS):
            self.assertEqual(kind, cfg.option_type(option), option.name)
        # the values' class has them all, then its own
        self.assertEqual([f.name for f in attrs.fields(cfg.Config)],
                         [o.name for o in cfg.OPTIONS]
                         + ["_sources", "unknown_file_keys"])
        self.assertEqual(
            [f.type for f in attrs.fields(cfg.Config)][:len(fields)],
            [kind for _, kind in fields])

    def test_settings_make_no_attrs_methods(self) -> None:
        """Only Config's are made (an idle agent holds them once)."""
        import attrs

        from ipa_twisted.settings import Settings

        self.assertFalse(attrs.has(Settings))
        self.assertTrue(attrs.has(cfg.Config))

    def test_defaults_have_the_type(self) -> None:
        import typing

        for o in cfg.OPTIONS:
            kind = typing.get_type_hints(o.parse)["return"]
            kind = getattr(kind, "__origin__", kind)
            if o.default is not None:
                self.assertIsInstance(o.default, kind, o.name)

    def test_parsed_values_have_the_type(self) -> None:
        c = cfg.load_config({"api_url": "http://a:1,http://b:2",
                             "listen_port": "8080",
                             "lookup_timeout": "5"})
        self.assertEqual((c.api_url, c.listen_port, c.lookup_timeout),
                         (["http://a:1", "http://b:2"], 8080, 5.0))
        self.assertIsInstance(c.lookup_timeout, float)

    def test_generated_file_is_current(self) -> None:
        from ipa_twisted.docgen import render_settings

        path = os.path.join(os.path.dirname(__file__), os.pardir, os.pardir,
                            "ipa_twisted", "settings.py")
        with open(path, encoding="utf-8") as f:
            committed = f.read()
        self.assertEqual(committed, render_settings(),
                         "ipa_twisted/settings.py is stale: run python -m "
                         "ipa_twisted.docgen settings > "
                         "ipa_twisted/settings.py")

    def test_values_are_read_only_and_replace_checks_names(self) -> None:
        import attrs

        c = cfg.load_config({})
        with self.assertRaises(attrs.exceptions.FrozenInstanceError):
            c.debug = True  # type: ignore[misc]
        self.assertRaises(KeyError, c.replace, no_such_option=1)
        d = c.replace(debug=True)
        self.assertEqual((d.debug, d.source("debug"), c.debug),
                         (True, "override", False))
