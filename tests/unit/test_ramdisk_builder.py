"""ramdisk/builder.py's pure parts: the tool check that fails a build, the
kernel module selection, the cache key's inputs."""

from __future__ import annotations

import os
import sys

from twisted.trial.unittest import SynchronousTestCase

from ipa_twisted import tools

TOP = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(TOP, "ramdisk"))
import builder  # noqa: E402


class ToolCheckTests(SynchronousTestCase):

    def root_with(self, names: list[str]) -> str:
        root = self.mktemp()
        for d in ("usr/bin", "usr/sbin", "usr/local/bin"):
            os.makedirs(os.path.join(root, d))
        for name in names:
            open(os.path.join(root, "usr/sbin", name), "w").close()
        return root

    def needed(self) -> list[str]:
        return [t.name for t in tools.of_scope(tools.AGENT)
                if not t.optional] + ["twistd", "python3"]

    def test_every_needed_tool_present_passes(self) -> None:
        builder.check_tools(self.root_with(self.needed()))

    def test_a_missing_agent_tool_fails_the_build(self) -> None:
        names = [n for n in self.needed() if n != "sgdisk"]
        with self.assertRaises(SystemExit) as e:
            builder.check_tools(self.root_with(names))
        self.assertIn("sgdisk (gdisk", str(e.exception))

    def test_optional_tools_are_not_required(self) -> None:
        optional = {t.name for t in tools.TOOLS if t.optional}
        self.assertIn("biosdevname", optional)
        builder.check_tools(self.root_with(self.needed()))

    def test_the_base_installs_the_agent_tools_packages(self) -> None:
        packages = builder.agent_packages()
        for tool in tools.of_scope(tools.AGENT):
            if tool.package and not tool.optional:
                self.assertIn(tool.package, packages)
        self.assertNotIn("systemd", packages)  # journalctl is optional


class ModuleTests(SynchronousTestCase):

    def test_wanted_modules_and_their_dependencies(self) -> None:
        moddir = self.mktemp()
        os.makedirs(moddir)
        with open(os.path.join(moddir, "modules.dep"), "w") as f:
            f.write("kernel/drivers/nvme/host/nvme.ko: "
                    "kernel/drivers/nvme/host/nvme-core.ko\n"
                    "kernel/drivers/nvme/host/nvme-core.ko:\n"
                    "kernel/sound/core/snd.ko: kernel/sound/core/snd-timer.ko\n"
                    "kernel/sound/core/snd-timer.ko:\n"
                    "kernel/drivers/net/ethernet/intel/ice/ice.ko: "
                    "kernel/drivers/dpll/dpll.ko\n"
                    "kernel/drivers/dpll/dpll.ko:\n")
        self.assertEqual(builder.module_closure(moddir), [
            "kernel/drivers/dpll/dpll.ko",
            "kernel/drivers/net/ethernet/intel/ice/ice.ko",
            "kernel/drivers/nvme/host/nvme-core.ko",
            "kernel/drivers/nvme/host/nvme.ko"])


class SourceTests(SynchronousTestCase):

    def test_the_agent_sources_are_in_the_key(self) -> None:
        files = builder.source_files(builder.AGENT_SOURCES)
        self.assertIn("ipa_twisted/agent.py", files)
        self.assertIn("twisted/plugins/ipa_twisted_plugin.py", files)
        self.assertIn("setup.cfg", files)
        self.assertFalse([f for f in files if f.endswith(".pyc")])
        self.assertEqual(files, sorted(files))
