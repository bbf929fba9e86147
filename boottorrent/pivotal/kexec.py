"""The pivotal's last step: check the downloaded files, then kexec into them."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

from boottorrent.pivotal import ClientError
from boottorrent.pivotal.console import say
from boottorrent.pivotal.swarm import Image


def verify(image: Image, folder: Path) -> None:
    for name, expected in image.spec.sha256.items():
        digest = hashlib.sha256()
        with (folder / name).open("rb") as file:
            while chunk := file.read(1 << 20):
                digest.update(chunk)
        if digest.hexdigest() != expected:
            raise ClientError(f"{name}: SHA-256 does not match the registry")


def image_cmdline(image: Image, mac: str) -> str:
    """The image's command line, plus BOOTIF= (the pxelinux convention that
    Debian's live-boot, dracut and others read) naming the NIC that booted,
    unless the image sets it itself."""
    cmdline = image.spec.cmdline
    if mac and "BOOTIF=" not in cmdline:
        cmdline = f"{cmdline} BOOTIF=01-{mac.replace(':', '-')}".strip()
    return cmdline


def kexec_commands(image: Image, folder: Path, work: Path, mac: str) -> list[list[str]]:
    """The kexec command lines that boot the image, and write the initrd."""
    kernel = folder / image.spec.kernel
    load = ["kexec", "-s", "-l", str(kernel), f"--command-line={image_cmdline(image, mac)}"]
    initrds = [folder / name for name in image.spec.initrds]
    if initrds:
        # kexec takes one initrd; the kernel unpacks concatenated archives.
        combined = work / "initrd"
        with combined.open("wb") as out:
            for path in initrds:
                with path.open("rb") as part:
                    while chunk := part.read(1 << 20):
                        out.write(chunk)
        load.insert(4, f"--initrd={combined}")
    return [load, ["kexec", "-e"]]


def kexec(commands: list[list[str]]) -> None:
    load, execute = commands
    result = subprocess.run(load, capture_output=True, text=True)
    if result.returncode != 0:
        # No kexec_file_load (or the kernel is not signed for it): kexec_load.
        say(f"kexec_file_load failed ({result.stderr.strip()}); trying kexec_load")
        subprocess.run([arg for arg in load if arg != "-s"], check=True)
    subprocess.run(["sync"])
    subprocess.run(execute, check=True)
    raise ClientError("kexec -e returned")
