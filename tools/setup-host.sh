#!/usr/bin/env bash
# Install what the agent's flows and tests need on a Debian machine (root):
# every tool named in ipa_twisted/tools.py (the one list of the tools the
# agent and its tests run: a unit test checks it against the code), the
# packages the tests need besides, and tox.  Safe to run again; installs
# only what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
export DEBIAN_FRONTEND=noninteractive
if ! command -v python3 >/dev/null 2>&1; then
    echo "setup-host: installing python3"
    apt-get update -qq
    apt-get install -y -qq python3 >/dev/null
fi
mapfile -t missing < <(python3 ipa_twisted/tools.py missing-packages)
mapfile -t lean < <(python3 ipa_twisted/tools.py missing-packages lean)
if [ ${#missing[@]} -gt 0 ] || [ ${#lean[@]} -gt 0 ]; then
    apt-get update -qq
fi
if [ ${#missing[@]} -gt 0 ]; then
    echo "setup-host: installing ${missing[*]}"
    apt-get install -y -qq "${missing[@]}" >/dev/null
fi
if [ ${#lean[@]} -gt 0 ]; then
    # without their recommendations (mdadm's is a mail server; libvirt's
    # are other hypervisors' drivers and lvm2; the tests start their own
    # libvirtd: never libvirt-daemon-system, the host service)
    echo "setup-host: installing ${lean[*]} (no recommended packages)"
    apt-get install -y -qq --no-install-recommends "${lean[@]}" >/dev/null
fi
# every tool is there now, or say which is not
python3 ipa_twisted/tools.py check test
if ! command -v tox >/dev/null 2>&1; then
    echo "setup-host: installing tox"
    python3 -m pip install -q tox 2>/dev/null \
        || python3 -m pip install -q --break-system-packages tox 2>/dev/null \
        || apt-get install -y -qq tox >/dev/null
fi
echo "setup-host: ready ($(tox --version | head -1))"
