"""This machine's own files, laid into the image it boots.

The server sends a machine's files (its hostname, machine ID, SSH host
keys and the admin's templates, rendered for it: the server's nodes.py)
with its config part, to that machine alone, under paths.NODE, root's
alone. Before kexec they go into the image as an archive appended to its
initrd, which the kernel unpacks into the image's initramfs:

- an image that boots with live-boot (`boot=live`, as every --rootfs image
  does) gets them under NODE_IN_IMAGE with a live-boot script of ours
  (initramfs-tools runs /scripts/live-bottom once live-boot mounted the
  root), which copies them over the root, into the overlay's layer in
  RAM. The script also keeps a machine the server sent nothing from the
  tree's identity: an empty machine ID, which systemd makes anew, and SSH
  host keys made as sshd first starts (the tree's are not in the image);
- any other image with an initrd gets them at their own paths in its
  initramfs (their folders 0755, folders it has too: the kernel sets the
  mode of each folder an archive holds): there for an image that runs from
  it, gone once it mounts another root;
- an image with no initrd, and images of method qemu and exec, get none.

Standard library only: this module ships in the pivotal.
"""

from __future__ import annotations

import os
from pathlib import Path

from boottorrent.pivotal import newc
from boottorrent.pivotal.wire import ImageSpec

LIVE_BOOT = "boot=live"  # the word of an image that boots with live-boot
NODE_IN_IMAGE = "boottorrent/node"
# What initramfs-tools runs once live-boot mounted the root: its ORDER,
# sourced by run_scripts. The tree's initramfs has none (rootfs.py refuses
# one that has scripts of its own there).
LIVE_BOTTOM = "scripts/live-bottom"
LIVE_BOTTOM_ORDER = f"{LIVE_BOTTOM}/ORDER"
LIVE_BOTTOM_SCRIPT = f"{LIVE_BOTTOM}/boottorrent"
HOST_KEYS_UNIT = "boottorrent/boottorrent-host-keys.service"
ORDER = f"""/{LIVE_BOTTOM_SCRIPT} "$@"
[ -e /conf/param.conf ] && . /conf/param.conf
"""
# initramfs-tools moves /run into the root before it starts systemd, which
# reads units from /run/systemd/system.
SCRIPT = f"""#!/bin/sh
# BootTorrent (boottorrent/pivotal/node.py): this machine's own files over
# the root live-boot mounted, into the overlay's layer in RAM.
[ "$1" = prereqs ] && exit 0
# Folders the root has keep their owner and mode (a template's folder is
# no reason to change /etc); the others are made.
if [ -d /{NODE_IN_IMAGE} ]; then
	cd /{NODE_IN_IMAGE}
	find . ! -type d | while IFS= read -r path; do
		mkdir -p "${{rootmnt}}/${{path%/*}}"
		rm -f "${{rootmnt}}/$path"
		cp -a "$path" "${{rootmnt}}/$path"
	done
	cd /
fi
[ -e /{NODE_IN_IMAGE}/etc/machine-id ] || : > "${{rootmnt}}/etc/machine-id"
set -- "${{rootmnt}}"/etc/ssh/ssh_host_*_key
if [ ! -e "$1" ]; then
	mkdir -p /run/systemd/system/ssh.service.wants
	cp /{HOST_KEYS_UNIT} /run/systemd/system/
	ln -s ../boottorrent-host-keys.service /run/systemd/system/ssh.service.wants/
fi
"""
HOST_KEYS = """[Unit]
Description=SSH host keys of this machine's own (BootTorrent: the server sent none)
Before=ssh.service
ConditionPathExists=/usr/bin/ssh-keygen

[Service]
Type=oneshot
ExecStart=/usr/bin/ssh-keygen -A
"""


def own_files(folder: Path) -> dict[str, tuple[bytes, int]]:
    """The files under folder (by path inside it: bytes, permission bits);
    none when there is no folder."""
    files: dict[str, tuple[bytes, int]] = {}
    for top, _, names in os.walk(folder):
        for name in names:
            path = Path(top) / name
            files[str(path.relative_to(folder))] = (path.read_bytes(),
                                                    path.stat().st_mode & 0o7777)
    return files


def image_part(image: ImageSpec, folder: Path) -> bytes:
    """The archive appended to the image's initrd (b"": nothing to append)."""
    files = own_files(folder)
    if LIVE_BOOT not in image.cmdline.split():
        return newc.archive(files) if files else b""
    return newc.archive({**{f"{NODE_IN_IMAGE}/{path}": file for path, file in files.items()},
                         LIVE_BOTTOM_ORDER: (ORDER.encode(), 0o755),
                         LIVE_BOTTOM_SCRIPT: (SCRIPT.encode(), 0o755),
                         HOST_KEYS_UNIT: (HOST_KEYS.encode(), 0o644)},
                        {NODE_IN_IMAGE: 0o700})


def append(initrd: Path, part: bytes) -> None:
    """Append an archive to an initrd, on a 4-byte boundary: the kernel
    looks for the next archive there after a compressed one."""
    with initrd.open("ab") as out:
        out.write(b"\0" * (-out.tell() % 4) + part)
