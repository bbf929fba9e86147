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

A machine that boots over UEFI HTTP (no TFTP at all) gets the same chain as
one RAM disk, a CD image the firmware fetches whole and boots from
(ram_disk()); GRUB then has no address to hand on, and the stage asks DHCP.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from boottorrent import signature
from boottorrent.bzimage import is_package
from boottorrent.image import ImageRecord
from boottorrent.pivotal import paths
from boottorrent.pivotal.command import run

SHIM = Path("/usr/lib/shim/shimx64.efi.signed")
GRUB = Path("/usr/lib/grub/x86_64-efi-signed/grubnetx64.efi.signed")  # over TFTP
GRUB_DISK = Path("/usr/lib/grub/x86_64-efi-signed/grubx64.efi.signed")  # on the RAM disk
PACKAGES = {SHIM: "shim-signed", GRUB: "grub-efi-amd64-signed",
            GRUB_DISK: "grub-efi-amd64-signed",
            # They make the RAM disk.
            Path("/usr/bin/mcopy"): "mtools", Path("/usr/bin/xorriso"): "xorriso"}
# In the boot folder (the TFTP root): shim loads grubx64.efi from the folder
# it came from; Debian's netboot GRUB reads grub/grub.cfg (its prefix is
# /grub) from the server it came from.
SHIM_NAME = "shimx64.efi"
GRUB_NAME = "grubx64.efi"
GRUB_CONFIG = "grub/grub.cfg"
# The RAM disk for UEFI HTTP boot: the ".iso" makes edk2's HTTP boot take it
# as a CD image, not as a program. The firmware boots the loader of its El
# Torito FAT image; shim finds GRUB beside itself there, and Debian's disk
# GRUB looks for the disk that holds .disk/info and reads boot/grub/grub.cfg.
RAM_DISK = "secureboot.iso"
RAM_DISK_PARTS = (paths.KERNEL, *paths.INITRDS)  # what GRUB loads from it
EFI_IMAGE = "efi.img"
EFI_LOADER = "EFI/BOOT/BOOTX64.EFI"  # the firmware's default on removable media
EFI_SLACK = 1 << 20  # room in the FAT for its folders beyond shim and GRUB
RAM_DISK_MARK = ".disk/info"
RAM_DISK_CONFIG = "boot/grub/grub.cfg"


# Seen with OVMF: beside the site's DHCP server, Debian's GRUB takes the
# site's answer and never dnsmasq's proxy answer, so it knows no server to
# read its configuration from, and stops at its prompt.
PROXY_MODE = ("needs [dhcp] mode = full: in proxy mode Debian's signed GRUB does not take "
              "the proxy's answer and finds no configuration")


def missing() -> str | None:
    """Why this server cannot offer the signed chain, or None."""
    absent = [f"{path} ({package})" for path, package in PACKAGES.items() if not path.is_file()]
    if not absent:
        return None
    return ("UEFI Secure Boot needs Debian's signed shim and GRUB, mtools and xorriso; missing: "
            + ", ".join(absent) + "; apt install " + " ".join(sorted(set(PACKAGES.values()))))


def place(boot: Path, grub_cfg: str) -> None:
    """shim, GRUB and GRUB's configuration into the boot folder."""
    shutil.copyfile(SHIM, boot / SHIM_NAME)
    shutil.copyfile(GRUB, boot / GRUB_NAME)
    (boot / GRUB_CONFIG).parent.mkdir(mode=0o755)
    (boot / GRUB_CONFIG).write_text(grub_cfg)


def ram_disk(boot: Path) -> None:
    """boot/RAM_DISK: an ISO 9660 image (xorriso) holding the pivotal's
    files from the boot folder at their own paths and GRUB's configuration,
    and as its El Torito EFI boot image a small FAT file system (mtools, no
    mount) with shim and Debian's disk GRUB."""
    work = boot.parent / "ram-disk"  # beside the boot folder, gone once used
    work.mkdir()
    try:
        efi = work / EFI_IMAGE
        with efi.open("wb") as out:
            out.truncate(SHIM.stat().st_size + GRUB_DISK.stat().st_size + EFI_SLACK)
        run(["mformat", "-i", str(efi), "::"])
        for folder in ("EFI", "EFI/BOOT"):
            run(["mmd", "-i", str(efi), f"::/{folder}"])
        run(["mcopy", "-i", str(efi), str(SHIM), f"::/{EFI_LOADER}"])
        run(["mcopy", "-i", str(efi), str(GRUB_DISK), f"::/EFI/BOOT/{GRUB_NAME}"])
        (work / "info").write_text("BootTorrent: the pivotal, for UEFI HTTP boot\n")
        grafts = {EFI_IMAGE: efi, RAM_DISK_MARK: work / "info",
                  RAM_DISK_CONFIG: boot / GRUB_CONFIG} | {p: boot / p for p in RAM_DISK_PARTS}
        run(["xorriso", "-as", "mkisofs", "-quiet", "-o", str(boot / RAM_DISK), "-R",
             "-V", "BOOTTORRENT", "-e", EFI_IMAGE, "-no-emul-boot", "-graft-points"]
            + [f"/{name}={path}" for name, path in grafts.items()])
    finally:
        shutil.rmtree(work)


def check_lines(enabled: bool, pivotal_kernel: Path, records: dict[str, ImageRecord],
                signers: dict[str, str | None]) -> list[str]:
    """What `boottorrent check` says of machines with UEFI Secure Boot on."""
    if not enabled:
        return ["UEFI Secure Boot: off ([boot] secure_boot): machines with Secure Boot on "
                "refuse iPXE and boot nothing here"]
    lines = ["UEFI Secure Boot: on; UEFI machines boot shim, then GRUB, then the pivotal"]
    if not is_package(pivotal_kernel):  # a package's kernel: the pivotal's build reads it
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

