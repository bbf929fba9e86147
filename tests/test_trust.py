"""The server believes only machines it booted (boottorrent/trust.py):
forged traffic from hosts of the LAN, against the real seeder in a lab."""

from __future__ import annotations

import json

from boottorrent.pivotal import paths
from boottorrent.pivotal.wire import TOKEN_HEADER
from conftest import CLIENTS, MIB, PYTHON, REPO
from lab.token import config_url, newc_files

BOOT_URL = "http://198.18.0.1:6980/boot"
SEEDING = {"image": "compute", "phase": "seeding", "progress": 1.0}


def status_of(host, url: str, token: str = "") -> str:
    """The HTTP status of a GET of url from host (1 byte of its body at most)."""
    headers = ["-H", f"{TOKEN_HEADER}: {token}"] if token else []
    return host.run(["curl", "-s", "-o", "/dev/null", "-r", "0-0", "-w", "%{http_code}",
                     *headers, url], check=False).stdout


def test_forged_traffic_holds_no_machine(cluster):
    """A host that was never booted reports that it serves the pivotal, and
    keeps a stream of it open as a chain's head would: refused. A machine
    that boots gets the pivotal's base at once, from the server."""
    cluster.add_image("compute", {"kernel": MIB})
    cluster.start(("seeder",))
    cluster.server.wait_for_seeder()
    forger, booting = cluster.add_host("forger"), cluster.add_host("booting")
    infohash = cluster.server.status()["pivotal"]["infohash"]
    for _ in range(3):
        assert cluster.send_report(forger, forged=True, **SEEDING, serving=infohash) is None
        assert status_of(forger, f"http://198.18.0.1:6980/stream/{infohash}") == "403"
        assert status_of(forger, f"http://198.18.0.1:6980/chain/{infohash}?port=7000") == "403"
    assert forger.address not in cluster.reports()
    cluster.fetch_boot_script(booting, "compute")
    asked = booting.run([PYTHON, "-m", "lab.storm", "--count", "1", "--token", BOOT_URL,
                         f"{BOOT_URL}/pivotal/base.cpio.zst?try=x"], cwd=REPO)
    base = json.loads(asked.stdout)[0]
    assert base["status"] == 200 and base["redirects"] == [] and base["retried"] == 0, base
    assert cluster.server.status()["pivotal"]["redirects"] == 0
    # The forger's reports and requests: one log line.
    lines = [line for line in cluster.server.log("seeder").splitlines()
             if forger.address in line and "no token" in line]
    assert len(lines) == 1, lines


def test_ten_thousand_forged_sources_evict_no_machine(cluster):
    """Reports from 10 000 addresses the server never booted: each refused;
    the machine that reports keeps its place, and its report interval."""
    cluster.add_image("compute", {"kernel": MIB})
    cluster.start(("seeder",))
    cluster.server.wait_for_seeder()
    machine = cluster.add_host("machine")
    assert cluster.send_report(machine, **SEEDING)["interval"] == 1.0
    crowd, network = cluster.crowd("forgers", 10000)
    out = crowd.run([PYTHON, "-m", "lab.storm", "--report", "--forged", "--from", network,
                     "--count", "10000", "--seconds", "20", "http://198.18.0.1:6980/report"],
                    cwd=REPO)
    forged = json.loads(out.stdout)
    assert forged["answered"] == 0 and forged["statuses"] == {"403": 10000}, forged
    answer = cluster.send_report(machine, **SEEDING)
    assert answer == {"interval": 1.0, "coming": 0, "waiting": 0}, answer
    clients = cluster.server.status()["clients"]
    assert [c["address"] for c in clients] == [machine.address], len(clients)
    assert clients[0]["mac"] == machine.mac
    assert machine.address in cluster.server.boottorrent("status").stdout


def test_a_machines_own_files_go_to_that_machine_alone(make_cluster):
    """A machine [machines] lists gets its own files (its name, identity and
    the admin's templates) with its config part, the same each boot; another
    host asking with that machine's MAC gets none, and the server logs it once."""
    mac = "52:54:00:e3:00:01"
    cluster = make_cluster(conf={"clients": CLIENTS, "machines": {"rack": {
        "image": "compute", "macs": mac, "hostname": "rack-{index:02}"}}})
    (cluster.config_dir / "node-files/etc").mkdir(parents=True)
    (cluster.config_dir / "node-files/etc/motd").write_text("{{ name }} at {{ address }}\n")
    cluster.add_image("compute", {"kernel": MIB})
    cluster.start(("seeder",))
    cluster.server.wait_for_seeder()
    machine = cluster.add_host("machine", mac=mac)
    thief = cluster.add_host("thief")

    def own_files(host) -> dict[str, bytes]:
        part = host.run(["curl", "-sf", config_url(BOOT_URL, mac, "compute")], text=False).stdout
        return {name.removeprefix(f"{paths.NODE}/"): data
                for name, (_, data) in newc_files(part).items()
                if name.startswith(f"{paths.NODE}/")}

    mine = own_files(machine)
    assert mine["etc/hostname"] == b"rack-01\n"
    assert mine["etc/motd"] == f"rack-01 at {machine.address}\n".encode()
    key = mine["etc/ssh/ssh_host_ed25519_key"]
    assert b"OPENSSH PRIVATE KEY" in key
    assert own_files(machine)["etc/ssh/ssh_host_ed25519_key"] == key  # each boot the same
    for _ in range(2):
        assert own_files(thief) == {}
    lines = [line for line in cluster.server.log("seeder").splitlines()
             if thief.address in line and mac in line]
    assert len(lines) == 1 and f"whose MAC is {thief.mac}: refused" in lines[0], lines
