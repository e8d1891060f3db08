"""End to end: a real Ironic 39.0.0 drives our agent (sandboxed) through a
direct deploy and a manual clean.  Needs root; see harness.py."""

from __future__ import annotations

from tests.integration import scenarios
from tests.integration.base import IronicTestCase

MiB = 1024 ** 2


class RealIronicTests(IronicTestCase):
    environment = {"heartbeat_timeout": 30}

    def test_direct_deploy_of_raw_image(self) -> None:
        result = scenarios.deploy(self.env, 192 * MiB)
        self.assertEqual(result["node"]["provision_state"], "active")
        self.assertEqual(result["disk_sha256"], result["image_sha256"])
        log = result["agent_log"]
        # lookup answered 200, with a token; heartbeats answered 202
        self.assertIn("lookup found node", log)
        self.assertIn("agent token received from Ironic", log)
        self.assertIn("first heartbeat accepted", log)
        self.assertNotIn("heartbeat failed", log)
        # Ironic recorded an https callback and our certificate
        saw = result["ironic_saw"]
        self.assertEqual(saw.get("agent_url"), "https://127.0.0.1:9999")
        self.assertTrue(saw.get("agent_verify_ca"))
        # The conductor only saw execute_deploy_step (prepare_image nested)
        self.assertIn("running command deploy.execute_deploy_step", log)
        self.assertNotIn("running command standby.prepare_image", log)
        self.assertIn("checksum verified", log)
        # The token never reaches the log
        self.assertNotIn("agent_token=" + "x", log.replace("***", ""))

    def test_direct_deploy_of_qcow2_image(self) -> None:
        result = scenarios.deploy(self.env, 96 * MiB, kind="qcow2")
        self.assertEqual(result["node"]["provision_state"], "active")
        self.assertEqual(result["disk_sha256"], result["image_sha256"])
        self.assertIn("image format qcow2 (claimed qcow2)",
                      result["agent_log"])

    def test_direct_deploy_of_compressed_raw_image(self) -> None:
        result = scenarios.deploy(self.env, 96 * MiB, kind="gzip")
        self.assertEqual(result["node"]["provision_state"], "active")
        self.assertEqual(result["disk_sha256"], result["image_sha256"])
        self.assertIn("image is gzip-compressed", result["agent_log"])

    def test_manual_clean_erases_metadata(self) -> None:
        # (also: without automatic TLS, the callback is plain http)
        result = scenarios.clean_metadata(self.env,
                                          agent_args=["--no-auto-tls"])
        self.assertEqual(result["before"], "gpt")
        self.assertEqual(result["after"], "")
        self.assertEqual(result["signatures"], "")
        self.assertEqual(result["node"]["provision_state"], "manageable")
        self.assertIn("erasing metadata of /dev/loop", result["agent_log"])
        self.assertIn("running command clean.execute_clean_step",
                      result["agent_log"])
        self.assertEqual(result["ironic_saw"].get("agent_url"),
                         "http://127.0.0.1:9999")
        self.assertNotIn("agent_verify_ca", result["ironic_saw"])


class RealIronicOverIPv6Tests(IronicTestCase):
    """Ironic reached at an IPv6 literal (http://[::1]:6385), and our API
    called back by Ironic at https://[::1]:9999: lookup, heartbeats and
    the clean step all go over IPv6 (treq could not request an IPv6
    literal URL at all)."""

    environment = {"heartbeat_timeout": 30, "listen": "::"}

    def prerequisites(self) -> None:
        import socket

        from tests.integration import harness as h

        try:
            with socket.socket(socket.AF_INET6) as s:
                s.bind(("::1", 0))
        except OSError:
            raise h.Unavailable("no IPv6 loopback here") from None

    def test_manual_clean_over_ipv6(self) -> None:
        result = scenarios.clean_metadata(self.env, name="e2e-clean-v6",
                                          api_url="http://[::1]:6385")
        self.assertEqual(result["after"], "")
        self.assertEqual(result["node"]["provision_state"], "manageable")
        log = result["agent_log"]
        self.assertIn("lookup found node", log)
        self.assertIn("first heartbeat accepted", log)
        self.assertIn("advertise address ::1", log)
        self.assertEqual(result["ironic_saw"].get("agent_url"),
                         "https://[::1]:9999")
