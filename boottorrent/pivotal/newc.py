"""newc cpio archives ("070701", what the kernel unpacks into its
initramfs), written in memory: the small parts made for one machine (its
token, its own files), by the server while it answers and by the pivotal
before kexec. Owner root, times 0, one link each: nothing for the kernel
to join.

Standard library only: this module ships in the pivotal.
"""

from __future__ import annotations

from pathlib import PurePosixPath

FOLDER, FILE = 0o040000, 0o100000
TRAILER = "TRAILER!!!"


def archive(files: dict[str, tuple[bytes, int]], folders: dict[str, int] | None = None,
            block: int = 4) -> bytes:
    """A newc archive of files (path without a leading /: its bytes and
    permission bits), in path order, each after the folders it needs: a
    folder's permission bits are folders' or 0755 (the kernel sets them on
    a folder that is already there too). Padded to a multiple of block
    bytes."""
    folders = folders or {}
    entries: list[tuple[str, bytes, int]] = []
    made: set[str] = set()
    for name in sorted(files):
        path = PurePosixPath(name)
        if path.is_absolute() or ".." in path.parts or not path.parts:
            raise ValueError(f"{name}: not a path inside the archive")
        for parent in map(str, reversed(path.parents[:-1])):
            if parent not in made:
                made.add(parent)
                entries.append((parent, b"", FOLDER | folders.get(parent, 0o755)))
        data, mode = files[name]
        entries.append((name, data, FILE | mode))
    out = bytearray()
    for number, (name, data, mode) in enumerate([*entries, (TRAILER, b"", 0)], 1):
        encoded = name.encode() + b"\0"
        # ino, mode, uid, gid, nlink, mtime, size, dev and rdev (major,
        # minor), name size, check.
        fields = (number, mode, 0, 0, 2 if mode & FOLDER else 1, 0, len(data), 0, 0, 0, 0,
                  len(encoded), 0)
        out += b"070701" + b"".join(b"%08x" % value for value in fields) + encoded
        out += b"\0" * (-len(out) % 4) + data + b"\0" * (-len(data) % 4)
    return bytes(out + b"\0" * (-len(out) % block))
