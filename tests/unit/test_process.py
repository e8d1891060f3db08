"""The process runner, with real (harmless) processes."""

from __future__ import annotations

from twisted.internet import reactor
from twisted.trial.unittest import TestCase
from zope.interface.verify import verifyObject

from ipa_twisted.process import (
    IProcessRunner,
    ProcessFailed,
    ProcessRunner,
    ProcessTimeout,
    ToolNotFound,
)
from ipa_twisted.testing import FakeProcessRunner


class RunnerTests(TestCase):
    def setUp(self) -> None:
        self.runner = ProcessRunner(reactor, reactor, kill_grace=1.0)

    def test_interface(self) -> None:
        verifyObject(IProcessRunner, self.runner)
        verifyObject(IProcessRunner, FakeProcessRunner())

    async def test_output_and_exit_code(self) -> None:
        result = await self.runner.run(["sh", "-c", "echo out; echo err >&2"])
        self.assertEqual((result.exit_code, result.out, result.err),
                         (0, "out\n", "err\n"))

    async def test_stdin(self) -> None:
        result = await self.runner.run(["cat"], stdin=b"hello")
        self.assertEqual(result.stdout, b"hello")

    async def test_failure(self) -> None:
        with self.assertRaises(ProcessFailed) as cm:
            await self.runner.run(["sh", "-c", "echo nope >&2; exit 3"])
        self.assertEqual(cm.exception.result.exit_code, 3)  # type: ignore
        self.assertIn("exit code 3: nope", str(cm.exception))
        result = await self.runner.run(["sh", "-c", "exit 4"], check=False)
        self.assertEqual(result.exit_code, 4)

    async def test_missing_tool(self) -> None:
        with self.assertRaises(ToolNotFound):
            await self.runner.run(["no-such-tool-ipa-twisted"])

    async def test_timeout_kills(self) -> None:
        with self.assertRaises(ProcessTimeout) as cm:
            await self.runner.run(["sleep", "30"], timeout=0.3)
        self.assertIn("timed out after 0.3 s", str(cm.exception))

    async def test_timeout_kills_hard_when_term_is_ignored(self) -> None:
        with self.assertRaises(ProcessTimeout):
            await self.runner.run(["sh", "-c", "trap '' TERM; sleep 30"],
                                  timeout=0.3)
        self.flushLoggedErrors()

    async def test_fake(self) -> None:
        fake = FakeProcessRunner()
        fake.add("lscpu", "Architecture: x86_64\n")
        result = await fake.run(["lscpu"])
        self.assertEqual(result.out, "Architecture: x86_64\n")
        with self.assertRaises(ToolNotFound):
            await fake.run(["dmidecode"])
        self.assertEqual(fake.calls, [("lscpu",), ("dmidecode",)])
