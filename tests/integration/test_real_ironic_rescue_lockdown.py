"""A real Ironic 39.0.0 locks our agent down and rescues a node through it.

One node, enrolled with ``disable_power_off`` (Ironic may not power it
off) and the ``agent`` rescue interface:

1. a direct deploy: at its end Ironic sends ``system.lockdown`` instead of
   powering off, then polls the agent until it cannot connect (it fails
   the deploy if the agent still answers after its retries): the node
   becomes active only if the agent stopped serving in time.  The agent
   process stays, its heartbeats stop, its network interface is down;
2. a rescue: a fresh agent (sandboxed, with a writable layer over /etc
   that holds a ``rescue`` user) looks up, heartbeats, and Ironic calls
   ``rescue.finalize_rescue`` with the hashed password; the node becomes
   ``rescue`` only if the answer came in that POST.  The hash is in IPA's
   file and the rescue user's shadow entry, and it is the password asked
   for; the agent has stopped serving;
3. an unrescue brings the node back to active.
"""

from __future__ import annotations

import os
import socket
import time

from tests.integration import harness as h
from tests.integration import scenarios
from tests.integration.base import IronicTestCase

MiB = 1024 ** 2
NAME = "e2e-lockdown"
PASSWORD = "tenant's rescue pw"


def port_open(netns: str, port: int) -> bool:
    with h.in_netns(netns):
        with socket.socket() as s:
            s.settimeout(2)
            return s.connect_ex(("127.0.0.1", port)) == 0


def heartbeats(env: scenarios.Environment) -> int:
    """How many heartbeats Ironic has received (its debug log)."""
    with open(env.ironic.log, errors="replace") as f:
        return f.read().count("RPC heartbeat called for node")


def crypt_matches(password: str, digest: str) -> bool:
    """Is ``digest`` (SHA-256 or SHA-512 crypt: $5$ or $6$ salt $ hash,
    as Ironic hashes rescue passwords) the hash of ``password``?"""
    _, kind, salt, _ = digest.split("$")
    if kind not in ("5", "6"):
        return False
    again = h.run(["openssl", "passwd", f"-{kind}", "-salt", salt, "-stdin"],
                  input=password + "\n").stdout.strip()
    return again == digest


class LockdownAndRescueTests(IronicTestCase):
    environment = {"heartbeat_timeout": 6}

    def test_lockdown_at_deploy_then_rescue_and_unrescue(self) -> None:
        env, api = self.env, self.env.api
        name, _, digest, _ = scenarios.publish_image(env, 32 * MiB, "raw")
        env.ironic.enroll(NAME, {"name": env.device}, rescue_interface="agent",
                          disable_power_off=True)
        api.call("PATCH", f"/v1/nodes/{NAME}", [
            {"op": "add", "path": "/driver_info/rescue_kernel",
             "value": env.ironic.image_url("deploy.kernel")},
            {"op": "add", "path": "/driver_info/rescue_ramdisk",
             "value": env.ironic.image_url("deploy.initrd")}])
        self.assertTrue(api.node(NAME)["disable_power_off"])
        api.make_available(NAME)
        api.call("PATCH", f"/v1/nodes/{NAME}", [
            {"op": "add", "path": "/instance_info", "value": {
                "image_source": env.ironic.image_url(name),
                "image_os_hash_algo": "sha256",
                "image_os_hash_value": digest, "image_disk_format": "raw"}}])

        # 1. deploy, ending in a lockdown
        api.provision(NAME, "active")
        api.wait_for_state(NAME, {"wait call-back"}, 60)
        agent = env.agent("deploy-agent")
        try:
            node = api.wait_for_state(NAME, {"active"}, 300)
        except Exception:
            h.say(env.logs_tail(agent))
            raise
        self.assertIsNone(node["last_error"])
        agent.wait_for_log("lockdown: ipa0.10 is down", 30)
        log = agent.read_log()
        self.assertIn("running command system.lockdown", log)
        self.assertIn("locked down: the agent stops serving its API and "
                      "stops heartbeating", log)
        self.assertFalse(port_open(env.netns, 9999))
        self.assertIsNone(agent.proc.poll(), "the agent process stays")
        link = h.run(["ip", "netns", "exec", env.netns, "ip", "-o", "link",
                      "show", "ipa0.10"]).stdout
        self.assertNotIn(",UP", link)
        beats = heartbeats(env)
        self.assertGreater(beats, 0)
        time.sleep(5)     # a heartbeat would come within 1.8-3.6 s
        self.assertEqual(heartbeats(env), beats)
        agent.stop()
        h.run(["ip", "netns", "exec", env.netns, "ip", "link", "set",
               "ipa0.10", "up"])

        # 2. rescue
        wrap, upper = h.etc_overlay(env.workdir, "rescue")
        api.provision(NAME, "rescue", rescue_password=PASSWORD)
        api.wait_for_state(NAME, {"rescue wait"}, 60,
                           fail_states={"rescue failed"})
        agent = h.Agent(env.cleanups, env.netns, env.workdir, env.device,
                        api.url, name="rescue-agent", wrap=wrap)
        try:
            node = api.wait_for_state(NAME, {"rescue"}, 120,
                                      fail_states={"rescue failed"})
        except Exception:
            h.say(env.logs_tail(agent))
            raise
        self.assertIsNone(node["last_error"])
        agent.wait_for_log("rescue finalized: the agent stops serving", 10)
        log = agent.read_log()
        self.assertIn("running command rescue.finalize_rescue", log)
        self.assertIn("password of user rescue set", log)
        with open(os.path.join(upper, "ipa-rescue-config",
                               "ipa-rescue-password")) as f:
            written = f.read()
        self.assertNotIn(written, log)        # the hash is never logged
        self.assertNotIn(written.split("$")[-1], log)
        self.assertTrue(crypt_matches(PASSWORD, written), written)
        with open(os.path.join(upper, "shadow")) as f:
            shadow = dict(line.split(":", 2)[:2] for line in f if ":" in line)
        self.assertEqual(shadow["rescue"], written)
        self.assertTrue(os.path.exists(os.path.join(upper, ".rescued")))
        with open("/etc/shadow") as f:
            self.assertNotIn("rescue:", f.read())   # this machine's: as was
        self.assertFalse(port_open(env.netns, 9999))
        self.assertIsNone(agent.proc.poll())
        beats = heartbeats(env)
        time.sleep(5)
        self.assertEqual(heartbeats(env), beats)
        agent.stop()

        # 3. unrescue
        api.provision(NAME, "unrescue")
        node = api.wait_for_state(NAME, {"active"}, 60,
                                  fail_states={"unrescue failed"})
        self.assertIsNone(node["last_error"])
