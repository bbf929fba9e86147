"""The boot storm's decisions, as pure functions of the fleet's state
(state.py), the policy's numbers (policy.py) and the time: where a
machine's /stage gets the pivotal's shared parts, and what a report is
answered. machines.py keeps the state and applies them."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from boottorrent.fleet.policy import Policy
from boottorrent.fleet.state import COMING, IN_SWARM, Answer, Machine, PivotalFetch, Via


def in_swarm(policy: Policy, machine: Machine, now: float, reporting: int) -> bool:
    """The machine runs its pivotal and was heard from lately: it serves
    what it holds (reporting: machines that report, which pace reports)."""
    return machine.phase in IN_SWARM and now - machine.heard <= policy.alive_for(reporting)


def coming(policy: Policy, machines: Iterable[Machine], now: float, image: str,
           besides: str) -> int:
    """Machines on their way to the swarm for image (or for any image),
    since at most Policy.coming_for s, besides the one at besides."""
    since = now - policy.coming_for
    return sum(1 for m in machines
               if m.phase in COMING and m.address != besides
               and (m.heard if m.coming_since is None else m.coming_since) >= since
               and m.report.image in ("", image))


def waiting(policy: Policy, fetches: Iterable[PivotalFetch], now: float) -> int:
    """Machines held for the pivotal's parts lately (told to ask again)."""
    recently = now - 3 * policy.retry_after_max
    return sum(1 for f in fetches if f.via is Via.WAIT and f.since >= recently)


def retry_after(policy: Policy, held: int, jitter: float) -> int:
    """The seconds a machine held is told to ask again after, while held
    machines wait: together they ask Policy.held_asks times a second.
    jitter: about 1, varied per answer so that they do not ask together."""
    seconds = held / policy.held_asks * jitter
    return round(min(max(seconds, policy.retry_after_min), policy.retry_after_max))


def pivotal_source(policy: Policy, now: float, asker: str, fetch: PivotalFetch,
                   others: Mapping[str, PivotalFetch], serving: list[str], swarm: bool,
                   load: Mapping[str, int], last_progress: float, streams: int) -> Answer:
    """Who sends asker (whose fetch is fetch) the shared part it asks for.

    serving: the machines alive in the swarm that serve the pivotal's
    parts, asker aside; swarm: some machine in the swarm serves them or
    would (it fetches them once it hears machines wait); load: redirects
    given to each machine within Policy.load_window s; last_progress: when
    the swarm last moved towards serving the machines held (a machine got
    its parts, began to serve them or was sent to a peer); streams: the
    server's streams of the pivotal's files to the swarm in flight.

    So that the pivotal leaves the server as few times as it can: a
    machine that serves it and sends to fewer than peer_sends machines
    (the least loaded); else, while a machine in the swarm is about to
    serve it, or one the server sent it to boots it (for hold_max s at
    most), WAIT; else the server, to server_sends machines at once. A
    machine held for hold_max s in which the swarm did not move (and the
    server streamed none of it to the swarm) is overdue: the server sends
    to it rather than wait for the swarm, to server_sends_overdue at once.
    A machine whose /stage asks on a later try, whose last part came from
    a peer (that peer failed it), goes to another free peer while fewer
    than peer_tries peers failed it, and is otherwise overdue. A machine
    whose turn it is (the server sent it the previous part) keeps it.
    """
    if fetch.via is Via.SERVER and now - fetch.since < policy.server_gap:
        return Answer(Via.SERVER)
    overdue = bool(fetch.failed_peers) or (
        not streams and now - max(fetch.first_asked, last_progress) >= policy.hold_max)
    busy: dict[str, int] = {}  # transfers in flight from each peer
    server_busy, booting = 0, False
    for address, other in others.items():
        if address == asker:
            continue
        if other.via is Via.SERVER:
            if other.sending or now - other.since < policy.server_gap:
                server_busy += 1
            elif now - other.since < policy.hold_max:
                booting = True  # the server sent it the parts: it boots them
        elif other.via is Via.PEER and now - other.since < policy.transfer_max:
            busy[other.peer] = busy.get(other.peer, 0) + 1
    free = [address for address in serving
            if busy.get(address, 0) < policy.peer_sends and address not in fetch.failed_peers]
    if free and len(fetch.failed_peers) < policy.peer_tries:
        return Answer(Via.PEER, min(free, key=lambda a: (busy.get(a, 0), load.get(a, 0))))
    server_may = (policy.server_sends_overdue if overdue
                  else policy.server_sends if not swarm and not booting else 0)
    return Answer(Via.SERVER) if server_busy < server_may else Answer(Via.WAIT)
