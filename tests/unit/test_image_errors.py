"""Errors in the image path that used to be dropped: a hashing thread
left behind when the device cannot be opened, a watchdog or progress loop
that failed and stopped silently (on a Clock, with a fake HTTP response)."""

from __future__ import annotations

import threading

from twisted.trial.unittest import SynchronousTestCase

from ipa_twisted.image.pipeline import Qcow2Target


def hash_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "hash"]


class Qcow2TargetTests(SynchronousTestCase):
    def test_no_thread_left_when_the_device_cannot_be_opened(self) -> None:
        before = hash_threads()
        missing = self.mktemp() + "/no/such/disk"
        with self.assertRaises(FileNotFoundError):
            Qcow2Target(object(), missing, "sha256", 1 << 30)
        self.assertEqual(hash_threads(), before)
