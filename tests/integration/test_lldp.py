"""LLDP for real: a frame sent on one end of a veth pair (inside a network
namespace this test creates) reaches the collector on the other end."""

from __future__ import annotations

import socket
import struct

from twisted.internet import reactor

from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from ipa_twisted.hardware import lldp
from tests.integration import harness as h
from tests.integration.base import unavailable

PEER_MAC = bytes.fromhex("020000aabbcc")
TLVS = [
    (1, b"\x04" + PEER_MAC),                       # chassis id: MAC
    (2, b"\x05" + b"Ethernet1/7"),                 # port id: interface name
    (3, struct.pack("!H", 120)),                   # TTL
    (5, b"switch-a.example"),                      # system name
    (127, bytes.fromhex("0080c2") + b"\x01" + struct.pack("!H", 100)),  # PVID
]


# (this process's /sys shows the host's interfaces, not the namespace's:
# carrier is not looked up here)
def ALWAYS(name: str) -> bool:
    return True


def frame() -> bytes:
    return (lldp.LLDP_MULTICAST + PEER_MAC + struct.pack("!H", 0x88CC)
            + lldp.build_lldpdu(TLVS))


class LLDPOnVethTests(TestCase):
    def setUp(self) -> None:
        try:
            h.require_prerequisites()
        except h.Unavailable as e:
            unavailable(e)
        self.cleanups = h.Cleanups()
        self.addCleanup(self.cleanups.run)
        self.netns = h.make_netns(self.cleanups)

    def send(self, count: int = 1) -> None:
        with h.in_netns(self.netns):
            sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
            try:
                sock.bind(("ipapeer", 0))
                for _ in range(count):
                    sock.send(frame())
            finally:
                sock.close()

    async def test_frame_is_parsed(self) -> None:
        collector = lldp.LLDPCollector(reactor, timeout=10)
        with h.in_netns(self.netns):
            collector.start(["lo", "ipa0.10"], has_carrier=ALWAYS)
        self.addCleanup(collector.stop)
        await deferLater(reactor, 0.1)
        self.send()
        results = await collector.when_done()
        self.assertEqual(results, {"ipa0.10": [
            [1, "04020000aabbcc"],
            [2, "05" + b"Ethernet1/7".hex()],
            [3, "0078"],
            [5, b"switch-a.example".hex()],
            [127, "0080c2010064"],
        ]})

    async def test_timeout_without_neighbour(self) -> None:
        collector = lldp.LLDPCollector(reactor, timeout=0.5)
        with h.in_netns(self.netns):
            collector.start(["ipa0.10", "ipapeer", "nonexistent0"],
                            has_carrier=ALWAYS)
        started = reactor.seconds()
        results = await collector.when_done()
        # both ends listened, nothing heard: empty lists (as IPA reports)
        self.assertEqual(results, {"ipa0.10": [], "ipapeer": []})
        self.assertGreaterEqual(reactor.seconds() - started, 0.45)
        self.flushLoggedErrors()

    async def test_interfaces_without_carrier_are_not_waited_for(self
                                                                 ) -> None:
        collector = lldp.LLDPCollector(reactor, timeout=30)
        with h.in_netns(self.netns):
            collector.start(["ipa0.10", "ipapeer"],
                            has_carrier=lambda name: name == "ipa0.10")
        self.addCleanup(collector.stop)
        await deferLater(reactor, 0.1)
        self.send()
        results = await collector.when_done()   # long before 30 s
        self.assertEqual(results["ipapeer"], [])
        self.assertEqual(len(results["ipa0.10"]), 5)

    async def test_non_lldp_frames_are_ignored(self) -> None:
        collector = lldp.LLDPCollector(reactor, timeout=5)
        with h.in_netns(self.netns):
            collector.start(["ipa0.10"], has_carrier=ALWAYS)
        self.addCleanup(collector.stop)
        await deferLater(reactor, 0.1)
        with h.in_netns(self.netns):
            sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
            sock.bind(("ipapeer", 0))
            # LLDP ethertype, broken TLV: claimed length beyond the frame.
            sock.send(lldp.LLDP_MULTICAST + PEER_MAC + b"\x88\xcc"
                      + b"\x02\xff" + b"x" * 10)
            sock.close()
        await deferLater(reactor, 0.2)
        self.assertFalse(collector.finished)
        self.send()
        results = await collector.when_done()
        self.assertEqual(len(results["ipa0.10"]), 5)


