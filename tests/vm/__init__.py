"""Tests that boot the agent's ramdisk (ramdisk/build) in a QEMU machine,
network-booted by a real Ironic (netboot.py says how)."""
