"""Real parts for end-to-end tests and the demo.

A private network namespace (only ``lo`` and a veth pair whose end
``ipa0.10`` carries the fake node's MAC), a loop device as the node's only
disk, a real Ironic (PyPI, sqlite, noauth, fake power) and an image server
inside that namespace, and our agent run sandboxed: in the namespace, in a
private PID and mount namespace where every block device node but the
test's loop device is replaced by /dev/null, with ``--device-allowlist``.

Everything is blocking code (subprocess, urllib): it drives real processes
and is used from synchronous trial tests and from ``python -m
tests.integration.demo``.  Every resource registers its cleanup; cleanups
run in reverse order, even after failures.
"""

from __future__ import annotations

import ctypes
import fcntl
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from typing import Any, Callable, Iterator

IRONIC_VERSION = "39.0.0"
NODE_MAC = "52:54:00:12:34:56"
HERE = os.path.dirname(os.path.abspath(__file__))
SANDBOX = os.path.join(HERE, "sandbox.sh")
IRONIC_CONF = os.path.join(HERE, "ironic.conf.in")
CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


class Unavailable(Exception):
    """A prerequisite is missing here; the text says which (skip reason)."""


def say(text: str) -> None:
    print(f"[e2e {time.strftime('%H:%M:%S')}] {text}", flush=True)


def run(argv: list[str], check: bool = True, **kw: Any
        ) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(argv, capture_output=True, text=True, **kw)
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({result.returncode}): "
                           f"{result.stderr.strip() or result.stdout.strip()}")
    return result


def require_prerequisites() -> None:
    """Raise Unavailable unless this machine can run the e2e tests."""
    if os.geteuid() != 0:
        raise Unavailable("needs root (network namespaces, loop devices)")
    for tool in ("ip", "losetup", "unshare", "mount", "parted", "sgdisk",
                 "wipefs", "blockdev", "partprobe", "lsblk"):
        if shutil.which(tool) is None:
            raise Unavailable(f"needs the tool {tool!r} (run "
                              f"tools/setup-host.sh)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Cleanups:
    def __init__(self) -> None:
        self._stack: list[tuple[str, Callable[[], Any]]] = []

    def add(self, what: str, func: Callable[[], Any]) -> None:
        self._stack.append((what, func))

    def run(self) -> None:
        while self._stack:
            what, func = self._stack.pop()
            try:
                func()
            except Exception as e:  # keep cleaning
                say(f"cleanup of {what} failed: {e}")


# ------------------------------------------------------------ namespaces


@contextmanager
def in_netns(name: str) -> Iterator[None]:
    """Run the body with this thread inside network namespace ``name``
    (sockets created there stay there)."""
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    target = os.open(f"/run/netns/{name}", os.O_RDONLY)
    try:
        if _libc.setns(target, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), "setns failed")
        try:
            yield
        finally:
            if _libc.setns(own, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns back failed")
    finally:
        os.close(own)
        os.close(target)


def make_netns(cleanups: Cleanups, mac: str = NODE_MAC) -> str:
    name = f"ipa-e2e-{os.getpid()}-{int(time.time() * 1000) % 100000}"
    run(["ip", "netns", "add", name])
    cleanups.add(f"netns {name}", lambda: run(["ip", "netns", "del", name]))
    ns = ["ip", "netns", "exec", name]
    run(ns + ["ip", "link", "set", "lo", "up"])
    run(ns + ["ip", "link", "add", "ipa0.10", "address", mac, "type", "veth",
              "peer", "name", "ipapeer"])
    run(ns + ["ip", "link", "set", "ipa0.10", "up"])
    run(ns + ["ip", "link", "set", "ipapeer", "up"])
    return name


def make_loop_device(cleanups: Cleanups, directory: str, size: int) -> str:
    backing = os.path.join(directory, "disk.img")
    with open(backing, "wb") as f:
        f.truncate(size)
    dev = run(["losetup", "--find", "--show", "--partscan", backing]
              ).stdout.strip()
    if not dev.startswith("/dev/loop"):
        raise RuntimeError(f"losetup gave {dev!r}")
    cleanups.add(f"loop device {dev}", lambda: run(["losetup", "-d", dev]))
    return dev


def device_sha256(dev: str, length: int) -> str:
    digest = hashlib.sha256()
    with open(dev, "rb") as f:
        left = length
        while left:
            chunk = f.read(min(left, 8 << 20))
            if not chunk:
                break
            digest.update(chunk)
            left -= len(chunk)
    return digest.hexdigest()


def file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(8 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def make_disk_image(path: str, size: int) -> str:
    """A raw whole-disk image: an MBR partition table with one partition,
    the rest incompressible data.  Returns its sha256."""
    with open(path, "wb") as f:
        f.truncate(size)
    run(["parted", "-s", path, "mklabel", "msdos", "mkpart", "primary",
         "ext4", "1MiB", "100%"])
    digest = hashlib.sha256()
    with open(path, "r+b") as f:
        head = f.read(1 << 20)
        digest.update(head)
        f.seek(1 << 20)
        left = size - (1 << 20)
        block = os.urandom(4 << 20)
        counter = 0
        while left:
            counter += 1
            # vary every block so that nothing dedups or compresses
            chunk = (counter.to_bytes(8, "little") + block[8:])[:min(left, len(block))]
            f.write(chunk)
            digest.update(chunk)
            left -= len(chunk)
    return digest.hexdigest()


# ---------------------------------------------------------------- Ironic


def cache_dir() -> str:
    path = os.environ.get("IPA_TWISTED_CACHE") or os.path.expanduser(
        "~/.cache/ipa-twisted")
    os.makedirs(path, exist_ok=True)
    return path


def ironic_venv() -> str:
    """A virtualenv with ironic==39.0.0 (made once, then reused)."""
    return cached_venv(f"ironic=={IRONIC_VERSION}",
                       os.environ.get("IPA_TWISTED_IRONIC_VENV"))


IPA_VERSION = "13.0.0"


def ipa_venv() -> str:
    """A virtualenv with ironic-python-agent==13.0.0, to compare with."""
    return cached_venv(f"ironic-python-agent=={IPA_VERSION}")


def cached_venv(requirement: str, path: str | None = None,
                system_python: bool = False) -> str:
    """A virtualenv with ``requirement`` in the cache (made once, then
    reused); ``system_python``: made by the system's python3 with its
    site packages visible (Debian's bindings, e.g. python3-libvirt)."""
    venv = path or os.path.join(cache_dir(), requirement.replace("==", "-"))
    marker = os.path.join(venv, ".complete")
    if os.path.exists(marker):
        return venv
    os.makedirs(os.path.dirname(venv), exist_ok=True)
    with open(venv + ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if os.path.exists(marker):
            return venv
        say(f"installing {requirement} into {venv} (once)")
        shutil.rmtree(venv, ignore_errors=True)
        if system_python:
            run(["/usr/bin/python3", "-m", "venv", "--system-site-packages",
                 venv])
        else:
            run([sys.executable, "-m", "venv", venv])
        result = run([os.path.join(venv, "bin", "pip"), "install", "-q",
                      requirement], check=False)
        if result.returncode != 0:
            raise Unavailable(f"cannot install {requirement}: "
                              f"{result.stderr.strip()[-500:]}")
        open(marker, "w").close()
    return venv


class IronicAPI:
    """A tiny REST client for the Ironic API, used from inside the netns."""

    def __init__(self, netns: str, url: str) -> None:
        self.netns = netns
        self.url = url

    def call(self, method: str, path: str, body: Any = None,
             expect: tuple[int, ...] = (200, 201, 202, 204)) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(
            self.url + path, data=data, method=method,
            headers={"X-OpenStack-Ironic-API-Version": "latest",
                     "Content-Type": "application/json"})
        with in_netns(self.netns):
            try:
                with urllib.request.urlopen(request, timeout=30) as response:
                    status, raw = response.status, response.read()
            except urllib.error.HTTPError as e:
                status, raw = e.code, e.read()
        if status not in expect:
            raise RuntimeError(f"{method} {path} -> {status}: {raw[:500]!r}")
        return json.loads(raw) if raw else None

    def node(self, name: str) -> dict[str, Any]:
        result: dict[str, Any] = self.call("GET", f"/v1/nodes/{name}")
        return result

    def provision(self, name: str, target: str, **extra: Any) -> None:
        self.call("PUT", f"/v1/nodes/{name}/states/provision",
                  {"target": target, **extra})

    def make_available(self, name: str) -> None:
        """An enrolled node through manage and provide to available."""
        self.provision(name, "manage")
        self.wait_for_state(name, {"manageable"}, 60)
        self.provision(name, "provide")
        self.wait_for_state(name, {"available"}, 60)

    def wait_for_state(self, name: str, states: set[str], timeout: float,
                       fail_states: set[str] = frozenset({"deploy failed",
                                                          "clean failed",
                                                          "inspect failed"}),
                       on_tick: Callable[[], None] | None = None
                       ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        last = None
        errors = 0
        while True:
            try:
                node = self.node(name)
            except RuntimeError as e:
                # a busy Ironic (sqlite) may answer 500 now and then
                errors += 1
                if " -> 5" not in str(e) or errors > 5:
                    raise
                say(f"node {name}: {e}; asking again")
                time.sleep(1)
                continue
            state = node["provision_state"]
            if state != last:
                say(f"node {name}: {state}"
                    + (f" (target {node['target_provision_state']})"
                       if node.get("target_provision_state") else ""))
                last = state
            if state in states:
                return node
            if state in fail_states:
                raise RuntimeError(f"node {name} went to {state}: "
                                   f"{node.get('last_error')}")
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"node {name} still {state} after {timeout:.0f} s "
                    f"(last_error: {node.get('last_error')})")
            if on_tick is not None:
                on_tick()
            time.sleep(0.5)


class Ironic:
    """A real Ironic (API + conductor) inside the namespace."""

    def __init__(self, cleanups: Cleanups, netns: str, workdir: str,
                 heartbeat_timeout: int = 30, fast_track: bool = False,
                 listen: str = "127.0.0.1",
                 manage_agent_boot: bool = True,
                 automated_clean: bool = False) -> None:
        self.netns = netns
        self.workdir = workdir
        self.port = 6385
        self.http_port = 8088
        self.venv = ironic_venv()
        self.log = os.path.join(workdir, "ironic.log")
        with open(IRONIC_CONF) as f:
            text = f.read()
        for key, value in {
            "@WORKDIR@": workdir, "@API_PORT@": str(self.port),
            "@API_HOST@": listen,
            "@MANAGE_AGENT_BOOT@": "true" if manage_agent_boot else "false",
            "@HTTP_PORT@": str(self.http_port),
            "@HEARTBEAT_TIMEOUT@": str(heartbeat_timeout),
            "@FAST_TRACK@": "true" if fast_track else "false",
            "@AUTOMATED_CLEAN@": "true" if automated_clean else "false",
        }.items():
            text = text.replace(key, value)
        for sub in ("state", "certs", "deploy-logs", "httpboot", "tftp",
                    "tftp/master_images", "images", "master_images", "locks",
                    "www"):
            os.makedirs(os.path.join(workdir, sub), exist_ok=True)
        # Dummy deploy kernel and ramdisk: Ironic caches them for PXE.
        for name in ("deploy.kernel", "deploy.initrd"):
            with open(os.path.join(workdir, "www", name), "wb") as f:
                f.write(b"not a real " + name.encode() + b"\n")
        self.conf = os.path.join(workdir, "ironic.conf")
        with open(self.conf, "w") as f:
            f.write(text)
        self.api = IronicAPI(netns, f"http://127.0.0.1:{self.port}")
        self._cleanups = cleanups

    def bin(self, name: str) -> str:
        return os.path.join(self.venv, "bin", name)

    def start(self) -> None:
        run([self.bin("ironic-dbsync"), "--config-file", self.conf,
             "create_schema"])
        ns = ["ip", "netns", "exec", self.netns]
        self.proc = subprocess.Popen(
            ns + [self.bin("ironic"), "--config-file", self.conf],
            stdout=subprocess.DEVNULL, stderr=open(
                os.path.join(self.workdir, "ironic.stderr"), "w"),
            start_new_session=True)
        self._cleanups.add("ironic", lambda: stop_process(self.proc))
        self.www = serve_http(self._cleanups, self.netns, self.http_port,
                              os.path.join(self.workdir, "www"))
        deadline = time.monotonic() + 60
        while True:
            try:
                self.api.call("GET", "/v1/nodes")
                return
            except (OSError, RuntimeError) as e:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"ironic exited: see {self.log}")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"ironic not ready: {e}")
                time.sleep(0.3)

    def image_url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.http_port}/{name}"

    def enroll(self, name: str, root_device: dict[str, Any],
               mac: str = NODE_MAC, inspect_interface: str = "no-inspect",
               **extra: Any) -> dict[str, Any]:
        node: dict[str, Any] = self.api.call("POST", "/v1/nodes", {
            "name": name, "driver": "manual-management",
            "boot_interface": "pxe", "deploy_interface": "direct",
            "management_interface": "noop", "power_interface": "fake",
            "network_interface": "noop",
            "inspect_interface": inspect_interface,
            **extra,
            "driver_info": {
                "deploy_forces_oob_reboot": True,
                "deploy_kernel": self.image_url("deploy.kernel"),
                "deploy_ramdisk": self.image_url("deploy.initrd"),
            },
            "properties": {"root_device": root_device},
        })
        self.api.call("POST", "/v1/ports", {"node_uuid": node["uuid"],
                                            "address": mac})
        return node


INSPECTOR_VERSION = "12.5.0"
INSPECTOR_CONF = """\
[DEFAULT]
auth_strategy = noauth
standalone = true
transport_url = fake://
listen_address = {listen}
listen_port = 5050
log_file = {workdir}/inspector.log
use_stderr = false

[database]
connection = sqlite:///{workdir}/inspector.sqlite

[ironic]
auth_type = none
endpoint_override = http://127.0.0.1:{api_port}

[pxe_filter]
driver = noop

[processing]
permit_active_introspection = true
store_data = database
add_ports = disabled
"""


class Inspector:
    """A real ironic-inspector 12.5.0 beside Ironic, in the namespace."""

    def __init__(self, cleanups: Cleanups, netns: str, workdir: str,
                 api_port: int, listen: str = "127.0.0.1") -> None:
        self.venv = cached_venv(f"ironic-inspector=={INSPECTOR_VERSION}")
        self.conf = os.path.join(workdir, "inspector.conf")
        self.log = os.path.join(workdir, "inspector.log")
        with open(self.conf, "w") as f:
            f.write(INSPECTOR_CONF.format(listen=listen, workdir=workdir,
                                          api_port=api_port))
        run([os.path.join(self.venv, "bin", "ironic-inspector-dbsync"),
             "--config-file", self.conf, "upgrade"])
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", netns,
             os.path.join(self.venv, "bin", "ironic-inspector"),
             "--config-file", self.conf],
            stdout=subprocess.DEVNULL, stderr=open(
                os.path.join(workdir, "inspector.stderr"), "w"),
            start_new_session=True)
        cleanups.add("ironic-inspector", lambda: stop_process(self.proc))
        self.api = IronicAPI(netns, "http://127.0.0.1:5050")
        deadline = time.monotonic() + 60
        while True:
            try:
                self.api.call("GET", "/")
                return
            except (OSError, RuntimeError) as e:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"ironic-inspector exited: see "
                                       f"{self.log}")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"ironic-inspector not ready: {e}")
                time.sleep(0.3)


def child_pid(pid: int) -> int | None:
    """The first child of ``pid`` (e.g. the process unshare forked)."""
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            children = f.read().split()
    except OSError:
        return None
    return int(children[0]) if children else None


def serve_http(cleanups: Cleanups, netns: str, port: int,
               directory: str | None = None,
               argv: list[str] | None = None) -> subprocess.Popen[Any]:
    """An HTTP server on 127.0.0.1:``port`` inside ``netns``: Python's
    http.server for ``directory``, or the server ``argv`` starts.  Returns
    once the port accepts connections."""
    if argv is None:
        argv = [sys.executable, "-m", "http.server", "--bind", "127.0.0.1",
                str(port), "--directory", str(directory)]
    proc = subprocess.Popen(["ip", "netns", "exec", netns] + argv,
                            stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL,
                            start_new_session=True)
    cleanups.add(f"HTTP server :{port}", lambda: stop_process(proc))
    deadline = time.monotonic() + 30
    while True:
        with in_netns(netns):
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    return proc
        if proc.poll() is not None:
            raise RuntimeError(f"HTTP server {argv} exited")
        if time.monotonic() > deadline:
            raise RuntimeError(f"HTTP server {argv} not listening on {port}")
        time.sleep(0.1)


def descendants(pid: int) -> list[int]:
    """``pid`` and every process under it."""
    found = [pid]
    i = 0
    while i < len(found):
        p = found[i]
        i += 1
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    found += [int(c) for c in f.read().split()]
        except OSError:
            pass
    return found


NGINX_CONF = """\
worker_processes 1;
daemon off;
user root;
pid {work}/nginx.pid;
error_log {work}/nginx-error.log;
events {{ worker_connections 64; }}
http {{
    {access}
    sendfile on;
    tcp_nopush on;
    default_type application/octet-stream;
    client_body_temp_path {work}/nginx-body;
    proxy_temp_path {work}/nginx-proxy;
    fastcgi_temp_path {work}/nginx-fastcgi;
    server {{
        listen {bind}:{port};
        root {root};
    }}
}}
"""


def serve_nginx(cleanups: Cleanups, netns: str, port: int, root: str,
                work: str, bind: str = "127.0.0.1",
                access_log: str | None = None) -> int:
    """nginx (one worker, sendfile) serving ``root`` on ``bind``:``port``
    inside ``netns``, as Ironic deployments serve images and boot files.
    ``access_log``: a file where each request's line says when it ended
    (seconds since the epoch, to the millisecond), how long it took, its
    status, bytes and request line.  Returns the worker's PID."""
    conf = os.path.join(work, "nginx.conf")
    access = "access_log off;"
    if access_log:
        access = (f"log_format timed '$msec $request_time $status "
                  f"$body_bytes_sent \"$request\"';\n"
                  f"    access_log {access_log} timed;")
    with open(conf, "w") as f:
        f.write(NGINX_CONF.format(work=work, port=port, root=root, bind=bind,
                                  access=access))
    run(["nginx", "-t", "-q", "-e", os.path.join(work, "nginx-error.log"),
         "-c", conf])
    master = serve_http(cleanups, netns, port, argv=[
        "nginx", "-e", os.path.join(work, "nginx-error.log"), "-c", conf])
    deadline = time.monotonic() + 10
    while True:
        for pid in descendants(master.pid)[1:]:
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    if f.read().startswith(b"nginx: worker"):
                        return pid
            except OSError:
                pass
        if time.monotonic() > deadline:
            raise RuntimeError("nginx started no worker")
        time.sleep(0.05)


def stop_process(proc: subprocess.Popen[Any], timeout: float = 20) -> None:
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


# ----------------------------------------------------------------- agent


def twistd() -> str:
    path = os.path.join(os.path.dirname(sys.executable), "twistd")
    if not os.path.exists(path):
        raise Unavailable(f"no twistd beside {sys.executable}: install "
                          f"ipa-twisted into this environment")
    return path


class Agent:
    """Our agent, sandboxed, inside the namespace."""

    def __init__(self, cleanups: Cleanups, netns: str, workdir: str,
                 device: str, api_url: str | None,
                 extra: list[str] | None = None,
                 name: str = "agent",
                 env: dict[str, str] | None = None,
                 nofile: int | None = None,
                 wrap: list[str] | None = None) -> None:
        self.workdir = workdir
        self.log = os.path.join(workdir, f"{name}.log")
        run_dir = os.path.join(workdir, f"{name}-run")
        stubs = os.path.join(workdir, "stubs")
        make_stubs(stubs)
        cmdline = os.path.join(workdir, "cmdline")
        with open(cmdline, "w") as f:
            f.write("\n")
        argv = ["ip", "netns", "exec", netns,
                "unshare", "--pid", "--mount", "--fork", "--mount-proc",
                "--kill-child=SIGTERM",
                SANDBOX, device, stubs, "--"]
        if nofile is not None:           # soft and hard open file limit
            argv += ["prlimit", f"--nofile={nofile}:{nofile}", "--"]
        # a command that sets up more, inside the sandbox, then runs the
        # agent given as its arguments (see ETC_OVERLAY)
        argv += wrap or []
        argv += [twistd(), "--nodaemon", "--pidfile=",
                 f"--logfile={self.log}",
                 "ipa", "--device-allowlist", device,
                 "--cmdline-file", cmdline, "--run-dir", run_dir,
                 "--power-off-command", "true", "--reboot-command", "true",
                 "--no-sysrq-fallback", "--lookup-timeout", "120",
                 "--disk-wait-attempts", "2", "--disk-wait-delay", "1"]
        if api_url:
            argv += ["--api-url", api_url]
        argv += extra or []
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            argv, stdout=subprocess.DEVNULL,
            stderr=open(os.path.join(workdir, f"{name}.stderr"), "w"),
            start_new_session=True,
            env={**os.environ, **(env or {})})
        cleanups.add(name, self.stop)

    def stop(self) -> None:
        stop_process(self.proc)

    def read_log(self) -> str:
        try:
            with open(self.log, encoding="utf-8", errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def wait_for_log(self, text: str, timeout: float) -> float:
        """Seconds from start until ``text`` appears in the log."""
        deadline = time.monotonic() + timeout
        while True:
            if text in self.read_log():
                return time.monotonic() - self.started
            if self.proc.poll() is not None:
                raise RuntimeError(f"agent exited ({self.proc.returncode}) "
                                   f"before logging {text!r}:\n"
                                   + self.read_log()[-3000:])
            if time.monotonic() > deadline:
                raise RuntimeError(f"agent did not log {text!r} in "
                                   f"{timeout} s:\n" + self.read_log()[-3000:])
            time.sleep(0.1)


#: A wrapper (``Agent(wrap=...)``) that puts a writable layer over /etc in
#: the sandbox's private mount namespace (upper and work directories given
#: as ``{upper}`` and ``{work}``, on this machine's filesystem, so that the
#: test reads what the agent wrote) and adds ``{user}`` there: the agent
#: may set passwords and make marker files in /etc; this machine's /etc
#: never changes.
ETC_OVERLAY = ["sh", "-c", 'set -e; mount -t overlay ipa-etc -o '
               'lowerdir=/etc,upperdir="$1",workdir="$2" /etc; '
               'useradd --no-create-home "$3"; shift 3; exec "$@"', "sh"]


def etc_overlay(workdir: str, user: str) -> tuple[list[str], str]:
    """(the ``wrap`` argv, the upper directory) of an /etc overlay."""
    upper = os.path.join(workdir, "etc-upper")
    work = os.path.join(workdir, "etc-work")
    os.makedirs(upper, exist_ok=True)
    os.makedirs(work, exist_ok=True)
    return ETC_OVERLAY + [upper, work, user], upper


STUB = """#!/bin/sh
echo "ipa-twisted test stub: refusing to run $(basename "$0") $*" >&2
exit 0
"""


def make_stubs(directory: str) -> None:
    """Harmless stand-ins for tools that could change the host."""
    os.makedirs(directory, exist_ok=True)
    for tool in ("poweroff", "reboot", "shutdown", "halt", "hwclock",
                 "efibootmgr", "mdadm", "ntpdate", "chronyd", "docker",
                 "podman", "modprobe", "iscsistart", "multipath",
                 "multipathd", "mpathconf"):
        path = os.path.join(directory, tool)
        with open(path, "w") as f:
            f.write(STUB)
        os.chmod(path, 0o755)


def sandboxed(netns: str, device: str, stubs: str, argv: list[str],
              timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run a command in the namespace, in the disk-masking sandbox."""
    make_stubs(stubs)
    return run(["ip", "netns", "exec", netns, "unshare", "--pid", "--mount",
                "--fork", "--mount-proc", SANDBOX, device, stubs, "--"]
               + argv, timeout=timeout)


def workdir(cleanups: Cleanups, keep: bool = False) -> str:
    path = tempfile.mkdtemp(prefix="ipa-e2e-")
    if not keep:
        cleanups.add(f"workdir {path}",
                     lambda: shutil.rmtree(path, ignore_errors=True))
    return path


def make_config_drive(directory: str, meta: dict[str, Any]) -> str:
    """A real config drive as Ironic sends it: an ISO9660 labelled
    config-2 (genisoimage, the options openstacksdk uses), gzipped, in
    base64."""
    import base64
    import gzip as gz

    tree = os.path.join(directory, "cd-tree")
    for version in ("2012-08-10", "latest"):
        d = os.path.join(tree, "openstack", version)
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, "meta_data.json"), "w") as f:
            json.dump(meta, f)
    iso = os.path.join(directory, "cd.iso")
    run(["genisoimage", "-o", iso, "-ldots", "-allow-lowercase",
         "-allow-multidot", "-l", "-publisher", "ipa-twisted-tests",
         "-quiet", "-J", "-r", "-V", "config-2", tree])
    with open(iso, "rb") as f:
        return base64.b64encode(gz.compress(f.read())).decode("ascii")


def make_fs_image(path: str, size: int, label: str = "root") -> tuple[str, str]:
    """An ext4 filesystem image with a file in it: (sha256, fs uuid)."""
    with open(path, "wb") as f:
        f.truncate(size)
    src = path + ".d"
    os.makedirs(os.path.join(src, "etc"), exist_ok=True)
    with open(os.path.join(src, "etc", "hostname"), "w") as f:
        f.write("deployed-by-ipa-twisted\n")
    run(["mkfs.ext4", "-q", "-F", "-L", label, "-d", src, path])
    fs_uuid = run(["blkid", "-o", "value", "-s", "UUID", path]).stdout.strip()
    return file_sha256(path), fs_uuid


def debian_root() -> str:
    """A minimal Debian 12 root tree with GRUB for BIOS and UEFI
    (debootstrap, made once and kept as a tarball in the cache); returns
    the tarball's path."""
    tarball = os.path.join(cache_dir(), "debian-bookworm-grub-pc-efi.tar")
    if os.path.exists(tarball):
        return tarball
    if shutil.which("debootstrap") is None:
        raise Unavailable("needs debootstrap (tools/setup-host.sh)")
    with open(tarball + ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if os.path.exists(tarball):
            return tarball
        tmp = tempfile.mkdtemp(prefix="debootstrap-")
        try:
            say("debootstrap: a minimal Debian with GRUB (once)")
            result = run(["debootstrap", "--variant=minbase",
                          "--include=grub-pc-bin,grub-efi-amd64-bin,"
                          "grub2-common", "bookworm", tmp,
                          "http://deb.debian.org/debian"], check=False)
            if result.returncode != 0:
                raise Unavailable(f"debootstrap failed: "
                                  f"{result.stderr.strip()[-300:]}")
            run(["tar", "-C", tmp, "-cf", tarball + ".part", "."])
            os.rename(tarball + ".part", tarball)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return tarball


def debian_root_with_mdadm() -> str:
    """The Debian tree of :func:`debian_root` with mdadm unpacked into it
    (an installed system on a software RAID has it; GRUB's tools ask it
    about arrays), kept as a tarball in the cache; its path."""
    tarball = os.path.join(cache_dir(), "debian-bookworm-grub-pc-efi-"
                                        "mdadm.tar")
    if os.path.exists(tarball):
        return tarball
    base = debian_root()
    with open(tarball + ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if os.path.exists(tarball):
            return tarball
        tmp = tempfile.mkdtemp(prefix="debian-mdadm-")
        try:
            tree = os.path.join(tmp, "tree")
            os.makedirs(tree)
            run(["tar", "-C", tree, "-xf", base])
            say("Debian tree: adding mdadm (once)")
            result = run(["apt-get", "download", "mdadm"], cwd=tmp,
                         check=False)
            debs = [n for n in os.listdir(tmp) if n.endswith(".deb")]
            if not debs:
                raise Unavailable(f"apt-get download mdadm failed: "
                                  f"{result.stderr.strip()[-300:]}")
            # unpacked over the tree's /sbin -> usr/sbin links, kept
            # (dpkg-deb -x would make them directories)
            data = subprocess.run(["dpkg-deb", "--fsys-tarfile",
                                   os.path.join(tmp, debs[0])],
                                  capture_output=True, check=True).stdout
            subprocess.run(["tar", "-x", "--keep-directory-symlink", "-C",
                            tree], input=data, check=True)
            run(["tar", "-C", tree, "-cf", tarball + ".part", "."])
            os.rename(tarball + ".part", tarball)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return tarball


def make_os_image(path: str, size: int,
                  files: dict[str, bytes] | None = None,
                  root: str | None = None) -> tuple[str, str]:
    """An ext4 image of the Debian tree (``root``: another tarball of
    one), plus ``files`` (absolute path in the image to content): (sha256,
    fs uuid)."""
    tree = path + ".d"
    os.makedirs(tree, exist_ok=True)
    run(["tar", "-C", tree, "-xf", root or debian_root()])
    for name, text in (files or {}).items():
        target = os.path.join(tree, name.lstrip("/"))
        os.makedirs(os.path.dirname(target), exist_ok=True)
        with open(target, "wb") as f:
            f.write(text)
    with open(path, "wb") as f:
        f.truncate(size)
    run(["mkfs.ext4", "-q", "-F", "-L", "root", "-d", tree, path])
    shutil.rmtree(tree, ignore_errors=True)
    fs_uuid = run(["blkid", "-o", "value", "-s", "UUID", path]).stdout.strip()
    return file_sha256(path), fs_uuid


def build_loop_geometry_shim(workdir: str) -> str:
    """Compile shims/loop_geometry.c (see its header) into ``workdir``."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        raise Unavailable("no C compiler (apt install gcc libc6-dev) to "
                          "build the loop geometry shim")
    source = os.path.join(os.path.dirname(__file__), "shims",
                          "loop_geometry.c")
    target = os.path.join(workdir, "loop_geometry.so")
    run([cc, "-shared", "-fPIC", "-O2", "-o", target, source, "-ldl"])
    return target


def blkid(device: str, tag: str) -> str:
    return run(["blkid", "-p", "-o", "value", "-s", tag, device],
               check=False).stdout.strip()
