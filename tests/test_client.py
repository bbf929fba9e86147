"""The pivotal's client (python3 -m boottorrent.pivotal --dry-run) in network
namespaces against the real server services."""

from __future__ import annotations

import json
import time

from conftest import CLIENTS, MIB, wait_for

DHCP_SERVICES = ("dnsmasq", "tracker", "seeder")


def test_three_clients_boot_the_same_image(cluster):
    files = cluster.add_image("compute", {"kernel": 4 * MIB, "initrd.0": 12 * MIB,
                                          "initrd.1": 8 * MIB})
    cluster.server_host.shape(40)
    cluster.start(DHCP_SERVICES)
    clients = [cluster.start_client(f"c{n}", "compute", cluster.add_host(f"c{n}", None))
               for n in (1, 2, 3)]

    from_peers = 0
    for client in clients:
        assert client.wait(180) == 0, client.log()
        output, folder = client.log(), client.folder()
        assert (folder / "kernel").read_bytes() == files["kernel"].read_bytes()
        # One initrd for kexec: the image's initrds, in order, appended to
        # the first (no second copy of the image in RAM).
        assert (folder / "initrd.0").read_bytes() == (files["initrd.0"].read_bytes()
                                                      + files["initrd.1"].read_bytes())
        assert not (folder / "initrd.1").exists()
        report = client.summary()
        mac = report["mac"].replace(":", "-")
        assert (f"dry run: kexec -s -l {folder / 'kernel'} --initrd={folder / 'initrd.0'} "
                f"--command-line=marker=compute BOOTIF=01-{mac}\n") in output
        assert output.rstrip().endswith("dry run: kexec -e")
        assert report["phase"] == "kexec" and report["hashfails"] == 0
        from_peers += report["from_peers"]
    # The server's link is shared by three: the clients served each other.
    assert from_peers > 8 * MIB, from_peers


def test_falls_back_to_http_when_the_swarm_stalls(make_cluster, tmp_path):
    """No tracker, no BitTorrent from the server and no pieces handed out
    over its HTTP side (the client finds no /pieces, nor /report, where
    pivotal.json says): after fallback_after seconds without progress the
    client takes the image from the web seed."""
    cluster = make_cluster(conf={"clients": {**CLIENTS, "fallback_after": 5}})
    files = cluster.add_image("compute", {"kernel": 3 * MIB})
    cluster.start(("seeder",))
    pivotal = json.loads(cluster.pivotal_json().read_text())
    pivotal["seeder_port"] = 9  # the discard port: nothing answers there
    pivotal["report_url"] = pivotal["report_url"].replace(":6980/", ":9/")
    config = tmp_path / "stalled.json"
    config.write_text(json.dumps(pivotal))

    client = cluster.start_client("c1", "compute", config=config)
    assert client.wait(120) == 0, client.log()
    assert "no progress for 5 s: falling back to HTTP from the server" in client.log()
    assert (client.folder() / "kernel").read_bytes() == files["kernel"].read_bytes()
    report = client.summary()
    assert report["from_server"] == 3 * MIB and report["from_peers"] == 0, report
    web_seed = next(i for i in cluster.server.status()["images"] if i["name"] == "compute")
    assert web_seed["http_sent"] >= 3 * MIB and web_seed["uploaded"] == 0, web_seed


def test_a_chain_slower_than_fallback_after_is_progress(make_cluster):
    """The chain's bytes, which libtorrent does not count, are progress: a
    client whose stream takes longer than twice fallback_after neither
    falls back to HTTP nor gives up."""
    cluster = make_cluster(rate_mbit=4, conf={"clients": {**CLIENTS, "fallback_after": 5}})
    files = cluster.add_image("compute", {"kernel": 2 * MIB, "initrd.0": 4 * MIB})  # 12 s
    cluster.start()
    client = cluster.start_client("c1", "compute")
    assert client.wait(120) == 0, client.log()
    assert "falling back" not in client.log() and "no progress" not in client.log()
    assert client.has_image(files)
    assert client.summary()["from_server"] == 6 * MIB


def test_seeds_while_the_server_counts_machines_on_their_way(cluster):
    """A machine that fetched the boot files holds the swarm: the first
    client keeps seeding past its seed_idle_time until that machine's own
    client has the image, then leaves promptly."""
    files = cluster.add_image("compute", {"kernel": 8 * MIB})
    cluster.server_host.shape(20)  # so that the late machine takes most from the first
    cluster.start()
    late_host = cluster.add_host("late")
    first = cluster.start_client("c1", "compute")
    # The late machine's firmware fetches the iPXE script while the first downloads.
    cluster.fetch_boot_script(late_host)
    assert cluster.reports()[late_host.address]["phase"] == "pxe"

    wait_for(lambda: "1 machine on their way, waiting" in first.log(), 120,
             "the first client to wait for the late machine")
    # Long past when it would have left (seed_idle_time plus two announce
    # intervals of the tracker's count) if nobody were on the way.
    idle = CLIENTS["seed_idle_time"] + 2 * 2 + 3
    wait_for(lambda: time.time() - (first.report().get("verified_at") or time.time()) > idle, 60,
             f"the first client to have seeded for {idle} s")
    assert first.running(), first.log()

    late = cluster.start_client("late", "compute", late_host)
    assert late.wait(120) == 0, late.log()
    assert (late.folder() / "kernel").read_bytes() == files["kernel"].read_bytes()
    summary = late.summary()
    assert summary["from_peers"] > 2 * MIB, summary
    assert summary["from_server"] + summary["from_peers"] == 8 * MIB, summary  # each byte once
    # Nobody else on the way: the first leaves.
    assert first.wait(60) == 0, first.log()
    assert "the server counts 0 machines on their way" in first.log()
