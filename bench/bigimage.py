"""A 4 GiB image (issue 13, item 4): the piece size the policy gives it, how
long registration takes, and the memory of the real seeder and of two real
clients (the pivotal's program, --dry-run, in network namespaces) while
they pass it on: peak RSS (VmHWM) of each process. Unshaped links: the
point is memory, not time. Writes bench/BIGIMAGE.md and bench/bigimage.json.

    /usr/bin/python3 -m bench.bigimage [--gib 4]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import threading
import time
from pathlib import Path

from lab.cluster import MIB, Cluster, random_image, sha256, stamp_bzimage_header

BENCH = Path(__file__).resolve().parent
GIB = 1 << 30


def process_tree_hwm(pid: int) -> int:
    """Peak RSS in bytes of pid and its descendants (the largest)."""
    peak = 0
    pids, seen = [pid], set()
    while pids:
        current = pids.pop()
        if current in seen:
            continue
        seen.add(current)
        try:
            status = Path(f"/proc/{current}/status").read_text()
            children = Path(f"/proc/{current}/task/{current}/children").read_text().split()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("VmHWM:"):
                peak = max(peak, int(line.split()[1]) * 1024)
        pids += [int(child) for child in children]
    return peak


class PeakWatcher(threading.Thread):
    """Polls the peak RSS of processes until stopped (a dead process keeps
    its last reading)."""

    def __init__(self, pids: dict[str, int]):
        super().__init__(daemon=True)
        self.pids = pids
        self.peaks = {name: 0 for name in pids}
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(0.5):
            for name, pid in self.pids.items():
                self.peaks[name] = max(self.peaks[name], process_tree_hwm(pid))


def measure(gib: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="bench-bigimage-") as tmp, \
            Cluster(Path(tmp), conf={"clients": {"seed_idle_time": 5}}) as cluster:
        size = gib * GIB
        started = time.monotonic()
        files = random_image(Path(tmp) / "src", "big", {"kernel": 8 * MIB,
                                                        "initrd.0": size - 8 * MIB})
        stamp_bzimage_header(files["kernel"])
        made = time.monotonic() - started
        started = time.monotonic()
        cluster.register("big", files)
        registration = time.monotonic() - started
        record = cluster.registry()["big"]
        cluster.start()
        cluster.server.wait_for_seeder()
        watcher = PeakWatcher({"seeder": cluster.server.processes["seeder"].pid})
        watcher.start()
        started = time.monotonic()
        clients = [cluster.start_client(f"c{n}", "big") for n in (1, 2)]
        for client in clients:
            watcher.pids[client.name] = client.process.pid
            watcher.peaks[client.name] = 0
        cluster.wait_all(clients, 3600)
        download = time.monotonic() - started
        watcher.stopped.set()
        watcher.join()
        intact = all(client.has_image(files) for client in clients)
        torrent_size = cluster.torrent("big").stat().st_size
        return {
            "image_gib": gib, "image_bytes": size, "piece_size": record["piece_size"],
            "pieces": -(-size // record["piece_size"]), "torrent_bytes": torrent_size,
            "random_data_s": round(made, 1), "registration_s": round(registration, 1),
            "two_clients_s": round(download, 1), "intact": intact,
            "peak_rss_mib": {name: round(peak / MIB, 1) for name, peak in watcher.peaks.items()},
            "reports": {c.name: {k: c.report().get(k) for k in ("from_server", "from_peers")}
                        for c in clients},
        }


def write(result: dict) -> None:
    (BENCH / "bigimage.json").write_text(json.dumps(result, indent=1) + "\n")
    peaks = result["peak_rss_mib"]
    lines = [
        "# A 4 GiB image: pieces and memory",
        "",
        "Written by `/usr/bin/python3 -m bench.bigimage` (issue 13, item 4): one",
        f"image of {result['image_gib']} GiB of random data registered, then seeded by",
        "the real seeder to two real clients (the pivotal's program, --dry-run,",
        "in network namespaces, unshaped links); peak RSS (VmHWM) of each process.",
        "",
        "| | |",
        "|---|---:|",
        f"| piece size (policy of torrents.py) | {result['piece_size'] // MIB} MiB |",
        f"| pieces | {result['pieces']} |",
        f"| torrent file | {result['torrent_bytes'] / 1024:.0f} KiB |",
        f"| registration (copy, hash, torrent, regenerate) | {result['registration_s']} s |",
        f"| two clients hold verified copies after | {result['two_clients_s']} s |",
        f"| copies byte for byte the image | {'yes' if result['intact'] else 'NO'} |",
        f"| seeder, peak RSS | {peaks['seeder']} MiB |",
        f"| client c1, peak RSS | {peaks['c1']} MiB |",
        f"| client c2, peak RSS | {peaks['c2']} MiB |",
        "",
        "The clients write the image to files (in the pivotal: /run, a tmpfs),",
        "which the page cache holds, not the processes: their RSS is",
        "libtorrent's own (piece bookkeeping, disk buffers) and Python's.",
        "",
    ]
    (BENCH / "BIGIMAGE.md").write_text("\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m bench.bigimage",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--gib", type=int, default=4, help="image size in GiB (default 4)")
    args = parser.parse_args(argv)
    result = measure(args.gib)
    write(result)
    print(json.dumps(result, indent=1))
    return 0 if result["intact"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
