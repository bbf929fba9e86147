"""A machine as the server sees it, typed (README, "The boot storm", has
the picture):

    pxe ──► held ──► from a peer / from the server ──► pivotal ──► dhcp
    (its config part)  (its /stage asks for the shared parts)   │
                                                                ▼
    gone ◄── kexec / failed ◄── seeding ◄── downloading ◄───────┘
             (or running, exited: a qemu or exec image, still seeding)

Machine is its last report (or, before its pivotal reports, that it
fetched its config part: phase "pxe"); PivotalFetch is its /stage's fetch
of the pivotal's shared parts, from the first ask until its pivotal
reports. A machine is alive while the server heard from it lately
(Policy.alive_for): the one liveness rule, the chain's too.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from enum import Enum

from boottorrent.pivotal.wire import Report

# On its way to the swarm: it fetched its boot files, its pivotal starts.
COMING = frozenset({"pxe", "pivotal", "dhcp"})
# In the swarm: its pivotal runs and serves what it holds.
IN_SWARM = frozenset({"downloading", "seeding", "running", "exited"})
# The rest ("kexec", "failed") left the swarm; every entry is gone
# Policy.forget_machines_after s after the server last heard from it.
# Booted: its image runs, or ran (what `boottorrent status` and the status
# page call "booted").
BOOTED = frozenset({"kexec", "running", "exited"})


@dataclass
class Machine:
    address: str  # the address it talks from: the entry's key (trust.py)
    report: Report  # its last; phase "pxe" before its pivotal's first
    heard: float  # when the server last heard from it
    # Phase "pxe": its first fetch of a config part since it last reported.
    coming_since: float | None = None

    @property
    def phase(self) -> str:
        return self.report.phase

    def status(self) -> dict:
        """Its entry in /status."""
        extra = {} if self.coming_since is None else {"coming_since": self.coming_since}
        return {**asdict(self.report), "address": self.address, "received": self.heard, **extra}


class Via(Enum):
    """Where a machine's /stage gets the pivotal's shared parts from, as
    the server last decided."""

    ASKED = "asked"  # nothing decided yet
    WAIT = "wait"  # held: 503, ask again after Retry-After
    SERVER = "server"  # the server sends them
    PEER = "peer"  # redirected to a machine that serves them


@dataclass(frozen=True)
class Answer:
    """The server's answer to a /stage's ask for a shared part."""

    via: Via
    peer: str = ""  # Via.PEER: its address
    retry_after: int = 0  # Via.WAIT: seconds


@dataclass
class PivotalFetch:
    """One machine's fetch of the pivotal's shared parts."""

    first_asked: float
    via: Via = Via.ASKED
    since: float = 0.0  # when via was decided (SERVER: its last transfer's end)
    sending: bool = False  # a transfer from the server in flight
    tries: int = 1  # the /stage's try it asked in last
    peer: str = ""  # the peer it was sent to for its last part, if it was
    failed_peers: set[str] = field(default_factory=set)  # the last peers of its failed tries

    def asks_again(self, tries: int) -> None:
        """It asks on its /stage's try tries: a later try than before blames
        the peer its last part came from, which failed it."""
        if tries > self.tries:
            if self.peer:
                self.failed_peers.add(self.peer)
            self.tries, self.peer = tries, ""

    def decided(self, answer: Answer, now: float) -> None:
        self.via, self.since = answer.via, now
        if answer.via in (Via.SERVER, Via.PEER):
            self.peer = answer.peer
