"""mDNS answers -> endpoint URL and overrides (pure parts)."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from ipa_twisted import mdns
from ipa_twisted.config import load_config


def endpoint(addresses: list[str], server: str = "ironic.local.",
             port: int = 6385, props: dict | None = None,
             routable: tuple[str, ...] = ("192.0.2.5", "2001:db8::5")
             ) -> mdns.Endpoint:
    return mdns.endpoint_from_info("baremetal", addresses, server, port,
                                   props if props is not None else {},
                                   routable=lambda a: a in routable)


class EndpointTests(SynchronousTestCase):
    def test_first_routable_non_loopback_address(self) -> None:
        e = endpoint(["127.0.0.1", "bogus", "198.51.100.9", "192.0.2.5"],
                     props={b"protocol": b"http", b"path": b"/baremetal"})
        self.assertEqual(e.url, "http://192.0.2.5:6385/baremetal")
        self.assertEqual(e.properties, {})

    def test_fallback_to_first_valid(self) -> None:
        e = endpoint(["198.51.100.9", "198.51.100.10"])
        self.assertEqual(e.url, "https://198.51.100.9:6385")

    def test_protocol_default_by_port(self) -> None:
        self.assertEqual(endpoint(["192.0.2.5"], port=80).url,
                         "http://192.0.2.5:80")
        self.assertEqual(endpoint(["192.0.2.5"], port=443).url,
                         "https://192.0.2.5:443")

    def test_ipv6_and_non_local_server(self) -> None:
        self.assertEqual(endpoint(["2001:db8::5"]).url,
                         "https://[2001:db8::5]:6385")
        self.assertEqual(endpoint(["192.0.2.5"],
                                  server="ironic.example.com.").url,
                         "https://ironic.example.com:6385")

    def test_no_usable_address(self) -> None:
        with self.assertRaises(mdns.ServiceLookupFailure):
            endpoint(["127.0.0.1", "::1", "nonsense"])

    def test_binary_values_stay_binary(self) -> None:
        e = endpoint(["192.0.2.5"], props={b"ipa_x": b"\xff\xfe"})
        self.assertEqual(e.properties, {"ipa_x": b"\xff\xfe"})


class OverrideTests(SynchronousTestCase):
    def test_allow_list(self) -> None:
        found = mdns.overrides(
            {"ipa_inspection_callback_url": "http://i:5050/v1/continue",
             "ipa_debug": "1", "other": "x"},
            ["inspection_callback_url"])
        self.assertEqual(found, {"inspection_callback_url":
                                 "http://i:5050/v1/continue"})

    def test_apply(self) -> None:
        config = load_config()
        new = mdns.apply_overrides(config, {
            "ipa_inspection_callback_url": "http://i:5050/v1/continue",
            "ipa_api_url": "http://evil"})
        self.assertEqual(new.inspection_callback_url,
                         ["http://i:5050/v1/continue"])
        self.assertIsNone(new.api_url)
        self.assertIs(mdns.apply_overrides(config, {}), config)


class FindTests(SynchronousTestCase):
    """Attempts 0.1 s, 0.2 s... apart on the reactor; cancelling stops."""

    def setUp(self) -> None:
        from twisted.internet.defer import Deferred
        from twisted.internet.task import Clock

        self.clock = Clock()
        self.asked: list[Deferred[mdns.Endpoint | None]] = []

        def ask(service: str) -> Deferred[mdns.Endpoint | None]:
            d: Deferred[mdns.Endpoint | None] = Deferred()
            self.asked.append(d)
            return d

        self.ask = ask

    def test_retries_then_gives_up(self) -> None:
        d = mdns.find_endpoint(self.clock, "baremetal", 3, ask=self.ask)
        self.asked[0].callback(None)
        self.clock.advance(0.1)
        self.asked[1].callback(None)
        self.clock.advance(0.19)
        self.assertEqual(len(self.asked), 2)
        self.clock.advance(0.01)
        self.asked[2].callback(None)
        f = self.failureResultOf(d, mdns.ServiceLookupFailure)
        self.assertIn("after 3 attempts", str(f.value))

    def test_answer(self) -> None:
        d = mdns.find_endpoint(self.clock, "baremetal", 3, ask=self.ask)
        self.asked[0].callback(None)
        self.clock.advance(0.1)
        found = endpoint(["192.0.2.5"])
        self.asked[1].callback(found)
        self.assertEqual(self.successResultOf(d), found)

    def test_cancel(self) -> None:
        from twisted.internet.defer import CancelledError

        d = mdns.find_endpoint(self.clock, "baremetal", 3, ask=self.ask)
        self.asked[0].callback(None)
        d.cancel()
        self.failureResultOf(d, CancelledError)
        self.assertEqual(self.clock.getDelayedCalls(), [])
