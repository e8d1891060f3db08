"""A BMC for the network-boot test machine: libvirt and sushy-tools.

Ironic switches the machine on and off and sets its boot device through
Redfish, as Ironic's and Metal3's CI do: ``sushy-emulator`` (sushy-tools,
libvirt driver) turns the Redfish calls into libvirt calls on a TCG
domain.  CI starts no services, and this machine must keep none, so the
test starts its own libvirtd:

- as root, inside the test's network namespace, in a private mount and
  PID namespace (``unshare``): when libvirtd ends, the kernel ends every
  QEMU it started;
- tmpfs on /run/libvirt, /var/lib/libvirt, /var/cache/libvirt and
  /var/log/libvirt (made, empty, where missing); a private copy of
  /etc/libvirt (qemu.conf: QEMU runs as root, no dynamic ownership, no
  security driver, no cgroups, logs to files: no virtlogd; defined
  domains are written there too); copies of /etc/passwd and /etc/group
  with a ``libvirt-qemu`` user (libvirt 9.0 resolves its compiled-in
  QEMU user before it reads qemu.conf);
- its sockets in the test's work directory (``auth none``), no TCP.

sushy-emulator runs in a virtualenv in the cache (made by the system's
python3 with its site packages: Debian's python3-libvirt), listening on
the namespace's loopback only, and may reach only the test's domain.

Nothing here is left behind: the domain is destroyed and undefined,
sushy-emulator and libvirtd are stopped by their process group, and the
mounts die with their namespace.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from typing import Any

from ipa_twisted import tools
from tests.integration import harness as h

SUSHY_TOOLS = "sushy-tools==2.2.0"
SUSHY_PORT = 8000
#: libvirt's compiled-in QEMU user and group (Debian)
QEMU_USER = "libvirt-qemu"
QEMU_ID = 64055

QEMU_CONF = """\
user = "root"
group = "root"
dynamic_ownership = 0
remember_owner = 0
security_driver = "none"
cgroup_controllers = [ ]
stdio_handler = "file"
"""

LIBVIRTD_CONF = """\
unix_sock_dir = "{run}"
unix_sock_group = "root"
unix_sock_ro_perms = "0700"
unix_sock_rw_perms = "0700"
unix_sock_admin_perms = "0700"
auth_unix_ro = "none"
auth_unix_rw = "none"
log_outputs = "3:file:{log}"
"""

#: run by ``unshare`` in the namespace: the private mounts, then libvirtd
START = """\
set -e
for d in /run/libvirt /var/lib/libvirt /var/cache/libvirt /var/log/libvirt
do
    mkdir -p "$d"
    mount -t tmpfs -o mode=0755 ipa-libvirt "$d"
done
mount --bind "$1/etc" /etc/libvirt
mount --bind "$1/passwd" /etc/passwd
mount --bind "$1/group" /etc/group
libvirtd --config "$1/libvirtd.conf" &
wait $!
"""

SUSHY_CONF = """\
SUSHY_EMULATOR_LISTEN_IP = '127.0.0.1'
SUSHY_EMULATOR_LISTEN_PORT = {port}
SUSHY_EMULATOR_LIBVIRT_URI = {uri!r}
SUSHY_EMULATOR_ALLOWED_INSTANCES = {allowed!r}
"""

#: sushy-emulator with its INFO lines (every power action and boot
#: device it sets) in its log; it logs them only with --debug otherwise,
#: which would also start Flask's reloader
SUSHY_MAIN = """\
import logging, sys
logging.basicConfig(level=logging.INFO,
                    format='%(asctime)s %(name)s %(levelname)s %(message)s')
from sushy_tools.emulator.main import main
sys.argv = ['sushy-emulator', '--config', sys.argv[1]]
sys.exit(main())
"""


def prerequisites() -> None:
    """Raise Unavailable unless libvirtd, virsh and Debian's libvirt
    bindings are here (tools/setup-host.sh installs them)."""
    for tool in ("libvirtd", "virsh"):
        if shutil.which(tool, path=tools.search_path()) is None:
            raise h.Unavailable(f"needs {tool} (apt install "
                                f"--no-install-recommends libvirt-daemon "
                                f"libvirt-daemon-driver-qemu libvirt-clients:"
                                f" tools/setup-host.sh)")
    if not os.path.isdir("/etc/libvirt"):
        raise h.Unavailable("no /etc/libvirt (libvirt0 not installed)")
    if subprocess.run(["/usr/bin/python3", "-c", "import libvirt"],
                      capture_output=True).returncode != 0:
        raise h.Unavailable("needs python3-libvirt for sushy-emulator "
                            "(tools/setup-host.sh)")


def _with_qemu_user(source: str, target: str, line: str) -> None:
    with open(source) as f:
        text = f.read()
    if not any(ln.split(":", 1)[0] == QEMU_USER for ln in text.splitlines()):
        text = text.rstrip("\n") + "\n" + line + "\n"
    with open(target, "w") as f:
        f.write(text)


class Libvirtd:
    """A private libvirtd in the test's namespace; ``virsh()`` talks to
    it."""

    def __init__(self, cleanups: h.Cleanups, netns: str,
                 workdir: str) -> None:
        self.dir = os.path.join(workdir, "libvirt")
        run = os.path.join(self.dir, "run")
        etc = os.path.join(self.dir, "etc")
        os.makedirs(run)
        shutil.copytree("/etc/libvirt", etc)
        with open(os.path.join(etc, "qemu.conf"), "w") as f:
            f.write(QEMU_CONF)
        self.log = os.path.join(self.dir, "libvirtd.log")
        with open(os.path.join(self.dir, "libvirtd.conf"), "w") as f:
            f.write(LIBVIRTD_CONF.format(run=run, log=self.log))
        _with_qemu_user("/etc/passwd", os.path.join(self.dir, "passwd"),
                        f"{QEMU_USER}:x:{QEMU_ID}:{QEMU_ID}:Libvirt Qemu:"
                        f"/var/lib/libvirt:/usr/sbin/nologin")
        _with_qemu_user("/etc/group", os.path.join(self.dir, "group"),
                        f"{QEMU_USER}:x:{QEMU_ID}:")
        self.uri = (f"qemu+unix:///system?socket="
                    f"{os.path.join(run, 'libvirt-sock')}")
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", netns, "unshare", "--mount", "--pid",
             "--fork", "--mount-proc", "--propagation", "private",
             "--kill-child=SIGKILL", "sh", "-c", START, "sh", self.dir],
            stdout=subprocess.DEVNULL,
            stderr=open(os.path.join(self.dir, "libvirtd.stderr"), "w"),
            start_new_session=True)
        cleanups.add("libvirtd", self.stop)
        deadline = time.monotonic() + 60
        while True:
            result = self.virsh(["version"], check=False)
            if result.returncode == 0:
                break
            if self.proc.poll() is not None or time.monotonic() > deadline:
                with open(os.path.join(self.dir, "libvirtd.stderr")) as f:
                    stderr = f.read()[-1000:]
                raise RuntimeError(f"libvirtd did not start: {stderr} "
                                   f"{result.stderr.strip()[-500:]}")
            time.sleep(0.2)

    def virsh(self, args: list[str], check: bool = True,
              **kw: Any) -> subprocess.CompletedProcess[str]:
        return h.run(["virsh", "-q", "-c", self.uri] + args, check=check,
                     timeout=60, **kw)

    def stop(self) -> None:
        # libvirtd is the first process of its PID namespace: when it
        # ends, the kernel kills every QEMU left in it
        h.stop_process(self.proc)


def sushy_venv() -> str:
    return h.cached_venv(SUSHY_TOOLS, system_python=True)


class SushyEmulator:
    """sushy-emulator (libvirt driver) on the namespace's loopback,
    serving only the ``allowed`` domains (UUIDs)."""

    def __init__(self, cleanups: h.Cleanups, netns: str, workdir: str,
                 libvirt_uri: str, allowed: list[str]) -> None:
        venv = sushy_venv()
        conf = os.path.join(workdir, "sushy-emulator.conf")
        with open(conf, "w") as f:
            f.write(SUSHY_CONF.format(port=SUSHY_PORT, uri=libvirt_uri,
                                      allowed=allowed))
        self.log = os.path.join(workdir, "sushy-emulator.log")
        self.url = f"http://127.0.0.1:{SUSHY_PORT}"
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", netns,
             os.path.join(venv, "bin", "python"), "-c", SUSHY_MAIN, conf],
            stdout=subprocess.DEVNULL, stderr=open(self.log, "w"),
            start_new_session=True)
        cleanups.add("sushy-emulator", lambda: h.stop_process(self.proc))
        deadline = time.monotonic() + 60
        while True:
            with h.in_netns(netns):
                with socket.socket() as s:
                    if s.connect_ex(("127.0.0.1", SUSHY_PORT)) == 0:
                        return
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"sushy-emulator did not start: "
                                   f"{self.read_log()[-1500:]}")
            time.sleep(0.2)

    def read_log(self) -> str:
        try:
            with open(self.log, errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def actions(self) -> list[str]:
        """The power actions and boot devices it set, in order (its INFO
        lines)."""
        return [line.split(" INFO ", 1)[1] for line in
                self.read_log().splitlines()
                if " INFO " in line and ("power state set to" in line
                                         or "Set boot device" in line
                                         or "Set boot mode" in line)]

