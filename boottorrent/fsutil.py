"""File operations that never leave a half-written file behind."""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

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


def copy_and_hash(source: Path, target: Path, advance: Callable[[int], None]) -> str:
    """Copy source to target (a reflink where the filesystem can), return its sha256.

    Not a hardlink: an admin who rebuilds a kernel in place would then change
    the registered copy too, under a running seeder.
    """
    digest = hashlib.sha256()
    with source.open("rb") as src, target.open("wb") as dst:
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
def locked(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on path (created if needed) for the block."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
