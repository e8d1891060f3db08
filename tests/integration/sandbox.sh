#!/bin/sh
# Run a command so that it cannot see this machine's disks.
#
#   sandbox.sh TARGET_DEVICE STUBS_DIR -- COMMAND...
#
# Expects to run in a private mount namespace (unshare --mount, which makes
# mounts private) and PID namespace (unshare --pid --fork --mount-proc).
# Every block device node except TARGET_DEVICE and its partitions is
# replaced by /dev/null (bind mount), and so is /proc/sysrq-trigger;
# STUBS_DIR goes first on PATH (harmless poweroff, reboot, efibootmgr...).
# If any of this fails, the command is not started.
set -eu
target=$1
stubs=$2
shift 2
[ "$1" = "--" ] && shift
[ -b "$target" ] || { echo "sandbox: $target is not a block device" >&2; exit 1; }
[ "$$" = 1 ] || { echo "sandbox: not in a private PID namespace" >&2; exit 1; }
mount --make-rprivate /
masked=0
for dev in $(find /dev -type b 2>/dev/null); do
    case "$dev" in
        "$target"|"$target"p[0-9]*) continue ;;
    esac
    mount --bind /dev/null "$dev"
    masked=$((masked + 1))
done
if [ -e /proc/sysrq-trigger ]; then mount --bind /dev/null /proc/sysrq-trigger; fi
echo "sandbox: masked $masked block devices; visible: $target*" >&2
PATH="$stubs:$PATH"
export PATH
exec "$@"
