"""The pivotal's client (python3 -m boottorrent.pivotal --dry-run) in network
namespaces against the real server services."""

from __future__ import annotations

import json

from conftest import MIB, random_image, register, summary, wait


def test_three_clients_boot_the_same_image(server_lab, tmp_path):
    files = random_image(tmp_path / "src", "compute", {"kernel": 4 * MIB,
                                                       "initrd.0": 12 * MIB,
                                                       "initrd.1": 8 * MIB})
    server = server_lab.server
    register(server, "compute", files)
    server_lab.host.shape(40)
    server.start()
    clients = [server_lab.start_client(f"c{n}", "compute") for n in (1, 2, 3)]

    from_peers = 0
    for n, (process, work) in enumerate(clients, 1):
        output = wait(process, tmp_path / f"c{n}.log", 180)
        assert process.returncode == 0, output
        folder = work / "images" / "compute"
        for name, source in (("kernel", "kernel"), ("initrd.0", "initrd.0"),
                             ("initrd.1", "initrd.1")):
            assert (folder / name).read_bytes() == files[source].read_bytes(), name
        # One initrd for kexec: the image's initrds, in order.
        assert (work / "initrd").read_bytes() == (files["initrd.0"].read_bytes()
                                                  + files["initrd.1"].read_bytes())
        report = summary(work)
        mac = report["mac"].replace(":", "-")
        assert (f"dry run: kexec -s -l {folder / 'kernel'} --initrd={work / 'initrd'} "
                f"--command-line=marker=compute BOOTIF=01-{mac}\n") in output
        assert output.rstrip().endswith("dry run: kexec -e")
        assert report["phase"] == "kexec" and report["hashfails"] == 0
        from_peers += report["from_peers"]
    # The server's link is shared by three: the clients served each other.
    assert from_peers > 8 * MIB, from_peers


def test_falls_back_to_http_when_the_swarm_stalls(server_lab, tmp_path):
    """No tracker and no BitTorrent from the server: after fallback_after
    seconds without progress the client takes the image from the web seed."""
    conf = server_lab.config_dir / "boottorrent.conf"
    conf.write_text(conf.read_text().replace("fallback_after = 120", "fallback_after = 5"))
    files = random_image(tmp_path / "src", "compute", {"kernel": 3 * MIB})
    server = server_lab.server
    register(server, "compute", files)
    server.start(services=("seeder",))
    pivotal = json.loads(server_lab.pivotal_json().read_text())
    pivotal["seeder_port"] = 9  # the discard port: nothing answers there
    config = tmp_path / "stalled.json"
    config.write_text(json.dumps(pivotal))

    process, work = server_lab.start_client("c1", "compute", address="auto", config=config)
    output = wait(process, tmp_path / "c1.log", 120)
    assert process.returncode == 0, output
    assert "no progress for 5 s: falling back to HTTP from the server" in output
    assert (work / "images" / "compute" / "kernel").read_bytes() == \
        files["kernel"].read_bytes()
    report = summary(work)
    assert report["from_server"] == 3 * MIB and report["from_peers"] == 0, report
    web_seed = next(i for i in server.status()["images"] if i["name"] == "compute")
    assert web_seed["http_sent"] >= 3 * MIB and web_seed["uploaded"] == 0, web_seed


