"""The image extension: ``install_bootloader``.

How it installs: :mod:`ipa_twisted.commands.bootloader`, imported when
the command runs (an idle agent does not hold its code).
"""

from __future__ import annotations

from typing import Any

from ipa_twisted import errors
from ipa_twisted.commands.base import Extension, async_command


def _check_install_params(extension: Any, **params: Any) -> None:
    """Bad input is the client's mistake: HTTP 400 before anything runs."""
    mode = params.get("target_boot_mode")
    if mode not in (None, "uefi", "bios"):
        raise errors.InvalidCommandParamsError(
            f"target_boot_mode must be uefi or bios, not {mode!r}")
    for name in ("root_uuid", "efi_system_part_uuid", "prep_boot_part_uuid"):
        value = params.get(name)
        if value is not None and not isinstance(value, str):
            raise errors.InvalidCommandParamsError(
                f"{name} must be a string, not {value!r}")


class ImageExtension(Extension):
    name = "image"

    @async_command("install_bootloader", validator=_check_install_params)
    async def install_bootloader(self, root_uuid: Any = None,
                                 efi_system_part_uuid: Any = None,
                                 prep_boot_part_uuid: Any = None,
                                 target_boot_mode: str | None = None,
                                 ignore_bootloader_failure: Any = None
                                 ) -> None:
        from ipa_twisted.commands.bootloader import Installer

        await Installer(self.agent).install_bootloader(
            root_uuid=root_uuid, efi_system_part_uuid=efi_system_part_uuid,
            prep_boot_part_uuid=prep_boot_part_uuid,
            target_boot_mode=target_boot_mode,
            ignore_bootloader_failure=ignore_bootloader_failure)
