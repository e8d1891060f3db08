"""The command runner's history: bounded in count and weight, params kept
small, the wire shape of a command unchanged."""

from __future__ import annotations

from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from ipa_twisted import errors
from ipa_twisted.commands.base import CommandRunner
from ipa_twisted.testing import FakeExtension


MAX_HISTORY = 32


class HistoryTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.runner = CommandRunner({"fake": FakeExtension()})

    def run_(self, name: str, **params: Any) -> Any:
        return self.successResultOf(self.runner.execute(name, params).wait())

    def test_count_is_bounded_oldest_first(self) -> None:
        ids = [self.run_("fake.echo", value=n).id
               for n in range(MAX_HISTORY + 8)]
        kept = self.runner.list()
        self.assertEqual(len(kept), MAX_HISTORY)
        self.assertEqual([r.id for r in kept], ids[8:])
        self.assertEqual(self.runner.last().result,  # type: ignore
                         MAX_HISTORY + 7)
        with self.assertRaises(errors.RequestedObjectNotFoundError):
            self.runner.get(ids[0])

    def test_weight_is_bounded_the_last_is_kept(self) -> None:
        runner = CommandRunner({"fake": FakeExtension()}, max_history=100,
                               max_history_bytes=3000)
        self.runner = runner
        small = [self.run_("fake.echo", value="s").id for _ in range(3)]
        big = self.run_("fake.echo", value="b" * 2000)
        self.assertEqual([r.id for r in runner.list()], small + [big.id])
        bigger = self.run_("fake.echo", value="B" * 5000)
        # alone over the bound: everything older goes, it stays, whole
        self.assertEqual(runner.list(), [bigger])
        self.assertEqual(bigger.result, {"result": "B" * 5000})

    def test_a_running_command_is_never_forgotten(self) -> None:
        runner = CommandRunner({"fake": FakeExtension()}, max_history=1)
        self.runner = runner
        self.run_("fake.echo", value=1)
        slow = runner.execute("fake.slow", {})
        self.assertEqual(runner.list(), [slow])
        self.assertEqual(runner.last(), slow)

    def test_params_are_kept_small_results_whole(self) -> None:
        drive = "H4sI" + "A" * (8 * 1024 * 1024)
        result = self.run_("fake.echo", value={
            "configdrive": drive,
            "image_info": {"id": "img", "urls": ["http://x/img"],
                           "image_server_password": "hunter2",
                           "image_request_authorization": "QmFzaWM=",
                           "os_hash_value": "0" * 128,
                           "big": list(range(1000)),
                           "deep": [[[[[[[[[["x"]]]]]]]]]]}})
        params = result.params["value"]
        self.assertEqual(params["configdrive"],
                         f"<{len(drive)} characters elided>")
        info = params["image_info"]
        self.assertEqual(info["id"], "img")
        self.assertEqual(info["os_hash_value"], "0" * 128)
        self.assertEqual(info["image_server_password"], "***")
        self.assertEqual(info["image_request_authorization"], "***")
        self.assertEqual(info["big"], "<1000 items elided>")
        self.assertIn("elided", str(info["deep"]))
        # what the command returns, and the wire, are not touched
        self.assertEqual(result.result["configdrive"], drive)
        self.assertEqual(sorted(result.serialize()),
                         ["command_error", "command_name", "command_result",
                          "command_status", "id"])
