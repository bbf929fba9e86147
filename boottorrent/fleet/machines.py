"""The fleet's state, kept: every machine the server booted (only those:
trust.py) by the address it talks from, their fetches of the pivotal's
shared parts and the image chains, under one lock and one clock; the
decisions are rules.py's."""

from __future__ import annotations

import ipaddress
import random
import threading
import time
from collections.abc import Callable

from boottorrent.fleet import rules
from boottorrent.fleet.chain import Chains
from boottorrent.fleet.policy import Policy
from boottorrent.fleet.state import Answer, Machine, PivotalFetch, Via
from boottorrent.pivotal.wire import Report, ReportAnswer


class Fleet:
    """What the server knows of every machine: its last report, or, before
    that, that it fetched the config part of its boot (phase "pxe"). A
    report's body does not choose whose entry it replaces: the address it
    comes from does. Entries expire Policy.forget_machines_after s after
    the server last heard from them, and there are at most machines_max
    reporting and machines_max on their way (in tables of their own:
    machines that only fetch config parts never push out those that
    report)."""

    def __init__(self, policy: Policy, clock: Callable[[], float] = time.time):
        self.policy = policy
        self.clock = clock
        self._lock = threading.Lock()
        # In the order they were last heard from: the oldest first.
        self._reporting: dict[str, Machine] = {}
        self._on_their_way: dict[str, Machine] = {}  # phase "pxe"
        self._fetches: dict[str, PivotalFetch] = {}  # by the fetching machine's address
        self._redirects: dict[str, list[float]] = {}  # when each was sent a machine
        self._redirects_given = 0
        # Bytes the machines reported getting from each other, summed over
        # their reports since the seeder started (the status page's chart).
        self._from_peers = 0
        # When the swarm last moved towards serving the pivotal's parts to
        # the machines held, and the server's streams of them in flight.
        self._last_progress = 0.0
        self._pivotal_streams = 0
        self.pivotal_infohash = ""  # of the pivotal's shared parts (the seeder sets it)
        self.chains = Chains(self._chain_alive, clock)

    def _put(self, table: dict[str, Machine], machine: Machine) -> None:
        """machine into table (the other table forgets its address)."""
        self._reporting.pop(machine.address, None)
        self._on_their_way.pop(machine.address, None)
        table[machine.address] = machine
        self._expire()
        while len(table) > self.policy.machines_max:
            del table[next(iter(table))]

    def _expire(self) -> None:
        oldest = self.clock() - self.policy.forget_machines_after
        for table in (self._reporting, self._on_their_way):
            while table and next(iter(table.values())).heard < oldest:
                del table[next(iter(table))]

    def add(self, report: Report, address: str) -> ReportAnswer:
        """File a report; the answer for the machine that sent it."""
        now = self.clock()
        with self._lock:
            previous = self._reporting.get(address)
            self._put(self._reporting, Machine(address, report, now))
            before = (previous.report.from_peers
                      if previous and previous.report.image == report.image else 0)
            self._from_peers += max(report.from_peers - before, 0)
            if self._fetches.pop(address, None):  # it runs its pivotal: it has the parts
                self._last_progress = now
            if report.serving and (previous is None or previous.report.serving != report.serving):
                self._last_progress = now
            machines = [*self._reporting.values(), *self._on_their_way.values()]
            return ReportAnswer(
                interval=round(self.policy.report_interval(len(self._reporting)), 2),
                coming=rules.coming(self.policy, machines, now, report.image, address),
                waiting=rules.waiting(self.policy, self._fetches.values(), now))

    def on_its_way(self, address: str, mac: str, image: str) -> None:
        """The machine at address, of this MAC, fetched the config part of
        its boot (image: the one it chose, "" when not known): it is coming,
        for Policy.coming_for s from the first such fetch since it last
        reported (fetching it again and again keeps nobody seeding)."""
        now = self.clock()
        with self._lock:
            previous = self._on_their_way.get(address)
            self._put(self._on_their_way, Machine(
                address, Report(phase="pxe", image=image, mac=mac), now,
                coming_since=previous.coming_since if previous else now))

    def _reporting_in_swarm(self, now: float) -> list[Machine]:
        return [m for m in self._reporting.values()
                if rules.in_swarm(self.policy, m, now, len(self._reporting))]

    def in_swarm(self, address: str) -> bool:
        with self._lock:
            machine = self._reporting.get(address)
            return machine is not None and rules.in_swarm(
                self.policy, machine, self.clock(), len(self._reporting))

    def _chain_alive(self, address: str, joined: float) -> bool:
        """A chain's member: alive as any machine is, its joining the
        chain heard from it (before its first report)."""
        with self._lock:
            alive_for = self.policy.alive_for(len(self._reporting))
        return self.clock() - joined < alive_for or self.in_swarm(address)

    def serving(self, infohash: str) -> list[str]:
        """The machines that serve the pivotal of this infohash."""
        with self._lock:
            return [m.address for m in self._reporting_in_swarm(self.clock())
                    if infohash and m.report.serving == infohash]

    def pivotal_part(self, asker: str, tries: int) -> Answer:
        """Who sends asker, on its /stage's try tries, the pivotal's
        shared part it asks for (rules.pivotal_source)."""
        with self._lock:
            now = self.clock()
            fetch = self._fetches.pop(asker, None) or PivotalFetch(first_asked=now)
            self._fetches[asker] = fetch  # the newest last
            while len(self._fetches) > self.policy.machines_max:
                del self._fetches[next(iter(self._fetches))]
            fetch.asks_again(tries)
            infohash = self.pivotal_infohash
            alive = [m for m in self._reporting_in_swarm(now) if m.address != asker
                     and m.report.serving in ("", infohash)] if infohash else []
            serving = [m.address for m in alive if m.report.serving == infohash]
            recently = now - self.policy.load_window
            answer = rules.pivotal_source(
                self.policy, now, asker, fetch, self._fetches, serving=serving,
                swarm=bool(alive), load={a: sum(t > recently for t in self._redirects.get(a, ()))
                                         for a in serving},
                last_progress=self._last_progress, streams=self._pivotal_streams)
            fetch.decided(answer, now)
            if answer.via is Via.PEER:
                for address in list(self._redirects):  # those of load_window s ago go
                    self._redirects[address] = [t for t in self._redirects[address]
                                                if t > recently]
                self._redirects.setdefault(answer.peer, []).append(now)
                self._redirects_given += 1
                self._last_progress = now
            elif answer.via is Via.WAIT:
                held = rules.waiting(self.policy, self._fetches.values(), now)
                return Answer(Via.WAIT, retry_after=rules.retry_after(
                    self.policy, held, random.uniform(0.75, 1.25)))
            return answer

    def sending(self, asker: str, started: bool) -> None:
        """The server started or ended a transfer of a shared part to asker."""
        with self._lock:
            fetch = self._fetches.get(asker)
            if fetch and fetch.via is Via.SERVER:
                fetch.sending, fetch.since = started, self.clock()
                if not started:
                    self._last_progress = fetch.since  # it got a part

    def streaming(self, infohash: str, started: bool) -> None:
        """The server started or ended a stream of a torrent to the first
        machine of its chain; of the pivotal's, that machine will serve it."""
        if infohash and infohash == self.pivotal_infohash:
            with self._lock:
                self._pivotal_streams += 1 if started else -1
                self._last_progress = self.clock()

    def redirects_given(self) -> int:
        return self._redirects_given

    def from_peers(self) -> int:
        """Bytes the machines got from each other, as they reported them."""
        return self._from_peers

    def all(self) -> list[dict]:
        """Every machine's entry in /status, by address."""
        with self._lock:
            self._expire()
            machines = [*self._reporting.values(), *self._on_their_way.values()]
        return [m.status() for m in sorted(machines, key=lambda m: ipaddress.ip_address(m.address))]
