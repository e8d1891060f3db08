"""One node's side of the network burn-in pairing through a real tooz
backend, printed as JSON ``{"partner": ..., "role": ...}``.  Run by the
IPA virtualenv's python (it has tooz): ``ours MEMBER URL GROUP TIMEOUT``
runs this agent's :class:`ipa_twisted.hardware.burnin.Pairing` (our
packages are appended to the path, after IPA's); ``ipa URL GROUP
TIMEOUT`` runs ironic-python-agent 13.0.0's own pairing (its member id is
the host name, as in IPA; it fails on tooz's file driver, see
tests/integration/test_burnin.py)."""

import json
import sys


def main() -> None:
    which, args = sys.argv[1], sys.argv[2:]
    if which == "ours":
        member, url, group, timeout = args[:4]
        sys.path.extend(args[4:])
        from ipa_twisted.hardware.burnin import Pairing

        partner, role = Pairing(url, group, float(timeout), member).find()
    else:
        url, group, timeout = args[:3]
        from ironic_python_agent import config  # noqa: F401 (options)
        from oslo_config import cfg

        cfg.CONF([], project="ironic-python-agent")
        from ironic_python_agent import burnin

        partner, role = burnin._find_network_burnin_partner_and_role(
            backend_url=url, group_name=group, timeout=float(timeout))
    print(json.dumps({"partner": partner, "role": role}))


if __name__ == "__main__":
    main()
