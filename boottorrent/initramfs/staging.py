"""The staging tree of an initramfs and the host files copied into it, the
way initramfs-tools' copy_exec does: a file, its symlinks and its libraries."""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterable
from pathlib import Path, PurePosixPath

from boottorrent.initramfs import PivotalError
from boottorrent.pivotal.command import run


class Tree:
    """The staging directory of an initramfs, laid out like a merged-/usr system."""

    MERGED = {"bin": "usr/bin", "sbin": "usr/sbin", "lib": "usr/lib", "lib64": "usr/lib64"}

    def __init__(self, root: Path) -> None:
        self.root = root
        self.sources: set[Path] = set()  # host files copied in, for cache checks
        for name, target in self.MERGED.items():
            (root / target).mkdir(parents=True, exist_ok=True)
            (root / name).symlink_to(target)

    @classmethod
    def canonical(cls, path: Path) -> PurePosixPath:
        """Where a host file lives in the tree: its directory resolved, mapped
        under /usr as on a merged-/usr system, its own name kept."""
        directory = PurePosixPath(os.path.realpath(path.parent))
        top = directory.parts[1] if len(directory.parts) > 1 else ""
        if top in cls.MERGED:
            directory = PurePosixPath("/", cls.MERGED[top], *directory.parts[2:])
        return directory / path.name

    def dest(self, path: PurePosixPath | str) -> Path:
        dest = self.root / str(path).lstrip("/")
        dest.parent.mkdir(parents=True, exist_ok=True)
        return dest

    def add_host_file(self, path: Path) -> PurePosixPath:
        """Copy a host file (following and recreating symlinks) to its place."""
        where = self.canonical(path)
        dest = self.dest(where)
        if dest.exists() or dest.is_symlink():
            return where
        source = Path(os.path.realpath(path.parent)) / path.name
        if source.is_symlink():
            target = os.readlink(source)
            dest.symlink_to(target)
            self.add_host_file(source.parent / target)
        else:
            shutil.copyfile(source, dest)
            dest.chmod(source.stat().st_mode & 0o755)
            self.sources.add(source)
        return where

    def mkdir(self, path: PurePosixPath | str) -> None:
        (self.root / str(path).lstrip("/")).mkdir(parents=True, exist_ok=True)

    def add_bytes(self, path: str, data: bytes, mode: int = 0o644) -> None:
        dest = self.dest(path)
        dest.write_bytes(data)
        dest.chmod(mode)

    def add_symlink(self, path: str, target: str) -> None:
        dest = self.dest(path)
        if not (dest.exists() or dest.is_symlink()):
            dest.symlink_to(target)


def shared_libraries(binaries: Iterable[Path]) -> list[Path]:
    """Every shared library (and the dynamic loader) the binaries need, by ldd."""
    result = run(["ldd", *binaries])
    libraries = set()
    for line in result.stdout.splitlines():
        line = line.strip()
        if "not found" in line:
            raise PivotalError(f"a shared library is missing on this system: {line}")
        match = re.match(r"(?:\S+ => )?(/\S+) \(0x", line)
        if match:
            libraries.add(Path(match.group(1)))
    return sorted(libraries)


def which(name: str, package: str) -> Path:
    found = shutil.which(name, path="/usr/sbin:/usr/bin:/sbin:/bin")
    if not found:
        raise PivotalError(f"{name} is missing: install the {package} package")
    return Path(found)
