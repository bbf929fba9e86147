"""The fleet's rules (boottorrent/fleet/), with a fake clock: who is
coming and waiting, where a machine's /stage gets the pivotal's shared
parts, and the image chains."""

from __future__ import annotations

import dataclasses
from dataclasses import replace
from pathlib import Path

from boottorrent.configfile import SERVER_SPEC, configspec, read_file
from boottorrent.fleet import Fleet, Policy, Via, chain, rules
from boottorrent.fleet.state import PivotalFetch
from boottorrent.pivotal.wire import Report, ReportAnswer


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


POLICY = Policy()
SERVER, WAIT = "server", "wait"


class Machines(Fleet):
    """The fleet with the pivotal "ab", and its answers to a /stage as
    the tests name them: a peer's address, SERVER or WAIT."""

    def __init__(self, policy: Policy = POLICY, clock: Clock | None = None):
        super().__init__(policy, clock or Clock())
        self.pivotal_infohash = "ab"

    def pivotal_source(self, infohash: str, asker: str, tries: int) -> str:
        assert infohash == self.pivotal_infohash
        answer = self.pivotal_part(asker, tries)
        return answer.peer if answer.via is Via.PEER else answer.via.value


def test_machines_by_address_expire_and_count_who_is_coming():
    clock = Clock()
    machines = Machines(clock=clock)
    assert machines.add(Report(mac="m1", image="a", phase="seeding"), "198.18.0.10") == \
        ReportAnswer(interval=1.0, coming=0, waiting=0)
    # Their config parts (trust.py): for any image, for b, for a.
    machines.on_its_way("198.18.0.11", "52:54:00:00:00:11", "")
    machines.on_its_way("198.18.0.12", "52:54:00:00:00:12", "b")
    machines.on_its_way("198.18.0.13", "52:54:00:00:00:13", "a")
    assert machines.add(Report(image="a", phase="seeding"), "198.18.0.10").coming == 2
    # A report replaces the entry of the address it came from, whatever it says.
    machines.add(Report(mac="m1", image="a", phase="downloading", address="198.18.0.10"),
                 "198.18.0.13")
    assert machines.add(Report(image="a", phase="seeding"), "198.18.0.10").coming == 1
    assert [e["address"] for e in machines.all()] == [
        "198.18.0.10", "198.18.0.11", "198.18.0.12", "198.18.0.13"]
    # Not coming any more after COMING_FOR; forgotten after forget_after.
    clock.now += POLICY.coming_for + 1
    assert machines.add(Report(image="a", phase="seeding"), "198.18.0.10").coming == 0
    clock.now += 600 - POLICY.coming_for
    assert [e["address"] for e in machines.all()] == ["198.18.0.10"]


def test_a_machine_that_fetches_its_config_part_again_and_again_keeps_nobody_seeding():
    clock = Clock()
    machines = Machines(clock=clock)
    for _ in range(10):
        machines.on_its_way("198.18.0.11", "52:54:00:00:00:11", "a")
        clock.now += POLICY.coming_for / 4
    assert machines.add(Report(image="a", phase="seeding"), "198.18.0.10").coming == 0
    # Once it reported, its next boot counts again.
    machines.add(Report(image="a", phase="kexec"), "198.18.0.11")
    machines.on_its_way("198.18.0.11", "52:54:00:00:00:11", "a")
    assert machines.add(Report(image="a", phase="seeding"), "198.18.0.10").coming == 1


def test_machines_table_is_bounded_and_paces_reports():
    machines = Machines(replace(POLICY, machines_max=300), clock=Clock())
    for n in range(1000):
        answer = machines.add(Report(), f"10.0.{n // 256}.{n % 256}")
    assert len(machines.all()) == 300
    assert machines.all()[0]["address"] == "10.0.2.188"  # the 700th: the oldest are gone
    assert answer.interval == 300 / POLICY.reports_per_second


def test_machines_on_their_way_never_push_out_those_that_report():
    machines = Machines(replace(POLICY, machines_max=300), clock=Clock())
    machines.add(Report(phase="seeding"), "198.18.0.10")
    for n in range(1000):
        machines.on_its_way(f"10.0.{n // 256}.{n % 256}", "", "a")
    addresses = [e["address"] for e in machines.all()]
    assert "198.18.0.10" in addresses and len(addresses) == 301
    # Its interval counts the machines that report, and only those.
    assert machines.add(Report(phase="seeding"), "198.18.0.10").interval == 1.0


def test_pivotal_requests_go_to_the_least_loaded_machine_that_serves_it():
    clock = Clock()
    machines = Machines(clock=clock)
    machines.add(Report(phase="seeding", serving="ab"), "198.18.0.10")
    machines.add(Report(phase="downloading", serving="ab"), "198.18.0.11")
    machines.add(Report(phase="kexec", serving="ab"), "198.18.0.12")  # leaving
    machines.add(Report(phase="seeding", serving="old"), "198.18.0.13")  # another pivotal
    places = 2 * POLICY.peer_sends  # each sends to PEER_SENDS machines at once
    askers = [f"198.18.1.{n}" for n in range(1, places + 2)]
    given = [machines.pivotal_source("ab", asker, tries=1) for asker in askers[:places]]
    assert sorted(given) == sorted(["198.18.0.10", "198.18.0.11"] * POLICY.peer_sends)
    # The next one waits ...
    late = askers[places]
    assert machines.pivotal_source("ab", late, tries=1) == WAIT
    assert machines.add(Report(phase="seeding", serving="ab"), "198.18.0.10").waiting == 1
    # ... until one of them reports from its pivotal (its transfer is over).
    machines.add(Report(phase="dhcp"), askers[0])
    assert machines.pivotal_source("ab", late, tries=1) == given[0]
    machines.add(Report(phase="dhcp"), askers[1])
    assert machines.pivotal_source("ab", "198.18.1.9", tries=1) == given[1]
    # Never to itself; a retry of the boot script after a peer goes to the
    # server when no other peer is free; a transfer that was never seen to end counts for TRANSFER_MAX
    # s; nobody who has not reported for PEER_ALIVE s.
    assert machines.pivotal_source("ab", "198.18.0.10", tries=1) == WAIT
    assert machines.pivotal_source("ab", late, tries=2) == SERVER
    clock.now += POLICY.transfer_max
    machines.add(Report(phase="seeding", serving="ab"), "198.18.0.11")
    # A retry of a machine never sent to a peer (its first try was lost on
    # the way) is as good as a first try.
    assert machines.pivotal_source("ab", "198.18.1.20", tries=2) == "198.18.0.11"
    assert machines.redirects_given() == places + 3


def test_the_server_sends_the_pivotal_once_while_a_machine_is_about_to_serve_it():
    clock = Clock()
    machines = Machines(clock=clock)
    first, second, third = "198.18.1.1", "198.18.1.2", "198.18.1.3"
    # Nobody in the swarm: the server sends it, to SERVER_SENDS machines at once.
    assert machines.pivotal_source("ab", first, tries=1) == SERVER
    machines.sending(first, started=True)
    assert machines.pivotal_source("ab", second, tries=1) == WAIT
    machines.sending(first, started=False)
    # The first keeps its turn for its next file; then the others wait
    # while it boots, for HOLD_MAX s at most.
    clock.now += 1
    assert machines.pivotal_source("ab", second, tries=1) == WAIT
    assert machines.pivotal_source("ab", first, tries=1) == SERVER
    clock.now += POLICY.server_gap
    assert machines.pivotal_source("ab", second, tries=1) == WAIT
    clock.now += POLICY.hold_max
    assert machines.pivotal_source("ab", second, tries=1) == SERVER
    # Once a machine runs its pivotal, it will serve the files: the others wait for it ...
    machines.add(Report(phase="downloading"), first)
    clock.now += POLICY.server_gap
    assert machines.pivotal_source("ab", third, tries=1) == WAIT
    assert machines.serving("ab") == []
    machines.add(Report(phase="downloading", serving="ab"), first)
    assert machines.serving("ab") == [first]
    assert machines.pivotal_source("ab", third, tries=1) == first
    # ... for HOLD_MAX s at most in which the swarm did not move: no machine
    # got its files, began to serve or was sent to a peer ...
    machines.add(Report(phase="downloading"), first)
    assert machines.pivotal_source("ab", "198.18.1.4", tries=1) == WAIT
    late = [f"198.18.2.{n}" for n in range(POLICY.server_sends_overdue + 1)]
    for asker in late:
        assert machines.pivotal_source("ab", asker, tries=1) == WAIT
    clock.now += POLICY.hold_max - 1
    machines.add(Report(phase="downloading"), third)  # it got its files from first
    machines.add(Report(phase="downloading"), first)
    clock.now += 1
    assert machines.pivotal_source("ab", "198.18.1.4", tries=1) == WAIT
    # ... and the server streamed none of the files to the swarm.
    machines.streaming("ab", started=True)
    for _ in range(4):
        clock.now += POLICY.hold_max / 2
        machines.add(Report(phase="downloading"), first)
        assert machines.pivotal_source("ab", "198.18.1.4", tries=1) == WAIT
    machines.streaming("ab", started=False)  # counts from its end
    clock.now += POLICY.hold_max - 1
    machines.add(Report(phase="downloading"), first)
    assert machines.pivotal_source("ab", "198.18.1.4", tries=1) == WAIT
    clock.now += 1
    assert machines.pivotal_source("ab", "198.18.1.4", tries=1) == SERVER
    # Machines overdue together get it from the server a few at a time, so
    # that each gets it in time; a retry of the boot script is overdue too.
    given = [machines.pivotal_source("ab", asker, tries=1) for asker in late]
    assert given == [SERVER] * (POLICY.server_sends_overdue - 1) + [WAIT] * 2
    assert machines.pivotal_source("ab", "198.18.1.5", tries=2) == WAIT
    clock.now += POLICY.server_gap
    assert machines.pivotal_source("ab", late[-1], tries=1) == SERVER


def test_a_machine_a_peer_failed_goes_to_another_peer_then_to_the_server():
    clock = Clock()
    machines = Machines(clock=clock)
    peers = [f"198.18.0.{n}" for n in range(10, 10 + POLICY.peer_tries + 1)]
    for peer in peers:
        machines.add(Report(phase="seeding", serving="ab"), peer)
    asker = "198.18.1.1"
    first = machines.pivotal_source("ab", asker, tries=1)
    assert first in peers
    # Each later try of its boot script blames the peer its last file came
    # from: never sent there again, to another free peer instead ...
    failed = {first}
    for tries in range(2, POLICY.peer_tries + 1):
        again = machines.pivotal_source("ab", asker, tries=tries)
        assert again in peers and again not in failed
        failed.add(again)
    # ... until PEER_TRIES peers failed it: then the server sends the files.
    assert machines.pivotal_source("ab", asker, tries=POLICY.peer_tries + 1) == SERVER
    # A machine a peer failed while no other peer is free is not held either.
    other = "198.18.1.2"
    busy = [machines.pivotal_source("ab", f"198.18.2.{n}", tries=1) for n in range(len(peers))]
    assert sorted(busy) == sorted(peers)
    assert machines.pivotal_source("ab", other, tries=1) == WAIT
    clock.now += POLICY.transfer_max
    for peer in peers:
        machines.add(Report(phase="seeding", serving="ab"), peer)
    sent_to = machines.pivotal_source("ab", other, tries=1)
    assert sent_to in peers
    for n in range(len(peers)):
        machines.pivotal_source("ab", f"198.18.3.{n}", tries=1)  # the others get busy
    assert machines.pivotal_source("ab", other, tries=2) == SERVER


def test_machines_held_ask_again_less_often_the_more_of_them_wait():
    clock = Clock()
    machines = Machines(clock=clock)
    askers = [f"198.18.1.{n}" for n in range(1, 201)]
    assert machines.pivotal_source("ab", askers[0], tries=1) == SERVER
    first = [machines.pivotal_part(asker, tries=1) for asker in askers[1:]]
    assert {answer.via for answer in first} == {Via.WAIT}
    assert first[0].retry_after == POLICY.retry_after_min  # one waits
    # 199 wait: together they ask about held_asks times a second.
    after = [machines.pivotal_part(asker, tries=1).retry_after for asker in askers[1:51]]
    assert 199 / POLICY.held_asks * 0.75 - 1 <= min(after) <= max(after) \
        <= POLICY.retry_after_max
    assert len(set(after)) > 1  # varied, so that they do not ask together
    # Those held long ago are no longer counted.
    held = machines._fetches.values()
    assert rules.waiting(POLICY, held, clock.now) == 199
    assert rules.waiting(POLICY, held, clock.now + 3 * POLICY.retry_after_max + 1) == 0
    assert rules.retry_after(POLICY, 0, jitter=1.0) == POLICY.retry_after_min


def test_machines_form_a_chain_in_the_order_they_ask():
    clock = Clock()
    machines = Machines(clock=clock)
    chains = machines.chains
    assert chains.source("ab", "198.18.1.1:7000") is None  # a torrent it does not offer
    chains.offer("ab")
    m1, m2, m3 = "198.18.1.1:7000", "198.18.1.2:7000", "198.18.1.3:7000"
    # The first streams from the server, every other one from the one before.
    assert [chains.source("ab", m) for m in (m1, m2, m3)] == [chain.SERVER, m1, m2]
    assert chains.source("ab", m2) == m1  # asking again keeps the place
    # A member names its own source only: m1 cannot push m3 out, nor m3 m1.
    assert chains.source("ab", m1, failed=m3) == chain.SERVER
    assert chains.source("ab", m3, failed=m1) == m2
    assert chains.members("ab") == [m1, m2, m3]
    # m3's source failed it: m2 leaves the chain, m3 streams from m1.
    assert chains.source("ab", m3, failed=m2) == m1
    assert chains.members("ab") == [m1, m3]
    # The server is never left out.
    assert chains.source("ab", m1, failed=chain.SERVER) == chain.SERVER
    # m3 starts its pivotal again (its relay on another port): it replaces
    # its former self rather than stream from it.
    assert chains.source("ab", "198.18.1.3:7001") == m1
    assert chains.members("ab") == [m1, "198.18.1.3:7001"]
    # Members are alive for a while after they joined, and then while they
    # report from the swarm (the fleet's one liveness rule) ...
    clock.now += POLICY.peer_alive
    machines.add(Report(phase="downloading"), "198.18.1.1")
    assert chains.source("ab", "198.18.1.8:7000") == "198.18.1.1:7000"
    assert chains.members("ab") == [m1, "198.18.1.8:7000"]
    # ... and passed over once they left it: the next boot wave starts
    # from the server.
    machines.add(Report(phase="kexec"), "198.18.1.1")
    clock.now += POLICY.peer_alive
    assert chains.source("ab", "198.18.1.9:7000") == chain.SERVER
    assert chains.members("ab") == ["198.18.1.9:7000"]
    chains.withdraw("ab")
    assert chains.source("ab", m1) is None


def test_the_rules_are_pure_functions_of_the_state_and_the_time():
    """rules.pivotal_source decides from what it is given alone: the same
    state and time give the same answer, and the policy's numbers count."""
    now = 1000.0
    fetch = PivotalFetch(first_asked=now)
    sending = {f"198.18.1.{n}": PivotalFetch(first_asked=now, via=Via.SERVER, since=now,
                                             sending=True) for n in (1, 2)}
    decide = lambda policy, **state: rules.pivotal_source(  # noqa: E731
        policy, now, "198.18.1.9", fetch, sending, **{
            "serving": [], "swarm": False, "load": {}, "last_progress": 0.0, "streams": 0,
            **state})
    assert decide(POLICY).via is Via.WAIT  # the server sends to server_sends = 1 already
    assert decide(replace(POLICY, server_sends=3)).via is Via.SERVER
    assert decide(POLICY, serving=["198.18.0.10", "198.18.0.11"], load={"198.18.0.10": 1}) \
        .peer == "198.18.0.11"  # the least loaded
    # A machine in the swarm about to serve them holds it, for hold_max s.
    assert decide(replace(POLICY, server_sends=3), swarm=True).via is Via.WAIT
    fetch.first_asked = now - POLICY.hold_max
    # Overdue then: the server sends to server_sends_overdue at once.
    assert decide(POLICY, swarm=True).via is Via.SERVER
    assert decide(replace(POLICY, server_sends_overdue=2), swarm=True).via is Via.WAIT


def test_the_policy_an_admin_tunes_is_seeder_keys(tmp_path):
    """The policy's few tunable numbers are [seeder] keys of boottorrent.conf
    with the policy's defaults; the others are not keys."""
    spec = "\n".join(configspec(SERVER_SPEC))
    assert "reports_per_second = integer(min=1, max=10000, default=50)" in spec
    assert "hold_max = integer(min=5, max=3600, default=60)" in spec
    assert "transfer_max" not in spec and "peer_alive" not in spec
    conf = tmp_path / "boottorrent.conf"
    conf.write_text("[seeder]\nserver_sends = 3\nhold_max = 20\n")
    obj, problems = read_file(conf, SERVER_SPEC)
    policy = Policy.from_sections(obj)
    assert policy == replace(POLICY, server_sends=3, hold_max=20)
    assert [str(p) for p in problems if p.key == "server_sends"] == []
    conf.write_text("[seeder]\nhold_max = 2\n")
    _, problems = read_file(conf, SERVER_SPEC)
    assert [f"{p.section} {p.key}" for p in problems] == ["('seeder',) hold_max"]


def test_readme_names_every_number_of_the_policy_with_its_default():
    """README's table of the boot storm's numbers is the policy's."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    table = readme.split("<!-- policy:", 1)[1].split("\n\n", 1)[0]
    rows = {cells[1].strip(" `"): cells[2].strip() for line in table.splitlines()
            if (cells := line.split("|"))[1:2] and cells[1].strip(" `") in fields_of(POLICY)}
    assert rows == {name: f"{value:g}" for name, value in fields_of(POLICY).items()}
    keys = set(Policy.configspec()["seeder"])
    assert {name for name in rows if "`[seeder]` key" in table.split(f"`{name}`")[1]
            .split("\n")[0]} == {line.split(" = ")[0] for line in keys}


def fields_of(policy: Policy) -> dict[str, float]:
    return {f.name: getattr(policy, f.name) for f in dataclasses.fields(policy)}


def test_the_chart_counts_what_the_machines_got_from_each_other():
    """The status page's line of bytes between machines (Fleet.from_peers,
    throughput.py): each report adds what its machine got since its last,
    a machine that started again adds nothing for its fall, and the rates
    follow the samples."""
    from boottorrent.throughput import Throughput

    clock = Clock()
    fleet = Fleet(POLICY, clock)
    chart = Throughput()
    chart.sample(clock.now, 0, fleet.from_peers())
    for got, server in ((10, 100), (30, 150), (5, 150), (25, 160)):
        clock.now += 2
        fleet.add(Report(image="a", phase="downloading", from_peers=got), "198.18.0.2")
        chart.sample(clock.now, server, fleet.from_peers())
    assert fleet.from_peers() == 10 + 20 + 0 + 20
    assert chart.rates() == {"time": [1002.0, 1004.0, 1006.0, 1008.0],
                             "server": [50, 25, 0, 5], "peers": [5, 10, 0, 10]}
    chart.sample(clock.now + 0.5, 999, 999)  # within SAMPLE_EVERY of the last: not kept
    assert len(chart.rates()["time"]) == 4
