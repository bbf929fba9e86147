"""The pieces the server gives this machine (assign.py on the server),
fetched over HTTP from the image's web seed (Range requests of its files)
and handed to libtorrent, in a thread of their own. libtorrent checks each
one and tells the peers this machine has it; everything else comes from
the peers."""

from __future__ import annotations

import json
import threading
import urllib.parse
import urllib.request

import libtorrent as lt


# Answers missed in a row (a server without /pieces, or gone) after which
# this machine takes everything from the swarm.
FAILURES_MAX = 5


class ServerPieces:
    """Asks the server for a piece, fetches it, and asks again, until the
    server says it gives no more or this machine has them all."""

    def __init__(self, handle: lt.torrent_handle, torrent: lt.torrent_info,
                 server_url: str, web_seed: str):
        """server_url: the server's HTTP side (http://ADDRESS:PORT)."""
        self.handle = handle
        self.torrent = torrent
        self.url = f"{server_url}/pieces/{torrent.info_hashes().v1}"
        self.web_seed = web_seed
        self.received = 0  # bytes
        self.done = False  # the server has given every piece
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        failures = 0
        while not self.stopped.is_set() and failures < FAILURES_MAX:
            if self.handle.status().is_seeding:
                break
            try:
                with urllib.request.urlopen(self.url, timeout=10) as response:
                    answer = json.loads(response.read(4096))
                failures = 0
            except (OSError, ValueError):
                answer, failures = {}, failures + 1
            if not isinstance(answer, dict) or answer.get("done"):
                break
            piece = answer.get("piece")
            if not isinstance(piece, int) or not 0 <= piece < self.torrent.num_pieces():
                wait = answer.get("wait")
                self.stopped.wait(min(float(wait), 5.0) if isinstance(wait, (int, float))
                                  else 1.0)
                continue
            if self.handle.have_piece(piece):
                continue
            try:
                data = self._read(piece)
            except OSError:
                failures += 1
                continue  # the peers will have it, or the gate lets the server in
            self.handle.add_piece(piece, data, 0)
            self.received += len(data)
        self.done = True

    def _read(self, piece: int) -> bytes:
        files = self.torrent.files()
        parts = []
        for part in self.torrent.map_block(piece, 0, self.torrent.piece_size(piece)):
            url = self.web_seed
            if url.endswith("/"):
                url += urllib.parse.quote(files.file_path(part.file_index))
            request = urllib.request.Request(url, headers={
                "Range": f"bytes={part.offset}-{part.offset + part.size - 1}"})
            with urllib.request.urlopen(request, timeout=30) as response:
                data = response.read(part.size + 1)
            if len(data) != part.size:
                raise OSError(f"{url}: {len(data)} bytes instead of {part.size}")
            parts.append(data)
        return b"".join(parts)

    def stop(self) -> None:
        self.stopped.set()
