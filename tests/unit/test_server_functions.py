"""Unit tests of the server's pure functions: piece sizes, input checks,
HTTP ranges, status text."""

from __future__ import annotations

import pytest
from validate import ValidateError

from boottorrent.configfile import check_mac
from boottorrent.imageconf import check_cmdline, check_image_name
from boottorrent.pivotal.console import human_bytes
from boottorrent.status import format_status
from boottorrent.torrents import PIECES_MAX, piece_size_for
from boottorrent import chain, fleet
from boottorrent.pivotal.wire import Report
from boottorrent.intake import split_request
from boottorrent.fleet import Machines
from boottorrent.web import byte_range

MIB = 1 << 20


@pytest.mark.parametrize("size, piece", [
    (1, 256 * 1024), (16 * MIB, 256 * 1024), (1024 * MIB, 256 * 1024),
    (1024 * MIB + 1, 512 * 1024), (64 * 1024 * MIB, 16 * MIB), (1 << 50, 16 * MIB)])
def test_piece_size_policy(size, piece):
    assert piece_size_for(size) == piece
    if piece < 16 * MIB:
        assert -(-size // piece) <= PIECES_MAX


def test_mac_addresses_are_normalized_or_refused():
    assert check_mac(" 52-54-00-AA-bb-0C ") == "52:54:00:aa:bb:0c"
    for bad in ("52:54:00:aa:bb", "52:54:00:aa:bb:0g", "5254.00aa.bb0c", ""):
        with pytest.raises(ValidateError):
            check_mac(bad)


@pytest.mark.parametrize("name", ["a/b", "..", "a..b", "-x", "", "x" * 65, "é"])
def test_image_names_refused(name):
    with pytest.raises(ValueError, match="not allowed"):
        check_image_name(name)


def test_image_names_allowed():
    assert check_image_name("debian-12.4_compute") == "debian-12.4_compute"


def test_cmdline_limits():
    assert check_cmdline("a" * 2047) == "a" * 2047
    with pytest.raises(ValueError, match="at most 2019"):
        check_cmdline("a" * 2020, reserved=28)
    with pytest.raises(ValueError, match="control characters"):
        check_cmdline("quiet\nsplash")


@pytest.mark.parametrize("header, expected", [
    ("", (0, 999, False)),
    ("bytes=0-99", (0, 99, True)),
    ("bytes=900-", (900, 999, True)),
    ("bytes=-100", (900, 999, True)),
    ("bytes=-5000", (0, 999, True)),
    ("bytes=990-5000", (990, 999, True)),
    ("bytes=1000-", None),
    ("bytes=50-10", None),
    ("bytes=0-1,5-6", (0, 999, False)),  # several ranges: the whole file
    ("items=0-1", (0, 999, False)),
    ("bytes=" + "9" * 19 + "-", None),  # beyond any file, and int() of 5000 digits fails
    ("bytes=" + "9" * 5000 + "-", None),
])
def test_range_header(header, expected):
    assert byte_range(header, 1000) == expected


def test_human_bytes():
    assert [human_bytes(n) for n in (0, 1023, 1024, 5 * MIB + MIB // 2, 3 << 40)] == \
        ["0 B", "1023 B", "1.0 KiB", "5.5 MiB", "3072.0 GiB"]


def test_status_text():
    status = {"images": [{"name": "compute", "size": 16 * MIB, "seeds": 1, "leechers": 2,
                          "completions": None, "peers": 2, "uploaded": MIB,
                          "http_sent": MIB, "upload_rate": 1024}],
              "clients": [{"mac": "52:54:00:00:00:01", "address": "198.18.0.100",
                           "image": "compute", "phase": "downloading", "progress": 0.5,
                           "peers": 2, "from_server": 3 * MIB, "from_peers": 5 * MIB,
                           "received": 990.0}]}
    lines = format_status(status, now=1000.0).splitlines()
    assert lines[0].split() == ["IMAGE", "SIZE", "SEEDS", "LEECHERS", "COMPLETIONS", "PEERS",
                                "SENT", "BY", "SEEDER", "UP", "RATE"]
    assert lines[1].split() == ["compute", "16.0", "MiB", "1", "2", "?", "2", "2.0", "MiB",
                                "1.0", "KiB/s"]
    assert "[##########..........]   50%" in lines[4]
    assert lines[4].endswith("3.0 MiB      5.0 MiB     10s ago")
    assert format_status({}, now=1.0).splitlines() == [
        "no images are being seeded", "", "no client has reported yet"]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_machines_by_address_expire_and_count_who_is_coming():
    clock = Clock()
    machines = Machines(forget_after=600, clock=clock)
    assert machines.add(Report(mac="m1", image="a", phase="seeding"), "198.18.0.10") == {
        "interval": 1.0, "coming": 0, "waiting": 0}
    # Their config parts (trust.py): for any image, for b, for a.
    machines.on_its_way("198.18.0.11", "52:54:00:00:00:11", "")
    machines.on_its_way("198.18.0.12", "52:54:00:00:00:12", "b")
    machines.on_its_way("198.18.0.13", "52:54:00:00:00:13", "a")
    assert machines.add(Report(image="a", phase="seeding"), "198.18.0.10")["coming"] == 2
    # A report replaces the entry of the address it came from, whatever it says.
    machines.add(Report(mac="m1", image="a", phase="downloading", address="198.18.0.10"),
                 "198.18.0.13")
    assert machines.add(Report(image="a", phase="seeding"), "198.18.0.10")["coming"] == 1
    assert [e["address"] for e in machines.all()] == [
        "198.18.0.10", "198.18.0.11", "198.18.0.12", "198.18.0.13"]
    # Not coming any more after COMING_FOR; forgotten after forget_after.
    clock.now += fleet.COMING_FOR + 1
    assert machines.add(Report(image="a", phase="seeding"), "198.18.0.10")["coming"] == 0
    clock.now += 600 - fleet.COMING_FOR
    assert [e["address"] for e in machines.all()] == ["198.18.0.10"]


def test_a_machine_that_fetches_its_config_part_again_and_again_keeps_nobody_seeding():
    clock = Clock()
    machines = Machines(forget_after=600, clock=clock)
    for _ in range(10):
        machines.on_its_way("198.18.0.11", "52:54:00:00:00:11", "a")
        clock.now += fleet.COMING_FOR / 4
    assert machines.add(Report(image="a", phase="seeding"), "198.18.0.10")["coming"] == 0
    # Once it reported, its next boot counts again.
    machines.add(Report(image="a", phase="kexec"), "198.18.0.11")
    machines.on_its_way("198.18.0.11", "52:54:00:00:00:11", "a")
    assert machines.add(Report(image="a", phase="seeding"), "198.18.0.10")["coming"] == 1


def test_machines_table_is_bounded_and_paces_reports(monkeypatch):
    monkeypatch.setattr(fleet, "MACHINES_MAX", 300)
    machines = Machines(forget_after=600, clock=Clock())
    for n in range(1000):
        answer = machines.add(Report(), f"10.0.{n // 256}.{n % 256}")
    assert len(machines.all()) == 300
    assert machines.all()[0]["address"] == "10.0.2.188"  # the 700th: the oldest are gone
    assert answer["interval"] == 300 / fleet.REPORT_RATE


def test_machines_on_their_way_never_push_out_those_that_report(monkeypatch):
    monkeypatch.setattr(fleet, "MACHINES_MAX", 300)
    machines = Machines(forget_after=600, clock=Clock())
    machines.add(Report(phase="seeding"), "198.18.0.10")
    for n in range(1000):
        machines.on_its_way(f"10.0.{n // 256}.{n % 256}", "", "a")
    addresses = [e["address"] for e in machines.all()]
    assert "198.18.0.10" in addresses and len(addresses) == 301
    # Its interval counts the machines that report, and only those.
    assert machines.add(Report(phase="seeding"), "198.18.0.10")["interval"] == 1.0


def test_pivotal_requests_go_to_the_least_loaded_machine_that_serves_it():
    clock = Clock()
    machines = Machines(forget_after=600, clock=clock)
    machines.add(Report(phase="seeding", serving="ab"), "198.18.0.10")
    machines.add(Report(phase="downloading", serving="ab"), "198.18.0.11")
    machines.add(Report(phase="kexec", serving="ab"), "198.18.0.12")  # leaving
    machines.add(Report(phase="seeding", serving="old"), "198.18.0.13")  # another pivotal
    places = 2 * fleet.PEER_SENDS  # each sends to PEER_SENDS machines at once
    askers = [f"198.18.1.{n}" for n in range(1, places + 2)]
    given = [machines.pivotal_source("ab", asker, tries=1) for asker in askers[:places]]
    assert sorted(given) == sorted(["198.18.0.10", "198.18.0.11"] * fleet.PEER_SENDS)
    # The next one waits ...
    late = askers[places]
    assert machines.pivotal_source("ab", late, tries=1) == fleet.WAIT
    assert machines.add(Report(phase="seeding", serving="ab"), "198.18.0.10")["waiting"] == 1
    # ... until one of them reports from its pivotal (its transfer is over).
    machines.add(Report(phase="dhcp"), askers[0])
    assert machines.pivotal_source("ab", late, tries=1) == given[0]
    machines.add(Report(phase="dhcp"), askers[1])
    assert machines.pivotal_source("ab", "198.18.1.9", tries=1) == given[1]
    # Never to itself; a retry of the boot script after a peer goes to the
    # server when no other peer is free; a transfer that was never seen to end counts for TRANSFER_MAX
    # s; nobody who has not reported for PEER_ALIVE s.
    assert machines.pivotal_source("ab", "198.18.0.10", tries=1) == fleet.WAIT
    assert machines.pivotal_source("ab", late, tries=2) == fleet.SERVER
    clock.now += fleet.TRANSFER_MAX
    machines.add(Report(phase="seeding", serving="ab"), "198.18.0.11")
    # A retry of a machine never sent to a peer (its first try was lost on
    # the way) is as good as a first try.
    assert machines.pivotal_source("ab", "198.18.1.20", tries=2) == "198.18.0.11"
    assert machines.redirects_given() == places + 3


def test_the_server_sends_the_pivotal_once_while_a_machine_is_about_to_serve_it():
    clock = Clock()
    machines = Machines(forget_after=600, clock=clock)
    first, second, third = "198.18.1.1", "198.18.1.2", "198.18.1.3"
    # Nobody in the swarm: the server sends it, to SERVER_SENDS machines at once.
    assert machines.pivotal_source("ab", first, tries=1) == fleet.SERVER
    machines.sending(first, started=True)
    assert machines.pivotal_source("ab", second, tries=1) == fleet.WAIT
    machines.sending(first, started=False)
    # The first keeps its turn for its next file; then the others wait
    # while it boots, for HOLD_MAX s at most.
    clock.now += 1
    assert machines.pivotal_source("ab", second, tries=1) == fleet.WAIT
    assert machines.pivotal_source("ab", first, tries=1) == fleet.SERVER
    clock.now += fleet.SERVER_GAP
    assert machines.pivotal_source("ab", second, tries=1) == fleet.WAIT
    clock.now += fleet.HOLD_MAX
    assert machines.pivotal_source("ab", second, tries=1) == fleet.SERVER
    # Once a machine runs its pivotal, it will serve the files: the others wait for it ...
    machines.add(Report(phase="downloading"), first)
    clock.now += fleet.SERVER_GAP
    assert machines.pivotal_source("ab", third, tries=1) == fleet.WAIT
    assert machines.serving("ab") == []
    machines.add(Report(phase="downloading", serving="ab"), first)
    assert machines.serving("ab") == [first]
    assert machines.pivotal_source("ab", third, tries=1) == first
    # ... for HOLD_MAX s at most in which the swarm did not move: no machine
    # got its files, began to serve or was sent to a peer ...
    machines.add(Report(phase="downloading"), first)
    assert machines.pivotal_source("ab", "198.18.1.4", tries=1) == fleet.WAIT
    late = [f"198.18.2.{n}" for n in range(fleet.SERVER_SENDS_OVERDUE + 1)]
    for asker in late:
        assert machines.pivotal_source("ab", asker, tries=1) == fleet.WAIT
    clock.now += fleet.HOLD_MAX - 1
    machines.add(Report(phase="downloading"), third)  # it got its files from first
    machines.add(Report(phase="downloading"), first)
    clock.now += 1
    assert machines.pivotal_source("ab", "198.18.1.4", tries=1) == fleet.WAIT
    # ... and the server streamed none of the files to the swarm.
    machines.streaming_pivotal(started=True)
    for _ in range(4):
        clock.now += fleet.HOLD_MAX / 2
        machines.add(Report(phase="downloading"), first)
        assert machines.pivotal_source("ab", "198.18.1.4", tries=1) == fleet.WAIT
    machines.streaming_pivotal(started=False)  # counts from its end
    clock.now += fleet.HOLD_MAX - 1
    machines.add(Report(phase="downloading"), first)
    assert machines.pivotal_source("ab", "198.18.1.4", tries=1) == fleet.WAIT
    clock.now += 1
    assert machines.pivotal_source("ab", "198.18.1.4", tries=1) == fleet.SERVER
    # Machines overdue together get it from the server a few at a time, so
    # that each gets it in time; a retry of the boot script is overdue too.
    given = [machines.pivotal_source("ab", asker, tries=1) for asker in late]
    assert given == [fleet.SERVER] * (fleet.SERVER_SENDS_OVERDUE - 1) + [fleet.WAIT] * 2
    assert machines.pivotal_source("ab", "198.18.1.5", tries=2) == fleet.WAIT
    clock.now += fleet.SERVER_GAP
    assert machines.pivotal_source("ab", late[-1], tries=1) == fleet.SERVER


def test_a_machine_a_peer_failed_goes_to_another_peer_then_to_the_server():
    clock = Clock()
    machines = Machines(forget_after=600, clock=clock)
    peers = [f"198.18.0.{n}" for n in range(10, 10 + fleet.PEER_TRIES + 1)]
    for peer in peers:
        machines.add(Report(phase="seeding", serving="ab"), peer)
    asker = "198.18.1.1"
    first = machines.pivotal_source("ab", asker, tries=1)
    assert first in peers
    # Each later try of its boot script blames the peer its last file came
    # from: never sent there again, to another free peer instead ...
    failed = {first}
    for tries in range(2, fleet.PEER_TRIES + 1):
        again = machines.pivotal_source("ab", asker, tries=tries)
        assert again in peers and again not in failed
        failed.add(again)
    # ... until PEER_TRIES peers failed it: then the server sends the files.
    assert machines.pivotal_source("ab", asker, tries=fleet.PEER_TRIES + 1) == fleet.SERVER
    # A machine a peer failed while no other peer is free is not held either.
    other = "198.18.1.2"
    busy = [machines.pivotal_source("ab", f"198.18.2.{n}", tries=1) for n in range(len(peers))]
    assert sorted(busy) == sorted(peers)
    assert machines.pivotal_source("ab", other, tries=1) == fleet.WAIT
    clock.now += fleet.TRANSFER_MAX
    for peer in peers:
        machines.add(Report(phase="seeding", serving="ab"), peer)
    sent_to = machines.pivotal_source("ab", other, tries=1)
    assert sent_to in peers
    for n in range(len(peers)):
        machines.pivotal_source("ab", f"198.18.3.{n}", tries=1)  # the others get busy
    assert machines.pivotal_source("ab", other, tries=2) == fleet.SERVER


def test_machines_held_ask_again_less_often_the_more_of_them_wait():
    clock = Clock()
    machines = Machines(forget_after=600, clock=clock)
    assert machines.retry_after() == fleet.RETRY_AFTER[0]  # nobody waits
    askers = [f"198.18.1.{n}" for n in range(1, 201)]
    assert machines.pivotal_source("ab", askers[0], tries=1) == fleet.SERVER
    for asker in askers[1:]:
        assert machines.pivotal_source("ab", asker, tries=1) == fleet.WAIT
    # 199 wait: together they ask about HELD_ASKS times a second.
    after = [machines.retry_after() for _ in range(50)]
    assert 199 / fleet.HELD_ASKS * 0.75 - 1 <= min(after) <= max(after) <= fleet.RETRY_AFTER[1]
    assert len(set(after)) > 1  # varied, so that they do not ask together
    # Those held long ago are no longer counted.
    clock.now += 3 * fleet.RETRY_AFTER[1] + 1
    assert machines.retry_after() == fleet.RETRY_AFTER[0]


def test_machines_form_a_chain_in_the_order_they_ask():
    now, in_swarm = [0.0], {"198.18.1.1", "198.18.1.2", "198.18.1.3"}
    chains = chain.Chains(in_swarm.__contains__, clock=lambda: now[0])
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
    # Machines that left the swarm are passed over once they are no longer
    # new: the next boot wave starts from the server.
    now[0] += chain.NEW_FOR
    in_swarm.clear()
    assert chains.source("ab", "198.18.1.9:7000") == chain.SERVER
    assert chains.members("ab") == ["198.18.1.9:7000"]
    chains.withdraw("ab")
    assert chains.source("ab", m1) is None


@pytest.mark.parametrize("buffer, expected", [
    (b"GET / HTTP/1.1\r\nHost: x\r\n", None),  # the head is not over yet
    (b"GET / HTTP/1.1\r\nHost: x\r\n\r\nGET /2", (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", True)),
    (b"POST /report HTTP/1.1\r\ncontent-length: 4\r\n\r\n{}", None),  # its body is not
    (b"POST /report HTTP/1.1\r\nContent-Length:4\r\n\r\n{ }\nGET",
     (b"POST /report HTTP/1.1\r\nContent-Length:4\r\n\r\n{ }\n", True)),
    # A body beyond what is read goes to the handler without it (413), and
    # the connection is closed after the answer.
    (b"POST /report HTTP/1.1\r\nContent-Length: 99999\r\n\r\nxx",
     (b"POST /report HTTP/1.1\r\nContent-Length: 99999\r\n\r\n", False)),
    # Other scripts' digits are no length (the handler answers 400).
    ("POST /report HTTP/1.1\r\nContent-Length: \u00b2\r\n\r\n".encode(),
     ("POST /report HTTP/1.1\r\nContent-Length: \u00b2\r\n\r\n".encode(), True)),
])
def test_a_request_is_whole_once_its_head_and_small_body_are_in(buffer, expected):
    assert split_request(bytearray(buffer), 4096) == expected
