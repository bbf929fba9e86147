"""Which piece the server sends a machine itself (GET /pieces/INFOHASH).

Left to BitTorrent, every machine asks the server for the pieces only the
server has, the same ones for all of them, and the server sends most
pieces several times before the machines can trade them (bench/RESULTS.md).
Here the server decides: each piece goes to one machine, which passes it
on to the others, and a few machines at a time fetch one, so that each
piece is whole, and can be passed on, early. A piece is given again only
once the machine it was given to has left the swarm (the next boot wave).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

SENDS_AT_ONCE = 4  # machines fetching a piece from the server at the same time
FETCH_MAX = 10.0  # seconds after which a machine's piece counts as fetched (or lost)
WAIT = -1  # ask again shortly
DONE = -2  # every piece is with a machine in the swarm: take the rest from the peers


class PieceAssigner:
    def __init__(self, in_swarm: Callable[[str], bool],
                 clock: Callable[[], float] = time.monotonic):
        self.in_swarm = in_swarm
        self.clock = clock
        self._lock = threading.Lock()
        # infohash -> for each piece, (the machine it was given to, when) or None
        self._given: dict[str, list[tuple[str, float] | None]] = {}
        self._fetching: dict[tuple[str, str], float] = {}  # (infohash, machine) -> since

    def offer(self, infohash: str, pieces: int) -> None:
        """Give the pieces of this torrent (a torrent offered already keeps its state)."""
        with self._lock:
            self._given.setdefault(infohash, [None] * pieces)

    def withdraw(self, infohash: str) -> None:
        with self._lock:
            self._given.pop(infohash, None)

    def next_piece(self, infohash: str, machine: str) -> int | None:
        """The piece machine fetches from the server next, WAIT, DONE, or
        None for a torrent the server does not give. Asking again says the
        machine's last piece arrived."""
        with self._lock:
            given = self._given.get(infohash)
            if given is None:
                return None
            now = self.clock()
            self._fetching.pop((infohash, machine), None)
            for key, since in list(self._fetching.items()):
                if now - since >= FETCH_MAX:
                    del self._fetching[key]
            piece = self._free_piece(given, machine, now)
            if piece is None:
                return DONE
            if sum(1 for (ih, _) in self._fetching if ih == infohash) >= SENDS_AT_ONCE:
                return WAIT
            given[piece] = (machine, now)
            self._fetching[(infohash, machine)] = now
            return piece

    def _free_piece(self, given: list[tuple[str, float] | None], machine: str,
                    now: float) -> int | None:
        gone: dict[str, bool] = {}
        for piece, holder in enumerate(given):
            if holder is None:
                return piece
        for piece, (holder, since) in enumerate(given):  # type: ignore[misc]
            if holder != machine and now - since >= FETCH_MAX:
                if holder not in gone:
                    gone[holder] = not self.in_swarm(holder)
                if gone[holder]:
                    return piece
        return None
