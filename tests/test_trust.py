"""The server believes only machines it booted (boottorrent/trust.py):
forged traffic from hosts of the LAN, against the real seeder in a lab."""

from __future__ import annotations

import json

from boottorrent.pivotal.wire import TOKEN_HEADER
from conftest import MIB, PYTHON, REPO

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
