"""Creating and reading the torrents of registered images (libtorrent).

An image's torrent is a private, v1 multi-file torrent named after the image:
NAME/kernel, NAME/initrd.0, ... Only the info dictionary is stored at
registration; the tracker and web-seed URLs are added when files are
generated, since they follow the configuration and do not change the
infohash.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import libtorrent as lt

MIB = 1 << 20

# Piece size policy: 256 KiB pieces, doubled for images over 1 GiB so that an
# image never has more than 4096 pieces, and at most 16 MiB. In a boot swarm
# a client can pass a piece on only once it holds all of it and has checked
# its hash, so small pieces relay faster from hop to hop; per-piece costs
# (hash checks, HAVE messages to hundreds of peers, request bookkeeping)
# bound how small they may go. `make bench` measured 256 KiB against 1 MiB:
# 30 % less time at 32 clients, 64 and 128 KiB no better (bench/RESULTS.md).
PIECE_SIZE_MIN = 256 * 1024
PIECE_SIZE_MAX = 16 * MIB
PIECES_MAX = 4096


def piece_size_for(total_size: int) -> int:
    size = PIECE_SIZE_MIN
    while size < PIECE_SIZE_MAX and total_size > size * PIECES_MAX:
        size *= 2
    return size


def create(save_path: Path, name: str, files: list[tuple[str, int]],
           on_piece: Callable[[int], None] | None = None) -> bytes:
    """Hash save_path/name/<file> for each (file, size) and return the torrent.

    on_piece(bytes_hashed_so_far) is called as pieces are hashed.
    """
    storage = lt.file_storage()
    for file_name, size in files:
        storage.add_file(f"{name}/{file_name}", size)
    piece_size = piece_size_for(storage.total_size())
    creator = lt.create_torrent(storage, piece_size, lt.create_torrent.v1_only)
    creator.set_priv(True)
    creator.set_creator("boottorrent")
    total = storage.total_size()

    def piece_done(index: int) -> None:
        if on_piece:
            on_piece(min((index + 1) * piece_size, total))

    lt.set_piece_hashes(creator, str(save_path), piece_done)
    entry = creator.generate()
    # The creation date would make two registrations of the same files differ
    # byte for byte; the infohash never depends on it.
    entry.pop(b"creation date", None)
    return lt.bencode(entry)


def info_hash(torrent: bytes) -> str:
    return str(load(torrent).info_hashes().v1)


def read_checked(path: Path, infohash: str) -> bytes:
    """The torrent stored at path; ValueError unless it is intact and has this infohash."""
    torrent = path.read_bytes()
    found = info_hash(torrent)
    if found != infohash:
        raise ValueError(f"infohash {found}, registered {infohash}")
    return torrent


def with_urls(torrent: bytes, tracker_url: str, web_seed: str) -> bytes:
    """The torrent with our tracker and the server's HTTP web seed (BEP 19)."""
    entry = lt.bdecode(torrent)
    entry[b"announce"] = tracker_url.encode()
    entry[b"url-list"] = [web_seed.encode()]
    return lt.bencode(entry)


def load(torrent: bytes) -> lt.torrent_info:
    """Parse a torrent; raises ValueError with libtorrent's reason if corrupt."""
    try:
        decoded = lt.bdecode(torrent)
        if decoded is None:
            raise ValueError("not bencoded data")
        return lt.torrent_info(decoded)
    except RuntimeError as error:
        raise ValueError(str(error)) from None
