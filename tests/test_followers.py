"""Follower servers (issue 40): a primary and two followers, each on a
subnet of its own behind a router namespace (lab.netns.Lab.add_subnet),
every one the real dnsmasq, tracker and seeder, the followers' real
`boottorrent follow` (boottorrent/mirror.py); machines on every subnet, the
real pivotal in namespaces and one QEMU machine PXE-booting from its
follower."""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path

import pytest

from lab.cluster import HTTP_URL, MIB, Cluster, follower_conf, random_image, wait_for
from lab.qemu import VM
from lab.testimage import MARKER_PREFIX, build_test_image
from boottorrent.pivotal.wire import HTTP_PORT

REPO = Path(__file__).resolve().parent.parent
MARKER = "booted-from-a-follower"
CLIENTS = {"seed_idle_time": 2, "fallback_after": 120}
# An image registered (or removed) on the primary is in every follower's
# registry within this (mirror.POLL_SECONDS, then the image's bytes on
# the lab's links).
REACHES_WITHIN = 30


def registered(cluster: Cluster) -> list[str]:
    current = cluster.state_dir / "current" / "registry.json"
    return list(cluster.registry()) if current.exists() else []


def reload(cluster: Cluster) -> None:
    """What add-image and remove-image ask systemd for (commands.reload_services)."""
    cluster.server.reload("seeder")
    cluster.server.reload("tracker")


def settled_sent(primary: Cluster, image: str, seen: dict) -> int | None:
    """What the primary's seeder sent of image, over BitTorrent and HTTP,
    once the same in two of its status rounds (libtorrent's counters lag
    what went out by up to a round); None until then."""
    status = primary.server.status()
    entry = next(i for i in status["images"] if i["name"] == image)
    sent = entry["uploaded"] + entry["http_sent"]
    steady = seen.get("sent") == sent and seen.get("time") != status["time"]
    seen.update(sent=sent, time=status["time"])
    return sent if steady and sent else None


@pytest.mark.qemu
def test_followers_mirror_the_primary_and_boot_their_subnets(tmp_path, pivotal_cache):
    image = build_test_image(REPO / ".cache" / "testimage", MARKER, pad_mib=40)
    files = {"kernel": image["kernel"], "initrd.0": image["initrd"]}
    size = sum(path.stat().st_size for path in files.values())
    urls = [f"http://198.18.{n}.10:{HTTP_PORT}" for n in (2, 3)]
    figures: dict = {"image_mib": round(size / MIB, 1)}
    seen: dict = {}
    with contextlib.ExitStack() as stack:
        primary = stack.enter_context(Cluster(
            tmp_path / "primary", cache=pivotal_cache,
            conf={"follow": {"followers": urls}, "clients": CLIENTS}))
        primary.start()
        followers = []
        for url in urls:
            subnet = primary.lab.add_subnet(tmp_path / "logs", relay_to=())
            follower = stack.enter_context(Cluster(
                tmp_path / f"follower{subnet.number}", cache=pivotal_cache, lab=primary.lab,
                subnet=subnet, conf={**follower_conf(subnet, HTTP_URL), "clients": CLIENTS}))
            assert follower.http_url == url
            followers.append(follower)
        for follower in followers:
            follower.start(("dnsmasq", "tracker", "seeder", "follow"))

        # Registered on the primary while its followers run: on every subnet
        # within seconds, the primary sending about one copy for both.
        primary.server.boottorrent("add-image", "e2e", "--kernel", str(image["kernel"]),
                                   "--initrd", str(image["initrd"]),
                                   "--cmdline", "console=ttyS0 panic=-1")
        reload(primary)
        added = time.monotonic()
        for follower in followers:
            wait_for(lambda: "e2e" in registered(follower), REACHES_WITHIN,
                     f"e2e on {follower.address}\n{follower.server.log('follow')}")
        figures["registered_to_every_follower_s"] = round(time.monotonic() - added, 1)
        sent = wait_for(lambda: settled_sent(primary, "e2e", seen), 30,
                        "the primary's counters to settle", interval=1.1)
        figures["primary_sent_for_the_followers_copies"] = round(sent / size, 2)
        assert sent < 1.5 * size, figures

        # Machines on every subnet boot: a QEMU machine PXE-boots from the
        # second follower, pivotals in namespaces on all three subnets.
        vm = VM(primary.lab, "vm", tmp_path, mac="52:54:00:f0:11:01", memory_mib=1024,
                subnet=followers[1].subnet).start()
        clients = [primary.start_client("p1", "e2e")]
        clients += [follower.start_client(f"f{follower.subnet.number}-{n}", "e2e")
                    for follower in followers for n in (1, 2)]
        primary.wait_all(clients, 300)
        for client in clients:
            assert client.has_image(files), client.name
        figures["power_on_to_marker_s"] = round(vm.wait_for(MARKER_PREFIX + MARKER, 600), 1)

        # The primary lists every machine with the server it booted from.
        expected = {c.host.address: c.cluster.address for c in clients}
        vm_address = wait_for(lambda: next((c["address"] for c in primary.server.status()[
            "clients"] if c["mac"] == vm.mac), None), 30, "the QEMU machine on the primary")
        expected[vm_address] = followers[1].address

        def listed() -> dict:
            return {c["address"]: c.get("server", primary.address)
                    for c in primary.server.status()["clients"]}
        wait_for(lambda: listed() == expected, 30, f"every machine on the primary: {expected}")
        shown = primary.server.boottorrent("status").stdout
        for address, server in expected.items():
            line = next(line for line in shown.splitlines() if f" {address} " in line)
            assert line.rstrip().endswith(server if server != primary.address else "this one"), \
                line
        figures["machines_on_the_primary"] = len(expected)

        # Removed on the primary: gone from every follower within seconds.
        extra = random_image(tmp_path / "extra", "extra", {"kernel": MIB})
        primary.register("extra", extra)
        reload(primary)
        for follower in followers:
            wait_for(lambda: "extra" in registered(follower), REACHES_WITHIN, "extra")
        primary.server.boottorrent("remove-image", "extra")
        reload(primary)
        for follower in followers:
            wait_for(lambda: registered(follower) == ["e2e"], REACHES_WITHIN, "extra gone")

        # The primary goes away while the followers' next machines download:
        # they boot from what their followers hold.
        late = [follower.client(f"f{follower.subnet.number}-late", "e2e").prepare()
                for follower in followers]
        for client in late:
            client.start()
        for service in ("seeder", "tracker"):
            primary.server.stop_service(service)
        primary.wait_all(late, 300)
        for client in late:
            assert client.has_image(files), client.name
        for follower in followers:
            assert registered(follower) == ["e2e"]
            wait_for(lambda: "cannot be reached" in follower.server.log("follow"), 15,
                     "the follower to notice")
    print(json.dumps(figures, indent=1))
    (tmp_path / "figures.json").write_text(json.dumps(figures, indent=1))
