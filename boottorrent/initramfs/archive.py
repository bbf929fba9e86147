"""Deterministic initramfs archives (newc cpio) and the small config part."""

from __future__ import annotations

import os
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

from boottorrent.initramfs import PivotalError

# zstd, not xz: xz makes the base 13% smaller but takes the kernel ~5 s
# longer to unpack under QEMU TCG (1.4 s for zstd). A 32 MiB window (--long=25)
# spans the whole base; the kernel allocates the window while it unpacks.
# -T0 output is the same for any thread count (unlike --single-thread).
COMPRESS = ["zstd", "-q", "-19", "--long=25", "-T0", "-c"]

# Files in the archives get this mtime (SOURCE_DATE_EPOCH, as Debian's
# reproducible builds use, else 0).
MTIME = int(os.environ.get("SOURCE_DATE_EPOCH", "0"))


def archive(tree: Path, output: Path, compress: list[str] | None) -> Path:
    """Pack tree as a newc cpio (sorted, fixed owner and mtime) into output.

    Written to a temporary file beside output and renamed into place.
    """
    names = sorted(_tree_names(tree))
    for name in names:
        os.utime(tree / name, (MTIME, MTIME), follow_symlinks=False)
    output.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{output.name}.", dir=output.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            cpio = subprocess.Popen(
                ["cpio", "--quiet", "-o", "-H", "newc", "--reproducible", "--null",
                 "--owner=0:0"],
                cwd=tree, stdin=subprocess.PIPE,
                stdout=subprocess.PIPE if compress else out, stderr=subprocess.PIPE)
            packer = None
            if compress:
                packer = subprocess.Popen(compress, stdin=cpio.stdout, stdout=out,
                                          stderr=subprocess.PIPE)
                cpio.stdout.close()  # the compressor owns the pipe now
            _, cpio_err = cpio.communicate(b"\0".join(n.encode() for n in names) + b"\0")
            packer_err = packer.communicate()[1] if packer else b""
        if cpio.returncode or (packer and packer.returncode):
            raise PivotalError(f"packing {output} failed: "
                               f"{(cpio_err + packer_err).decode(errors='replace')}")
        os.chmod(tmp, 0o644)
        os.replace(tmp, output)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return output


def _tree_names(tree: Path) -> Iterator[str]:
    for top, dirs, files in os.walk(tree):
        rel = os.path.relpath(top, tree)
        for name in dirs + files:
            yield name if rel == "." else f"{rel}/{name}"


def fix_dir_modes(tree: Path) -> None:
    """Directories get 0755 whatever the umask of the builder was."""
    for top, dirs, _ in os.walk(tree):
        for name in dirs:
            path = Path(top, name)
            if not path.is_symlink():
                path.chmod(0o755)


def build_config_part(files: dict[str, bytes], output: Path) -> Path:
    """Write files (relative paths such as "etc/boottorrent/pivotal.json")
    as a small uncompressed newc cpio, with their parent directories.
    """
    with tempfile.TemporaryDirectory(prefix="pivotal-config.") as tmp:
        tree = Path(tmp)
        for name, data in files.items():
            rel = PurePosixPath(name)
            if rel.is_absolute() or ".." in rel.parts or not rel.parts:
                raise PivotalError(f"config file name {name!r} is not a relative path")
            path = tree / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
            path.chmod(0o644)
        fix_dir_modes(tree)
        return archive(tree, output, compress=None)

