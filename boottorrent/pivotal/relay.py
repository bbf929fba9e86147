"""The chain: this machine streams a torrent's bytes from the machine that
asked the server before it (or from the server, when it is the first),
writes them to the torrent's files, and passes them on to the machine
after it as they arrive (fleet/chain.py on the server says who is before whom).
Every piece leaves the server once and every machine's link carries the
image once each way, as in a pipeline; BitTorrent takes what the chain
does not bring: pieces before the stream's start, the rest once the chain
breaks for good.

The bytes stay out of Python's hands as far as it can manage: the kernel
receives them into a buffer that stays in the CPU's cache, from which
they are written to the files (spans.py), a second thread hashes them
there (without the GIL), and the machine after this
one gets them from the files with sendfile. libtorrent is not told of the
chain's pieces while they arrive: its Python binding copies a piece byte by
byte (add_piece) and would hash it once more. The files' SHA-256, computed
on the way (digest.py), vouches for them instead, against the digests the
server gave; once they match, libtorrent takes the files over as they
are (Swarm._hand_over), so that BitTorrent serves them. If
they do not match (a source sent wrong bytes), libtorrent checks every
piece and fetches the wrong ones (Relay.settle)."""

from __future__ import annotations

import os
import queue
import socket
import threading
import urllib.parse
import urllib.request
from collections.abc import Iterable
from pathlib import Path

import libtorrent as lt

from boottorrent.pivotal.console import say
from boottorrent.pivotal.digest import StreamDigest
from boottorrent.pivotal.paths import CHAIN
from boottorrent.pivotal.relayserver import RelayServer
from boottorrent.pivotal.source import READ_TIMEOUT, Source
from boottorrent.pivotal.spans import FileSpan
from boottorrent.pivotal.wire import TOKEN_HEADER, ChainAnswer

# Tries of one source before it is reported to the server, which names
# another: a machine's link drops a few packets while dozens of machines
# start at once (seen in the lab: SYNs unanswered for 2-3 s), and a source
# reported leaves the chain, where its own source then sends to two.
TRIES = 3
# Failures in a row after which BitTorrent takes the rest.
FAILURES_MAX = 3 * TRIES
# Pieces the chain still brings once BitTorrent takes the end of the image
# from a seed (Relay.use_seeds).
LEAD_PIECES = 16
SEND_MAX = 1 << 20  # bytes handed to the kernel at a time
CHUNK = 256 * 1024  # bytes received (or hashed) at a time
DEFAULT_PRIORITY = 4


class Relay:
    """One torrent's place in the chain."""

    def __init__(self, handle: lt.torrent_handle, torrent: lt.torrent_info,
                 server_url: str, token: str, save_path: Path, server: RelayServer):
        """server_url: the server's HTTP side (http://ADDRESS:PORT); token:
        this machine's, which the server asks for (wire.TOKEN_FILE)."""
        self.handle = handle
        self.torrent = torrent
        self.infohash = str(torrent.info_hashes().v1)
        self.server_url = server_url
        self.token = token
        self.server = server
        self.piece_length = torrent.piece_length()
        self.pieces = torrent.num_pieces()
        self.total = torrent.total_size()
        files = torrent.files()
        self.layout = [(save_path / files.file_path(i), files.file_size(i))
                       for i in range(files.num_files())]
        self.files = FileSpan(self.layout)
        self.digest = StreamDigest(self.layout)
        self.from_server = 0  # bytes received from the server, and from the machine before
        self.from_peers = 0
        self.sent = 0  # bytes passed on
        self.done = False  # the chain brings nothing more
        self.settled = False  # settle() was called
        self.verified = False  # the files match the server's digests (settle)
        self.source: Source | None = None  # the stream in progress
        self.stopped = threading.Event()  # the stream from the source
        self.closed = threading.Event()  # this machine's relay of the torrent
        self.arrived = threading.Event()  # the chain brought and hashed all it will
        self.changed = threading.Condition()
        # The chain brings the bytes from covered_from to end (position: the
        # next one); BitTorrent the pieces before and after.
        self.covered_from = self.position = 0
        self.end = self.total
        self.written: set[int] = set()  # whole pieces in the files, from the chain
        # Pieces left to BitTorrent: the chain never writes them, so that
        # libtorrent's writes and the chain's never meet in one piece.
        self.bittorrent: set[int] = set()
        self.to_hash: queue.SimpleQueue[int | None] = queue.SimpleQueue()
        self.seeds_used = False
        server.relays[self.infohash] = self
        self.hasher = threading.Thread(target=self._hash_loop, name="chain-hasher", daemon=True)
        self.hasher.start()
        self.thread = threading.Thread(target=self._loop, name="chain", daemon=True)
        self.thread.start()

    @staticmethod
    def hold_back(params: lt.add_torrent_params) -> None:
        """A torrent the chain brings, to be added: BitTorrent fetches none
        of its pieces until the relay hands it some. From the moment it is
        added, or its first requests would land in the pieces the chain
        writes and hashes (a peer's wrong bytes in a piece the files'
        digest vouches for)."""
        params.piece_priorities = [0] * params.ti.num_pieces()

    # ------------------------------------------------------------ upstream

    def _loop(self) -> None:
        source: str | None = None
        failed, tries, failures = "", 0, 0
        try:
            while not self.stopped.is_set() and failures < FAILURES_MAX:
                if source is None:
                    source = self._ask(failed)
                    if source is None:
                        failures += 1
                        self.stopped.wait(1.0)
                        continue
                before = self.position
                try:
                    self._stream(source)
                    break
                except (OSError, ValueError) as error:
                    say(f"chain: {source or 'the server'}: {error}")
                if self.position > before:
                    failures, tries = 0, 0
                failures, tries = failures + 1, tries + 1
                if tries >= TRIES and source:  # the server is never left out of the chain
                    failed, source, tries = source, None, 0
                self.stopped.wait(0.5)
        finally:
            self.to_hash.put(None)
            self.hasher.join()
            with self.changed:
                self.done = True
                self.changed.notify_all()
            self._to_bittorrent(range(self.pieces))
            self.arrived.set()

    def _ask(self, failed: str) -> str | None:
        query = urllib.parse.urlencode({"port": self.server.port, "failed": failed})
        try:
            asked = urllib.request.Request(f"{self.server_url}{CHAIN}/{self.infohash}?{query}",
                                           headers={TOKEN_HEADER: self.token})
            with urllib.request.urlopen(asked, timeout=READ_TIMEOUT) as response:
                return ChainAnswer.from_json(response.read(4096)).source
        except (OSError, ValueError):
            return None

    def _stream(self, source: str) -> None:
        # The token goes to the server only: another machine has no use for it.
        stream = Source(source or urllib.parse.urlsplit(self.server_url).netloc,
                        self.infohash, self.position, self.piece_length,
                        "" if source else self.token)
        self.source = stream
        buffer = memoryview(bytearray(CHUNK))  # reused, so that it stays in the cache
        try:
            self._skip_to(stream.start)
            while self.position < self.end and not self.stopped.is_set():
                piece, within = divmod(self.position, self.piece_length)
                piece_end = min(self.end, piece * self.piece_length
                                + self.torrent.piece_size(piece))
                count = stream.recv_into(buffer[:piece_end - self.position])
                if not count:
                    raise OSError(f"the stream ended at byte {self.position}")
                self.files.write(self.position, buffer[:count])
                if source:
                    self.from_peers += count
                else:
                    self.from_server += count
                with self.changed:
                    self.position += count
                    if self.position == piece_end and piece_end - piece * self.piece_length \
                            == self.torrent.piece_size(piece):
                        self.written.add(piece)
                        self.to_hash.put(piece)
                    self.changed.notify_all()
        finally:
            stream.close()

    def _hash_loop(self) -> None:
        """Hash each piece the chain wrote, beside the stream."""
        buffer = memoryview(bytearray(CHUNK))
        while (piece := self.to_hash.get()) is not None:
            offset = piece * self.piece_length
            end = offset + self.torrent.piece_size(piece)
            while offset < end:
                count = self.files.read_into(offset, buffer[:end - offset])
                self.digest.feed(offset, buffer[:count])
                offset += count

    def _skip_to(self, start: int) -> None:
        """The source streams from start (a piece's first byte, past what
        was asked): what lies before comes from BitTorrent."""
        if start == self.position and start >= self.covered_from:
            return
        skipped = range(self.position // self.piece_length, start // self.piece_length)
        with self.changed:
            if start > self.position:
                self.covered_from = start
            self.position = start
            self.changed.notify_all()
        self._to_bittorrent(skipped)

    def use_seeds(self, peers: list[lt.peer_info], server: str) -> None:
        """Once a peer other than the server holds the whole image (a
        machine of an earlier boot wave, still seeding), BitTorrent fetches
        the end of the image while the chain brings its start: the seed's
        link is otherwise idle."""
        if self.seeds_used or self.done:
            return
        if not any(p.flags & lt.peer_info.seed and p.ip[0] != server for p in peers):
            return
        self.seeds_used = True
        with self.changed:
            lead = self.position // self.piece_length + LEAD_PIECES
            if lead < self.pieces:
                self.end = lead * self.piece_length
        self._to_bittorrent(range(min(lead, self.pieces), self.pieces), priority=1)

    def _to_bittorrent(self, pieces: Iterable[int], priority: int = DEFAULT_PRIORITY) -> None:
        with self.changed:
            handed = [p for p in pieces if p not in self.written and p not in self.bittorrent]
            self.bittorrent.update(handed)
        if handed:
            self.handle.prioritize_pieces([(p, priority) for p in handed])

    # ------------------------------------------------------------ the end

    def covers(self, have: list[bool]) -> bool:
        """Every piece is in the files: the chain's, and BitTorrent's
        (have: libtorrent's pieces, torrent_status.pieces)."""
        if len(have) < self.pieces:  # a torrent being checked lists none
            return False
        with self.changed:
            return all(have[p] or p in self.written for p in range(self.pieces))

    def done_bytes(self) -> int:
        """Bytes of the chain's pieces in the files."""
        with self.changed:
            return sum(self.torrent.piece_size(p) for p in self.written)

    def settle(self, expected: dict[Path, str]) -> dict[Path, str]:
        """Once every piece is in the files (covers): stop the stream, and
        check the files against the SHA-256 the server gave (expected;
        every file of the torrent). Returns the files' digests when they
        match, and libtorrent then is to seed them (Swarm._hand_over). Else
        (wrong bytes came, or nothing vouches for them) libtorrent is set
        to check every piece and fetch what is wrong, and {} is returned."""
        self.settled = True
        self._stop_stream()
        self.thread.join()
        self.files.close()
        digests = self.digest.finish()
        if expected and all(expected.get(path) == digest for path, digest in digests.items()):
            self.verified = True
            return digests
        if expected:
            say(f"chain: the files of {self.infohash[:8]} do not match their SHA-256: "
                "checking every piece")
        self.handle.prioritize_pieces([DEFAULT_PRIORITY] * self.pieces)
        self.handle.force_recheck()
        with self.changed:
            self.written.clear()
        return {}

    def read_piece(self, piece: int) -> bytes:
        """A piece's bytes, from the files."""
        offset = piece * self.piece_length
        data = memoryview(bytearray(self.torrent.piece_size(piece)))
        done = 0
        while done < len(data):
            done += self.files.read_into(offset + done, data[done:])
        self.files.close()
        return data.tobytes()

    # ------------------------------------------------------------ downstream

    def holds(self, piece: int) -> bool:
        """The whole piece is in the files."""
        if self.verified or piece in self.written:
            return True
        # Once settled without the server's digests vouching for the files
        # (the pivotal's share has none; or they did not match), libtorrent
        # checks every piece again: then what it has is what holds, the
        # chain's pieces too, or the machines after this one would wait for
        # them for ever (and this one seed for seed_time_max).
        return (self.settled or piece in self.bittorrent) and self.handle.have_piece(piece)

    def first_servable(self, offset: int) -> int:
        """Where a stream asked from offset starts: offset itself, or,
        when this machine lacks pieces before the bytes its own stream
        brings, the first of those."""
        covered = self.covered_from
        if offset >= covered or all(self.holds(p) for p in range(
                offset // self.piece_length, covered // self.piece_length)):
            return offset
        return covered

    def _ready(self, offset: int) -> int:
        """How many bytes from offset on are in the files, to be sent."""
        piece, within = divmod(offset, self.piece_length)
        if self.covered_from <= offset < self.position and (self.verified or not self.settled):
            return self.position - offset
        if self.holds(piece):
            return self.torrent.piece_size(piece) - within
        return 0

    def serve(self, sock: socket.socket, offset: int) -> None:
        """Send the stream from offset to sock, as the bytes arrive: the
        chain's, or BitTorrent's pieces, from the files. It waits for as
        long as this machine is in the swarm: the machine after it then
        waits too, rather than leave the chain while this one repairs its
        own link."""
        # Blocking sends, given up on by the kernel when the machine after
        # this one acknowledges nothing for READ_TIMEOUT (it crashed).
        sock.settimeout(None)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, int(READ_TIMEOUT * 1000))
        opened: dict[int, int] = {}
        try:
            while offset < self.total and not self.closed.is_set():
                with self.changed:
                    ready = self._ready(offset)
                    if not ready:
                        self.changed.wait(0.5)
                        continue
                index, within, left = self.files.locate(offset)
                if index not in opened:
                    opened[index] = os.open(self.layout[index][0], os.O_RDONLY | os.O_CLOEXEC)
                count = os.sendfile(sock.fileno(), opened[index], within,
                                    min(ready, left, SEND_MAX))
                if not count:
                    raise OSError(f"{self.layout[index][0]}: shorter than the torrent says")
                self.sent += count
                offset += count
        finally:
            for descriptor in opened.values():
                os.close(descriptor)

    def _stop_stream(self) -> None:
        self.stopped.set()
        if self.source:  # a source that waits for its own: no wait here
            self.source.shutdown()

    def stop(self) -> None:
        self._stop_stream()
        self.closed.set()
        self.server.relays.pop(self.infohash, None)
