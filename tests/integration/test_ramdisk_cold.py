"""ramdisk/builder.py's cold part, on a made-up root: which files stay in
the initramfs (the rules, the Python files, the libraries of the programs
kept), the rest moved into a squashfs image with symlinks at their paths
(one per directory that is cold as a whole), every time in the image the
build's epoch; mounted where /init mounts it, every path reads as
before."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

from twisted.trial.unittest import SynchronousTestCase

TOP = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(TOP, "ramdisk"))

import builder  # noqa: E402

LIB = "usr/lib/x86_64-linux-gnu"
MODULES = "usr/lib/modules/6.1.0-test"
MODULES_DEP = """\
kernel/fs/squashfs/squashfs.ko.zst:
kernel/drivers/net/virtio_net.ko.zst: kernel/drivers/net/net_failover.ko.zst \
kernel/net/core/failover.ko.zst
kernel/drivers/net/net_failover.ko.zst: kernel/net/core/failover.ko.zst
kernel/net/core/failover.ko.zst:
kernel/drivers/net/ethernet/intel/ixgbe.ko.zst: kernel/drivers/net/mdio.ko.zst
kernel/drivers/net/mdio.ko.zst:
"""


class ColdPartTests(SynchronousTestCase):

    def setUp(self) -> None:
        for tool in ("mksquashfs", "unsquashfs", "readelf"):
            if not shutil.which(tool):
                self.fail(f"{tool} is needed (tools/setup-host.sh installs "
                          f"squashfs-tools and binutils)")
        self.root = os.path.abspath(self.mktemp())
        self.work = os.path.abspath(self.mktemp())
        os.makedirs(self.work)
        self.contents: dict[str, bytes] = {}
        # a real program and what it links: dash is a HOT_PROGRAM
        dash = shutil.which("dash") or "/bin/dash"
        self.put("usr/bin/dash", open(dash, "rb").read(), 0o755)
        needed = builder._dynamic(dash)[1]
        self.assertIn("libc.so.6", needed)
        for name in needed + ["ld-linux-x86-64.so.2"]:
            real = os.path.realpath(f"/lib/x86_64-linux-gnu/{name}")
            self.put(f"{LIB}/{os.path.basename(real)}",
                     open(real, "rb").read(), 0o755)
            if os.path.basename(real) != name:
                os.symlink(os.path.basename(real),
                           os.path.join(self.root, LIB, name))
        os.makedirs(os.path.join(self.root, "usr/lib64"))
        os.symlink("../lib/x86_64-linux-gnu/ld-linux-x86-64.so.2",
                   os.path.join(self.root, "usr/lib64/ld-linux-x86-64.so.2"))
        for link, target in (("bin", "usr/bin"), ("lib", "usr/lib"),
                             ("lib64", "usr/lib64")):
            os.symlink(target, os.path.join(self.root, link))
        os.symlink("dash", os.path.join(self.root, "usr/bin/sh"))
        # cold: a tool and the library only it links, a package's docs
        self.put("usr/bin/burnin", b"#!/bin/sh\necho burning\n", 0o755)
        self.put(f"{LIB}/libcold.so.1.2", b"not really a library\n")
        os.symlink("libcold.so.1.2", os.path.join(self.root, LIB,
                                                  "libcold.so.1"))
        self.put("usr/share/doc/pkg/copyright", b"license\n")
        self.put("usr/share/doc/pkg/examples/one", b"example\n")
        # a directory with a symlink in it: never moved whole
        self.put("usr/share/mixed/data", b"cold data\n")
        os.symlink("data", os.path.join(self.root, "usr/share/mixed/alias"))
        # hot by rule, and a Python module the agent imports
        self.put("etc/hostname", b"ipa-twisted\n")
        self.put("usr/lib/python3.11/hot.py", b"HOT = 1\n")
        self.put("usr/lib/python3.11/cold.py", b"COLD = 1\n")
        self.put(f"{MODULES}/modules.dep", MODULES_DEP.encode())
        for line in MODULES_DEP.splitlines():
            mod = line.split(":")[0]
            if mod:
                self.put(f"{MODULES}/{mod}", mod.encode() + b"\n")
        os.makedirs(os.path.join(self.root, "tmp"))  # empty: stays

    def put(self, rel: str, data: bytes, mode: int = 0o644) -> None:
        path = os.path.join(self.root, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(data)
        os.chmod(path, mode)
        self.contents[rel] = data

    def test_what_stays(self) -> None:
        hot = builder.hot_files(self.root, ["usr/lib/python3.11/hot.py"])
        libc = os.path.basename(os.path.realpath(
            "/lib/x86_64-linux-gnu/libc.so.6"))
        loader = os.path.basename(os.path.realpath(
            "/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"))
        for rel in ("usr/bin/dash", f"{LIB}/{libc}", f"{LIB}/{loader}",
                    "etc/hostname", "usr/lib/python3.11/hot.py",
                    f"{MODULES}/modules.dep",
                    f"{MODULES}/kernel/fs/squashfs/squashfs.ko.zst",
                    f"{MODULES}/kernel/drivers/net/virtio_net.ko.zst",
                    # a module the kept ones need
                    f"{MODULES}/kernel/net/core/failover.ko.zst"):
            self.assertIn(rel, hot)
        for rel in ("usr/bin/burnin", f"{LIB}/libcold.so.1.2",
                    "usr/share/doc/pkg/copyright",
                    "usr/lib/python3.11/cold.py",
                    f"{MODULES}/kernel/drivers/net/ethernet/intel/ixgbe.ko.zst",
                    f"{MODULES}/kernel/drivers/net/mdio.ko.zst"):
            self.assertNotIn(rel, hot)
        # only regular files, never a symlink
        self.assertNotIn("usr/bin/sh", hot)

    def test_split_and_mounted(self) -> None:
        hot = builder.hot_files(self.root, ["usr/lib/python3.11/hot.py"])
        info = builder.split_cold(self.root, self.work, hot, builder.EPOCH)
        cold = {rel for rel in self.contents if rel not in hot}
        self.assertEqual(info["cold_files"], len(cold))
        self.assertEqual(info["cold_bytes"],
                         sum(len(self.contents[r]) for r in cold))
        mount = "/" + builder.COLD_MOUNT

        def link(rel: str) -> str | None:
            path = os.path.join(self.root, rel)
            return os.readlink(path) if os.path.islink(path) else None

        for rel in hot:
            self.assertIsNone(link(rel), rel)
        # a cold file in a directory that also holds hot ones: its own link
        self.assertEqual(link("usr/bin/burnin"), f"{mount}/usr/bin/burnin")
        self.assertEqual(link(f"{LIB}/libcold.so.1.2"),
                         f"{mount}/{LIB}/libcold.so.1.2")
        # symlinks stay as they were
        self.assertEqual(link(f"{LIB}/libcold.so.1"), "libcold.so.1.2")
        self.assertEqual(link("usr/share/mixed/alias"), "data")
        self.assertEqual(link("usr/share/mixed/data"),
                         f"{mount}/usr/share/mixed/data")
        # a directory cold as a whole: one link (the topmost such)
        self.assertEqual(link("usr/share/doc"), f"{mount}/usr/share/doc")
        self.assertEqual(link(f"{MODULES}/kernel/drivers/net/ethernet"),
                         f"{mount}/{MODULES}/kernel/drivers/net/ethernet")
        self.assertTrue(os.path.isdir(os.path.join(self.root, "tmp")))
        into = set()
        for top, dirs, names in os.walk(self.root):
            for name in dirs + names:
                rel = os.path.relpath(os.path.join(top, name), self.root)
                if (link(rel) or "").startswith(mount + "/"):
                    into.add(rel)
        self.assertEqual(into, {
            "usr/bin/burnin", f"{LIB}/libcold.so.1.2", "usr/share/doc",
            "usr/share/mixed/data", "usr/lib/python3.11/cold.py",
            f"{MODULES}/kernel/drivers/net/ethernet",
            f"{MODULES}/kernel/drivers/net/mdio.ko.zst"})
        self.assertEqual(info["cold_links"], len(into))

        image = os.path.join(self.root, builder.COLD_IMAGE)
        listing = subprocess.run(["unsquashfs", "-lls", "-d", "R", image],
                                 capture_output=True, text=True,
                                 check=True).stdout.splitlines()
        files = {line.split(None, 5)[5][2:]: line for line in listing
                 if line.startswith("-")}
        self.assertEqual(set(files), cold)
        # every time is the epoch (2026-01-01), as in the cpio
        self.assertEqual({" ".join(line.split()[3:5])
                          for line in listing if line.strip()},
                         {"2026-01-01 00:00"})

        # mounted where /init mounts it: every path reads as before
        # (dash alone in the made-up root: its built-ins read the files)
        show = ("for f in \"$@\"; do while IFS= read -r line; do "
                "echo \"$line\"; done < \"$f\"; done")
        paths = " ".join("/" + r for r in sorted(cold))
        script = (f"mount -t squashfs -o ro,loop {image} "
                  f"{self.root}{mount} && chroot {self.root} /usr/bin/dash "
                  f"-c '{show}; /usr/bin/burnin' show {paths} "
                  f"/usr/share/mixed/alias")
        result = subprocess.run(["unshare", "--mount", "--propagation",
                                 "private", "--fork", "sh", "-c", script],
                                capture_output=True)
        self.assertEqual(result.returncode, 0, result.stderr)
        expected = b"".join(self.contents[r] for r in sorted(cold))
        self.assertEqual(result.stdout,
                         expected + b"cold data\n" + b"burning\n")

    def test_reproducible(self) -> None:
        """Two splits of the same tree: the same image, byte for byte
        (another file time, another umask)."""
        other = os.path.abspath(self.mktemp())
        shutil.copytree(self.root, other, symlinks=True)
        os.utime(os.path.join(other, "usr/bin/burnin"), (1, 1))
        images = []
        for root, umask in ((self.root, 0o022), (other, 0o077)):
            hot = builder.hot_files(root, ["usr/lib/python3.11/hot.py"])
            work = os.path.abspath(self.mktemp())
            os.makedirs(work)
            was = os.umask(umask)
            try:
                builder.split_cold(root, work, hot, builder.EPOCH)
            finally:
                os.umask(was)
            with open(os.path.join(root, builder.COLD_IMAGE), "rb") as f:
                images.append(f.read())
        self.assertEqual(images[0], images[1])
