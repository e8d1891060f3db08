"""Config drives are decoded as a stream that stops one byte past 64 MiB
(issue #12 item 6): a drive that inflates to a gigabyte costs 64 MiB, for
whole-disk and partition images alike."""

from __future__ import annotations

import base64
import gzip
import os
import shutil
from typing import Any, Callable

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from ipa_twisted import errors
from ipa_twisted.config import load_config
from ipa_twisted.context import RunningAgent
from ipa_twisted.hardware.disks import DeviceGuard
from ipa_twisted.image import configdrive, partition_image
from ipa_twisted.testing import FakeProcessRunner
from tests import hostile_images as hi
from tests.integration import harness as h
from tests.integration.base import unavailable

MiB = 1024 * 1024


class InlineContext(RunningAgent):
    """Runs "threads" inline (a Clock has no thread pool)."""

    def in_thread(self, func: Callable[..., Any], *args: Any,
                  **kwargs: Any) -> "defer.Deferred[Any]":
        return defer.maybeDeferred(func, *args, **kwargs)


def real_drive(directory: str) -> str:
    """A config drive made the way Ironic makes one (genisoimage, gzip,
    base64)."""
    if shutil.which("genisoimage") is None:
        unavailable(h.Unavailable("needs genisoimage"))
    return h.make_config_drive(directory, {"uuid": "u", "hostname": "n"})


class DecodeTests(SynchronousTestCase):
    def test_real_drive(self) -> None:
        encoded = real_drive(os.path.abspath(self.mktemp()))
        iso = configdrive.decode(encoded)
        self.assertEqual(iso[0x8001:0x8006], b"CD001")
        self.assertEqual(iso, gzip.decompress(base64.b64decode(encoded)))

    def test_bomb_stops_at_the_limit(self) -> None:
        drive = hi.config_drive_bomb(128 * MiB)
        self.assertLess(len(drive), 200 * 1024)
        peak, outcome = hi.peak_of(lambda: configdrive.decode(drive))
        self.assertIsInstance(outcome, errors.DeploymentError,
                              type(outcome))
        self.assertIn("Config drive size exceeds maximum limit of 64MiB",
                      str(outcome.details))
        self.assertLess(peak, 80 * MiB)

    def test_exactly_the_limit_is_fine(self) -> None:
        # gzip of MAX_BYTES zeros (then b"x"), made without compressing
        # 64 MiB twice (see hostile_images.gzip_bomb)
        limit = configdrive.MAX_BYTES
        drive = base64.b64encode(hi.gzip_bomb(limit)).decode()
        self.assertEqual(len(configdrive.decode(drive)), limit)
        with self.assertRaises(errors.DeploymentError):
            configdrive.decode(base64.b64encode(hi.gzip_bomb(
                limit, b"x")).decode())

    def test_several_gzip_members(self) -> None:
        drive = base64.b64encode(gzip.compress(b"abc") + gzip.compress(b"de"))
        self.assertEqual(configdrive.decode(drive.decode()), b"abcde")

    def test_broken_gzip(self) -> None:
        packed = gzip.compress(os.urandom(10000))
        for bad in (packed[:-20], packed + b"junk"):
            with self.assertRaises(errors.DeploymentError) as cm:
                configdrive.decode(base64.b64encode(bad).decode())
            self.assertIn("decompressing", str(cm.exception.details))

    def test_raw_image_from_a_url(self) -> None:
        iso = b"\x00" * 0x8001 + b"CD001" + os.urandom(3000)
        self.assertEqual(configdrive.decode(iso), iso)
        with self.assertRaises(errors.DeploymentError):
            configdrive.decode(iso + bytes(configdrive.MAX_BYTES))


class PartitionImageTests(SynchronousTestCase):
    def test_bomb_fails_before_partitioning(self) -> None:
        runner = FakeProcessRunner()
        for tool in ("wipefs", "parted", "partprobe", "mkfs", "lsblk"):
            runner.add(tool)
        context = InlineContext(config=load_config({}), reactor=Clock(),
                                process=runner, guard=DeviceGuard(None))
        info = {"id": "i", "urls": ["http://x/i"], "root_mb": 100,
                "swap_mb": 0, "ephemeral_mb": 0, "ephemeral_format": None,
                "preserve_ephemeral": False}
        d = defer.ensureDeferred(partition_image.prepare(
            context, info, "/dev/sdz", hi.config_drive_bomb(128 * MiB),
            {"instance_info": {"deploy_boot_mode": "bios"}}, "x86_64"))
        failure = self.failureResultOf(d, errors.DeploymentError)
        self.assertIn("exceeds maximum limit of 64MiB",
                      str(failure.value.details))
        self.assertEqual(runner.calls, [])
