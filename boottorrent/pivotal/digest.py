"""The SHA-256 of a torrent's files, computed as the chain's bytes arrive
in order (relay.py), and finished from the files themselves for whatever
did not arrive that way: the image is then checked against the
registry's digests without reading it back from RAM."""

from __future__ import annotations

import hashlib
from pathlib import Path

READ = 1 << 20  # bytes read at a time from a file


class StreamDigest:
    def __init__(self, files: list[tuple[Path, int]]):
        """files: each file's path and size, in the torrent's order; the
        torrent's bytes are these files one after the other."""
        self.files = files
        self.digests = [hashlib.sha256() for _ in files]
        self.position = 0  # the next byte of the torrent to hash
        self.file = 0  # the file it is in
        self.within = 0  # its offset there

    def feed(self, offset: int, data: memoryview) -> None:
        """The torrent's bytes from offset on, as written to the files.
        Only the next bytes in order count: after a gap, the rest is
        hashed from the files by finish()."""
        if offset != self.position:
            return
        while data and self.file < len(self.files):
            take = data[:self.files[self.file][1] - self.within]
            self.digests[self.file].update(take)  # without the GIL
            self._advance(len(take))
            data = data[len(take):]

    def _advance(self, count: int) -> None:
        self.position += count
        self.within += count
        while self.file < len(self.files) and self.within == self.files[self.file][1]:
            self.file, self.within = self.file + 1, 0

    def finish(self) -> dict[Path, str]:
        """Each file's hex digest, reading from the files what was not fed."""
        self._advance(0)  # past empty files
        while self.file < len(self.files):
            index = self.file
            path, size = self.files[index]
            with path.open("rb") as file:
                file.seek(self.within)
                while self.file == index:
                    chunk = file.read(min(READ, size - self.within))
                    if not chunk:
                        raise OSError(f"{path}: shorter than the torrent says")
                    self.digests[index].update(chunk)
                    self._advance(len(chunk))
        return {path: digest.hexdigest() for (path, _), digest in zip(self.files, self.digests)}


def file_sha256(path: Path) -> str:
    with path.open("rb") as file:
        return hashlib.file_digest(file, "sha256").hexdigest()
