"""A torrent's files as one span of bytes, the files one after the other,
written and read at an offset of that span (relay.py)."""

from __future__ import annotations

import bisect
import os
import threading
from pathlib import Path


class FileSpan:
    def __init__(self, files: list[tuple[Path, int]]):
        """files: each file's path and size, in the torrent's order."""
        self.files = files
        self.starts = [0]
        for _, size in files:
            self.starts.append(self.starts[-1] + size)
        self.descriptors: dict[int, int] = {}
        self.lock = threading.Lock()  # the stream writes, the hasher reads

    def locate(self, offset: int) -> tuple[int, int, int]:
        """The file that holds the byte at offset: its index, the offset
        there, and the bytes of the file from there on."""
        index = bisect.bisect_right(self.starts, offset) - 1  # past empty files
        within = offset - self.starts[index]
        return index, within, self.files[index][1] - within

    def write(self, offset: int, data: memoryview) -> None:
        while data:
            index, within, left = self.locate(offset)
            count = os.pwrite(self._open(index), data[:left], within)
            offset, data = offset + count, data[count:]

    def read_into(self, offset: int, buffer: memoryview) -> int:
        """Read the bytes from offset on into buffer, up to its size or the
        end of the file they are in; how many were read."""
        index, within, left = self.locate(offset)
        count = os.preadv(self._open(index), [buffer[:left]], within)
        if not count:
            raise OSError(f"{self.files[index][0]}: shorter than the torrent says")
        return count

    def _open(self, index: int) -> int:
        with self.lock:
            if index in self.descriptors:
                return self.descriptors[index]
            if not self.descriptors:  # the first file: the empty ones too, which take no bytes
                for path, size in self.files:
                    if size == 0:
                        path.parent.mkdir(parents=True, exist_ok=True)
                        path.touch()
            path, size = self.files[index]
            path.parent.mkdir(parents=True, exist_ok=True)
            descriptor = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            # The size libtorrent gives it too, so that neither truncates the other.
            if os.fstat(descriptor).st_size < size:
                os.ftruncate(descriptor, size)
            self.descriptors[index] = descriptor
            return descriptor

    def close(self) -> None:
        for descriptor in self.descriptors.values():
            os.close(descriptor)
        self.descriptors.clear()
