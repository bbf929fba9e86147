"""An image built from a root file system tree (images.d `rootfs = DIR`,
`boottorrent-add-image NAME --rootfs DIR`): a chroot made with debootstrap
or mmdebstrap, with a kernel, initramfs-tools and live-boot installed.

The image's files are the tree's own kernel, an initrd that is an
uncompressed cpio holding the tree as a compressed squashfs at
/boottorrent/live/filesystem.squashfs, and the tree's own initramfs. After
kexec the kernel unpacks both into its initramfs, and live-boot
(`boot=live live-media=/boottorrent`) mounts the squashfs under an overlay
with a tmpfs for writes: the machine runs the tree from RAM, holding the
squashfs once.

A build is kept in the state's cache under the tree's fingerprint (every
entry's path, type, mode, owner, size, mtime and link target, as rsync and
make decide "unchanged", plus the recipe): registering an unchanged tree
again only walks it.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import stat
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from debian.debian_support import Version

from boottorrent import bzimage
from boottorrent.fsutil import remove_tree
from boottorrent.image import LIVE_BOOT_MEDIUM as MEDIUM, LIVE_BOOT_WORDS
from boottorrent.pivotal.command import run
from boottorrent.pivotal.node import LIVE_BOTTOM
from boottorrent.progress import Progress

SQUASHFS_NAME = f"{MEDIUM}/live/filesystem.squashfs"
# What the tree must have for live-boot's part of its initramfs.
LIVE_BOOT_SCRIPT = "usr/share/initramfs-tools/scripts/live"
# zstd: decompresses about three times faster than xz for 10 % more bytes.
MKSQUASHFS_OPTIONS = ["-comp", "zstd", "-Xcompression-level", "15", "-noappend",
                      "-one-file-system", "-wildcards"]
# Not packed: what a running system mounts over, the kernel and initramfs,
# which the image carries as files of their own, and the tree's identity,
# which would be every machine's: each gets its own (nodes.py, pivotal/node.py).
IDENTITY = ["etc/ssh/ssh_host_*", "etc/machine-id"]
EXCLUDED = ["proc/*", "sys/*", "dev/*", "run/*", "tmp/*", "boot/vmlinuz*", "boot/initrd.img*",
            *IDENTITY]
RECIPE = repr((2, LIVE_BOOT_WORDS, SQUASHFS_NAME, MKSQUASHFS_OPTIONS, EXCLUDED))
KERNEL, INITRD, ROOTFS = "vmlinuz", "initrd.img", "rootfs.cpio"
COMPRESSED_MAGIC = {b"\x28\xb5\x2f\xfd": ["zstd", "-dcq"], b"\x1f\x8b": ["gzip", "-dc"],
                    b"\xfd7zXZ": ["xz", "-dc"], b"\x02\x21\x4c\x18": ["lz4", "-dc"]}
NEWC_MAGIC = b"070701"


class TreeError(ValueError):
    """What the tree lacks, for one line naming the tree."""


@dataclass(frozen=True)
class TreeBoot:
    """The kernel the tree boots with."""

    version: str
    kernel: Path
    initrd: Path


@dataclass(frozen=True)
class Build:
    """The image's three files, built from the tree."""

    folder: Path

    @property
    def files(self) -> tuple[Path, Path, Path]:
        """The kernel, then the initrds in the order the pivotal appends
        them: the uncompressed archive first, where the kernel always finds
        it, then the tree's initramfs. (Appended after a compressed
        initramfs, it was not unpacked after kexec, though it was after a
        boot by QEMU's own loader.)"""
        return self.folder / KERNEL, self.folder / ROOTFS, self.folder / INITRD


def tree_boot(tree: Path) -> TreeBoot:
    """The tree's newest kernel, with its modules and initramfs; TreeError
    naming what is missing."""
    if not tree.is_dir():
        raise TreeError(f"{tree}: no such folder")
    if not (tree / "usr/bin").is_dir():
        raise TreeError(f"{tree}: not a root file system (no usr/bin); make one with "
                        "mmdebstrap or debootstrap")
    versions = [path.name.removeprefix("vmlinuz-") for path in (tree / "boot").glob("vmlinuz-*")]
    if not versions:
        raise TreeError(f"{tree}: no kernel in boot/ (vmlinuz-*): install one in the tree, "
                        "e.g. linux-image-amd64")
    version = max(versions, key=Version)
    if not (tree / "lib/modules" / version).is_dir():
        raise TreeError(f"{tree}: the kernel {version} has no modules (lib/modules/{version}): "
                        "install its linux-image package in the tree rather than copy "
                        "the kernel")
    kernel = tree / "boot" / f"vmlinuz-{version}"
    initrd = tree / "boot" / f"initrd.img-{version}"
    if not initrd.exists() and not initrd.is_symlink():
        raise TreeError(f"{tree}: no initramfs for the kernel {version} (boot/initrd.img-"
                        f"{version}): install initramfs-tools and live-boot in the tree")
    for path in (kernel, initrd):
        check_own_file(tree, path)
    try:
        with kernel.open("rb") as file:
            bzimage.check(file.read(bzimage.HEADER_END))
    except ValueError as error:
        raise TreeError(f"{kernel}: {error}") from None
    if not (tree / LIVE_BOOT_SCRIPT).is_file():
        raise TreeError(f"{tree}: no live-boot ({LIVE_BOOT_SCRIPT}), which mounts the tree "
                        "with a RAM overlay at boot: install live-boot in the tree")
    return TreeBoot(version, kernel, initrd)


def check_own_file(tree: Path, path: Path) -> None:
    """TreeError unless path is a regular file of the tree itself. A link
    is refused, not followed: the server would resolve it on its own
    file system (an absolute link, or one with "..", can name any of the
    server's files, e.g. /etc/shadow), and then serve that file to the LAN.
    Debian's packages and update-initramfs write both as files."""
    info = path.lstat()
    if stat.S_ISLNK(info.st_mode):
        raise TreeError(f"{path}: a symbolic link (to {os.readlink(path)}); the tree's kernel "
                        "and initramfs must be files of the tree, as Debian's packages "
                        "install them")
    if not stat.S_ISREG(info.st_mode):
        raise TreeError(f"{path}: not a regular file")
    if path.resolve() != tree.resolve() / path.relative_to(tree):
        raise TreeError(f"{path}: reached through a symbolic link ({path.parent.name}/ is "
                        f"one); the tree's boot/ must be a folder of the tree")


def fingerprint(tree: Path) -> tuple[str, int]:
    """A digest of what mksquashfs would pack, from metadata only, and the
    bytes of the regular files in it."""
    digest = hashlib.sha256(RECIPE.encode())
    total = 0
    device = tree.stat().st_dev
    excluded = [re.compile(re.escape(pattern).replace(r"\*", "[^/]*")) for pattern in EXCLUDED]
    for top, dirs, files in os.walk(tree):
        relative_top = os.path.relpath(top, tree)
        dirs.sort()
        for name in sorted(dirs + files):
            relative = name if relative_top == "." else f"{relative_top}/{name}"
            if any(pattern.fullmatch(relative) for pattern in excluded):
                if name in dirs:
                    dirs.remove(name)
                continue
            info = os.lstat(os.path.join(top, name))
            if name in dirs and info.st_dev != device:
                dirs.remove(name)  # -one-file-system: the mount point only
            link = os.readlink(os.path.join(top, name)) if stat.S_ISLNK(info.st_mode) else ""
            digest.update(f"{relative}\0{info.st_mode}\0{info.st_uid}\0{info.st_gid}\0"
                          f"{info.st_size}\0{info.st_mtime_ns}\0{info.st_rdev}\0{link}\n"
                          .encode(errors="surrogateescape"))
            if stat.S_ISREG(info.st_mode):
                total += info.st_size
    return digest.hexdigest(), total


def initramfs_names(path: Path) -> set[str]:
    """The paths in an initramfs: uncompressed newc archives (early
    microcode), then one compressed with zstd, gzip, xz or lz4, as
    initramfs-tools writes them."""
    names: set[str] = set()
    with path.open("rb") as file:
        data = file.read()
    offset = 0
    while offset < len(data):
        if data.startswith(b"\0", offset):
            offset += 1  # padding between archives
            continue
        if data.startswith(NEWC_MAGIC, offset):
            offset = _newc_names(data, offset, names)
            continue
        for magic, command in COMPRESSED_MAGIC.items():
            if data.startswith(magic, offset):
                unpacked = run(command, input=data[offset:], text=False, check=False)
                _newc_names(unpacked.stdout, 0, names, until_end=True)
                return names
        break
    return names


def _newc_names(data: bytes, offset: int, names: set[str], until_end: bool = False) -> int:
    """Add the names of the newc archive(s) at offset; the offset after it."""
    while data.startswith(NEWC_MAGIC, offset):
        size = int(data[offset + 54:offset + 62], 16)
        name_size = int(data[offset + 94:offset + 102], 16)
        name = data[offset + 110:offset + 110 + name_size - 1].decode(errors="replace")
        offset = _aligned(offset + 110 + name_size)
        offset = _aligned(offset + size)
        if name == "TRAILER!!!":
            if not until_end:
                return offset
            while data.startswith(b"\0", offset):
                offset += 1
            continue
        names.add(name.removeprefix("./"))
    return offset


def _aligned(offset: int) -> int:
    return (offset + 3) & ~3


def check_live_boot(boot: TreeBoot) -> None:
    """TreeError unless the tree's initramfs has live-boot's script: one
    made before live-boot was installed would look for a root device. One
    with live-bottom scripts of its own is refused too: the pivotal's,
    which lays each machine's own files over the root, would replace them."""
    names = initramfs_names(boot.initrd)
    if "scripts/live" not in names:
        raise TreeError(f"{boot.initrd}: this initramfs has no live-boot (scripts/live): "
                        "run update-initramfs -u in the tree after installing live-boot")
    if theirs := sorted(name for name in names if name.startswith(f"{LIVE_BOTTOM}/")):
        raise TreeError(f"{boot.initrd}: this initramfs runs scripts of its own after "
                        f"live-boot ({', '.join(theirs)}), where BootTorrent lays each "
                        "machine's own files over the root")


def identity_in(tree: Path) -> list[str]:
    """The tree's own identity files, which the image leaves out."""
    found = [path for pattern in IDENTITY for path in sorted(tree.glob(pattern))]
    return [str(path.relative_to(tree)) for path in found
            if path.is_symlink() or path.is_file() and path.stat().st_size]


def _newc_header(name: str, mode: int, size: int, inode: int) -> bytes:
    fields = [inode, mode, 0, 0, 1, 0, size, 0, 0, 0, 0, len(name) + 1, 0]
    header = NEWC_MAGIC + b"".join(b"%08X" % value for value in fields) + name.encode() + b"\0"
    return header + b"\0" * (_aligned(len(header)) - len(header))


def _folders_and_file_header(size: int) -> bytes:
    parts = SQUASHFS_NAME.split("/")
    folders = ["/".join(parts[:i]) for i in range(1, len(parts))]
    return (b"".join(_newc_header(folder, stat.S_IFDIR | 0o755, 0, number)
                     for number, folder in enumerate(folders, start=1))
            + _newc_header(SQUASHFS_NAME, stat.S_IFREG | 0o444, size, len(folders) + 1))


PROGRESS_BAR = re.compile(rb"\]\s+(\d+)/(\d+)\s+\d+%")


def pack(tree: Path, output: Path, total: int, label: str, stream: TextIO) -> None:
    """Write the rootfs initrd: a newc cpio whose one file is the squashfs
    of the tree, made in place (mksquashfs -offset) after the archive's
    headers, which then get the squashfs's size."""
    head_size = len(_folders_and_file_header(0))
    with output.open("wb") as out:
        out.write(b"\0" * head_size)
    env = {**os.environ, "SOURCE_DATE_EPOCH": os.environ.get("SOURCE_DATE_EPOCH", "0")}
    command = (["mksquashfs", str(tree), str(output), "-offset", str(head_size)]
               + MKSQUASHFS_OPTIONS + ["-e", *EXCLUDED])
    progress = Progress(f"{label}: packing the tree (mksquashfs)", total, stream)
    # Its complaints go to a file: a pipe that nobody reads while the
    # progress bar is read could fill up and stop mksquashfs.
    with tempfile.TemporaryFile() as complaints:
        try:
            process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=complaints,
                                       env=env)
        except FileNotFoundError:
            raise OSError("mksquashfs is missing: install squashfs-tools") from None
        assert process.stdout
        while chunk := process.stdout.read1(4096):
            if found := PROGRESS_BAR.findall(chunk):
                done, blocks = found[-1]
                progress.update(total * int(done) // max(int(blocks), 1))
        process.wait()
        complaints.seek(0)
        errors = complaints.read().decode(errors="replace").strip()
    if process.returncode != 0:
        lines = [line for line in errors.splitlines() if line.strip()]
        raise OSError(f"mksquashfs {tree} failed: {lines[-1] if lines else process.returncode}")
    progress.close()
    size = output.stat().st_size - head_size
    with output.open("r+b") as out:
        out.write(_folders_and_file_header(size))
        out.seek(0, os.SEEK_END)
        out.write(b"\0" * (_aligned(size) - size) + _newc_header("TRAILER!!!", 0, 0, 0))
        out.flush()
        os.fsync(out.fileno())


def build(tree: Path, builds: Path, label: str, stream: TextIO) -> Build:
    """The image's files for the tree as it is now: the cached build if the
    tree's fingerprint has one, else a new build (written beside, renamed
    into place; nothing is left of one that fails or is interrupted)."""
    boot = tree_boot(tree)
    key, total = fingerprint(tree)
    final = builds / key[:32]
    if not final.is_dir():
        check_live_boot(boot)
    if identity := identity_in(tree):
        print(f"{label}: warning: the tree's own {', '.join(identity)} would be every "
              "machine's: left out of the image; each machine gets its own", file=stream)
    if final.is_dir():
        return Build(final)
    builds.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".new-", dir=builds))
    try:
        for source, target in ((boot.kernel, KERNEL), (boot.initrd, INITRD)):
            shutil.copy2(source, work / target, follow_symlinks=False)
        pack(tree, work / ROOTFS, total, label, stream)
        for path in Build(work).files:
            path.chmod(0o644)
        work.chmod(0o755)
        os.rename(work, final)
    except BaseException:
        remove_tree(work)
        with contextlib.suppress(OSError):
            builds.rmdir()  # made for this build, and empty again
        raise
    if fingerprint(tree)[0] != key:
        remove_tree(final)
        raise OSError(f"{tree} changed while it was being packed; run again once it is done")
    return Build(final)


def remove_unused(builds: Path, used: set[Path]) -> None:
    """Remove the builds (and leftovers of interrupted ones) that no
    registered image was made from."""
    if builds.is_dir():
        for folder in builds.iterdir():
            if folder not in used:
                remove_tree(folder)
