"""The agent's configuration: one table of options, four sources.

Every option is declared once, in :data:`OPTIONS`, with its type, default,
kernel parameter and help.  The command line flags, the configuration file
keys, the kernel parameters and the generated reference documentation all
come from that table.

Sources, later wins::

    defaults < INI file(s) ([DEFAULT] section, IPA's option names)
             < kernel command line (ipa-* parameters, BOOTIF)
             < command line flags

(ironic-python-agent lets a configuration file beat the kernel command line;
we deliberately let the command line that booted the machine win, because it
is what the conductor wrote for this very boot.)  Values that Ironic sends in
the lookup answer are applied later, at run time, by the agent.

A bad value stops start-up with one line that names the option and where the
value came from: :class:`ConfigError`.
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
import typing
from typing import Any, Callable, Iterable, Mapping, Sequence

import attrs

from ipa_twisted.settings import Settings


class ConfigError(Exception):
    """A configuration value is invalid; the text is one line for the user."""


# ---------------------------------------------------------------- value types


_TRUE = {"1", "t", "true", "on", "y", "yes"}
_FALSE = {"0", "f", "false", "off", "n", "no"}


def parse_bool(text: str) -> bool:
    value = text.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ValueError("must be a boolean (true/false, yes/no, on/off, 1/0)")


def parse_int(text: str) -> int:
    try:
        return int(text.strip())
    except ValueError:
        raise ValueError("must be an integer") from None


def parse_non_negative_int(text: str) -> int:
    value = parse_int(text)
    if value < 0:
        raise ValueError("must be zero or more")
    return value


def parse_positive_int(text: str) -> int:
    value = parse_int(text)
    if value < 1:
        raise ValueError("must be 1 or more")
    return value


def parse_priority(text: str) -> int:
    """A step priority Ironic may be given: 0 to 99 (100 is the agent's
    own boot)."""
    value = parse_int(text)
    if not 0 <= value <= 99:
        raise ValueError("must be from 0 to 99")
    return value


def parse_non_negative_float(text: str) -> float:
    try:
        value = float(text.strip())
    except ValueError:
        raise ValueError("must be a number") from None
    if value != value or value < 0:
        raise ValueError("must be a number, zero or more")
    return value


def parse_positive_float(text: str) -> float:
    value = parse_non_negative_float(text)
    if value == 0:
        raise ValueError("must be more than zero")
    return value


def parse_port(text: str) -> int:
    try:
        value = int(text.strip())
    except ValueError:
        raise ValueError("must be a TCP port number (1-65535)") from None
    if not 1 <= value <= 65535:
        raise ValueError("must be a TCP port number (1-65535)")
    return value


def parse_str(text: str) -> str:
    return text.strip()


def _parse_urls(text: str, strip_slash: bool) -> list[str]:
    urls = [u.strip() for u in text.split(",") if u.strip()]
    if strip_slash:
        urls = [u.rstrip("/") for u in urls]
    if not urls:
        raise ValueError("must name at least one URL")
    if "mdns" in urls and len(urls) > 1:
        raise ValueError("'mdns' cannot be mixed with URLs")
    for url in urls:
        if url != "mdns" and not re.match(r"^https?://[^/\s]+", url):
            raise ValueError(
                f"{url!r} is not an http:// or https:// URL (or 'mdns')"
            )
    return urls


def parse_api_urls(text: str) -> list[str]:
    """A comma list of Ironic API URLs (no trailing slash), or ``mdns``."""
    return _parse_urls(text, strip_slash=True)


def parse_callback_urls(text: str) -> list[str]:
    """A comma list of inspection callback URLs (kept verbatim), or ``mdns``."""
    return _parse_urls(text, strip_slash=False)


def parse_list(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


def parse_device_list(text: str) -> list[str]:
    devices = parse_list(text)
    for dev in devices:
        if not dev.startswith("/dev/") or len(dev) <= len("/dev/"):
            raise ValueError(f"{dev!r} is not a /dev/... block device path")
    return devices


def parse_api_version(text: str) -> str:
    value = text.strip()
    if not re.fullmatch(r"\d+\.\d+", value):
        raise ValueError("must be a microversion like 1.68")
    return value


def parse_host(text: str) -> str:
    value = text.strip().strip("[]")
    if not value:
        raise ValueError("must not be empty")
    try:
        ipaddress.ip_address(value)
    except ValueError:
        if not re.fullmatch(r"[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?", value):
            raise ValueError("must be an IP address or a host name") from None
    return value


def parse_mac(text: str) -> str:
    """BOOTIF: pxelinux ``01-aa-bb-cc-dd-ee-ff`` or a plain MAC; kept raw."""
    value = text.strip()
    plain = value.lower()
    if re.fullmatch(r"01-([0-9a-f]{2}-){5}[0-9a-f]{2}", plain):
        return value
    if re.fullmatch(r"([0-9a-f]{2}[:-]){5}[0-9a-f]{2}", plain):
        return value
    raise ValueError("must be a MAC address (aa:bb:.. or 01-aa-bb-..)")


def choice(*allowed: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        value = text.strip().lower()
        if value not in allowed:
            raise ValueError("must be one of " + ", ".join(allowed))
        return value

    parse.__name__ = "choice"
    return parse


# -------------------------------------------------------------- option table


@attrs.frozen
class Option:
    """One configuration option.

    ``name`` is the key in configuration files and the attribute name;
    ``kernel`` the kernel command line parameter (None: not settable there);
    ``cli`` the long flag without dashes (default: ``name`` with dashes, or
    the kernel name without ``ipa-``); boolean options get ``--X`` and
    ``--no-X`` flags.  ``secret`` values are never logged, and are
    scrubbed from collected system logs in every spelling of the option
    (:mod:`ipa_twisted.redact`).
    """

    name: str
    parse: Callable[[str], Any]
    default: Any
    help: str
    kernel: str | None = None
    cli: str | None = None
    secret: bool = False
    is_bool: bool = False

    @property
    def flag(self) -> str:
        if self.cli:
            return self.cli
        if self.kernel and self.kernel.startswith("ipa-"):
            return self.kernel[len("ipa-"):]
        return self.name.replace("_", "-")


def _bool(name: str, default: bool, help: str, **kw: Any) -> Option:
    return Option(name, parse_bool, default, help, is_bool=True, **kw)


OPTIONS: tuple[Option, ...] = (
    # Where Ironic is.
    Option("api_url", parse_api_urls, None,
           "Ironic API URL(s), comma separated and tried in order with "
           "failover, or 'mdns'.", kernel="ipa-api-url"),
    Option("global_request_id", parse_str, None,
           "X-OpenStack-Request-ID sent on calls to Ironic (req-<uuid>).",
           kernel="ipa-global-request-id"),
    Option("ironic_api_version", parse_api_version, None,
           "Pin the Ironic API microversion (X.Y) instead of discovering "
           "it.", kernel="ipa-ironic-api-version"),
    Option("http_request_timeout", parse_positive_float, 30.0,
           "Timeout of one request to Ironic or the inspector (s).",
           kernel="ipa-http-request-timeout"),
    _bool("insecure", False,
          "Do not verify TLS certificates of Ironic, the inspector and "
          "image servers.", kernel="ipa-insecure"),
    Option("cafile", parse_str, None,
           "CA bundle to verify outbound TLS connections with."),
    Option("certfile", parse_str, None,
           "Client certificate for outbound TLS connections."),
    Option("keyfile", parse_str, None,
           "Client key for outbound TLS connections."),
    # The agent's own API.
    Option("listen_host", parse_host, None,
           "Address the agent API listens on (default :: when IPv6 is "
           "available, else 0.0.0.0).", kernel="ipa-listen-host"),
    Option("listen_port", parse_port, 9999,
           "Port the agent API listens on.", kernel="ipa-listen-port"),
    Option("api_max_connections", parse_positive_int, 100,
           "Most connections the agent API holds open at once (more are "
           "answered 503 and closed; lowered to fit the open file limit)."),
    Option("api_max_connections_per_peer", parse_positive_int, 20,
           "Most connections the agent API holds open from one address "
           "(more are answered 429 and closed)."),
    Option("advertise_host", parse_host, None,
           "Host put in the callback URL sent to Ironic (default: the "
           "address that routes to Ironic).", kernel="ipa-advertise-host"),
    Option("advertise_port", parse_port, 9999,
           "Port put in the callback URL.", kernel="ipa-advertise-port"),
    Option("advertise_protocol", choice("http", "https"), "http",
           "Protocol of the callback URL (auto-TLS switches it to https).",
           kernel="ipa-advertise-protocol"),
    Option("network_interface", parse_str, None,
           "Take the advertised IPv4 address from this interface.",
           kernel="ipa-network-interface"),
    Option("ip_lookup_attempts", parse_positive_int, 6,
           "Rounds of looking for a routable advertise address.",
           kernel="ipa-ip-lookup-attempts"),
    Option("ip_lookup_sleep", parse_non_negative_float, 10.0,
           "Pause between those rounds (s).",
           kernel="ipa-ip-lookup-timeout"),
    Option("agent_token", parse_str, None,
           "Pre-shared agent token, 32 characters or more (otherwise "
           "Ironic hands one out at lookup).  Visible to every process "
           "(ps); prefer agent_token_file.", kernel="ipa-agent-token",
           secret=True),
    Option("agent_token_file", parse_str, None,
           "Read the pre-shared agent token from this file (surrounding "
           "white space ignored); instead of agent_token.",
           kernel="ipa-agent-token-file"),
    _bool("standalone", False,
          "Serve the API without lookup or heartbeat (token from "
          "--agent-token or --agent-token-file); for operators and "
          "benchmarks."),
    # TLS.
    _bool("enable_auto_tls", True,
          "Generate a self-signed certificate and serve https when Ironic "
          "is new enough (API >= 1.68).", cli="auto-tls"),
    _bool("listen_tls", False,
          "Serve https with --tls-cert-file/--tls-key-file."),
    Option("tls_cert_file", parse_str, None,
           "Certificate (PEM) for --listen-tls."),
    Option("tls_key_file", parse_str, None, "Key (PEM) for --listen-tls."),
    Option("tls_min_version", choice("1.2", "1.3"), "1.2",
           "Lowest TLS version, server and client (Ironic's lookup may "
           "raise it).", kernel="ipa-tls-min-version"),
    Option("tls_cipher_suites", parse_str, None,
           "OpenSSL cipher string for TLS 1.2, server and client "
           "(Ironic's lookup may replace it).",
           kernel="ipa-tls-cipher-suites"),
    Option("tls_certificate_curve", choice("p256", "p384", "p521"), "p384",
           "Curve of the auto-TLS EC key.",
           kernel="ipa-tls-certificate-curve"),
    Option("auto_tls_allowed_clock_skew", parse_non_negative_int, 3600,
           "Back-date the auto-TLS certificate by this much (s)."),
    Option("auto_tls_validity_days", parse_positive_int, 90,
           "Validity of the auto-TLS certificate (days)."),
    Option("run_dir", parse_str, "/run/ipa-twisted",
           "Directory for runtime files (auto-TLS certificate and key)."),
    # Lookup and heartbeat.
    Option("lookup_timeout", parse_non_negative_float, 600.0,
           "Give up looking the node up after this long (s).",
           kernel="ipa-lookup-timeout"),
    Option("lookup_interval", parse_positive_float, 1.0,
           "Initial and smallest pause between lookup attempts (s).",
           kernel="ipa-lookup-interval"),
    Option("hardware_initialization_delay", parse_non_negative_float, 0.0,
           "Pause before collecting hardware information (s).",
           kernel="ipa-hardware-initialization-delay"),
    Option("interface_wait_timeout", parse_non_negative_float, 60.0,
           "How long to wait at start for a network interface with a MAC "
           "address (s)."),
    # Inspection (used by the inspection issue; parsed here already).
    Option("inspection_callback_url", parse_callback_urls, None,
           "Post the inventory here before lookup (comma list or 'mdns').",
           kernel="ipa-inspection-callback-url"),
    Option("inspection_collectors", parse_list, None,
           "Inspection collectors (default: default,logs).",
           kernel="ipa-inspection-collectors"),
    Option("inspection_dhcp_wait_timeout", parse_non_negative_float, 60.0,
           "Before inspection, wait this long for the PXE NIC (or all NICs) "
           "to get an IPv4 address; 0 to not wait (s).",
           kernel="ipa-inspection-dhcp-wait-timeout"),
    _bool("inspection_dhcp_all_interfaces", False,
          "Wait for every NIC (not only the PXE one) to get an address.",
          kernel="ipa-inspection-dhcp-all-interfaces"),
    _bool("use_mdns", False,
          "Find the Ironic API by mDNS when no API URL is given.",
          kernel="ipa-use-mdns"),
    Option("mdns_allowed_overrides", parse_list,
           ["inspection_callback_url"],
           "Options that mDNS TXT records (ipa_<option>) may set."),
    Option("mdns_lookup_attempts", parse_positive_int, 3,
           "mDNS queries before giving up."),
    _bool("introspection_daemon", False,
          "ironic-collect-introspection-data: keep posting, every "
          "introspection_daemon_post_interval."),
    Option("introspection_daemon_post_interval", parse_positive_float, 300.0,
           "Period of the introspection daemon's posts (s)."),
    Option("lldp_timeout", parse_non_negative_float, 30.0,
           "How long to listen for LLDP frames (s).",
           kernel="ipa-lldp-timeout"),
    _bool("collect_lldp", False,
          "Fill interfaces[].lldp in the inventory.",
          kernel="ipa-collect-lldp"),
    # Disks.
    Option("device_allowlist", parse_device_list, None,
           "Only these block devices are listed, chosen, written and "
           "erased (loop devices count as disks when listed).",
           kernel="ipa-device-allowlist"),
    Option("disk_wait_attempts", parse_positive_int, 10,
           "Tries to find the root disk at start.",
           kernel="ipa-disk-wait-attempts"),
    Option("disk_wait_delay", parse_non_negative_float, 3.0,
           "Pause between those tries (s).", kernel="ipa-disk-wait-delay"),
    Option("inject_files_priority", parse_priority, 0,
           "Priority of the inject_files deploy and service step (0: runs "
           "only when asked for).", kernel="ipa-inject-files-priority"),
    # Images.
    Option("image_download_connection_timeout", parse_positive_float, 60.0,
           "Cut a download that receives nothing for this long (s).",
           kernel="ipa-image-download-connection-timeout"),
    Option("image_download_connection_retries", parse_non_negative_int, 9,
           "Retries of a failed image download.",
           kernel="ipa-image-download-connection-retries"),
    Option("image_download_connection_retry_interval",
           parse_non_negative_float, 10.0,
           "Pause between image download retries (s).",
           kernel="ipa-image-download-connection-retry-interval"),
    Option("image_download_max_duration", parse_non_negative_float, 0.0,
           "Cap on a whole image download, 0 for none (s).",
           kernel="ipa-image-download-max-duration"),
    Option("image_server_auth_strategy", choice("noauth", "http_basic"),
           "noauth", "Authentication to image servers (http_basic: with "
           "image_server_user and image_server_password)."),
    Option("image_server_user", parse_str, None,
           "User for http_basic image server authentication.", secret=True),
    Option("image_server_password", parse_str, None,
           "Password for http_basic image server authentication.",
           secret=True),
    _bool("md5_enabled", False,
          "Accept MD5 image checksums (Ironic's lookup usually sets it)."),
    # Power.
    Option("power_off_command", parse_str, "poweroff",
           "Command run by standby.power_off."),
    Option("reboot_command", parse_str, "reboot",
           "Command run by standby.run_image."),
    _bool("sysrq_fallback", True,
          "When the power command fails, use /proc/sysrq-trigger."),
    # Misc.
    Option("bootif", parse_mac, None,
           "MAC of the PXE interface (pxelinux BOOTIF).", kernel="BOOTIF"),
    _bool("debug", False, "Log debug messages.", kernel="ipa-debug"),
)

def option_type(option: Option) -> str:
    """The type of an option's value, as Python source: what its parser
    returns, ``| None`` when its default is None."""
    returned = typing.get_type_hints(option.parse)["return"]
    text = returned.__name__ if isinstance(returned, type) \
        else repr(returned)
    return text + " | None" if option.default is None else text


OPTIONS_BY_NAME: Mapping[str, Option] = {o.name: o for o in OPTIONS}
OPTIONS_BY_KERNEL: Mapping[str, Option] = {
    o.kernel: o for o in OPTIONS if o.kernel
}


# ------------------------------------------------------------------ sources


def parse_kernel_cmdline(text: str) -> dict[str, str]:
    """``key=value`` tokens of a kernel command line (no quoting, as IPA)."""
    params: dict[str, str] = {}
    for token in text.split():
        if "=" in token:
            key, _, value = token.partition("=")
            params[key] = value
    return params


def read_ini_files(
    files: Sequence[str], directory: str | None = None
) -> list[tuple[str, str, str]]:
    """``(path, key, value)`` from the [DEFAULT] sections, in read order.

    A directory contributes its ``*.conf`` files in name order, after the
    explicit files.
    """
    paths = list(files)
    if directory:
        try:
            names = sorted(os.listdir(directory))
        except OSError as e:
            raise ConfigError(
                f"cannot read --config-dir {directory}: {e.strerror}"
            ) from None
        paths += [
            os.path.join(directory, n) for n in names if n.endswith(".conf")
        ]
    found: list[tuple[str, str, str]] = []
    if paths:
        # only for config files: memory that most agents never need
        import configparser
    for path in paths:
        parser = configparser.ConfigParser(interpolation=None)
        try:
            with open(path, encoding="utf-8") as f:
                parser.read_file(f)
        except OSError as e:
            raise ConfigError(
                f"cannot read config file {path}: {e.strerror}"
            ) from None
        except configparser.Error as e:
            first = str(e).splitlines()[0]
            raise ConfigError(f"cannot parse config file {path}: {first}")
        for key, value in parser.defaults().items():
            found.append((path, key, value))
    return found


# ------------------------------------------------------------------- result


def _config_fields() -> dict[str, Any]:
    """Config's fields: Settings' (plain at run time, settings.py), in
    their order, then its own."""
    fields: dict[str, Any] = {
        name: attrs.field(type=kind)
        for name, kind in Settings.__annotations__.items()}
    fields["_sources"] = attrs.field(factory=dict, repr=False)
    fields["unknown_file_keys"] = attrs.field(factory=list)
    return fields


@attrs.frozen(kw_only=True, these=_config_fields())
class Config(Settings):
    """Resolved option values, read as typed attributes
    (``config.api_url``: the fields of :class:`~ipa_twisted.settings.
    Settings`), and where each came from."""

    _sources: Mapping[str, str]
    #: Keys of configuration files that are not ours (logged at start).
    unknown_file_keys: list[str]

    @classmethod
    def of(cls, values: Mapping[str, Any], sources: Mapping[str, str],
           unknown_file_keys: Sequence[str] = ()) -> "Config":
        """A Config of every option's value (``values`` must name them
        all, and nothing else)."""
        missing = [o.name for o in OPTIONS if o.name not in values]
        extra = [k for k in values if k not in OPTIONS_BY_NAME]
        if missing or extra:
            raise TypeError(f"options missing: {missing}; unknown: {extra}")
        return cls(sources=dict(sources),
                   unknown_file_keys=list(unknown_file_keys), **values)

    def source(self, name: str) -> str:
        return self._sources.get(name, "default")

    def replace(self, **changes: Any) -> "Config":
        for name in changes:
            if name not in OPTIONS_BY_NAME:
                raise KeyError(name)
        sources = dict(self._sources)
        sources.update({name: "override" for name in changes})
        return attrs.evolve(self, sources=sources, **changes)

    def describe(self) -> list[str]:
        """``name = value (source)`` lines, secrets masked, for the log."""
        lines = []
        for option in OPTIONS:
            if self.source(option.name) == "default":
                continue
            value = getattr(self, option.name)
            if option.secret and value is not None:
                value = "***"
            lines.append(f"{option.name} = {value!r} ({self.source(option.name)})")
        return lines


def _apply(
    option: Option,
    raw: str,
    where: str,
    values: dict[str, Any],
    sources: dict[str, str],
) -> None:
    try:
        values[option.name] = option.parse(raw)
    except ValueError as e:
        shown = "***" if option.secret else repr(raw)
        raise ConfigError(
            f"invalid value {shown} for option {option.flag} ({where}): {e}"
        ) from None
    sources[option.name] = where


def load_config(
    cli: Mapping[str, str | bool | None] | None = None,
    config_files: Sequence[str] = (),
    config_dir: str | None = None,
    cmdline: str | None = None,
) -> Config:
    """Resolve every option from its sources.

    ``cli`` maps option names to the raw strings given on the command line
    (booleans as ``True``/``False`` for ``--X``/``--no-X``; ``None`` for not
    given); ``cmdline`` is the kernel command line text.
    """
    values: dict[str, Any] = {o.name: o.default for o in OPTIONS}
    sources: dict[str, str] = {}
    unknown: list[str] = []

    for path, key, raw in read_ini_files(config_files, config_dir):
        option = OPTIONS_BY_NAME.get(key)
        if option is None:
            # oslo.config files carry many options we do not have; they are
            # not errors, but they are not silently ignored either.
            unknown.append(key)
            continue
        _apply(option, raw, f"config file {path}", values, sources)

    if cmdline:
        for key, raw in parse_kernel_cmdline(cmdline).items():
            option = OPTIONS_BY_KERNEL.get(key)
            if option is not None:
                _apply(option, raw, f"kernel parameter {key}", values, sources)

    for name, given in (cli or {}).items():
        if given is None:
            continue
        option = OPTIONS_BY_NAME[name]
        if isinstance(given, bool):
            values[name] = given
            sources[name] = (
                f"command line --{'' if given else 'no-'}{option.flag}"
            )
        else:
            _apply(option, given, f"command line --{option.flag}", values,
                   sources)

    _read_token_file(values, sources)
    config = Config.of(values, sources, unknown)
    _check_consistency(config)
    return config


#: Ironic's tokens are ``secrets.token_urlsafe()``: 43 characters.
TOKEN_MIN_LENGTH = 32


def _read_token_file(values: dict[str, Any], sources: dict[str, str]
                     ) -> None:
    path = values.get("agent_token_file")
    if not path:
        return
    where = sources.get("agent_token_file", "default")
    if values.get("agent_token") is not None:
        raise ConfigError(
            f"options agent-token ({sources.get('agent_token')}) and "
            f"agent-token-file ({where}) exclude each other")
    try:
        with open(path, encoding="utf-8") as f:
            token = f.read(4096).strip()
    except (OSError, UnicodeDecodeError) as e:
        reason = e.strerror if isinstance(e, OSError) else "not UTF-8 text"
        raise ConfigError(
            f"cannot read option agent-token-file {path} ({where}): {reason}"
        ) from None
    if not token:
        raise ConfigError(
            f"option agent-token-file ({where}): {path} is empty")
    values["agent_token"] = token
    sources["agent_token"] = f"file {path}"


def _check_consistency(config: Config) -> None:
    if config.listen_tls and not (config.tls_cert_file and config.tls_key_file):
        raise ConfigError(
            "option listen-tls needs both --tls-cert-file and --tls-key-file"
        )
    if config.standalone and not config.agent_token:
        raise ConfigError(
            "option standalone needs --agent-token or --agent-token-file "
            "(the API always requires a token)"
        )
    token = config.agent_token
    if token is not None and len(token) < TOKEN_MIN_LENGTH:
        raise ConfigError(
            f"invalid value for option agent-token "
            f"({config.source('agent_token')}): {len(token)} characters, "
            f"must be {TOKEN_MIN_LENGTH} or more (Ironic's have 43)")


def default_listen_host() -> str:
    """``::`` (which also accepts IPv4) when IPv6 works here, else 0.0.0.0."""
    if not socket.has_ipv6 or not os.path.exists("/proc/net/if_inet6"):
        return "0.0.0.0"
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::", 0))
    except OSError:
        return "0.0.0.0"
    return "::"


def iter_reference_rows() -> Iterable[tuple[str, str, str, str, str]]:
    """(option, flag, kernel parameter, default, help) for the docs."""
    for o in OPTIONS:
        flag = f"--{o.flag}" + (f" / --no-{o.flag}" if o.is_bool else "")
        yield (o.name, flag, o.kernel or "", repr(o.default), o.help)
