#!/usr/bin/env bash
# Install what the agent's flows and tests need on a Debian machine (root):
# the Debian tools, and tox.  Safe to run again; installs only what is
# missing.
set -euo pipefail
packages=(parted gdisk udev util-linux fdisk psmisc dmidecode lshw ipmitool
          qemu-utils iproute2 dosfstools mtools libarchive-tools e2fsprogs
          genisoimage gzip curl debootstrap gcc libc6-dev python3-venv
          python3-pip qemu-system-x86 ovmf)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" \
        || missing+=("$p")
done
# the UEFI test machine's initramfs needs a busybox; either package will do
# (they conflict), the static one is preferred
command -v busybox >/dev/null 2>&1 || missing+=(busybox-static)
if [ ${#missing[@]} -gt 0 ]; then
    echo "setup-host: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${missing[@]}" >/dev/null
fi
if ! command -v tox >/dev/null 2>&1; then
    echo "setup-host: installing tox"
    python3 -m pip install -q tox 2>/dev/null \
        || python3 -m pip install -q --break-system-packages tox 2>/dev/null \
        || apt-get install -y -qq tox >/dev/null
fi
echo "setup-host: ready ($(tox --version | head -1))"
