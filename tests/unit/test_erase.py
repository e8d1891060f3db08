"""The erase decisions on real tool outputs (tests/fixtures/erase: captured
in the QEMU test machine, or copied from public captures of real drives,
each file naming its source)."""

from __future__ import annotations

import os
import re

from twisted.trial.unittest import SynchronousTestCase

from ipa_twisted.hardware import erase
from tests.fixtures import HERE, load

GiB = 1024 ** 3


def fixture(name: str) -> str:
    return load("erase", name)


def exit_code(name: str) -> int:
    with open(os.path.join(HERE, "erase", name), encoding="utf-8") as f:
        match = re.search(r"^# exit code: (\d+)$", f.read(), re.M)
    assert match, name
    return int(match.group(1))


def smartctl(name: str) -> erase.SmartctlInfo:
    code = exit_code(name) if name.endswith(("ahci.txt", "virtio.txt")) \
        else 0
    return erase.parse_smartctl(fixture(name), code)


class HdparmTests(SynchronousTestCase):

    def test_frozen_ssd_with_sanitize(self) -> None:
        info = erase.parse_hdparm_identify(
            fixture("hdparm-I-ssd-tesla-frozen-sanitize.txt"))
        self.assertTrue(info.ata)
        self.assertEqual(info.security, erase.AtaSecurity(
            supported=True, enabled=False, locked=False, frozen=True,
            enhanced=True, erase_minutes=2, enhanced_minutes=2))
        self.assertEqual((info.sanitize, info.crypto_scramble,
                          info.block_erase, info.overwrite),
                         (True, False, True, False))
        self.assertEqual((info.trim, info.trim_zeroes), (True, False))
        self.assertEqual(info.serial, "2022092T0075")

    def test_security_states(self) -> None:
        frozen = erase.parse_hdparm_identify(
            fixture("hdparm-I-security-frozen-tinyapps.txt")).security
        assert frozen is not None
        self.assertEqual((frozen.supported, frozen.frozen, frozen.enhanced,
                          frozen.erase_minutes), (True, True, True, 98))
        thawed = erase.parse_hdparm_identify(
            fixture("hdparm-I-security-not-frozen-tinyapps.txt")).security
        assert thawed is not None
        self.assertEqual((thawed.supported, thawed.enabled, thawed.locked,
                          thawed.frozen), (True, False, False, False))
        enabled = erase.parse_hdparm_identify(
            fixture("hdparm-I-security-enabled-tinyapps.txt")).security
        assert enabled is not None
        self.assertEqual((enabled.enabled, enabled.locked, enabled.frozen),
                         (True, False, False))

    def test_qemu_sata_disk_has_no_security(self) -> None:
        for name in ("hdparm-I-qemu-ahci.txt",
                     # the set-pass was "issued" (exit 0) but the emulated
                     # disk has no security feature: nothing changed
                     "hdparm-I-after-set-pass-qemu-ahci.txt"):
            info = erase.parse_hdparm_identify(fixture(name))
            self.assertTrue(info.ata, name)
            self.assertIsNone(info.security, name)
            self.assertFalse(info.sanitize, name)
        self.assertEqual(exit_code("hdparm-security-set-pass-qemu-ahci.txt"),
                         0)

    def test_virtio_is_no_ata_device(self) -> None:
        info = erase.parse_hdparm_identify(
            fixture("hdparm-I-qemu-virtio.txt"))
        self.assertFalse(info.ata)
        self.assertIsNone(info.security)

    def test_sanitize_status_of_a_disk_without_sanitize(self) -> None:
        status = erase.parse_hdparm_sanitize_status(
            fixture("hdparm-sanitize-status-qemu-ahci.txt"))
        self.assertFalse(status.running)
        self.assertEqual(exit_code("hdparm-sanitize-status-qemu-ahci.txt"),
                         22)


class SmartctlTests(SynchronousTestCase):

    def test_states(self) -> None:
        sec1 = smartctl("smartctl-x-hdd-apple-hts541010a9e632-sec1.txt")
        self.assertEqual((sec1.reachable, sec1.security),
                         (True, "Disabled, NOT FROZEN [SEC1]"))
        sec2 = smartctl("smartctl-x-ssd-team-t253x2512g-sec2.txt")
        self.assertEqual((sec2.reachable, sec2.security, sec2.trim_zeroes),
                         (True, "Disabled, frozen [SEC2]", False))

    def test_unavailable_security_is_not_reachable(self) -> None:
        samsung = smartctl("smartctl-x-ssd-samsung-860-evo-unavailable.txt")
        self.assertEqual((samsung.reachable, samsung.trim_zeroes),
                         (False, True))
        qemu = smartctl("smartctl-d-ata-g-security-qemu-ahci.txt")
        self.assertEqual((qemu.reachable, qemu.security),
                         (False, "Unavailable"))
        # what the agent runs: -i adds the TRIM line (here without
        # "zeroed": a discard does not promise zeroes)
        agents = smartctl("smartctl-d-ata-i-g-security-qemu-ahci.txt")
        self.assertEqual((agents.reachable, agents.security,
                          agents.trim_zeroes), (False, "Unavailable", False))

    def test_failing_smartctl_is_not_reachable(self) -> None:
        virtio = smartctl("smartctl-d-ata-g-security-qemu-virtio.txt")
        self.assertEqual(exit_code(
            "smartctl-d-ata-g-security-qemu-virtio.txt"), 2)
        self.assertFalse(virtio.reachable)
        self.assertIsNone(virtio.security)


class NvmeTests(SynchronousTestCase):

    def test_qemu_controller_json(self) -> None:
        ctrl = erase.parse_nvme_id_ctrl(fixture("nvme-id-ctrl-qemu.json"))
        self.assertEqual((ctrl.serial, ctrl.model),
                         ("IPATWNVME0001", "QEMU NVMe Ctrl"))
        self.assertEqual((ctrl.format, ctrl.crypto_format,
                          ctrl.format_all_ns), (True, False, False))
        self.assertEqual((ctrl.sanitize_crypto, ctrl.sanitize_block,
                          ctrl.sanitize_overwrite), (False, False, False))

    def test_real_controller_plain_output(self) -> None:
        ctrl = erase.parse_nvme_id_ctrl(
            fixture("nvme-id-ctrl-H-tforce-tm8fpl500g.txt"))
        self.assertEqual(ctrl.serial, "TPBF2210060060400308")
        self.assertEqual((ctrl.oacs, ctrl.fna, ctrl.sanicap),
                         (0x17, 0, 0xA0000002))
        self.assertEqual((ctrl.format, ctrl.crypto_format), (True, False))
        self.assertEqual((ctrl.sanitize_crypto, ctrl.sanitize_block),
                         (False, True))

    def test_namespaces(self) -> None:
        for name in ("nvme-id-ns-qemu.json",
                     "nvme-id-ns-after-format-qemu.json",
                     "nvme-id-ns-H-tforce-tm8fpl500g.txt"):
            ns = erase.parse_nvme_id_ns(fixture(name))
            self.assertTrue(ns.deallocated_reads_zeroes, name)
        self.assertEqual(erase.parse_nvme_id_ns(
            fixture("nvme-id-ns-H-tforce-tm8fpl500g.txt")).dlfeat, 9)

    def test_unsupported_sanitize_log(self) -> None:
        # QEMU 7.2 has no Sanitize: nvme-cli prints an NVMe status, exit 1
        self.assertEqual(exit_code("nvme-sanitize-log-qemu.json"), 1)
        with self.assertRaises(ValueError):
            erase.parse_sanitize_log(fixture("nvme-sanitize-log-qemu.json"))

    def test_sanitize_log_shapes(self) -> None:
        """Not captures (QEMU 7.2 has no Sanitize; no public capture
        found): the two JSON shapes nvme-cli's source prints, built with
        json.dumps from the fields its json_sanitize_log writes."""
        import json

        v2 = json.dumps({"nvme0": {"sprog": 32768, "sstat": {
            "global_erased": 0, "no_cmplted_passes": 0,
            "status": "(2) Sanitize in progress."}}})
        status = erase.parse_sanitize_log(v2)
        self.assertEqual((status.state, status.fraction),
                         (erase.SANITIZE_RUNNING, 0.5))
        v1 = json.dumps({"sprog": 65535, "sstat": 0x101})
        self.assertEqual(erase.parse_sanitize_log(v1).state,
                         erase.SANITIZE_DONE)


def caps(**kw: object) -> erase.Capabilities:
    base: dict[str, object] = {"name": "/dev/x", "size": 4 * GiB,
                               "kind": "other"}
    base.update(kw)
    return erase.Capabilities(**base)  # type: ignore[arg-type]


def names(plan: erase.Plan) -> list[str]:
    return [m.name for m in plan.methods]


def qemu_nvme(namespaces: int | None = 1) -> erase.Capabilities:
    return caps(name="/dev/nvme0n1", kind="nvme", discard=True,
                nvme=erase.parse_nvme_id_ctrl(fixture("nvme-id-ctrl-qemu.json")),
                nvme_ns=erase.parse_nvme_id_ns(fixture("nvme-id-ns-qemu.json")),
                nvme_namespaces=namespaces)


def tforce(namespaces: int | None = 1) -> erase.Capabilities:
    return caps(name="/dev/nvme0n1", kind="nvme", discard=True,
                nvme=erase.parse_nvme_id_ctrl(
                    fixture("nvme-id-ctrl-H-tforce-tm8fpl500g.txt")),
                nvme_ns=erase.parse_nvme_id_ns(
                    fixture("nvme-id-ns-H-tforce-tm8fpl500g.txt")),
                nvme_namespaces=namespaces)


class PlanTests(SynchronousTestCase):
    defaults = erase.EraseOptions()
    fallback = erase.EraseOptions(continue_if_secure_erase_failed=True)

    def test_qemu_nvme_formats_user_data(self) -> None:
        plan = erase.plan_erase(qemu_nvme(), self.defaults)
        self.assertEqual(names(plan), [erase.NVME_FORMAT_USER_DATA])
        self.assertIn("ses=1", plan.methods[0].why)
        self.assertFalse(plan.methods[0].expect_zeroes)
        # IPA's agent_continue_if_secure_erase_failed allows the rest
        self.assertEqual(names(erase.plan_erase(qemu_nvme(), self.fallback)),
                         [erase.NVME_FORMAT_USER_DATA, erase.DISCARD,
                          erase.OVERWRITE])

    def test_real_nvme_sanitizes_first(self) -> None:
        plan = erase.plan_erase(tforce(), self.defaults)
        self.assertEqual(names(plan), [erase.NVME_SANITIZE_BLOCK,
                                       erase.NVME_FORMAT_USER_DATA])
        self.assertIn("SANICAP", plan.methods[0].why)

    def test_sanitize_never_reaches_other_namespaces(self) -> None:
        for count in (2, None):
            plan = erase.plan_erase(tforce(count), self.defaults)
            self.assertEqual(names(plan), [erase.NVME_FORMAT_USER_DATA])
            self.assertIn("every namespace", plan.refused[0])

    def test_nvme_secure_erase_disabled_by_the_node(self) -> None:
        options = erase.EraseOptions.from_node({"driver_internal_info": {
            "agent_enable_nvme_secure_erase": False}})
        # no secure erase offered: a discard that reads zeroes (DLFEAT)
        self.assertEqual(names(erase.plan_erase(qemu_nvme(), options)),
                         [erase.DISCARD, erase.OVERWRITE])

    def test_frozen_ata_drive(self) -> None:
        ata = erase.parse_hdparm_identify(
            fixture("hdparm-I-ssd-tesla-frozen-sanitize.txt"))
        plan = erase.plan_erase(caps(kind="ata", ata=ata, discard=True),
                                self.defaults)
        # security erase refused (frozen, as IPA); ATA SANITIZE instead
        self.assertEqual(names(plan), [erase.ATA_SANITIZE_BLOCK])
        self.assertIn("is frozen and cannot be erased", plan.refused[0])

    def test_frozen_ata_drive_without_sanitize(self) -> None:
        ata = erase.parse_hdparm_identify(
            fixture("hdparm-I-security-frozen-tinyapps.txt"))
        disk = caps(kind="ata", ata=ata, discard=True, smartctl=smartctl(
            "smartctl-x-ssd-team-t253x2512g-sec2.txt"))
        plan = erase.plan_erase(disk, self.defaults)
        self.assertEqual(names(plan), [])
        self.assertIn("frozen", plan.refused[0])
        # TRIM without zeroes: overwrite only, and only with the node's consent
        self.assertEqual(names(erase.plan_erase(disk, self.fallback)),
                         [erase.OVERWRITE])

    def test_ata_security_erase_when_not_frozen(self) -> None:
        thawed = erase.parse_hdparm_identify(
            fixture("hdparm-I-security-not-frozen-tinyapps.txt"))
        disk = caps(kind="ata", ata=thawed, smartctl=smartctl(
            "smartctl-x-hdd-apple-hts541010a9e632-sec1.txt"))
        self.assertEqual(names(erase.plan_erase(disk, self.defaults)),
                         [erase.ATA_SECURITY_ERASE])
        enhanced = erase.parse_hdparm_identify(
            fixture("hdparm-I-security-enabled-tinyapps.txt"))
        self.assertEqual(names(erase.plan_erase(
            caps(kind="ata", ata=enhanced), self.defaults)),
            [erase.ATA_SECURITY_ERASE_ENHANCED])

    def test_ata_commands_that_do_not_reach_the_drive(self) -> None:
        thawed = erase.parse_hdparm_identify(
            fixture("hdparm-I-security-not-frozen-tinyapps.txt"))
        disk = caps(kind="ata", ata=thawed, smartctl=smartctl(
            "smartctl-d-ata-g-security-qemu-ahci.txt"))
        # as IPA: smartctl says Unavailable -> no ATA erase -> overwrite
        self.assertEqual(names(erase.plan_erase(disk, self.defaults)),
                         [erase.OVERWRITE])

    def test_qemu_sata_disk_is_overwritten(self) -> None:
        ata = erase.parse_hdparm_identify(fixture("hdparm-I-qemu-ahci.txt"))
        disk = caps(kind="ata", ata=ata, discard=True, smartctl=smartctl(
            "smartctl-d-ata-g-security-qemu-ahci.txt"))
        plan = erase.plan_erase(disk, self.defaults)
        self.assertEqual(names(plan), [erase.OVERWRITE])
        self.assertIn("does not guarantee zeroes", plan.methods[0].why)
        self.assertEqual(plan.methods[0].covers, 2 * 4 * GiB)

    def test_trim_zeroes_from_smartctl(self) -> None:
        disk = caps(kind="ata", discard=True, smartctl=smartctl(
            "smartctl-x-ssd-samsung-860-evo-unavailable.txt"),
            ata=erase.parse_hdparm_identify(fixture("hdparm-I-qemu-ahci.txt")))
        self.assertEqual(names(erase.plan_erase(disk, self.defaults)),
                         [erase.DISCARD, erase.OVERWRITE])

    def test_loop_device(self) -> None:
        loop = caps(name="/dev/loop3", discard=True, loop=True)
        plan = erase.plan_erase(loop, self.defaults)
        self.assertEqual(names(plan), [erase.DISCARD, erase.OVERWRITE])
        self.assertTrue(plan.methods[0].expect_zeroes)
        off = erase.EraseOptions.from_node({"driver_internal_info": {
            "agent_enable_discard_erase": False,
            "agent_erase_devices_iterations": 2,
            "agent_erase_devices_zeroize": False}})
        plan = erase.plan_erase(loop, off)
        self.assertEqual(names(plan), [erase.OVERWRITE])
        self.assertFalse(plan.methods[0].expect_zeroes)
        self.assertEqual(plan.methods[0].covers, 2 * 4 * GiB)

    def test_nothing_to_do(self) -> None:
        none = erase.EraseOptions(iterations=0, zeroize=False, discard=False)
        self.assertEqual(names(erase.plan_erase(caps(), none)), [])

    def test_express(self) -> None:
        self.assertEqual(names(erase.plan_erase(qemu_nvme(), self.defaults,
                                                express=True)),
                         [erase.NVME_FORMAT_USER_DATA, erase.DISCARD,
                          erase.METADATA])
        # block erase sanitize is not fast: express formats
        self.assertEqual(names(erase.plan_erase(tforce(), self.defaults,
                                                express=True)),
                         [erase.NVME_FORMAT_USER_DATA, erase.DISCARD,
                          erase.METADATA])
        ata = erase.parse_hdparm_identify(
            fixture("hdparm-I-ssd-tesla-frozen-sanitize.txt"))
        self.assertEqual(names(erase.plan_erase(caps(kind="ata", ata=ata),
                                                self.defaults, express=True)),
                         [erase.METADATA])


class OptionTests(SynchronousTestCase):

    def test_ironic_defaults(self) -> None:
        # what Ironic 39's agent_add_clean_params sends with its defaults
        options = erase.EraseOptions.from_node({"driver_internal_info": {
            "agent_erase_devices_iterations": 1,
            "agent_erase_devices_zeroize": True,
            "agent_continue_if_secure_erase_failed": False,
            "agent_continue_if_ata_erase_failed": False,
            "agent_enable_nvme_secure_erase": True,
            "agent_enable_ata_secure_erase": True,
            "disk_erasure_concurrency": 4,
            "agent_erase_skip_read_only": False}})
        self.assertEqual(options, erase.EraseOptions(concurrency=4))

    def test_old_ironic_flag(self) -> None:
        options = erase.EraseOptions.from_node({"driver_internal_info": {
            "agent_continue_if_ata_erase_failed": True}})
        self.assertTrue(options.continue_if_secure_erase_failed)
        self.assertEqual(erase.EraseOptions.from_node(None),
                         erase.EraseOptions())
