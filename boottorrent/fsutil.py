"""File operations that never leave a half-written file behind."""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import shutil
import stat
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

FICLONE = 0x40049409  # linux/fs.h: share the source's blocks (copy-on-write)
CHUNK = 1 << 20


def write_atomic(path: Path, data: bytes | str, mode: int = 0o644) -> None:
    """Write a file beside its final name, then rename it into place."""
    if isinstance(data, str):
        data = data.encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def open_regular(path: Path) -> BinaryIO:
    """Open a regular file for reading; OSError for anything else.

    Opened without blocking and checked before any read: a FIFO (or a
    device) given as a kernel or a configuration file would otherwise hang
    the command forever.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(path))
        if not stat.S_ISREG(mode):
            raise OSError(errno.EINVAL, "not a regular file", str(path))
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def copy_and_hash(source: Path, target: Path, advance: Callable[[int], None]) -> str:
    """Copy source to target (a reflink where the filesystem can), return its sha256.

    Not a hardlink: an admin who rebuilds a kernel in place would then change
    the registered copy too, under a running seeder.
    """
    digest = hashlib.sha256()
    with open_regular(source) as src, target.open("wb") as dst:
        try:
            fcntl.ioctl(dst.fileno(), FICLONE, src.fileno())
            cloned = True
        except OSError:
            cloned = False
        while chunk := src.read(CHUNK):
            digest.update(chunk)
            if not cloned:
                dst.write(chunk)
            advance(len(chunk))
        dst.flush()
        os.fsync(dst.fileno())
    shutil.copystat(source, target)
    os.chmod(target, 0o644)
    return digest.hexdigest()


@contextmanager
def locked(folder: Path) -> Iterator[None]:
    """Hold an exclusive lock on a folder (created if needed) for the block.

    The folder itself is locked, not a lock file in it: a command that
    fails changes nothing in the folder, not even by creating a file.
    """
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
