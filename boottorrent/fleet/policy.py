"""The boot storm's tuning numbers, named once (Policy), with why each is
what it is. The few an admin may tune are [seeder] keys of
boottorrent.conf, declared here with wire.setting() as the swarm's are
(configfile.py joins them to the configspec); the others are the server's
own."""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

from boottorrent.pivotal.wire import Settings, setting

seeder_key = partial(setting, "seeder")


@dataclass(frozen=True)
class Policy(Settings):
    # Reports the server takes per second: each machine is told to report
    # every max(1, machines / reports_per_second) s (and adds its own
    # jitter). The seeder could take 200 a second (`make bench`, "Reports"),
    # but each report costs the server's link a TCP connection, about 500
    # bytes: in a storm of 250 machines, reports every 1.25 s came to a
    # sixth of the pivotal's size in the server's bytes; every 5 s, they
    # are a fraction of that.
    reports_per_second: int = seeder_key("integer(min=1, max=10000)", 50)
    # Seconds after its last report that a machine is forgotten.
    forget_machines_after: int = seeder_key("integer(min=10, max=604800)", 600)
    # Machines the server sends the pivotal's shared parts to at once ...
    server_sends: int = seeder_key("integer(min=1, max=1000)", 1)
    # ... and to overdue machines (held hold_max s, or a peer failed them):
    # in a storm all the machines held are overdue together, and the
    # server's link shared by them all would give none its parts in time.
    server_sends_overdue: int = seeder_key("integer(min=1, max=1000)", 4)
    # Seconds a machine is held for a peer at most while the swarm makes no
    # progress towards serving it: in a storm the machines that serve each
    # other grow in number as a tree does, and hold the others much longer.
    hold_max: int = seeder_key("integer(min=5, max=3600)", 60)

    # A machine that fetched the config part of its boot is "coming" until
    # it reports from the pivotal, for this long at most: the pivotal's
    # download in a storm, the kernel's start-up and DHCP take well under it.
    coming_for: float = 180.0
    machines_max: int = 10000  # entries kept in each table; the oldest go first
    # A machine is alive while the server heard from it within this many
    # seconds, or three report intervals when they are longer (alive_for).
    peer_alive: float = 10.0
    # Each machine that serves the pivotal's parts sends to this many
    # machines at once: one after the other, each at its link's full rate,
    # so that the machines serving double every transfer's time.
    peer_sends: int = 1
    # Peers that may fail a machine (its /stage tries again each time)
    # before the server sends it the parts itself: the peer that failed it
    # may be gone or overloaded, and another one saves the server a copy.
    peer_tries: int = 2
    load_window: float = 60.0  # seconds the redirects to a peer count towards its load
    # A machine sent to a peer is taken to be fetching from it until it asks
    # the server for a part again or reports from its pivotal, or this long.
    transfer_max: float = 60.0
    server_gap: float = 2.0  # seconds the server's turn is kept between two parts
    # The machines held ask again after a 503's Retry-After, with no limit
    # (their /stage's tries are not used up). Together they ask held_asks
    # times a second (each ask costs the server's link about 500 bytes): a
    # peer that becomes free is asked for within a fraction of a second,
    # and a storm's hundreds of held machines do not flood the link.
    held_asks: float = 10.0
    retry_after_min: int = 2  # seconds
    retry_after_max: int = 30

    def alive_for(self, reporting: int) -> float:
        """Seconds since it was last heard from in which a machine is alive,
        while reporting machines report."""
        return max(self.peer_alive, 3 * reporting / self.reports_per_second)

    def report_interval(self, reporting: int) -> float:
        return max(1.0, reporting / self.reports_per_second)
