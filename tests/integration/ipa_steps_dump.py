"""Print ironic-python-agent's GenericHardwareManager steps as JSON (run by
the IPA virtualenv's python: tests/integration/test_ipa_parity.py)."""

import json

from ironic_python_agent import config  # noqa: F401 (registers options)
from oslo_config import cfg

cfg.CONF([], project="ironic-python-agent")

from ironic_python_agent import hardware  # noqa: E402

manager = hardware.GenericHardwareManager()
print(json.dumps({kind: getattr(manager, f"get_{kind}_steps")({}, [])
                  for kind in ("clean", "deploy", "service")}))
