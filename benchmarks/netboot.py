#!/usr/bin/env python3
"""Network boot under TCG: our ramdisk against a minimal
ironic-python-agent 13.0.0 ramdisk built the same way, in the same run.

Run as root from the repository root:

    python benchmarks/netboot.py [--only ours|ipa]

Both ramdisks come from ``ramdisk/builder.py``'s recipe: the same Debian 12
base recipe (mmdebstrap, Debian's kernel, the same kernel modules, the same
``/init`` with its busybox DHCP, zstd), ours with the full tool set of
``ipa_twisted/tools.py``; the reference with IPA 13.0.0 and its Python
dependencies (the cached PyPI virtualenv the other benchmarks use) and a
few disk tools (util-linux, mount, parted, gdisk, e2fsprogs, dosfstools, mdadm,
qemu-utils, dmidecode, lshw), run as ``ironic-python-agent``.

For each: a real Ironic 39 (``ipxe`` boot interface, fake power followed
by the test, tests/vm/netboot.py) deploys a 16 MiB whole-disk image onto
the QEMU machine's virtio disk (no cleaning); printed: initramfs size, and
seconds from power-on to the kernel, to /init, to the agent's start, to
its lookup and its first heartbeat, and from the deploy request to
``active``; from nginx's access log, when iPXE had fetched Ironic's
boot.ipxe (``ipxe_script``) and the deploy ramdisk (``fetched``).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from types import SimpleNamespace
from typing import Any

TOP = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, TOP)
sys.path.insert(0, os.path.join(TOP, "ramdisk"))

import builder  # noqa: E402
from tests.integration import harness as h  # noqa: E402
from tests.vm import netboot as nb  # noqa: E402

MAC = "52:54:00:a1:b2:c4"
MiB = 1024 ** 2
IPA_PACKAGES = ["python3", "udev", "kmod", "busybox", "ca-certificates",
                "iproute2", "util-linux", "mount", "parted", "gdisk", "e2fsprogs",
                "dosfstools", "mdadm", "qemu-utils", "dmidecode", "lshw"]
IPA_MARKERS = {
    "kernel": "Linux version",
    "init": "ipa-twisted-init: started",
    "agent": "ipa-twisted-init: starting the agent",
    "lookup": "Lookup succeeded",
    "heartbeat": "sleeping before next heartbeat",
}
IPA_WRAPPER = """#!/usr/bin/python3
import sys
from ironic_python_agent.cmd.agent import run
sys.exit(run())
"""


def ipa_ramdisk(cache: str) -> dict[str, Any]:
    """The IPA 13.0.0 reference ramdisk (cached by its inputs)."""
    venv = h.ipa_venv()
    site = os.path.join(venv, "lib", "python3.11", "site-packages")
    with open(os.path.join(TOP, "ramdisk", "init"), "rb") as f:
        init = f.read()
    key = hashlib.sha256(b"\0".join([
        h.IPA_VERSION.encode(), " ".join(IPA_PACKAGES).encode(), init,
        str(builder.BASE_RECIPE).encode()])).hexdigest()[:16]
    out = os.path.join(cache, f"ipa-reference-{key}")
    result = {"kernel": os.path.join(out, "ipa-twisted.kernel"),
              "initramfs": os.path.join(out, "ipa-twisted.initramfs")}
    if os.path.exists(os.path.join(out, "done")):
        return result
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(out)
    args = SimpleNamespace(mirror="", firmware=False, ssh_key=None,
                           extra_package=[], epoch=builder.EPOCH, config=[],
                           debug_password=None, verbose=False)
    base = builder.build_base(args, cache, IPA_PACKAGES)  # type: ignore
    work = tempfile.mkdtemp(prefix="ipa-reference-", dir=cache)
    try:
        root = os.path.join(work, "root")
        os.makedirs(root)
        subprocess.run(["tar", "-C", root, "--numeric-owner", "-xpf",
                        os.path.join(base, "root.tar")], check=True)
        vmlinuz, _ = builder.install_kernel(base, root, work)
        target = os.path.join(root, builder.SITE)
        shutil.copytree(site, target, dirs_exist_ok=True, ignore=(
            shutil.ignore_patterns("pip", "pip-*", "setuptools",
                                   "setuptools-*", "_distutils_hack",
                                   "distutils-precedence.pth",
                                   "__pycache__")))
        wrapper = os.path.join(root, "usr", "local", "bin",
                               "ironic-python-agent")
        os.makedirs(os.path.dirname(wrapper), exist_ok=True)
        with open(wrapper, "w") as f:
            f.write(IPA_WRAPPER)
        os.chmod(wrapper, 0o755)
        builder.configure(root, args, "ipa-" + key)  # type: ignore
        with open(os.path.join(root, "init"), "rb") as f:
            text = f.read()
        # IPA, as its own ramdisks start it: once the network is up
        for ours, theirs in (
                (b"/usr/share/ipa-twisted/start-agent $conf",
                 b"ironic-python-agent"), (b"\nearly=1\n", b"\nearly=0\n")):
            if ours not in text:
                raise SystemExit(f"benchmark: {ours!r} not in ramdisk/init")
            text = text.replace(ours, theirs)
        with open(os.path.join(root, "init"), "wb") as f:
            f.write(text)
        builder.chroot(root, ["python3", "-m", "compileall", "-q", "-j", "1",
                              "/" + builder.SITE])
        builder.prune(root)
        shutil.copy(vmlinuz, result["kernel"])
        builder.pack(root, result["initramfs"], builder.EPOCH,
                     builder.COMPRESSORS["zstd"])
        open(os.path.join(out, "done"), "w").close()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return result


def fetches(access_log: str, wall: float) -> dict[str, float]:
    """From nginx's access log: seconds after power-on (``wall``) when
    iPXE had fetched Ironic's boot.ipxe, and when it had fetched the
    deploy ramdisk (the last of the boot files)."""
    found: dict[str, float] = {}
    with open(access_log) as f:
        for line in f:
            fields = line.split()
            if len(fields) < 6 or float(fields[0]) < wall:
                continue
            path = fields[5]
            for name, suffix in (("ipxe_script", "/boot.ipxe"),
                                 ("fetched", "/deploy_ramdisk")):
                if path.endswith(suffix) and name not in found:
                    found[name] = float(fields[0]) - wall
    return found


def deploy(name: str, files: dict[str, Any], markers: dict[str, str],
           serial_dir: str | None = None) -> dict[str, Any]:
    env = nb.Netboot(automated_clean=False)
    machine = None
    try:
        api = env.api
        disk = nb.Disk(os.path.join(env.workdir, "disk0.img"), "BENCH-DISK")
        disk.create()
        machine = nb.Machine(env.cleanups, env.netns, env.workdir, MAC,
                             [disk], markers=markers)
        machine.boot_disk_serial = disk.serial
        node = api.call("POST", "/v1/nodes", {
            "name": "bench", "driver": "manual-management",
            "boot_interface": "ipxe", "deploy_interface": "direct",
            "management_interface": "noop", "power_interface": "fake",
            "network_interface": "noop",
            "driver_info": {
                "deploy_kernel": env.publish(files["kernel"]),
                "deploy_ramdisk": env.publish(files["initramfs"]),
                "deploy_forces_oob_reboot": True},
            "properties": {"capabilities": "boot_mode:bios"}})
        api.call("POST", "/v1/ports", {"node_uuid": node["uuid"],
                                       "address": MAC})
        nb.PowerFollower(env.cleanups, env, machine, node["uuid"])
        api.make_available("bench")
        image = os.path.join(env.workdir, "bench.img")
        digest = nb.boot_sector_image(image, "benchmark image booted")
        api.call("PATCH", "/v1/nodes/bench", [
            {"op": "add", "path": "/instance_info", "value": {
                "image_source": env.publish(image),
                "image_os_hash_algo": "sha256",
                "image_os_hash_value": digest,
                "image_disk_format": "raw"}}])
        t0 = time.monotonic()
        api.provision("bench", "active")
        try:
            api.wait_for_state("bench", {"active"}, 900)
        except RuntimeError:
            print(machine.read_serial(machine.boots[0])[-3000:])
            raise
        active = time.monotonic() - t0
        boot = machine.boots[0]
        return {"name": name, "initramfs_mib": os.path.getsize(
            files["initramfs"]) / MiB, "active_s": active,
            "active_after_power_on_s": time.monotonic() - boot.started,
            **fetches(env.access_log, boot.wall), **boot.seen}
    finally:
        try:
            if serial_dir and machine is not None:
                os.makedirs(serial_dir, exist_ok=True)
                for boot in machine.boots:
                    if not os.path.exists(boot.serial):
                        continue  # powered off before QEMU made its console
                    shutil.copy(boot.serial, os.path.join(
                        serial_dir,
                        f"{name.split()[0]}-serial-{boot.number}.log"))
        finally:
            env.close()


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--only", choices=["ours", "ipa"])
    parser.add_argument("--serial-dir", help="keep each boot's serial "
                        "console log there")
    args = parser.parse_args()
    cache = os.path.join(h.cache_dir(), "ramdisk")
    rows = []
    if args.only != "ipa":
        rows.append(deploy("ipa-twisted", nb.ramdisk(), nb.MARKERS,
                           args.serial_dir))
    if args.only != "ours":
        t0 = time.monotonic()
        files = ipa_ramdisk(cache)
        h.say(f"IPA reference ramdisk: {time.monotonic() - t0:.0f} s")
        rows.append(deploy("IPA 13.0.0", files, IPA_MARKERS,
                           args.serial_dir))
    cols = ["initramfs_mib", "ipxe_script", "fetched", "kernel", "init",
            "agent", "lookup",
            "heartbeat", "active_after_power_on_s", "active_s"]
    print("\n| ramdisk | " + " | ".join(cols) + " |")
    print("|---" * (len(cols) + 1) + "|")
    for row in rows:
        print(f"| {row['name']} | " + " | ".join(
            f"{row[c]:.1f}" if isinstance(row.get(c), float) else "-"
            for c in cols) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
