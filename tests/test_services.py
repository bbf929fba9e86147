"""The server services for real in network namespaces: dnsmasq, opentracker
and the seeder in a server namespace, clients in their own namespaces."""

from __future__ import annotations

import json
import socket
import subprocess
import time
from pathlib import Path

from conftest import MIB, PYTHON, REPO, random_image, register, summary, wait
from lab.server import fetch, unit_command


def test_two_clients_share_through_tracker(server_lab, tmp_path):
    files = random_image(tmp_path / "src", "compute", {"kernel": 6 * MIB,
                                                       "initrd.0": 18 * MIB})
    server = server_lab.server
    register(server, "compute", files)
    server_lab.host.shape(40)  # the server's link is the bottleneck, as in a real cluster
    server.start()

    first, first_work = server_lab.start_client("c1", "compute")
    # Let the first get part of the image, then a second joins: it must get
    # pieces from the first, not only from the seeder.
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        clients = server.status()["clients"]
        if clients and clients[0].get("progress", 0) > 0.3:
            break
        time.sleep(0.5)
    second, second_work = server_lab.start_client("c2", "compute")

    for process, work, name in ((first, first_work, "c1"), (second, second_work, "c2")):
        output = wait(process, tmp_path / f"{name}.log", 180)
        assert process.returncode == 0, output
        folder = work / "images" / "compute"
        assert (folder / "kernel").read_bytes() == files["kernel"].read_bytes()
        assert (folder / "initrd.0").read_bytes() == files["initrd.0"].read_bytes()
        mac = summary(work)["mac"].replace(":", "-")
        assert f"dry run: kexec -s -l {folder / 'kernel'} --initrd={work / 'initrd'} " \
               f"--command-line=marker=compute BOOTIF=01-{mac}" in output
        assert (work / "initrd").read_bytes() == files["initrd.0"].read_bytes()

    # `boottorrent status` shows both clients as they reported themselves.
    shown = server.boottorrent("status").stdout
    for work in (first_work, second_work):
        line = next(l for l in shown.splitlines() if l.startswith(summary(work)["mac"]))
        assert "compute" in line and "kexec" in line and "100%" in line, shown
    header, image_row = shown.splitlines()[:2]
    assert header.split()[:5] == ["IMAGE", "SIZE", "SEEDS", "LEECHERS", "COMPLETIONS"]
    # From the tracker: the seeder is a seed, and both clients completed.
    assert image_row.split()[:6] == ["compute", "24.0", "MiB", "1", "0", "2"], shown

    second_summary = summary(second_work)
    assert second_summary["from_peers"] > 2 * MIB, second_summary
    assert summary(first_work)["uploaded"] > 2 * MIB
    # The clients got their addresses from our dnsmasq (full mode).
    assert second_summary["address"].startswith("198.18.0.")
    assert int(second_summary["address"].rsplit(".", 1)[1]) >= 100


def test_boot_files_over_tftp_and_http(server_lab, tmp_path):
    files = random_image(tmp_path / "src", "compute", {"kernel": 2 * MIB})
    server = server_lab.server
    register(server, "compute", files)
    server.start()
    client = server_lab.lab.add_host("c1")
    boot = server_lab.state_dir / "current" / "boot"

    client.run(["busybox", "tftp", "-g", "-r", "undionly.kpxe", "-l", str(tmp_path / "u.kpxe"),
                "198.18.0.1"])
    assert (tmp_path / "u.kpxe").read_bytes() == Path("/usr/lib/ipxe/undionly.kpxe").read_bytes()

    script = fetch(client, "http://198.18.0.1:6980/boot/boot.ipxe").decode()
    assert script.startswith("#!ipxe")
    assert "boottorrent.image=" in script
    for part in ("vmlinuz", "base.cpio.zst", "modules.cpio.zst", "config.cpio"):
        got = fetch(client, f"http://198.18.0.1:6980/boot/pivotal/{part}")
        assert got == (boot / "pivotal" / part).read_bytes(), part

    # The web seed answers ranges, as BEP 19 needs.
    infohash = json.loads((server_lab.state_dir / "current" / "registry.json").read_text())[
        "images"]["compute"]["infohash"]
    url = f"http://198.18.0.1:6980/images/{infohash}/compute/kernel"
    out = client.run(["curl", "-s", "-r", "100-199", url], text=False).stdout
    assert out == files["kernel"].read_bytes()[100:200]
    # Nothing outside the two trees.
    assert client.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}",
                       "http://198.18.0.1:6980/boot/../registry.json"]).stdout == "404"


def test_reload_adds_image_without_disturbing_a_download(server_lab, tmp_path):
    first_files = random_image(tmp_path / "src", "first", {"kernel": 24 * MIB})
    server = server_lab.server
    register(server, "first", first_files)
    server_lab.host.shape(30)
    server.start()
    client, work = server_lab.start_client("c1", "first")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        images = server.status()["images"]
        if images and images[0]["uploaded"] > 4 * MIB:
            break
        time.sleep(0.3)
    uploaded_before = server.status()["images"][0]["uploaded"]

    second_files = random_image(tmp_path / "src", "second", {"kernel": 3 * MIB})
    register(server, "second", second_files)
    server.reload("seeder")
    server.reload("tracker")
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        names = {i["name"]: i for i in server.status()["images"]}
        if "second" in names:
            break
        time.sleep(0.3)
    assert set(names) == {"first", "second"}
    # The first image's torrent was not restarted: its counters went on.
    assert names["first"]["uploaded"] >= uploaded_before

    # The new image downloads through the tracker, whose whitelist was reloaded.
    late, late_work = server_lab.start_client("c2", "second")
    output = wait(late, tmp_path / "c2.log", 120)
    assert late.returncode == 0, output
    assert (late_work / "images" / "second" / "kernel").read_bytes() == \
        second_files["kernel"].read_bytes()

    output = wait(client, tmp_path / "c1.log", 120)
    assert client.returncode == 0, output
    assert (work / "images" / "first" / "kernel").read_bytes() == \
        first_files["kernel"].read_bytes()
    assert "attempt 1 of 3 failed" not in output


def test_seeder_speaks_sd_notify(server_lab, tmp_path):
    """READY=1, STATUS= and WATCHDOG=1 reach $NOTIFY_SOCKET, as under systemd."""
    files = random_image(tmp_path / "src", "compute", {"kernel": MIB})
    server = server_lab.server
    register(server, "compute", files)
    server.boottorrent("generate")
    socket_path = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
        listener.bind(str(socket_path))
        listener.settimeout(20)
        server.start_service("seeder", NOTIFY_SOCKET=str(socket_path), WATCHDOG_USEC="10000000")
        messages = []
        while not any("WATCHDOG=1" in m for m in messages):
            messages.append(listener.recv(4096).decode())
    assert messages[0].startswith("READY=1\nSTATUS=1 images, 0 peers"), messages
    assert all("STATUS=" in m for m in messages)


def test_units_verify(tmp_path):
    """systemd-analyze verify on our units, with /usr/bin/boottorrent standing
    for the checkout (the installed units are verified by the package test)."""
    wrapper = tmp_path / "boottorrent"
    wrapper.write_text(f"#!/bin/sh\nPYTHONPATH={REPO} exec {PYTHON} -m boottorrent \"$@\"\n")
    wrapper.chmod(0o755)
    units = []
    for unit in sorted((REPO / "systemd").glob("*.service")):
        target = tmp_path / unit.name
        target.write_text(unit.read_text().replace("/usr/bin/boottorrent", str(wrapper)))
        units.append(str(target))
    assert len(units) == 4
    result = subprocess.run(["systemd-analyze", "verify", "--man=no", *units],
                            capture_output=True, text=True)
    assert result.returncode == 0 and result.stderr == "", result.stderr


def test_lab_runs_the_units_command_lines(tmp_path):
    argv = unit_command("boottorrent-dnsmasq", tmp_path)
    assert argv[0] == "/usr/sbin/dnsmasq"
    assert f"--conf-file={tmp_path}/current/dnsmasq.conf" in argv
