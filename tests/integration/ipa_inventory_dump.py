"""Run inside an ironic-python-agent 13.0.0 virtualenv: print, as JSON,
what IPA's own generic hardware manager reports on this machine (for the
parity test).  Disks: IPA's own block device listing, for type ``loop``
(IPA never lists loop devices as disks; the test's only disk is one)."""

import json
import sys

from ironic_python_agent import config

config.populate_config()
config.CONF([], project="ironic-python-agent")

from ironic_python_agent import hardware, netutils  # noqa: E402

manager = hardware.GenericHardwareManager()
interfaces = []
for name in netutils.list_interfaces():
    try:
        interfaces.append(manager.get_interface_info(name).serialize())
    except Exception:  # IPA skips interfaces its managers refuse
        continue
disks = [d.serialize() for d in hardware.list_all_block_devices(
    block_type="loop", ignore_empty=True)]
print(json.dumps({
    "interfaces": interfaces,
    "cpu": manager.get_cpus().serialize(),
    "disks": [d for d in disks if d["name"] in sys.argv[1:]],
    "memory": manager.get_memory().serialize(),
    "boot": manager.get_boot_info().serialize(),
}))
