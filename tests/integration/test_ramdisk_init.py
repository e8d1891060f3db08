"""ramdisk/init's shell functions, run by sh on a made-up sysfs and udev
database (no root, no VM)."""

from __future__ import annotations

import os
import signal
import subprocess
import time

from twisted.trial.unittest import SynchronousTestCase

from tests.unit.test_ramdisk_builder import load_start_agent

INIT = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))), "ramdisk", "init")


def function(name: str) -> str:
    """The text of shell function NAME in ramdisk/init (up to the first
    line that is a lone closing brace)."""
    with open(INIT) as f:
        lines = f.read().split("\n")
    start = next(i for i, line in enumerate(lines)
                 if line.startswith(f"{name}() {{"))
    end = lines.index("}", start)
    return "\n".join(lines[start:end + 1]) + "\n"


class UdevDoneTests(SynchronousTestCase):
    """udev_done IFACE: has udev finished with the boot interface (named,
    so /init may use its name)?"""

    def setUp(self) -> None:
        self.root = self.mktemp()
        self.net = os.path.join(self.root, "net")
        self.data = os.path.join(self.root, "data")
        os.makedirs(os.path.join(self.net, "eth0"))
        os.makedirs(self.data)
        with open(os.path.join(self.net, "eth0", "ifindex"), "w") as f:
            f.write("2\n")

    def done(self, iface: str = "eth0") -> bool:
        result = subprocess.run(
            ["sh", "-c", function("udev_done") + 'udev_done "$1"', "sh",
             iface], env={"SYS_NET": self.net, "UDEV_DATA": self.data,
                          "PATH": os.environ.get("PATH", "/usr/bin:/bin")},
            capture_output=True, text=True)
        self.assertEqual(result.stderr, "")
        return result.returncode == 0

    def entry(self, *lines: str) -> None:
        with open(os.path.join(self.data, "n2"), "w") as f:
            f.write("".join(line + "\n" for line in lines))

    def test_not_yet_seen(self) -> None:
        self.assertFalse(self.done())

    def test_no_such_interface(self) -> None:
        self.assertFalse(self.done("eth9"))

    def test_rules_ran(self) -> None:
        self.entry("I:1234567", "E:ID_NET_NAME_PATH=enp0s3",
                   "E:ID_NET_DRIVER=virtio_net")
        self.assertTrue(self.done())

    def test_about_to_be_renamed(self) -> None:
        # systemd-udevd writes the entry, marked, just before it renames
        # the interface (eth0 -> ens2): eth0 is not the name to use yet.
        # (Seen on the console: "boot interface eth0", then the kernel's
        # "ens2: renamed from eth0", then DHCP failing on eth0.)
        self.entry("I:1234567", "E:ID_NET_DRIVER=virtio_net",
                   "E:ID_RENAMING=1")
        self.assertFalse(self.done())


class StaticOfTests(SynchronousTestCase):
    """static_of IP: is ``ip=IP`` a static address (the kernel's nfsroot
    syntax), and its parts."""

    def parse(self, value: str) -> tuple[bool, list[str]]:
        result = subprocess.run(
            ["sh", "-c", function("static_of") + 'static_of "$1"; ok=$?; '
             'echo "$ok|$ip_addr|$ip_gw|$ip_bits|$ip_host|$ip_dev"', "sh",
             value], env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
            capture_output=True, text=True)
        self.assertEqual(result.stderr, "")
        ok, *parts = result.stdout.strip().split("|")
        return ok == "0", parts

    def test_static_dotted_mask(self) -> None:
        self.assertEqual(
            self.parse("192.0.2.50::192.0.2.1:255.255.255.0:node:eth0.100:"
                       "none"),
            (True, ["192.0.2.50", "192.0.2.1", "24", "node", "eth0.100"]))

    def test_static_prefix_no_gateway_no_interface(self) -> None:
        self.assertEqual(self.parse("10.1.2.3:::20:::none"),
                         (True, ["10.1.2.3", "", "20", "", ""]))
        self.assertEqual(self.parse("10.1.2.3::::h:eth1:off"),
                         (True, ["10.1.2.3", "", "24", "h", "eth1"]))

    def test_dhcp_on_an_interface_is_not_static(self) -> None:
        # before: any value with six colons was a static address, so
        # ip=:::::eth1:dhcp meant "ip addr add /24", and no DHCP at all
        ok, parts = self.parse(":::::eth1:dhcp")
        self.assertFalse(ok)
        self.assertEqual(parts[-1], "eth1")
        self.assertFalse(self.parse("10.1.2.3::::h:eth1:dhcp")[0])

    def test_not_static(self) -> None:
        for value in ("", "dhcp", "on", "::::::none"):
            self.assertFalse(self.parse(value)[0], value)


class AfterImportsTests(SynchronousTestCase):
    """after_imports LIMIT CMD: CMD once start-agent says it has imported
    the agent (its cue on /init's FIFO), or after LIMIT s."""

    def setUp(self) -> None:
        self.dir = self.mktemp()
        os.makedirs(self.dir)
        self.fifo = os.path.join(self.dir, "imported")
        self.out = os.path.join(self.dir, "out")
        self.start_agent = load_start_agent()

    def after_imports(self, limit: int) -> None:
        errors = os.path.join(self.dir, "stderr")
        with open(errors, "w") as err:
            # its own process group: the background jobs it leaves are
            # stopped with it
            proc = subprocess.Popen(
                ["sh", "-c", function("after_imports")
                 + 'after_imports "$1" sh -c "echo \\"ran \\$1\\" >> $2" sh',
                 "sh",
                 str(limit), self.out],
                env={"IMPORTED_FIFO": self.fifo,
                     "PATH": os.environ.get("PATH", "/usr/bin:/bin")},
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                stderr=err, start_new_session=True)
        self.addCleanup(lambda: os.killpg(proc.pid, signal.SIGKILL))
        self.assertEqual(proc.wait(timeout=30), 0)
        with open(errors) as f:
            self.assertEqual(f.read(), "")

    def ran(self, seconds: float, why: str = "imports done") -> bool:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if os.path.exists(self.out):
                time.sleep(0.05)            # its line written whole
                with open(self.out) as f:
                    self.assertEqual(f.read(), f"ran {why}\n")
                return True
            time.sleep(0.05)
        return False

    def test_at_start_agents_cue(self) -> None:
        self.after_imports(60)
        self.assertFalse(self.ran(0.5))     # waits for the cue
        self.start_agent.imported(self.fifo)
        self.assertTrue(self.ran(10))
        # the cue again (the agent restarted): nothing waits, nothing runs
        # again (ran() read "ran" once)
        self.start_agent.imported(self.fifo)
        time.sleep(0.3)
        self.assertTrue(self.ran(1))

    def test_after_the_limit_without_a_cue(self) -> None:
        self.after_imports(1)
        self.assertTrue(self.ran(10, "after 1 s"))
        self.start_agent.imported(self.fifo)     # too late: returns
