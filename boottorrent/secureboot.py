"""UEFI Secure Boot, on the server's side: the signed chain a UEFI machine
boots when [boot] secure_boot is on, all of it from Debian's packages,

    firmware ──► shim (shim-signed: Microsoft's UEFI CA signed it)
             ──► GRUB (grub-efi-amd64-signed: Debian signed it, shim checks)
             ──► the pivotal's kernel (Debian signed it, shim checks for GRUB)
             ──► the image's kernel (kexec_file_load checks it: kexec.py)

and what a Secure Boot machine can boot of the registry. Debian's signed
GRUB reads files over TFTP only (its netboot image has no http module, and
Secure Boot forbids loading one), so a machine booted this way fetches its
own token and files itself, from the pivotal's /stage (pivotal/stage).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from boottorrent import signature
from boottorrent.bzimage import DEB_MAGIC
from boottorrent.image import ImageRecord

SHIM = Path("/usr/lib/shim/shimx64.efi.signed")
GRUB = Path("/usr/lib/grub/x86_64-efi-signed/grubnetx64.efi.signed")
PACKAGES = {SHIM: "shim-signed", GRUB: "grub-efi-amd64-signed"}
# In the boot folder (the TFTP root): shim loads grubx64.efi from the folder
# it came from; Debian's netboot GRUB reads grub/grub.cfg (its prefix is
# /grub) from the server it came from.
SHIM_NAME = "shimx64.efi"
GRUB_NAME = "grubx64.efi"
GRUB_CONFIG = "grub/grub.cfg"


def missing() -> str | None:
    """Why this server cannot offer the signed chain, or None."""
    absent = [f"{path} ({package})" for path, package in PACKAGES.items() if not path.is_file()]
    if not absent:
        return None
    return ("UEFI Secure Boot needs Debian's signed shim and GRUB; missing: "
            + ", ".join(absent) + "; apt install " + " ".join(sorted(set(PACKAGES.values()))))


def place(boot: Path, grub_cfg: str) -> None:
    """shim, GRUB and GRUB's configuration into the boot folder."""
    shutil.copyfile(SHIM, boot / SHIM_NAME)
    shutil.copyfile(GRUB, boot / GRUB_NAME)
    (boot / GRUB_CONFIG).parent.mkdir(mode=0o755)
    (boot / GRUB_CONFIG).write_text(grub_cfg)


def check_lines(enabled: bool, pivotal_kernel: Path, records: dict[str, ImageRecord],
                signers: dict[str, str | None]) -> list[str]:
    """What `boottorrent check` says of machines with UEFI Secure Boot on."""
    if not enabled:
        return ["UEFI Secure Boot: off ([boot] secure_boot): machines with Secure Boot on "
                "refuse iPXE and boot nothing here"]
    lines = ["UEFI Secure Boot: on; UEFI machines boot shim, then GRUB, then the pivotal"]
    with pivotal_kernel.open("rb") as file:
        package = file.read(len(DEB_MAGIC)) == DEB_MAGIC  # the pivotal's build reads those
    if not package:
        try:
            if not signature.kernel_signer(pivotal_kernel):
                lines.append(f"UEFI Secure Boot: the pivotal's kernel {pivotal_kernel} is not "
                             "signed: shim refuses it, and machines with Secure Boot on boot "
                             "nothing ([pivotal] kernel: give Debian's)")
        except (OSError, ValueError) as error:
            lines.append(f"UEFI Secure Boot: the pivotal's kernel {pivotal_kernel}: {error}")
    for name, record in sorted(records.items()):
        lines.append(f"image {name}: a machine with Secure Boot on "
                     + verdict(record.method, signers.get(name)))
    return lines


def verdict(method: str, signer: str | None) -> str:
    """What a Secure Boot machine does with an image, for `check`."""
    if method != "kexec":
        return f"runs it (method {method}: no kexec)"
    if signer is None:
        return "cannot tell: its kernel has no EFI stub"
    if not signer:
        return ("refuses it: its kernel is not signed (sign it with a key enrolled in MOK, "
                "or boot it with method = qemu)")
    return f"boots it if it trusts the kernel's signer, {signer} (Debian's kernels: yes)"

