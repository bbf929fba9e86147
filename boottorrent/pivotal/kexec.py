"""The pivotal's last step: check the downloaded files, then kexec into them."""

from __future__ import annotations

import shutil
from pathlib import Path

from boottorrent.pivotal import ClientError, node
from boottorrent.pivotal.command import CommandError, run
from boottorrent.pivotal.console import say
from boottorrent.pivotal.digest import file_sha256
from boottorrent.pivotal.run import meminfo_mib
from boottorrent.pivotal.wire import ImageSpec


LOCKDOWN = Path("/sys/kernel/security/lockdown")  # "[none] integrity confidentiality"


def locked_down() -> bool:
    """Whether this kernel is locked down, as Debian's is when the firmware
    booted it with UEFI Secure Boot on: kexec_load is refused then, and
    kexec_file_load takes only a kernel signed by a key the kernel trusts
    (its own, the firmware's db, shim's MOK)."""
    try:
        return "[none]" not in LOCKDOWN.read_text()
    except OSError:
        return False


def secure_boot_refusal(image: ImageSpec) -> str | None:
    """Why this machine cannot kexec the image, known before it is
    downloaded: an unsigned kernel on a locked-down machine."""
    if image.method != "kexec" or image.kernel_signer or not locked_down():
        return None
    return ("its kernel is not signed, and this machine boots with UEFI Secure Boot "
            "(its kernel is locked down and kexecs signed kernels only): sign the image's "
            "kernel with a key enrolled in MOK, or boot it with method = qemu")


def verify(image: ImageSpec, folder: Path, known: dict[Path, str]) -> None:
    """Check the files against the registry's SHA-256; known: digests of
    files already computed from the bytes written (Swarm.digests)."""
    for name, expected in image.sha256.items():
        if (known.get(folder / name) or file_sha256(folder / name)) != expected:
            raise ClientError(f"{name}: SHA-256 does not match the registry")


def image_cmdline(image: ImageSpec, mac: str, machine_words: str = "") -> str:
    """The image's command line, then this machine's words from [machines]
    (its systemd.hostname=, its group's cmdline), then BOOTIF= (the pxelinux
    convention that Debian's live-boot, dracut and others read) naming the
    NIC that booted, unless the image sets it itself."""
    cmdline = f"{image.cmdline} {machine_words}".strip()
    if mac and "BOOTIF=" not in cmdline:
        cmdline = f"{cmdline} BOOTIF=01-{mac.replace(':', '-')}".strip()
    return cmdline


def kexec_commands(image: ImageSpec, folder: Path, mac: str, machine_words: str = "",
                   own_files: bytes = b"") -> list[list[str]]:
    """The kexec command lines that boot the image, with its one initrd, to
    which the machine's own files (node.image_part) are appended."""
    kernel = folder / image.kernel
    cmdline = image_cmdline(image, mac, machine_words)
    load = ["kexec", "-s", "-l", str(kernel), f"--command-line={cmdline}"]
    initrds = [folder / name for name in image.initrds]
    if initrds:
        initrd = one_initrd(initrds)
        if own_files:
            node.append(initrd, own_files)
        load.insert(4, f"--initrd={initrd}")
    elif own_files:
        say(f"{image.name} has no initrd: this machine's own files stay here")
    return [load, ["kexec", "-e"]]


def one_initrd(initrds: list[Path]) -> Path:
    """kexec takes one initrd, and the kernel unpacks concatenated archives:
    the first file, with the others appended to it, each deleted once it is
    (the image is seeded and checked by now). So RAM never holds a second
    copy of the image, only of the part being appended."""
    first, *rest = initrds
    if rest:
        with first.open("ab") as out:
            for path in rest:
                with path.open("rb") as part:
                    shutil.copyfileobj(part, out, 1 << 20)
                path.unlink()
    return first


def kexec(commands: list[list[str]]) -> None:
    load, execute = commands
    try:
        run(load)
    except CommandError as error:
        # No kexec_file_load (or the kernel is not signed for it): kexec_load.
        say(f"kexec_file_load failed ({error.reason}); trying kexec_load")
        run([arg for arg in load if arg != "-s"])
    # What the image takes here once loaded: the download and kexec's segment
    # (while loading, the kernel's read buffer as well; run.check_room).
    total, available = meminfo_mib()
    say(f"kexec loaded the image: {available} MiB of RAM still available, of {total} MiB")
    run(["sync"], check=False)
    run(execute)
    raise ClientError("kexec -e returned")
