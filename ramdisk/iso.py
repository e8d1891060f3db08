"""A bootable ISO of the ramdisk, for virtual media (``ramdisk/build
--iso``).

One hybrid image that BIOS and UEFI machines boot from a CD, a BMC's
virtual media or a USB stick: ISOLINUX (El Torito, and an MBR for USB)
for BIOS; for UEFI an El Torito EFI image (a small FAT file system)
holding GRUB (one image with its modules), which finds the ISO and reads the same
kernel and initramfs from it.  Both start the kernel with the same
command line, given at build time (``--iso-params``): an ISO carries no
parameters from Ironic, so the agent's (``ipa-api-url=...``) go there.
(Ironic's own virtual media boot interfaces do not need this ISO: they
make one from ``deploy_kernel`` and ``deploy_ramdisk``.)

Made in a Debian root holding xorriso, ISOLINUX and GRUB's EFI modules
(builder.build_base), so that the host needs nothing more, with every
date fixed to the build's epoch.  Standard library only.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from typing import Any, Callable

import stage

#: bumped when what this module builds changes
RECIPE = 1
#: the Debian root that makes the ISO (mount: builder.in_image mounts
#: /proc and /tmp in it)
PACKAGES = ["xorriso", "isolinux", "syslinux-common", "grub-efi-amd64-bin",
            "mtools", "dosfstools", "mount"]
VOLUME = "IPA_TWISTED"
#: what every ISO's command line starts with: the console on the screen
#: and on the first serial port (a BMC's serial-over-LAN)
CONSOLE = "console=tty0 console=ttyS0,115200n8"
#: what a command line may hold: it goes verbatim into isolinux.cfg and
#: into grub.cfg, where quotes, ``;``, ``$``, braces and backslashes
#: mean something
PARAMS = re.compile(r"[A-Za-z0-9 =:/._,@%+\-\[\]]*")
ISOLINUX_CFG = """\
DEFAULT ipa-twisted
PROMPT 0
NOESCAPE 1
TIMEOUT 0
LABEL ipa-twisted
  KERNEL /ipa-twisted.kernel
  INITRD /ipa-twisted.initramfs
  APPEND {params}
"""
GRUB_CFG = """\
set default=0
set timeout=0
set gfxpayload=keep
menuentry "ipa-twisted" {{
  linux /ipa-twisted.kernel {params}
  initrd /ipa-twisted.initramfs
}}
"""
#: in GRUB's own image (grub-mkimage: the modules in the image itself, no
#: memdisk, whose tar would carry the build's dates): find the ISO by its
#: kernel, read its grub.cfg
GRUB_EMBEDDED = """\
search --no-floppy --set=root --file /ipa-twisted.kernel
set prefix=($root)/boot/grub
configfile /boot/grub/grub.cfg
"""
#: (``linux`` gives ``initrd``; ``all_video`` the firmware's framebuffer
#: to the kernel: Debian's GRUB boots an unsigned kernel with its own
#: loader, which needs a video driver to hand on the screen)
GRUB_MODULES = ("linux normal iso9660 search search_fs_file configfile "
                "echo test part_msdos part_gpt fat all_video")
SCRIPT = """\
set -e
export SOURCE_DATE_EPOCH={epoch}
cd /iso
mkdir -p tree/isolinux tree/boot/grub tree/EFI/BOOT
cp /usr/lib/ISOLINUX/isolinux.bin /usr/lib/syslinux/modules/bios/ldlinux.c32 \\
    tree/isolinux/
mv isolinux.cfg tree/isolinux/isolinux.cfg
mv grub.cfg tree/boot/grub/grub.cfg
mv ipa-twisted.kernel ipa-twisted.initramfs tree/
grub-mkimage -O x86_64-efi -o BOOTX64.EFI -p /boot/grub -c embedded.cfg \\
    {modules}
cp BOOTX64.EFI tree/EFI/BOOT/BOOTX64.EFI
# the EFI image: a FAT file system with EFI/BOOT/BOOTX64.EFI, its dates
# (directories' too: mcopy -s -m) the epoch's
mkdir -p esp/EFI/BOOT
cp BOOTX64.EFI esp/EFI/BOOT/BOOTX64.EFI
find esp -exec touch -h -d @{epoch} {{}} +
kib=$(( ($(stat -c %s BOOTX64.EFI) + 1023) / 1024 + 256 ))
mkfs.vfat --invariant -i 49504154 -n EFIBOOT -C tree/boot/efiboot.img $kib \\
    >/dev/null
mcopy -s -m -i tree/boot/efiboot.img esp/EFI ::/
find tree -exec touch -h -d @{epoch} {{}} +
xorriso -as mkisofs -o ipa-twisted.iso -iso-level 3 -full-iso9660-filenames \\
    -J -joliet-long -r -V {volume} \\
    -isohybrid-mbr /usr/lib/ISOLINUX/isohdpfx.bin \\
    -c isolinux/boot.cat -b isolinux/isolinux.bin -no-emul-boot \\
    -boot-load-size 4 -boot-info-table \\
    -eltorito-alt-boot -e boot/efiboot.img -no-emul-boot \\
    -isohybrid-gpt-basdat tree 2>xorriso.log \\
    || {{ tail -n 20 xorriso.log; exit 1; }}
"""


def command_line(params: str) -> str:
    """The kernel command line of the ISO: the consoles, then ``params``
    (ValueError if it holds what a boot loader's config would read as
    syntax)."""
    params = " ".join(params.split())
    if not PARAMS.fullmatch(params):
        bad = sorted({c for c in params if not PARAMS.fullmatch(c)})
        raise ValueError(f"--iso-params: {''.join(bad)!r} cannot go into "
                         f"a boot loader's config")
    return f"{CONSOLE} {params}".strip()


def files(params: str, epoch: int) -> dict[str, str]:
    """The configuration files and the script, as /iso holds them."""
    line = command_line(params)
    return {"isolinux.cfg": ISOLINUX_CFG.format(params=line),
            "grub.cfg": GRUB_CFG.format(params=line),
            "embedded.cfg": GRUB_EMBEDDED,
            "build.sh": SCRIPT.format(epoch=epoch, modules=GRUB_MODULES,
                                      volume=VOLUME)}


def build(kernel: str, initramfs: str, params: str, cache: str,
          build_root: Callable[[list[str]], str],
          run_in_root: Callable[[str, list[str]], Any],
          say: Callable[[str], None], epoch: int, mirror: str = "",
          fresh: bool = False) -> str:
    """The ISO of ``kernel`` and ``initramfs`` with ``params``, a cached
    stage (stage.py: ``build_root``, ``run_in_root`` and ``fresh`` as
    there); returns its path.  Raises ValueError or stage.StageError."""
    config = files(params, epoch)
    with open(__file__, "rb") as f:
        me = f.read()
    made: dict[str, int] = {}

    def inputs() -> dict[str, stage.Content]:
        return {**config, "ipa-twisted.kernel": stage.Copy(kernel),
                "ipa-twisted.initramfs": stage.Copy(initramfs)}

    def collect(inside: str, out: str) -> None:
        target = os.path.join(out, "ipa-twisted.iso")
        shutil.move(os.path.join(inside, "ipa-twisted.iso"), target)
        os.utime(target, (epoch, epoch))
        made["size"] = os.path.getsize(target)

    t0 = time.monotonic()
    out = stage.build(
        cache, "iso",
        [f"iso {RECIPE} {epoch} {mirror}".encode(), stage.sha256(kernel)
         .encode(), stage.sha256(initramfs).encode(), params.encode(), me],
        PACKAGES, inputs, build_root, run_in_root, collect, fresh=fresh)
    if "size" in made:
        say(f"ISO (BIOS: ISOLINUX; UEFI: GRUB): {made['size'] / 2**20:.1f} "
            f"MiB, command line {command_line(params)!r}; "
            f"{time.monotonic() - t0:.0f} s")
    return os.path.join(out, "ipa-twisted.iso")
