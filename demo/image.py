"""The demo image: Debian's kernel and a busybox initramfs whose /init greets
with the machine's name and the image's name, then powers off."""

from __future__ import annotations

import hashlib
from pathlib import Path

from lab.kernel import vmlinuz
from lab.testimage import BUSYBOX, CpioWriter, _atomic_gzip_cpio, _pad_chunks

GREETING = "BOOTTORRENT-DEMO:"

# The pivotal passes BOOTIF=01-aa-bb-cc-dd-ee-ff on to the image (the NIC
# that booted); the machine names itself after its MAC's last two bytes.
INIT = f"""#!/bin/sh
mount -t proc proc /proc
for word in $(cat /proc/cmdline); do
    case "$word" in
        BOOTIF=01-*) mac=${{word#BOOTIF=01-}} ;;
        demo.image=*) image=${{word#demo.image=}} ;;
    esac
done
name=node-$(echo "$mac" | cut -d- -f5-6 | tr -d -)
hostname "$name"
echo
echo "{GREETING} Hello from $(hostname), running image $image, booted over BitTorrent."
sync
poweroff -f
while true; do sleep 60; done
"""
APPLETS = ("sh", "mount", "cat", "echo", "cut", "tr", "hostname", "poweroff", "sleep", "sync")


def build_demo_image(out_dir: Path, pad_mib: int) -> dict[str, Path]:
    """Build (or reuse) the demo initramfs, padded with pad_mib MiB of
    incompressible data so that the swarm has work to do."""
    out_dir.mkdir(parents=True, exist_ok=True)
    busybox = BUSYBOX.read_bytes()
    key = hashlib.sha256(INIT.encode() + busybox + str(pad_mib).encode()).hexdigest()[:16]
    path = out_dir / f"demo-{key}.cpio.gz"
    if not path.exists():
        def fill(cpio: CpioWriter) -> None:
            for folder in ("bin", "dev", "proc"):
                cpio.directory(folder)
            cpio.chardev("dev/console", 5, 1)
            cpio.file("bin/busybox", busybox, 0o755)
            for applet in APPLETS:
                cpio.symlink(f"bin/{applet}", "busybox")
            cpio.file("init", INIT.encode(), 0o755)
            if pad_mib:
                cpio.file_from_chunks("pad.bin", pad_mib << 20, _pad_chunks("demo", pad_mib))
            cpio.trailer()
        _atomic_gzip_cpio(path, fill)
    return {"kernel": vmlinuz(), "initrd": path}
