"""The chain: this machine streams a torrent's bytes from the machine that
asked the server before it (or from the server, when it is the first),
hands each piece to libtorrent as it completes, and passes the bytes on to
the machine after it as they arrive (chain.py on the server says who is
before whom). Every piece leaves the server once and every machine's link
carries the image once each way, as in a pipeline; BitTorrent takes what
the chain does not bring: pieces before the stream's start, pieces that
fail their hash, the rest once the chain breaks for good."""

from __future__ import annotations

import http.client
import json
import re
import socket
import sys
import threading
import urllib.parse
import urllib.request
from collections.abc import Iterable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import libtorrent as lt

from boottorrent.pivotal.console import say

CHUNK = 64 * 1024
# Tries of one source before it is reported to the server, which names
# another: a machine's link drops a few packets while dozens of machines
# start at once (seen in the lab: SYNs unanswered for 2-3 s), and a source
# reported leaves the chain, where its own source then sends to two.
TRIES = 3
# Failures in a row after which BitTorrent takes the rest.
FAILURES_MAX = 3 * TRIES
CONNECT_TIMEOUT = 1.0  # seconds
# A source that sends nothing for this long is gone (a machine that
# crashed sends no FIN). A source that waits for its own source keeps the
# connection open and silent meanwhile, shorter than a chain repairs itself.
READ_TIMEOUT = 30.0
# Bytes kept in memory after their pieces completed (at least two pieces):
# the next machine may still be reading them, and libtorrent may not have
# written them yet.
KEPT_BYTES = 4 * 1024 * 1024
# What TCP may keep in flight towards this machine. With the default
# windows, every link of the chain fills its switch port's queue and each
# machine passes the bytes on that much later: 32 machines at 20 Mbit/s
# took 2-3 s longer (bench/RESULTS.md, "The chain").
RCVBUF = 16 * 1024
CONTENT_RANGE = re.compile(r"bytes (\d+)-\d+/\d+")
DEFAULT_PRIORITY = 4


class SmallWindowConnection(http.client.HTTPConnection):
    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
        self.sock.settimeout(CONNECT_TIMEOUT)
        self.sock.connect((self.host, self.port))
        self.sock.settimeout(READ_TIMEOUT)


class RelayServer(ThreadingHTTPServer):
    """This machine's side of the chain: GET /stream/INFOHASH (Range:
    bytes=N-) answers with the bytes from N on (or from where this
    machine's own stream started, said in Content-Range), as they arrive."""

    daemon_threads = True

    def __init__(self, address: str):
        self.relays: dict[str, Relay] = {}
        self.streaming = 0  # connections sending a stream
        self.lock = threading.Lock()
        super().__init__((address, 0), StreamHandler)
        self.port = self.server_address[1]
        threading.Thread(target=self.serve_forever, name="relay", daemon=True).start()

    def handle_error(self, request, client_address) -> None:
        """A successor that goes away (it has the rest, or failed) is the
        chain's normal life, not the socketserver's traceback on the console."""
        kind, error, _ = sys.exc_info()
        if not isinstance(error, OSError):
            say(f"relay: a stream to {client_address[0]} failed: "
                f"{kind.__name__ if kind else '?'}: {error}")

    def stop(self) -> None:
        for relay in list(self.relays.values()):
            relay.stop()
        self.shutdown()
        self.server_close()


class StreamHandler(BaseHTTPRequestHandler):
    server: RelayServer
    protocol_version = "HTTP/1.1"
    timeout = READ_TIMEOUT

    def log_message(self, format: str, *args) -> None:  # noqa: A002
        pass  # the console is for what the admin needs to see

    def do_GET(self) -> None:
        relay = self.server.relays.get(self.path.removeprefix("/stream/"))
        wanted = re.fullmatch(r"bytes=(\d{1,18})-", self.headers.get("Range", "bytes=0-"))
        if relay is None or wanted is None or int(wanted[1]) >= relay.total:
            self.send_error(HTTPStatus.NOT_FOUND)
            return
        start = relay.first_servable(int(wanted[1]))
        self.send_response(HTTPStatus.PARTIAL_CONTENT)
        self.send_header("Content-Range", f"bytes {start}-{relay.total - 1}/{relay.total}")
        self.send_header("Content-Length", str(relay.total - start))
        self.end_headers()
        with self.server.lock:
            self.server.streaming += 1
        try:
            relay.serve(self.wfile, start)
        finally:
            with self.server.lock:
                self.server.streaming -= 1


class Relay:
    """One torrent's place in the chain."""

    def __init__(self, handle: lt.torrent_handle, torrent: lt.torrent_info,
                 server_url: str, save_path: Path, server: RelayServer):
        """server_url: the server's HTTP side (http://ADDRESS:PORT)."""
        self.handle = handle
        self.torrent = torrent
        self.infohash = str(torrent.info_hashes().v1)
        self.server_url = server_url
        self.save_path = save_path
        self.server = server
        self.piece_length = torrent.piece_length()
        self.total = torrent.total_size()
        self.from_server = 0  # bytes received from the server, and from the machine before
        self.from_peers = 0
        self.sent = 0  # bytes passed on
        self.done = False  # the chain brings nothing more
        self.stopped = threading.Event()
        self.changed = threading.Condition()
        # The bytes from covered_from on arrive through the chain (position:
        # the next one); those before come from BitTorrent.
        self.covered_from = self.position = 0
        self.memory: dict[int, bytearray] = {}  # piece -> its bytes so far
        self.kept = max(2, KEPT_BYTES // self.piece_length)
        self.seeds_used = False
        # The chain brings the pieces: BitTorrent only what it cannot.
        handle.prioritize_pieces([0] * torrent.num_pieces())
        server.relays[self.infohash] = self
        self.thread = threading.Thread(target=self._loop, name="chain", daemon=True)
        self.thread.start()

    # ------------------------------------------------------------ upstream

    def _loop(self) -> None:
        source: str | None = None
        failed, tries, failures = "", 0, 0
        try:
            while not self.stopped.is_set() and failures < FAILURES_MAX:
                if self.handle.status().is_seeding:
                    break
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
            with self.changed:
                self.done = True
                self.changed.notify_all()
            self._to_bittorrent(range(self.torrent.num_pieces()))

    def _ask(self, failed: str) -> str | None:
        query = urllib.parse.urlencode({"port": self.server.port, "failed": failed})
        try:
            with urllib.request.urlopen(f"{self.server_url}/chain/{self.infohash}?{query}",
                                        timeout=READ_TIMEOUT) as response:
                answer = json.loads(response.read(4096))
        except (OSError, ValueError):
            return None
        source = answer.get("source") if isinstance(answer, dict) else None
        return source if isinstance(source, str) else None

    def _resume_at(self) -> int:
        """Where the next stream starts: the next byte, or the first piece
        still missing after it."""
        piece = self.position // self.piece_length
        while piece < self.torrent.num_pieces() and self.handle.have_piece(piece) \
                and piece not in self.memory:
            piece += 1
        return max(self.position, piece * self.piece_length)

    def _stream(self, source: str) -> None:
        host, port = (source.rsplit(":", 1) if source
                      else urllib.parse.urlsplit(self.server_url).netloc.rsplit(":", 1))
        connection = SmallWindowConnection(host, int(port))
        offset = self._resume_at()
        try:
            connection.request("GET", f"/stream/{self.infohash}",
                               headers={"Range": f"bytes={offset}-"})
            response = connection.getresponse()
            if response.status != HTTPStatus.PARTIAL_CONTENT:
                raise OSError(f"HTTP {response.status} {response.reason}")
            ranged = CONTENT_RANGE.match(response.headers.get("Content-Range", ""))
            start = int(ranged[1]) if ranged else -1
            if start < offset or (start > offset and start % self.piece_length):
                raise ValueError(f"a stream from byte {start}, asked from {offset}")
            self._skip_to(start)
            piece = start // self.piece_length
            while self.position < self.total and not self.stopped.is_set():
                chunk = response.read1(CHUNK)
                if not chunk:
                    raise OSError(f"the stream ended at byte {self.position}")
                if source:
                    self.from_peers += len(chunk)
                else:
                    self.from_server += len(chunk)
                while chunk:
                    size = self.torrent.piece_size(piece)
                    with self.changed:
                        data = self.memory.setdefault(piece, bytearray())
                        taken = chunk[:size - len(data)]
                        data += taken
                        self.position += len(taken)
                        self.changed.notify_all()
                    chunk = chunk[len(taken):]
                    if len(data) == size:
                        if not self.handle.have_piece(piece):
                            self.handle.add_piece(piece, bytes(data), 0)
                        self._forget(piece - self.kept)
                        piece += 1
                        if self.seeds_used and self.handle.status().is_seeding:
                            return  # the rest came from BitTorrent
        finally:
            connection.close()

    def _skip_to(self, start: int) -> None:
        """The source streams from start (a piece's first byte, past what
        was asked): what lies before comes from BitTorrent."""
        if start == self.position and start >= self.covered_from:
            return
        first = self.position // self.piece_length
        skipped = range(first, start // self.piece_length)
        with self.changed:
            for piece in skipped:
                self.memory.pop(piece, None)
            if start > self.position:
                self.covered_from = start
            self.position = start
            self.changed.notify_all()
        self._to_bittorrent(skipped)

    def use_seeds(self, peers: list[lt.peer_info], server: str) -> None:
        """Once a peer other than the server holds the whole image (a
        machine of an earlier boot wave, still seeding), BitTorrent fetches
        from the end of the image while the chain brings its start: the
        seed's link is otherwise idle."""
        if self.seeds_used or self.done:
            return
        if not any(p.flags & lt.peer_info.seed and p.ip[0] != server for p in peers):
            return
        self.seeds_used = True
        lead = self.kept + (self.position // self.piece_length)
        for piece in range(min(lead, self.torrent.num_pieces()), self.torrent.num_pieces()):
            if not self.handle.have_piece(piece):
                self.handle.piece_priority(piece, 1)

    def _forget(self, piece: int) -> None:
        """Drop a piece from memory; should libtorrent not have it (its
        hash failed), BitTorrent fetches it."""
        with self.changed:
            if self.memory.pop(piece, None) is None:
                return
        self._to_bittorrent([piece])

    def _to_bittorrent(self, pieces: Iterable[int]) -> None:
        for piece in pieces:
            if not self.handle.have_piece(piece):
                self.handle.piece_priority(piece, DEFAULT_PRIORITY)

    # ------------------------------------------------------------ downstream

    def first_servable(self, offset: int) -> int:
        """Where a stream asked from offset starts: offset itself, or,
        when this machine lacks pieces before the bytes its own stream
        brings, the first of those."""
        with self.changed:
            covered = self.covered_from
            if offset >= covered or all(self.handle.have_piece(p) for p in range(
                    offset // self.piece_length, covered // self.piece_length)):
                return offset
            return covered

    def serve(self, out, offset: int) -> None:
        """Write the stream from offset to out, as the bytes arrive: through
        the chain, or, for pieces it does not bring, from BitTorrent. It
        waits for as long as this machine is in the swarm: the machine
        after it then waits too, rather than leave the chain while this
        one repairs its own link."""
        while offset < self.total and not self.stopped.is_set():
            piece, within = divmod(offset, self.piece_length)
            with self.changed:
                data = self.memory.get(piece)
                chunk = bytes(data[within:within + CHUNK]) if data is not None else b""
                if not chunk and not (data is None and self.handle.have_piece(piece)):
                    self.changed.wait(0.5)
                    continue
            if not chunk:
                chunk = self._read(piece, within, CHUNK)
            out.write(chunk)
            self.sent += len(chunk)
            offset += len(chunk)

    def _read(self, piece: int, within: int, count: int) -> bytes:
        files = self.torrent.files()
        count = min(count, self.torrent.piece_size(piece) - within)
        parts = []
        for part in self.torrent.map_block(piece, within, count):
            with (self.save_path / files.file_path(part.file_index)).open("rb") as file:
                file.seek(part.offset)
                parts.append(file.read(part.size))
        return b"".join(parts)

    def stop(self) -> None:
        self.stopped.set()
        self.server.relays.pop(self.infohash, None)
