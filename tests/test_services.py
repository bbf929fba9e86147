"""The server services for real in network namespaces: dnsmasq, opentracker
and the seeder in a server namespace, clients in their own namespaces."""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

from conftest import CLIENTS, MIB, PYTHON, REPO, random_image, wait_for
from lab.cluster import add_image_args
from lab.netns import Lab
from lab.server import Server, fetch, unit_command
from lab.token import VIRTIO_BUSID

DHCP_SERVICES = ("dnsmasq", "tracker", "seeder")


def test_two_clients_share_through_tracker(cluster):
    files = cluster.add_image("compute", {"kernel": 6 * MIB, "initrd.0": 18 * MIB})
    server = cluster.server
    cluster.server_host.shape(40)  # the server's link is the bottleneck, as in a real cluster
    cluster.start(DHCP_SERVICES)

    first = cluster.start_client("c1", "compute", cluster.add_host("c1", None))
    # Let the first get part of the image, then a second joins: it must get
    # pieces from the first, not only from the seeder.
    wait_for(lambda: any(c.get("progress", 0) > 0.3 for c in server.status()["clients"]), 120,
             "the first client to hold 30 % of the image")
    second = cluster.start_client("c2", "compute", cluster.add_host("c2", None))

    for client in (first, second):
        assert client.wait(180) == 0, client.log()
        folder = client.folder()
        assert (folder / "kernel").read_bytes() == files["kernel"].read_bytes()
        assert (folder / "initrd.0").read_bytes() == files["initrd.0"].read_bytes()
        # The one initrd is passed to kexec as it is: no copy.
        mac = client.summary()["mac"].replace(":", "-")
        assert f"dry run: kexec -s -l {folder / 'kernel'} --initrd={folder / 'initrd.0'} " \
               f"--command-line=marker=compute BOOTIF=01-{mac}" in client.log()

    # `boottorrent status` shows both clients as they reported themselves.
    shown = server.boottorrent("status").stdout
    for client in (first, second):
        line = next(l for l in shown.splitlines() if l.startswith(client.summary()["mac"]))
        assert "compute" in line and "kexec" in line and "100%" in line, shown
    header, image_row = shown.splitlines()[:2]
    assert header.split()[:5] == ["IMAGE", "SIZE", "SEEDS", "LEECHERS", "COMPLETIONS"]
    # From the tracker: the seeder is a seed, and both clients completed.
    assert image_row.split()[:6] == ["compute", "24.0", "MiB", "1", "0", "2"], shown

    second_summary = second.summary()
    assert second_summary["from_peers"] > 2 * MIB, second_summary
    assert first.summary()["uploaded"] > 2 * MIB
    # The clients got their addresses from our dnsmasq (full mode).
    assert second_summary["address"].startswith("198.18.0.")
    assert int(second_summary["address"].rsplit(".", 1)[1]) >= 100


def test_boot_files_over_tftp_and_http(cluster, tmp_path):
    files = cluster.add_image("compute", {"kernel": 2 * MIB})
    cluster.start(DHCP_SERVICES)
    client = cluster.lab.add_host("c1")
    boot = cluster.state_dir / "current" / "boot"

    client.run(["busybox", "tftp", "-g", "-r", "undionly.kpxe", "-l", str(tmp_path / "u.kpxe"),
                "198.18.0.1"])
    assert (tmp_path / "u.kpxe").read_bytes() == Path("/usr/lib/ipxe/undionly.kpxe").read_bytes()

    script = fetch(client, "http://198.18.0.1:6980/boot/boot.ipxe").decode()
    assert script.startswith("#!ipxe")
    assert "boottorrent.image=" in script
    for part in ("vmlinuz", "base.cpio.zst", "modules.cpio.zst", "stage.cpio.zst",
                 "config.cpio"):
        got = fetch(client, f"http://198.18.0.1:6980/boot/pivotal/{part}")
        assert got == (boot / "pivotal" / part).read_bytes(), part
    # The modules part as iPXE asks for it: with the NIC's busid, that NIC's
    # drivers alone; the whole part for one the server cannot tell.
    modules = "http://198.18.0.1:6980/boot/pivotal/modules.cpio.zst"
    virtio = fetch(client, f"{modules}?nic={VIRTIO_BUSID}")
    assert virtio == (boot / "pivotal" / "nics" / "virtio_pci.cpio.zst").read_bytes()
    assert len(virtio) < 200_000
    whole = (boot / "pivotal" / "modules.cpio.zst").read_bytes()
    for nic in ("0700000000", "01ffffffff", "x" * 200, "%00", "011af41000%00"):
        assert fetch(client, f"{modules}?nic={nic}") == whole, nic

    # The web seed answers ranges, as BEP 19 needs.
    url = cluster.url("compute", "kernel")
    out = client.run(["curl", "-s", "-r", "100-199", url], text=False).stdout
    assert out == files["kernel"].read_bytes()[100:200]
    # Nothing outside the two trees.
    assert client.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}",
                       "http://198.18.0.1:6980/boot/../registry.json"]).stdout == "404"


def test_reload_adds_image_without_disturbing_a_download(cluster):
    first_files = cluster.add_image("first", {"kernel": 24 * MIB})
    server = cluster.server
    cluster.server_host.shape(30)
    cluster.start(DHCP_SERVICES)
    client = cluster.start_client("c1", "first", cluster.add_host("c1", None))
    def sent(image: dict) -> int:  # over BitTorrent and as pieces over HTTP
        return image["uploaded"] + image["http_sent"]

    wait_for(lambda: sent(server.status()["images"][0]) > 4 * MIB, 120,
             "the seeder to have sent 4 MiB")
    sent_before = sent(server.status()["images"][0])

    second_files = cluster.add_image("second", {"kernel": 3 * MIB})
    server.reload("seeder")
    server.reload("tracker")

    def seeded() -> dict:
        names = {i["name"]: i for i in server.status()["images"]}
        return names if "second" in names else {}

    names = wait_for(seeded, 60, "the seeder to seed the second image")
    assert set(names) == {"first", "second"}
    assert sent(names["first"]) >= sent_before

    # The new image downloads through the tracker, whose whitelist was reloaded.
    late = cluster.start_client("c2", "second", cluster.add_host("c2", None))
    assert late.wait(120) == 0, late.log()
    assert (late.folder() / "kernel").read_bytes() == second_files["kernel"].read_bytes()

    assert client.wait(120) == 0, client.log()
    assert (client.folder() / "kernel").read_bytes() == first_files["kernel"].read_bytes()
    assert "attempt 1 of 3 failed" not in client.log()


def test_seeder_speaks_sd_notify(cluster, tmp_path):
    """READY=1, STATUS= and WATCHDOG=1 reach $NOTIFY_SOCKET, as under systemd."""
    cluster.add_image("compute", {"kernel": MIB})
    server = cluster.server
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


def notify_messages(listener: socket.socket):
    while True:
        yield listener.recv(4096).decode()


def test_seeder_waits_for_its_address(tmp_path, config_dir, state_dir):
    """At boot the cluster NIC may get its address after the seeder starts:
    the seeder says it waits (STATUS=, the watchdog fed), then serves."""
    files = random_image(tmp_path / "src", "compute", {"kernel": MIB})
    with Lab() as lab:
        host = lab.add_host("server", None)
        server = Server(host, config_dir, state_dir, tmp_path / "logs")
        server.boottorrent(*add_image_args("compute", files))
        socket_path = tmp_path / "notify"
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
            listener.bind(str(socket_path))
            listener.settimeout(60)
            process = server.start_service("seeder", NOTIFY_SOCKET=str(socket_path),
                                           WATCHDOG_USEC="10000000")
            messages = notify_messages(listener)
            first = next(messages)
            assert first == ("STATUS=waiting for address 198.18.0.1 on eth0\nWATCHDOG=1"), first
            assert process.poll() is None, server.log("seeder")
            host.run(["ip", "addr", "add", "198.18.0.1/24", "dev", "eth0"])
            ready = next(m for m in messages if m.startswith("READY=1"))
            assert "STATUS=1 images" in ready
            client = lab.add_host("c1")
            assert fetch(client, "http://198.18.0.1:6980/boot/boot.ipxe").startswith(b"#!ipxe")
            # (the listener stays open: the seeder notifies until it is stopped)
            server.stop_service("seeder")


def test_seeder_refuses_a_taken_port(cluster):
    """libtorrent would listen on another port than the one clients are told;
    the seeder exits instead, naming the address and the key."""
    cluster.add_image("compute", {"kernel": MIB})
    server = cluster.server
    server.boottorrent("generate")
    squatter = cluster.server_host.popen([PYTHON, "-c", "import socket, time; s = socket.socket(); "
                                      "s.bind(('198.18.0.1', 6881)); s.listen(); "
                                      "print('listening', flush=True); time.sleep(600)"],
                                     stdout=subprocess.PIPE, text=True)
    assert squatter.stdout.readline() == "listening\n"
    process = server.start_service("seeder")
    assert process.wait(60) == 1
    assert (f"cannot listen on 198.18.0.1:6881 ({cluster.config_dir}/boottorrent.conf: "
            "[seeder] port)") in server.log("seeder")
    cluster.lab.stop(squatter)


def test_client_without_a_server_says_so_and_gives_up(make_cluster):
    """A link that stays down: each attempt ends after 2 x fallback_after
    without progress, with a plain message, and the client exits (the
    pivotal then opens its rescue shell)."""
    cluster = make_cluster(conf={"clients": {**CLIENTS, "fallback_after": 5}})
    cluster.add_image("compute", {"kernel": MIB})  # registered, but no service runs
    client = cluster.start_client("c1", "compute", cluster.add_host("c1", "198.18.0.50"))
    assert client.wait(300) == 1, client.log()
    output = client.log()
    assert ("no progress for 10 s and no peer: the server 198.18.0.1 does not answer"
            in output), output
    assert "giving up after 3 attempts" in output


def test_units_verify(tmp_path):
    """systemd-analyze verify on our units, with /usr/sbin/boottorrent standing
    for the checkout (the installed units are verified by the package test)."""
    wrapper = tmp_path / "boottorrent"
    wrapper.write_text(f"#!/bin/sh\nPYTHONPATH={REPO} exec {PYTHON} -m boottorrent \"$@\"\n")
    wrapper.chmod(0o755)
    units = []
    units_dir = REPO / "systemd"
    for unit in sorted([*units_dir.glob("*.service"), *units_dir.glob("*.path")]):
        target = tmp_path / unit.name
        target.write_text(unit.read_text().replace("/usr/sbin/boottorrent", str(wrapper)))
        units.append(str(target))
    assert len(units) == 7
    result = subprocess.run(["systemd-analyze", "verify", "--man=no", *units],
                            capture_output=True, text=True)
    assert result.returncode == 0 and result.stderr == "", result.stderr


def test_lab_runs_the_units_command_lines(tmp_path):
    argv = unit_command("boottorrent-dnsmasq", tmp_path)
    assert argv[0] == "/usr/sbin/dnsmasq"
    assert f"--conf-file={tmp_path}/current/dnsmasq.conf" in argv
