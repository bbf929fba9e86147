"""Fault tolerance of a boot swarm, in the lab: the real tracker and seeder,
the real pivotal client in each client namespace, links shaped so that the
faults land in the middle of the downloads. Every test asserts on data: each
surviving client ends with files byte for byte equal to the registered image.
No test asserts on timing; they wait for conditions (with generous
timeouts that only turn a hang into a failure)."""

from __future__ import annotations

import hashlib
import json
import random
import subprocess
import time
from pathlib import Path

import libtorrent as lt
import pytest

from conftest import PYTHON, REPO
from lab.cluster import MIB, Cluster, Client, corrupt_copy, wait_for
from lab.netns import SERVER_ADDRESS
from lab.server import environment

IMAGE = "compute"
SIZES = {"kernel": 2 * MIB, "initrd.0": 6 * MIB}  # F = 8 MiB: 32 pieces of 256 KiB
CONF = {
    "tracker": {"announce_interval": 2},
    # Clients leave soon after the swarm is done; no HTTP fallback within a
    # test's life, so that every recovery below is the swarm's own.
    "clients": {"seed_idle_time": 2, "fallback_after": 600},
}
TIMEOUT = 150  # per wait; a healthy run needs a fraction of it


@pytest.fixture
def make_cluster(make_cluster):
    """conftest's, with this module's settings under the test's own."""
    def make(rate_mbit: int, conf: dict | None = None) -> Cluster:
        return make_cluster(rate_mbit, {**CONF, **(conf or {})})

    return make


def logs(clients: list[Client]) -> str:
    return "\n".join(f"--- {c.name}\n{c.log()[-2500:]}" for c in clients)


def assert_complete(clients: list[Client], files: dict[str, Path], timeout: float = TIMEOUT):
    """Each client exits 0 with the image's exact bytes."""
    deadline = time.monotonic() + timeout
    for client in clients:
        code = client.wait(max(1.0, deadline - time.monotonic()))
        assert code == 0, f"{client.name} exited with {code}\n" + logs(clients)
        assert client.has_image(files), f"{client.name}: wrong bytes\n" + logs(clients)
        assert "dry run: kexec -s -l" in client.log()


def mid_download(clients: list[Client], low: float = 0.15) -> dict[str, dict]:
    """Wait until every client reported progress >= low; their reports."""
    def ready():
        reports = clients[0].cluster.reports()
        return reports if all(c.progress(reports) >= low for c in clients) else None
    return wait_for(ready, TIMEOUT, f"every client at {low:.0%}")


# ---------------------------------------------------------------- torrent pieces

class Pieces:
    """The image's piece hashes, to check which pieces a client's files hold."""

    def __init__(self, torrent: Path):
        self.info = lt.torrent_info(str(torrent))
        self.files = self.info.files()

    def __len__(self) -> int:
        return self.info.num_pieces()

    def data(self, save_path: Path, piece: int) -> bytes:
        """Piece `piece` as the files under save_path hold it now."""
        start = piece * self.info.piece_length()
        end = start + self.info.piece_size(piece)
        chunks = []
        for index in range(self.files.num_files()):
            offset, size = self.files.file_offset(index), self.files.file_size(index)
            lo, hi = max(start, offset), min(end, offset + size)
            if lo >= hi:
                continue
            path = save_path / self.files.file_path(index)
            try:
                with path.open("rb") as file:
                    file.seek(lo - offset)
                    chunk = file.read(hi - lo)
            except FileNotFoundError:
                chunk = b""
            chunks.append(chunk.ljust(hi - lo, b"\0"))
        return b"".join(chunks)

    def held(self, save_path: Path, piece: int) -> bool:
        digest = hashlib.sha1(self.data(save_path, piece)).digest()
        return digest == self.info.hash_for_piece(piece)


# ---------------------------------------------------------------- the tests

def test_quarter_of_clients_killed_mid_download(make_cluster):
    """2 of 8 clients die mid-download, one as a process (the kernel closes
    its connections), one as a machine (link down first: its peers only
    learn from timeouts). The other 6 complete with the right bytes."""
    cluster = make_cluster(rate_mbit=16)
    files = cluster.add_image(IMAGE, SIZES)
    cluster.start()
    clients = [cluster.client(f"c{i}", IMAGE) for i in range(8)]
    for client in clients:
        client.start()
    seed = random.randrange(1 << 30)
    victims = random.Random(seed).sample(clients, len(clients) // 4)
    reports = mid_download(clients)
    crashed, killed = victims
    crashed.host.run(["ip", "link", "set", "eth0", "down"])
    for victim in victims:
        progress = victim.progress(reports)
        victim.kill()
        assert victim.process.returncode != 0
        assert progress < 1.0 and not (victim.work / "summary.json").exists(), \
            f"{victim.name} was done before it was killed (random seed {seed})"

    survivors = [c for c in clients if c not in victims]
    assert_complete(survivors, files)
    # The survivors did use each other, not only the server.
    assert sum(c.summary()["from_peers"] for c in survivors) > 0


def test_seeder_stopped_once_swarm_holds_every_piece(make_cluster):
    """The seeder goes away as soon as each piece is held by some client
    (checked on the clients' files against the torrent's piece hashes):
    the clients complete from each other.

    The clients start one after the other, each once the one before holds
    a quarter of the pieces, so that the swarm holds every piece well
    before the last client does: the machines pass the image along a chain
    (relay.py), each a little behind the one before, and started together
    they would all hold everything within a second of each other."""
    cluster = make_cluster(rate_mbit=8, conf={"seeder": {"upload_slots": 2}})
    cluster.server_host.shape(32)
    files = cluster.add_image(IMAGE, SIZES)
    cluster.start()
    pieces = Pieces(cluster.torrent(IMAGE))
    clients = [cluster.client(f"c{i}", IMAGE) for i in range(4)]
    for before, client in zip([None] + clients, clients):
        if before:
            wait_for(lambda: sum(pieces.held(before.work / "images", p)
                                 for p in range(len(pieces))) >= len(pieces) // 4,
                     TIMEOUT, f"{before.name} holds a quarter of the pieces", interval=0.1)
        client.start()
    holders: dict[int, str] = {}

    def covered() -> bool:
        for piece in range(len(pieces)):
            if piece in holders:
                continue
            for client in clients:
                if pieces.held(client.work / "images", piece):
                    holders[piece] = client.name
                    break
        return len(holders) == len(pieces)

    wait_for(covered, TIMEOUT, "every piece held by some client", interval=0.1)
    cluster.server.stop_service("seeder")
    incomplete = [c.name for c in clients
                  if not all(pieces.held(c.work / "images", p) for p in range(len(pieces)))]
    assert incomplete, "every client was already complete when the seeder stopped"

    assert_complete(clients, files)
    assert sum(c.summary()["from_peers"] for c in clients) > 0


def test_late_joiner_completes(make_cluster):
    """A client that starts after the others finished their download still
    boots: from the clients still seeding, or from the server."""
    cluster = make_cluster(rate_mbit=32)
    files = cluster.add_image(IMAGE, SIZES)
    cluster.start()
    early = [cluster.start_client(f"c{i}", IMAGE) for i in range(3)]
    wait_for(lambda: all(c.report().get("downloaded_at") for c in early), TIMEOUT,
             "the first clients to finish downloading")
    late = cluster.start_client("late", IMAGE)
    assert_complete(early + [late], files)
    summary = late.summary()
    # Each of the image's bytes counted once, whatever arrived twice.
    assert summary["from_server"] + summary["from_peers"] == sum(
        p.stat().st_size for p in files.values()), summary
    assert summary["started"] > max(c.summary()["downloaded_at"] for c in early)


def test_corrupt_peer_is_survived(make_cluster, tmp_path):
    """A peer announces itself to the tracker and serves a corrupted copy of
    the image (a bare libtorrent session that flags every piece as verified).
    The client's pieces from it fail their hash check, are fetched again, and
    the client ends with the right bytes."""
    cluster = make_cluster(rate_mbit=8)  # a slow server: the bad peer is worth asking
    files = cluster.add_image(IMAGE, SIZES)
    cluster.start()
    bad = cluster.lab.add_host("bad")  # unshaped: fast, tempting
    save_path = corrupt_copy(files, IMAGE, tmp_path / "corrupt")
    status_file = tmp_path / "bad-status.json"
    log = open(tmp_path / "bad.log", "wb")
    bad.popen([PYTHON, "-m", "lab.cluster", "seed", "--torrent", str(cluster.torrent(IMAGE)),
               "--save-path", str(save_path), "--listen", f"{bad.address}:6881",
               "--status-file", str(status_file), "--trust"],
              cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
              env=environment(cluster.config_dir, cluster.state_dir))
    log.close()

    def bad_status() -> dict:
        try:
            return json.loads(status_file.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return {}

    # Seeding, and the tracker knows it: the client's first announce names it.
    wait_for(lambda: bad_status().get("seeding") and bad_status().get("announced"),
             TIMEOUT, "the bad peer to announce itself")

    client = cluster.start_client("c0", IMAGE)
    assert_complete([client], files)
    summary = client.summary()
    assert summary["hashfails"] > 0, summary
    assert bad_status()["uploaded"] > 0


def test_seeder_restarted_mid_download(make_cluster):
    """`systemctl restart boottorrent-seeder` while clients download: they
    carry on with the new seeder and complete."""
    cluster = make_cluster(rate_mbit=12)
    files = cluster.add_image(IMAGE, SIZES)
    cluster.start()
    pieces = Pieces(cluster.torrent(IMAGE))
    clients = [cluster.start_client(f"c{i}", IMAGE) for i in range(3)]
    reports = mid_download(clients, 0.1)
    assert not any(c.report(reports).get("downloaded_at") for c in clients)
    first = cluster.server.processes["seeder"]
    cluster.restart_seeder()
    assert cluster.server.processes["seeder"].pid != first.pid
    missing = [p for p in range(len(pieces))
               if not any(pieces.held(c.work / "images", p) for c in clients)]
    assert_complete(clients, files)
    if missing:  # pieces no client had at the restart came from the new seeder
        image = cluster.server.status()["images"][0]
        assert image["uploaded"] + image["http_sent"] > 0, image


def test_chain_source_sending_wrong_bytes_is_survived(make_cluster, tmp_path):
    """A host takes a place in the image's chain, as a pivotal does, and
    streams wrong bytes to the machine after it. The machine's check of
    the files against the registry's SHA-256 catches them; libtorrent
    checks every piece, fetches the wrong ones, and the machine ends with
    the right bytes."""
    cluster = make_cluster(rate_mbit=8)
    files = cluster.add_image(IMAGE, SIZES)
    cluster.start()
    liar = cluster.lab.add_host("liar")  # unshaped: its lies arrive fast
    log = tmp_path / "liar.json"
    process = liar.popen([PYTHON, "-m", "lab.liar", "--server", f"http://{SERVER_ADDRESS}:6980",
                          "--infohash", cluster.infohash(IMAGE), "--size",
                          str(sum(SIZES.values())), "--listen", liar.address, "--log", str(log)],
                         cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert process.stdout.readline().strip().isdigit(), "the liar got no place in the chain"
    client = cluster.start_client("c0", IMAGE)
    assert_complete([client], files)
    assert json.loads(log.read_text())["sent"] > 0  # the lies were sent
    assert "do not match their SHA-256: checking every piece" in client.log()
