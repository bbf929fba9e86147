"""Registering an image: copy its files into the state directory, hash them
and create the torrent."""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import TextIO

from boottorrent import torrents
from boottorrent.fsutil import copy_and_hash, open_regular, remove_tree, write_atomic
from boottorrent.image import FileRecord, Image, ImageRecord
from boottorrent.progress import Progress
from boottorrent.registry import TORRENT_FILE, State


def conf_digest(image: Image) -> str:
    with open_regular(image.source) as file:
        return hashlib.sha256(file.read()).hexdigest()


def is_unchanged(image: Image, record: ImageRecord, state: State) -> bool:
    """True when re-registering would give the same torrent: same description
    file, same source files by path, size and modification time, and the
    stored torrent is intact."""
    if record.conf_sha256 != conf_digest(image):
        return False
    try:
        torrents.read_checked(state.torrent_path(record.infohash), record.infohash)
    except (OSError, ValueError):
        return False
    sources = image.files()
    if len(sources) != len(record.files):
        return False
    for (_, path), file in zip(sources, record.files):
        stat = path.stat()
        if (str(path), stat.st_size, stat.st_mtime_ns) != (file.source, file.size,
                                                            file.source_mtime_ns):
            return False
    return True


def store(image: Image, state: State, stream: TextIO) -> tuple[ImageRecord, Path | None]:
    """Copy and hash the image's files into images/<infohash>/.

    Returns the record and the content folder if this call created it (so a
    caller whose later step fails can remove it again), or None if identical
    content was stored already.
    """
    state.images.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".new-", dir=state.images))
    try:
        (work / image.name).mkdir()
        sources = image.files()
        stats = [path.stat() for _, path in sources]
        total = sum(s.st_size for s in stats)

        copying = Progress(f"{image.name}: copying", total, stream)
        files = []
        for (name, path), stat in zip(sources, stats):
            digest = copy_and_hash(path, work / image.name / name, copying.advance)
            copied = (work / image.name / name).stat().st_size
            if copied != stat.st_size or path.stat().st_mtime_ns != stat.st_mtime_ns:
                raise OSError(f"{path}: changed while it was being copied")
            files.append(FileRecord(name, str(path), stat.st_size, digest, stat.st_mtime_ns))
        copying.close()

        hashing = Progress(f"{image.name}: hashing pieces", total, stream)
        torrent = torrents.create(work, image.name, [(f.name, f.size) for f in files],
                                  hashing.update)
        hashing.close()
        write_atomic(work / TORRENT_FILE, torrent)
        infohash = torrents.info_hash(torrent)

        record = ImageRecord.of(image, tuple(files), infohash,
                                piece_size=torrents.load(torrent).piece_length(),
                                conf_sha256=conf_digest(image))
        final = state.content_dir(infohash)
        if final.exists():
            # Same content, stored already; a damaged torrent file beside it
            # is mended from the one just made (same infohash, same info).
            stored = state.torrent_path(infohash)
            if not stored.is_file() or stored.read_bytes() != torrent:
                write_atomic(stored, torrent)
            remove_tree(work)
            return record, None
        work.chmod(0o755)
        os.rename(work, final)
        return record, final
    except BaseException:
        remove_tree(work)
        raise
