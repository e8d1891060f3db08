"""End-to-end scenarios against a real Ironic, shared by tests and demo."""

from __future__ import annotations

import os
import time
from typing import Any

from tests.integration import harness as h

GiB = 1024 ** 3
MiB = 1024 ** 2


class Environment:
    """Namespace + loop disk + real Ironic; ``close()`` undoes it all."""

    def __init__(self, disk_size: int = 5 * GiB, heartbeat_timeout: int = 30,
                 keep: bool = False, fast_track: bool = False,
                 listen: str = "127.0.0.1",
                 manage_agent_boot: bool = True,
                 automated_clean: bool = False) -> None:
        h.require_prerequisites()
        self.runs = 0
        self.cleanups = h.Cleanups()
        try:
            self.workdir = h.workdir(self.cleanups, keep)
            h.say(f"work directory {self.workdir}")
            self.netns = h.make_netns(self.cleanups)
            h.say(f"network namespace {self.netns} (lo + veth ipa0.10 "
                  f"{h.NODE_MAC})")
            self.device = h.make_loop_device(self.cleanups, self.workdir,
                                             disk_size)
            h.say(f"node disk: {self.device} ({disk_size // GiB} GiB, sparse)")
            self.ironic = h.Ironic(self.cleanups, self.netns, self.workdir,
                                   heartbeat_timeout, fast_track, listen,
                                   manage_agent_boot, automated_clean)
            t0 = time.monotonic()
            self.ironic.start()
            h.say(f"Ironic {h.IRONIC_VERSION} up on 127.0.0.1:"
                  f"{self.ironic.port} in {time.monotonic() - t0:.1f} s")
            self.api = self.ironic.api
        except BaseException:
            self.cleanups.run()
            raise

    def agent(self, name: str = "agent", extra: list[str] | None = None,
              api_url: str | None = None) -> h.Agent:
        return h.Agent(self.cleanups, self.netns, self.workdir, self.device,
                       api_url or self.api.url, extra, name)

    def close(self) -> None:
        self.cleanups.run()

    def logs_tail(self, agent: h.Agent | None = None) -> str:
        parts = []
        if agent is not None:
            parts.append("--- agent log ---\n" + agent.read_log()[-4000:])
        try:
            with open(self.ironic.log, errors="replace") as f:
                lines = [ln for ln in f.read().splitlines()
                         if " ERROR " in ln or " WARNING " in ln]
            parts.append("--- ironic errors/warnings ---\n"
                         + "\n".join(lines[-40:]))
        except OSError:
            pass
        return "\n".join(parts)


class AgentInfoWatcher:
    """Remembers what Ironic recorded of the agent (callback URL, CA)."""

    def __init__(self, env: Environment, name: str) -> None:
        self.env = env
        self.name = name
        self.seen: dict[str, Any] = {}

    def __call__(self) -> None:
        info = self.env.api.node(self.name).get("driver_internal_info") or {}
        for key in ("agent_url", "agent_verify_ca", "agent_version",
                    "agent_last_heartbeat"):
            if info.get(key) and key not in self.seen:
                self.seen[key] = info[key]


def publish_image(env: Environment, image_size: int, kind: str
                  ) -> tuple[str, str, str, str]:
    """A whole-disk image served to the node: (file name, disk_format,
    sha256 of the file, sha256 of the disk it makes)."""
    raw = os.path.join(env.workdir, "www", "disk.img")
    disk_digest = h.make_disk_image(raw, image_size)
    if kind == "raw":
        return "disk.img", "raw", disk_digest, disk_digest
    if kind == "qcow2":
        name, fmt = "disk.qcow2", "qcow2"
        h.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", raw,
               os.path.join(env.workdir, "www", name)])
    elif kind == "gzip":
        name, fmt = "disk.img.gz", "raw"
        h.run(["gzip", "-k", "-1", raw])
    else:
        raise ValueError(kind)
    file_digest = h.file_sha256(os.path.join(env.workdir, "www", name))
    return name, fmt, file_digest, disk_digest


def deploy_partition_image(env: Environment) -> dict[str, Any]:
    """A partition image (ext4) with swap, ephemeral and a config drive,
    deployed by a real Ironic."""
    image = os.path.join(env.workdir, "www", "root.img")
    digest, fs_uuid = h.make_fs_image(image, 256 * MiB)
    drive = h.make_config_drive(env.workdir, {"uuid": "e2e", "name": "e2e"})
    return _deploy_partition(env, "e2e-part", "root.img", digest, fs_uuid,
                             {"root_gb": 1, "swap_mb": 64, "ephemeral_gb": 1},
                             drive)


def deploy_bootable_partition_image(env: Environment) -> dict[str, Any]:
    """A Debian root filesystem (debootstrap) as a partition image; Ironic
    then asks the agent to install GRUB into it (BIOS)."""
    image = os.path.join(env.workdir, "www", "debian.img")
    shim = h.build_loop_geometry_shim(env.workdir)
    with open(shim, "rb") as f:
        library = f.read()
    # see tests/integration/shims/loop_geometry.c: GRUB on a loop device
    digest, fs_uuid = h.make_os_image(
        image, 700 * MiB, files={
            "/usr/local/lib/loop_geometry.so": library,
            "/etc/ld.so.preload": b"/usr/local/lib/loop_geometry.so\n"})
    return _deploy_partition(env, "e2e-grub", "debian.img", digest, fs_uuid,
                             {"root_gb": 1}, None)


def _deploy_partition(env: Environment, name: str, image: str, digest: str,
                      fs_uuid: str, sizes: dict[str, int],
                      drive: str | None) -> dict[str, Any]:
    api = env.api
    env.ironic.enroll(name, {"name": env.device})
    api.make_available(name)
    api.call("PATCH", f"/v1/nodes/{name}", [
        {"op": "add", "path": "/instance_info", "value": {
            "image_source": env.ironic.image_url(image),
            "image_os_hash_algo": "sha256", "image_os_hash_value": digest,
            "image_disk_format": "raw",
            "kernel": env.ironic.image_url("deploy.kernel"),
            "ramdisk": env.ironic.image_url("deploy.initrd"),
            **sizes}}])
    t0 = time.monotonic()
    if drive is None:
        api.provision(name, "active")
    else:
        api.provision(name, "active", configdrive=drive)
    api.wait_for_state(name, {"wait call-back"}, 60)
    agent = env.agent(f"{name}-agent")
    try:
        node = api.wait_for_state(name, {"active"}, 300)
    except Exception:
        h.say(env.logs_tail(agent))
        raise
    took = time.monotonic() - t0
    h.say(f"partition image {image} deployed in {took:.1f} s")
    log = agent.read_log()
    agent.stop()
    return {"node": node, "digest": digest, "fs_uuid": fs_uuid,
            "agent_log": log, "seconds": took}


def deploy(env: Environment, image_size: int = 256 * MiB, kind: str = "raw"
           ) -> dict[str, Any]:
    """Deploy a whole-disk image (raw, qcow2 or gzip'ed raw) to the loop
    device; measurements."""
    api = env.api
    name, disk_format, file_digest, digest = publish_image(env, image_size,
                                                           kind)
    h.say(f"image: {name}, {disk_format}, {image_size // MiB} MiB disk with "
          f"an MBR and one partition, sha256 {file_digest[:16]}...")
    node = env.ironic.enroll("e2e-node", {"name": env.device})
    h.say(f"enrolled node {node['uuid']} (root device hint name="
          f"{env.device}, port {h.NODE_MAC})")
    api.make_available("e2e-node")
    api.call("PATCH", "/v1/nodes/e2e-node", [
        {"op": "add", "path": "/instance_info", "value": {
            "image_source": env.ironic.image_url(name),
            "image_os_hash_algo": "sha256", "image_os_hash_value": file_digest,
            "image_disk_format": disk_format}}])
    t_deploy = time.monotonic()
    api.provision("e2e-node", "active")
    api.wait_for_state("e2e-node", {"wait call-back"}, 60)
    h.say("Ironic waits for the agent: starting it (sandboxed)")
    agent = env.agent()
    try:
        t_lookup = agent.wait_for_log("lookup found node", 120)
        h.say(f"agent looked the node up {t_lookup:.2f} s after start")
        watcher = AgentInfoWatcher(env, "e2e-node")
        env.api.wait_for_state("e2e-node", {"active"}, 300, on_tick=watcher)
    except Exception:
        h.say(env.logs_tail(agent))
        raise
    t_active = time.monotonic() - t_deploy
    h.say(f"node active {t_active:.1f} s after the deploy request")
    node = api.node("e2e-node")
    on_disk = h.device_sha256(env.device, image_size)
    h.say(f"bytes on {env.device}: sha256 {on_disk[:16]}... "
          f"({'match' if on_disk == digest else 'MISMATCH'})")
    log = agent.read_log()
    agent.stop()
    return {"node": node, "image_sha256": digest, "disk_sha256": on_disk,
            "lookup_s": t_lookup, "deploy_to_active_s": t_active,
            "agent_log": log, "ironic_saw": watcher.seen}


def clean_metadata(env: Environment, name: str = "e2e-clean",
                   agent_args: list[str] | None = None,
                   api_url: str | None = None) -> dict[str, Any]:
    """Manual clean with erase_devices_metadata; measurements.

    Enrolls node ``name``, or takes the existing one back to manageable
    (undeploying it if it is active).  ``api_url``: where the agent finds
    Ironic (default: where the test does)."""
    api = env.api
    existing = api.call("GET", f"/v1/nodes/{name}", expect=(200, 404))
    if existing is None or "error_message" in existing:
        env.ironic.enroll(name, {"name": env.device})
    elif existing["provision_state"] == "active":
        api.provision(name, "deleted")
        api.wait_for_state(name, {"available"}, 120)
    if api.node(name)["provision_state"] != "manageable":
        api.provision(name, "manage")
        api.wait_for_state(name, {"manageable"}, 60)
    h.run(["parted", "-s", env.device, "mklabel", "gpt", "mkpart", "p1",
           "1MiB", "100MiB"])
    before = partition_table_type(env.device)
    h.say(f"{env.device} has a partition table ({before}) before cleaning")
    t0 = time.monotonic()
    api.provision(name, "clean", clean_steps=[
        {"interface": "deploy", "step": "erase_devices_metadata"}])
    api.wait_for_state(name, {"clean wait"}, 60)
    agent = env.agent("clean-agent", agent_args, api_url)
    watcher = AgentInfoWatcher(env, name)
    try:
        api.wait_for_state(name, {"manageable"}, 300, on_tick=watcher)
    except Exception:
        h.say(env.logs_tail(agent))
        raise
    took = time.monotonic() - t0
    h.say(f"manual clean done in {took:.1f} s")
    after = partition_table_type(env.device)
    signatures = h.run(["wipefs", "--no-act", env.device]).stdout.strip()
    log = agent.read_log()
    agent.stop()
    return {"before": before, "after": after, "signatures": signatures,
            "clean_s": took, "node": api.node(name),
            "agent_log": log, "ironic_saw": watcher.seen}


def fill_with_data(device: str) -> int:
    """Incompressible data over the whole device, a GPT at its start; its
    size."""
    size = int(h.run(["blockdev", "--getsize64", device]).stdout)
    block = os.urandom(4 * MiB)
    with open(device, "r+b") as f:
        for i in range(size // len(block)):
            f.write(i.to_bytes(8, "little") + block[8:])
        os.fsync(f.fileno())
    h.run(["sgdisk", "-n", "1:2048:+16M", device])
    return size


def manual_clean(env: Environment, name: str, steps: list[dict[str, Any]],
                 agent_args: list[str] | None = None) -> dict[str, Any]:
    """Manual cleaning of node ``name`` (enrolled and made manageable the
    first time) with ``steps``, by a fresh sandboxed agent."""
    api = env.api
    existing = api.call("GET", f"/v1/nodes/{name}", expect=(200, 404))
    if existing is None or "error_message" in existing:
        env.ironic.enroll(name, {"name": env.device})
        api.provision(name, "manage")
        api.wait_for_state(name, {"manageable"}, 60)
    t0 = time.monotonic()
    api.provision(name, "clean", clean_steps=steps)
    api.wait_for_state(name, {"clean wait"}, 60)
    env.runs += 1
    agent = env.agent(f"clean-agent-{env.runs}", agent_args)
    try:
        node = api.wait_for_state(name, {"manageable"}, 300)
    except Exception:
        h.say(env.logs_tail(agent))
        raise
    took = time.monotonic() - t0
    h.say(f"manual clean {[s['step'] for s in steps]} done in {took:.1f} s")
    log = agent.read_log()
    agent.stop()
    return {"node": node, "clean_s": took, "agent_log": log}


def partition_table_type(device: str) -> str:
    """"gpt", "dos" or "" (none), as blkid probes the device itself."""
    result = h.run(["blkid", "--probe", "--match-tag", "PTTYPE",
                    "--output", "value", device], check=False)
    return result.stdout.strip()


def inspect(env: Environment, collectors: str, expect: str,
            name: str = "e2e-inspect", api_url: str | None = None,
            callback: bool = True, lldp_timeout: float = 3.0
            ) -> dict[str, Any]:
    """In-band inspection by a real Ironic (inspect interface ``agent``)."""
    api = env.api
    existing = api.call("GET", f"/v1/nodes/{name}", expect=(200, 404))
    if existing is None or "error_message" in existing:
        env.ironic.enroll(name, {"name": env.device},
                          inspect_interface="agent")
        h.run(["ip", "netns", "exec", env.netns, "ip", "addr", "add",
               "192.0.2.10/24", "dev", "ipa0.10"])
        api.provision(name, "manage")
        api.wait_for_state(name, {"manageable"}, 60)
    t0 = time.monotonic()
    api.provision(name, "inspect")
    api.wait_for_state(name, {"inspect wait"}, 60)
    callback_args = ["--inspection-callback-url",
                     f"{env.api.url}/v1/continue_inspection"] if callback \
        else []
    env.runs += 1
    agent = env.agent(f"inspect-agent-{env.runs}", [
        *callback_args,
        "--inspection-collectors", collectors,
        "--bootif", "01-" + h.NODE_MAC.replace(":", "-"),
        "--lldp-timeout", str(lldp_timeout), "--lookup-timeout", "5",
    ], api_url=api_url)
    try:
        posted = agent.wait_for_log("inspection data accepted by", 120) \
            if expect == "manageable" else None
        node = api.wait_for_state(name, {expect}, 120,
                                  fail_states=set())
    except Exception:
        h.say(env.logs_tail(agent))
        raise
    took = time.monotonic() - t0
    h.say(f"inspection: node {name} is {expect} after {took:.1f} s")
    stored = api.call("GET", f"/v1/nodes/{name}/inventory",
                      expect=(200, 404))
    log = agent.read_log()
    agent.stop()
    return {"node": node, "stored": stored, "agent_log": log,
            "post_s": posted, "inspect_s": took}


FAKE_NODE = {"driver": "fake-hardware", "boot_interface": "fake",
             "deploy_interface": "fake", "management_interface": "fake",
             "power_interface": "fake"}


def active_node(env: Environment, name: str = "e2e-active") -> dict[str, Any]:
    """A fake-hardware node, deployed (ACTIVE) in about a second, whose port
    is the namespace's veth; the veth gets an address (ironic-inspector's
    validate_interfaces wants one)."""
    api = env.api
    env.ironic.enroll(name, {"name": env.device}, **FAKE_NODE)
    h.run(["ip", "netns", "exec", env.netns, "ip", "addr", "add",
           "192.0.2.10/24", "dev", "ipa0.10"])
    api.make_available(name)
    api.provision(name, "active")
    return api.wait_for_state(name, {"active"}, 60)


def collect_command(env: Environment, args: list[str]) -> list[str]:
    """The sandboxed ironic-collect-introspection-data command line."""
    import sys

    cmdline = os.path.join(env.workdir, "cmdline-collect")
    with open(cmdline, "w") as f:
        f.write("\n")
    stubs = os.path.join(env.workdir, "stubs")
    h.make_stubs(stubs)
    return ["ip", "netns", "exec", env.netns, "unshare", "--pid", "--mount",
            "--fork", "--mount-proc", "--kill-child=SIGTERM", h.SANDBOX,
            env.device, stubs, "--",
            os.path.join(os.path.dirname(sys.executable),
                         "ironic-collect-introspection-data"),
            "--device-allowlist", env.device, "--cmdline-file", cmdline,
            "--inspection_collectors", "default"] + args


def automated_clean(env: Environment, name: str = "e2e-autoclean"
                    ) -> dict[str, Any]:
    """Automated cleaning with Ironic's defaults (the environment made with
    ``automated_clean=True``): the node is provided, Ironic runs
    erase_devices_metadata (99) and erase_devices (10) through our agent.
    The disk is filled with data first; returns the node and timings."""
    api = env.api
    env.ironic.enroll(name, {"name": env.device})
    size = int(h.run(["blockdev", "--getsize64", env.device]).stdout)
    block = os.urandom(4 * MiB)
    with open(env.device, "r+b") as f:
        for i in range(size // len(block)):
            f.write(i.to_bytes(8, "little") + block[8:])
        os.fsync(f.fileno())
    api.provision(name, "manage")
    api.wait_for_state(name, {"manageable"}, 60)
    t0 = time.monotonic()
    api.provision(name, "provide")
    api.wait_for_state(name, {"clean wait"}, 60)
    agent = env.agent("autoclean-agent")
    try:
        node = api.wait_for_state(name, {"available"}, 600)
    except Exception:
        h.say(env.logs_tail(agent))
        raise
    took = time.monotonic() - t0
    h.say(f"automated cleaning of a {size // MiB} MiB disk: {took:.1f} s")
    log = agent.read_log()
    agent.stop()
    return {"node": node, "clean_s": took, "agent_log": log, "size": size}
