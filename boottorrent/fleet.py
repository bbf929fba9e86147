"""The fleet: what the server knows of the machines it booted (only those:
trust.py), and the boot storm's rules for the pivotal's shared parts: where
a machine's /stage gets them (a machine that serves them, the server, or
"wait"), and what a machine's report is answered (when to report next, who
is coming, who waits).

The seeder's HTTP side (web.py) routes requests here and holds no rule of
its own; the storm's tuning numbers are named here, once.
"""

from __future__ import annotations

import ipaddress
import random
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

from boottorrent.pivotal.wire import Report

# Reports the server takes per second: each machine is told to report
# every max(1, machines / REPORT_RATE) s (and adds its own jitter). The
# seeder could take 200 a second (`make bench`, "Reports"), but each report
# costs the server's link a TCP connection, about 500 bytes: in a storm of
# 250 machines, reports every 1.25 s came to a sixth of the pivotal's size
# in the server's bytes; every 5 s, they are a fraction of that.
REPORT_RATE = 50
# A machine that fetched the config part of its boot is "coming" until it
# reports from the pivotal, for this long at most: the pivotal's download in
# a storm, the kernel's start-up and DHCP take well under it.
COMING_FOR = 180  # seconds
MACHINES_MAX = 10000  # entries kept; the oldest go first
COMING_PHASES = ("pxe", "pivotal", "dhcp")
SERVING_PHASES = ("downloading", "seeding", "running", "exited")
PEER_ALIVE = 10.0  # seconds, or three report intervals when they are longer
LOAD_WINDOW = 60.0
SERVER_SENDS = 1  # machines the server sends the pivotal's files to at once
SERVER_SENDS_OVERDUE = 4  # ... when they waited HOLD_MAX s or a peer failed them
# ... and each machine that serves them: one after the other, each at its
# link's full rate, so that the machines serving double every transfer's time.
PEER_SENDS = 1
# Peers that may fail a machine (its /stage tries again each time)
# before the server sends it the files itself: the peer that failed it may
# be gone or overloaded, and another one saves the server's link a copy.
PEER_TRIES = 2
SERVER = "server"
WAIT = "wait"
# The pivotal's /stage asks again after a 503 with Retry-After, with no
# limit: its tries are not used up (pivotal/stage). The machines held ask
# HELD_ASKS times a second in all (each asks costs the server's link about
# 500 bytes): a peer that becomes free is asked for within a fraction of a
# second, and a storm's hundreds of held machines do not flood the link.
# Varied so that they do not ask at the same moment.
HELD_ASKS = 10  # per second
RETRY_AFTER = (2, 30)  # seconds, at least and at most
# Seconds a machine is held for a peer at most while the swarm makes no
# progress towards serving it (Machines.pivotal_source): in a storm the
# machines that serve each other grow in number as a tree does, and hold
# the others much longer than this.
HOLD_MAX = 60.0
# A machine sent to a peer is taken to be fetching from it until it asks the
# server for a part again or reports from its pivotal, or for this long.
TRANSFER_MAX = 60.0
SERVER_GAP = 2.0  # seconds the server's turn is kept for a machine between two files


@dataclass
class PivotalFetch:
    """One machine's fetch of the pivotal's shared files, as the server sees it."""

    first_asked: float
    source: str = ""  # SERVER, WAIT, a peer's address, or "" (no transfer)
    since: float = 0.0  # when source was given (SERVER: its last transfer's end)
    sending: bool = False  # a transfer from the server in flight
    tries: int = 1  # the /stage's try it asked in last
    peer: str = ""  # the peer it was sent to for its last file, if it was
    failed_peers: set[str] = field(default_factory=set)  # the last peers of its failed tries


class Machines:
    """What the server knows of every machine, by the address it talks
    from: the last report of its pivotal, or, before that, that it fetched
    the config part of its boot (phase "pxe"). Only machines the server
    booted are here (trust.py): a report's body does not choose whose entry
    it replaces. Entries expire forget_after seconds after their last
    report, and there are at most MACHINES_MAX reporting and MACHINES_MAX
    on their way (in tables of their own: machines that only fetch config
    parts never push out those that report)."""

    def __init__(self, forget_after: float, clock: Callable[[], float] = time.time):
        self.forget_after = forget_after
        self.clock = clock
        self._lock = threading.Lock()
        # In the order they were last heard from: the oldest first.
        self._by_address: dict[str, dict] = {}
        self._on_their_way: dict[str, dict] = {}  # phase "pxe"
        self._redirects: dict[str, list[float]] = {}  # when each was sent a machine
        self._redirects_given = 0
        self._fetches: dict[str, PivotalFetch] = {}  # by the fetching machine's address
        # When the swarm last moved towards serving the pivotal's files to
        # the machines held, and the server's streams of them in flight.
        self._last_progress = 0.0
        self._pivotal_streams = 0

    def _put(self, table: dict[str, dict], address: str, entry: dict) -> None:
        """entry into table (the other table forgets address)."""
        self._by_address.pop(address, None)
        self._on_their_way.pop(address, None)
        table[address] = entry
        self._expire()
        while len(table) > MACHINES_MAX:
            del table[next(iter(table))]

    def _expire(self) -> None:
        oldest = self.clock() - self.forget_after
        for table in (self._by_address, self._on_their_way):
            while table:
                address, entry = next(iter(table.items()))
                if entry["received"] >= oldest:
                    break
                del table[address]

    def add(self, report: Report, address: str) -> dict:
        """File a report; the answer for the machine that sent it."""
        entry = {**asdict(report), "address": address, "received": self.clock()}
        with self._lock:
            previous = self._by_address.get(address)
            self._put(self._by_address, address, entry)
            if self._fetches.pop(address, None):  # it runs its pivotal: it has the files
                self._last_progress = entry["received"]
            if report.serving and (previous is None or previous["serving"] != report.serving):
                self._last_progress = entry["received"]
            interval = max(1.0, len(self._by_address) / REPORT_RATE)
            coming = self._coming(report.image, address)
            waiting = self._waiting()
        return {"interval": round(interval, 2), "coming": coming, "waiting": waiting}

    def on_its_way(self, address: str, mac: str, image: str) -> None:
        """The machine at address, of this MAC, fetched the config part of
        its boot (image: the one it chose, "" when not known): it is coming,
        for COMING_FOR s from the first such fetch since it last reported
        (fetching it again and again keeps nobody seeding)."""
        with self._lock:
            now = self.clock()
            previous = self._on_their_way.get(address)
            self._put(self._on_their_way, address,
                      {**asdict(Report(phase="pxe", image=image, mac=mac)),
                       "address": address, "received": now,
                       "coming_since": previous["coming_since"] if previous else now})

    def _coming(self, image: str, besides: str) -> int:
        since = self.clock() - COMING_FOR
        return sum(1 for table in (self._by_address, self._on_their_way)
                   for address, entry in table.items()
                   if entry["phase"] in COMING_PHASES
                   and entry.get("coming_since", entry["received"]) >= since
                   and entry["image"] in ("", image) and address != besides)

    def _waiting(self) -> int:
        """Machines held for the pivotal's files (told to ask again) lately."""
        recently = self.clock() - 3 * RETRY_AFTER[1]
        return sum(1 for f in self._fetches.values() if f.source == WAIT and f.since >= recently)

    def retry_after(self) -> int:
        """The seconds a machine told to wait is told to ask again after."""
        with self._lock:
            waiting = self._waiting()
        seconds = waiting / HELD_ASKS * random.uniform(0.75, 1.25)
        return round(min(max(seconds, RETRY_AFTER[0]), RETRY_AFTER[1]))

    def _swarm_test(self) -> Callable[[dict], bool]:
        """Whether an entry is of a machine in the swarm: it reported from
        its pivotal lately, downloading or seeding."""
        oldest = self.clock() - max(PEER_ALIVE, 3 * len(self._by_address) / REPORT_RATE)
        return lambda entry: entry["phase"] in SERVING_PHASES and entry["received"] >= oldest

    def _alive(self, infohash: str, besides: str) -> list[tuple[str, dict]]:
        """The machines in the swarm that serve, or would serve, this pivotal."""
        in_swarm = self._swarm_test()
        return [(address, entry) for address, entry in self._by_address.items()
                if in_swarm(entry) and entry["serving"] in ("", infohash) and address != besides]

    def in_swarm(self, address: str) -> bool:
        with self._lock:
            entry = self._by_address.get(address)
            return entry is not None and self._swarm_test()(entry)

    def serving(self, infohash: str) -> list[str]:
        """The machines that serve the pivotal of this infohash."""
        with self._lock:
            return [a for a, e in self._alive(infohash, "") if infohash and e["serving"] == infohash]

    def pivotal_source(self, infohash: str, asker: str, tries: int) -> str:
        """Who sends asker the shared pivotal file it asks for: a peer's
        address, SERVER, or WAIT (asker is to ask again shortly).

        So that the pivotal leaves the server as few times as it can: a
        machine that serves it and sends to fewer than PEER_SENDS machines
        (the least loaded); else, while a machine in the swarm is about to
        serve it (it fetches the files once it hears machines wait), or one
        the server sent them to boots them (for HOLD_MAX s at most), WAIT;
        else the server, to SERVER_SENDS machines at once. A machine held
        for HOLD_MAX s in which the swarm did not move (no machine got its
        files, began to serve them or was sent to a peer, and the server
        streamed none of them to the swarm) is overdue: the server sends to
        it rather than wait for the swarm. tries: the /stage's try; a
        machine that asks on a later try than before, whose last file came
        from a peer (that peer failed it), goes to another free peer while
        fewer than PEER_TRIES peers failed it, and is otherwise overdue. The server
        sends to SERVER_SENDS_OVERDUE overdue machines at once at most,
        since in a storm all the machines held are overdue together and the
        server's link shared by them all would give none its files in time.
        A machine whose turn it is (the server sent it the previous file)
        keeps it.
        """
        with self._lock:
            now = self.clock()
            fetch = self._fetches.pop(asker, None) or PivotalFetch(first_asked=now)
            self._fetches[asker] = fetch  # the newest last
            while len(self._fetches) > MACHINES_MAX:
                del self._fetches[next(iter(self._fetches))]
            if fetch.source == SERVER and now - fetch.since < SERVER_GAP:
                fetch.since = now
                return SERVER
            if tries > fetch.tries:
                if fetch.peer:
                    fetch.failed_peers.add(fetch.peer)
                fetch.tries, fetch.peer = tries, ""
            failed_peers = fetch.failed_peers
            overdue = bool(failed_peers) or (
                not self._pivotal_streams
                and now - max(fetch.first_asked, self._last_progress) >= HOLD_MAX)
            busy: dict[str, int] = {}
            booting = False
            for address, other in self._fetches.items():
                if address == asker:
                    continue
                if other.source == SERVER:
                    active = other.sending or now - other.since < SERVER_GAP
                    booting = booting or (not active and now - other.since < HOLD_MAX)
                else:
                    # WAIT holds nobody's upload; "" is a transfer from a peer that ended.
                    active = (other.source not in (WAIT, "")
                              and now - other.since < TRANSFER_MAX)
                if active:
                    busy[other.source] = busy.get(other.source, 0) + 1
            alive = self._alive(infohash, asker) if infohash else []
            free = [address for address, entry in alive
                    if entry["serving"] == infohash and busy.get(address, 0) < PEER_SENDS
                    and address not in failed_peers]
            if free and len(failed_peers) < PEER_TRIES:
                for address in list(self._redirects):
                    self._redirects[address] = [t for t in self._redirects[address]
                                                if t > now - LOAD_WINDOW]
                chosen = min(free, key=lambda a: (busy.get(a, 0),
                                                  len(self._redirects.get(a, ()))))
                self._redirects.setdefault(chosen, []).append(now)
                self._redirects_given += 1
                self._last_progress = now
                fetch.source, fetch.since, fetch.peer = chosen, now, chosen
                return chosen
            server_may = (SERVER_SENDS_OVERDUE if overdue
                          else SERVER_SENDS if not alive and not booting else 0)
            if busy.get(SERVER, 0) < server_may:
                fetch.source, fetch.since, fetch.peer = SERVER, now, ""
                return SERVER
            fetch.source, fetch.since = WAIT, now
            return WAIT

    def sending(self, asker: str, started: bool) -> None:
        """The server started or ended a transfer of a shared file to asker."""
        with self._lock:
            fetch = self._fetches.get(asker)
            if fetch and fetch.source == SERVER:
                fetch.sending, fetch.since = started, self.clock()
                if not started:
                    self._last_progress = fetch.since  # it got a file

    def streaming_pivotal(self, started: bool) -> None:
        """The server started or ended a stream of the pivotal's files to a
        machine in the swarm (the first of its chain), which will serve them."""
        with self._lock:
            self._pivotal_streams += 1 if started else -1
            self._last_progress = self.clock()

    def redirects_given(self) -> int:
        return self._redirects_given

    def all(self) -> list[dict]:
        with self._lock:
            self._expire()
            return sorted([*self._by_address.values(), *self._on_their_way.values()],
                          key=lambda r: ipaddress.ip_address(r["address"]))
