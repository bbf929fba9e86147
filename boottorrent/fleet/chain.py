"""Who sends a machine an image's bytes: the server, or the machine that
asked before it (GET /chain/INFOHASH).

The machines that boot an image form a chain in the order they ask: the
first streams the torrent's bytes from the server, every other one from
the machine before it, and each passes the bytes on as they arrive
(pivotal/relay.py). The server sends the image once, every machine sends
it once, and the last machine holds it one link's transfer time, plus a
short delay per machine, after the first byte left the server: the
classic pipeline, close to the physical limit on a switched LAN
(bench/RESULTS.md). BitTorrent fills what a broken chain leaves out.

A machine whose source failed asks again naming it: the failed machine
leaves the chain and the asker streams from the one before. A machine
that asks from the address of a member under another port (it started
its pivotal again) replaces that member. Machines that
left the swarm (the fleet's liveness rule: machines.py) are passed over,
so the first machine of the next boot wave streams from the server.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

from boottorrent.pivotal.wire import CHAIN_SERVER as SERVER


@dataclass
class Link:
    member: str  # "ADDRESS:PORT" of the machine's relay
    joined: float


class Chains:
    def __init__(self, alive: Callable[[str, float], bool], clock: Callable[[], float]):
        """alive(address, joined): the machine at address, which joined a
        chain at that time, is alive (the fleet's rule)."""
        self.alive = alive
        self.clock = clock
        self._lock = threading.Lock()
        self._chains: dict[str, list[Link]] = {}  # by infohash, in joining order

    def offer(self, infohash: str) -> None:
        with self._lock:
            self._chains.setdefault(infohash, [])

    def withdraw(self, infohash: str) -> None:
        with self._lock:
            self._chains.pop(infohash, None)

    def source(self, infohash: str, member: str, failed: str = "") -> str | None:
        """The relay ("ADDRESS:PORT") member streams infohash from, SERVER,
        or None for a torrent the server does not offer. failed: the
        source that failed member, which leaves the chain; a member names
        its own source only (any other is not its to judge)."""
        with self._lock:
            chain = self._chains.get(infohash)
            if chain is None:
                return None
            now = self.clock()
            members = [link.member for link in chain]
            if member not in members or members.index(member) == 0 \
                    or members[members.index(member) - 1] != failed:
                failed = ""
            address = member.rpartition(":")[0]
            # A machine asking anew from the same address (its pivotal's next
            # attempt, or its next boot) is no longer its former self, whose
            # relay is gone: nobody streams from that.
            chain[:] = [link for link in chain if link.member != failed
                        and (link.member == member or (self._alive(link) and
                                                       link.member.rpartition(":")[0] != address))]
            position = next((i for i, link in enumerate(chain) if link.member == member), None)
            if position is None:
                chain.append(Link(member, now))
                position = len(chain) - 1
            return chain[position - 1].member if position else SERVER

    def _alive(self, link: Link) -> bool:
        return self.alive(link.member.rpartition(":")[0], link.joined)

    def members(self, infohash: str) -> list[str]:
        with self._lock:
            return [link.member for link in self._chains.get(infohash, [])]
