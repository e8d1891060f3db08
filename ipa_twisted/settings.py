"""The options' values, typed: one field per option of
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
    #: Ironic API URL(s), comma separated and tried in order with failover,
    #: or 'mdns'.
    api_url: list[str] | None
    #: X-OpenStack-Request-ID sent on calls to Ironic (req-<uuid>).
    global_request_id: str | None
    #: Pin the Ironic API microversion (X.Y) instead of discovering it.
    ironic_api_version: str | None
    #: Timeout of one request to Ironic or the inspector (s).
    http_request_timeout: float
    #: Do not verify TLS certificates of Ironic, the inspector and image
    #: servers.
    insecure: bool
    #: CA bundle to verify outbound TLS connections with.
    cafile: str | None
    #: Client certificate for outbound TLS connections.
    certfile: str | None
    #: Client key for outbound TLS connections.
    keyfile: str | None
    #: Address the agent API listens on (default :: when IPv6 is available,
    #: else 0.0.0.0).
    listen_host: str | None
    #: Port the agent API listens on.
    listen_port: int
    #: Most connections the agent API holds open at once (more are answered
    #: 503 and closed; lowered to fit the open file limit).
    api_max_connections: int
    #: Most connections the agent API holds open from one address (more are
    #: answered 429 and closed).
    api_max_connections_per_peer: int
    #: Host put in the callback URL sent to Ironic (default: the address that
    #: routes to Ironic).
    advertise_host: str | None
    #: Port put in the callback URL.
    advertise_port: int
    #: Protocol of the callback URL (auto-TLS switches it to https).
    advertise_protocol: str
    #: Take the advertised IPv4 address from this interface.
    network_interface: str | None
    #: Rounds of looking for a routable advertise address.
    ip_lookup_attempts: int
    #: Pause between those rounds (s).
    ip_lookup_sleep: float
    #: Pre-shared agent token, 32 characters or more (otherwise Ironic hands
    #: one out at lookup).  Visible to every process (ps); prefer
    #: agent_token_file.
    agent_token: str | None
    #: Read the pre-shared agent token from this file (surrounding white
    #: space ignored); instead of agent_token.
    agent_token_file: str | None
    #: Serve the API without lookup or heartbeat (token from --agent-token or
    #: --agent-token-file); for operators and benchmarks.
    standalone: bool
    #: Generate a self-signed certificate and serve https when Ironic is new
    #: enough (API >= 1.68).
    enable_auto_tls: bool
    #: Serve https with --tls-cert-file/--tls-key-file.
    listen_tls: bool
    #: Certificate (PEM) for --listen-tls.
    tls_cert_file: str | None
    #: Key (PEM) for --listen-tls.
    tls_key_file: str | None
    #: Lowest TLS version, server and client (Ironic's lookup may raise it).
    tls_min_version: str
    #: OpenSSL cipher string for TLS 1.2, server and client (Ironic's lookup
    #: may replace it).
    tls_cipher_suites: str | None
    #: Curve of the auto-TLS EC key.
    tls_certificate_curve: str
    #: Back-date the auto-TLS certificate by this much (s).
    auto_tls_allowed_clock_skew: int
    #: Validity of the auto-TLS certificate (days).
    auto_tls_validity_days: int
    #: Directory for runtime files (auto-TLS certificate and key).
    run_dir: str
    #: Give up looking the node up after this long (s).
    lookup_timeout: float
    #: Initial and smallest pause between lookup attempts (s).
    lookup_interval: float
    #: Pause before collecting hardware information (s).
    hardware_initialization_delay: float
    #: How long to wait at start for a network interface with a MAC address
    #: (s).
    interface_wait_timeout: float
    #: Post the inventory here before lookup (comma list or 'mdns').
    inspection_callback_url: list[str] | None
    #: Inspection collectors (default: default,logs).
    inspection_collectors: list[str] | None
    #: Before inspection, wait this long for the PXE NIC (or all NICs) to get
    #: an IPv4 address; 0 to not wait (s).
    inspection_dhcp_wait_timeout: float
    #: Wait for every NIC (not only the PXE one) to get an address.
    inspection_dhcp_all_interfaces: bool
    #: Find the Ironic API by mDNS when no API URL is given.
    use_mdns: bool
    #: Options that mDNS TXT records (ipa_<option>) may set.
    mdns_allowed_overrides: list[str]
    #: mDNS queries before giving up.
    mdns_lookup_attempts: int
    #: ironic-collect-introspection-data: keep posting, every
    #: introspection_daemon_post_interval.
    introspection_daemon: bool
    #: Period of the introspection daemon's posts (s).
    introspection_daemon_post_interval: float
    #: How long to listen for LLDP frames (s).
    lldp_timeout: float
    #: Fill interfaces[].lldp in the inventory.
    collect_lldp: bool
    #: Only these block devices are listed, chosen, written and erased (loop
    #: devices count as disks when listed).
    device_allowlist: list[str] | None
    #: Tries to find the root disk at start.
    disk_wait_attempts: int
    #: Pause between those tries (s).
    disk_wait_delay: float
    #: Priority of the inject_files deploy and service step (0: runs only
    #: when asked for).
    inject_files_priority: int
    #: Cut a download that receives nothing for this long (s).
    image_download_connection_timeout: float
    #: Retries of a failed image download.
    image_download_connection_retries: int
    #: Pause between image download retries (s).
    image_download_connection_retry_interval: float
    #: Cap on a whole image download, 0 for none (s).
    image_download_max_duration: float
    #: Authentication to image servers (http_basic: with image_server_user
    #: and image_server_password).
    image_server_auth_strategy: str
    #: User for http_basic image server authentication.
    image_server_user: str | None
    #: Password for http_basic image server authentication.
    image_server_password: str | None
    #: Accept MD5 image checksums (Ironic's lookup usually sets it).
    md5_enabled: bool
    #: Command run by standby.power_off.
    power_off_command: str
    #: Command run by standby.run_image.
    reboot_command: str
    #: When the power command fails, use /proc/sysrq-trigger.
    sysrq_fallback: bool
    #: MAC of the PXE interface (pxelinux BOOTIF).
    bootif: str | None
    #: Log debug messages.
    debug: bool
