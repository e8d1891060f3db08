"""In-band inspection by a real Ironic 39.0.0 (inspect interface
``agent``): our agent posts to /v1/continue_inspection, Ironic stores the
inventory and the collectors' data; a failing collector's error reaches
Ironic's ramdisk-error hook."""

from __future__ import annotations

from tests.integration import harness as h
from tests.integration import scenarios
from tests.integration.base import IronicTestCase

# every collector that can work on this machine (it has no DMI tables, so
# dmidecode fails here: that one is checked as a failing collector)
COLLECTORS = "default,logs,pci-devices,numa-topology,lldp,usb-devices"


class InspectionTests(IronicTestCase):
    def test_inventory_reaches_ironic(self) -> None:
        result = scenarios.inspect(self.env, COLLECTORS, "manageable")
        stored = result["stored"]
        inventory, plugin = stored["inventory"], stored["plugin_data"]
        self.assertEqual([i["mac_address"] for i in inventory["interfaces"]],
                         [h.NODE_MAC])
        self.assertEqual([d["name"] for d in inventory["disks"]],
                         [self.env.device])
        self.assertTrue(inventory["cpu"]["architecture"])
        self.assertIsInstance(inventory["memory"]["physical_mb"], int)
        self.assertEqual(inventory["boot"]["pxe_interface"],
                         "01-52-54-00-12-34-56")
        for key in ("root_disk", "boot_interface", "configuration",
                    "pci_devices", "numa_topology", "lldp_raw",
                    "usb_devices"):
            self.assertIn(key, plugin)
        self.assertIsNone(plugin["error"])
        self.assertEqual(plugin["root_disk"]["name"], self.env.device)
        self.assertEqual(plugin["configuration"]["collectors"],
                         COLLECTORS.split(","))
        self.assertEqual(plugin["lldp_raw"], {"ipa0.10": [], "ipapeer": []})
        # the port's MAC was recognised by Ironic's validate-interfaces
        self.assertEqual(plugin["macs"], [h.NODE_MAC])
        self.assertIn("inspection data accepted by", result["agent_log"])

    def test_failing_collector_fails_inspection_with_our_error(self) -> None:
        result = scenarios.inspect(self.env, "default,dmi-decode,nonexistent",
                                   "inspect failed")
        error = result["node"]["last_error"]
        self.assertIn("Ramdisk reported error: The following errors were "
                      "encountered:", error)
        self.assertIn("* failed to run dmidecode:", error)
        self.assertIn("* unknown inspection collector 'nonexistent'", error)
        # the inventory was still posted (IPA posts only the error)
        self.assertIn("posting inspection data to", result["agent_log"])


class MDNSApiTests(IronicTestCase):
    """ipa-api-url=mdns: the API is found by mDNS and inspection posts to
    the discovered URL (IPA would post to the literal "mdns/...")."""

    environment = {"listen": "0.0.0.0"}

    def test_api_found_by_mdns(self) -> None:
        import zeroconf

        h.run(["ip", "netns", "exec", self.env.netns, "ip", "addr", "add",
               "192.0.2.1/24", "dev", "ipapeer"])
        with h.in_netns(self.env.netns):
            zc = zeroconf.Zeroconf(interfaces=["192.0.2.1"])
        self.addCleanup(zc.close)
        info = zeroconf.ServiceInfo(
            "_openstack._tcp.local.", "baremetal._openstack._tcp.local.",
            addresses=[bytes([192, 0, 2, 1])], port=self.env.ironic.port,
            properties={"protocol": "http"}, server="ironic-e2e.local.")
        zc.register_service(info)
        self.addCleanup(zc.unregister_service, info)
        result = scenarios.inspect(self.env, "default", "manageable",
                                   api_url="mdns", callback=False)
        log = result["agent_log"]
        self.assertIn("mDNS: Ironic API at http://192.0.2.1:6385", log)
        self.assertIn("posting inspection data to "
                      "http://192.0.2.1:6385/v1/continue_inspection", log)
        self.assertEqual(
            result["stored"]["inventory"]["interfaces"][0]["mac_address"],
            h.NODE_MAC)
