"""Images of 1 and 4 GiB (issue 13, item 4): the piece size the policy
gives each, how long registration takes, and the memory of the real seeder
and of two real clients (the pivotal's program, --dry-run, in network
namespaces) while they pass it on: each process's own memory and resident
set, at their peaks. Unshaped links: the point is memory, not time. Writes
bench/BIGIMAGE.md and bench/bigimage.json.

    /usr/bin/python3 -m bench.bigimage [--gib 1,4]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import threading
import time
from pathlib import Path

from lab.cluster import MIB, Cluster, random_image, stamp_bzimage_header

BENCH = Path(__file__).resolve().parent
GIB = 1 << 30


def process_tree_memory(pid: int) -> dict[str, int]:
    """Bytes of pid and its descendants (the largest of each): VmHWM, the
    peak resident set, which counts the pages of the image files libtorrent
    maps; RssAnon, the process's own memory (libtorrent's buffers and
    bookkeeping, Python's)."""
    peaks = {"VmHWM": 0, "RssAnon": 0}
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
            key, _, value = line.partition(":")
            if key in peaks:
                peaks[key] = max(peaks[key], int(value.split()[0]) * 1024)
        pids += [int(child) for child in children]
    return peaks


class PeakWatcher(threading.Thread):
    """Polls the memory of processes until stopped, keeping the peaks (a
    dead process keeps its last reading)."""

    def __init__(self, pids: dict[str, int]):
        super().__init__(daemon=True)
        self.pids = pids
        self.peaks: dict[str, dict[str, int]] = {}
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(0.2):
            for name, pid in list(self.pids.items()):
                now = process_tree_memory(pid)
                peak = self.peaks.setdefault(name, {key: 0 for key in now})
                for key, value in now.items():
                    peak[key] = max(peak[key], value)


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
            "peak_mib": {name: {key: round(value / MIB, 1) for key, value in peaks.items()}
                         for name, peaks in watcher.peaks.items()},
            "reports": {c.name: {k: c.report().get(k) for k in ("from_server", "from_peers")}
                        for c in clients},
        }


def write(results: list[dict]) -> None:
    (BENCH / "bigimage.json").write_text(json.dumps(results, indent=1) + "\n")

    def row(label: str, value) -> str:
        return f"| {label} | " + " | ".join(str(value(r)) for r in results) + " |"

    def memory(name: str, key: str):
        return lambda r: f"{r['peak_mib'][name][key]} MiB"

    lines = [
        "# Images of several GiB: pieces and memory",
        "",
        "Written by `/usr/bin/python3 -m bench.bigimage` (issue 13, item 4): an",
        "image of random data registered, then seeded by the real seeder to two",
        "real clients (the pivotal's program, --dry-run, in network namespaces,",
        "unshaped links); the peak memory of each process: its own (RssAnon)",
        "and its resident set (VmHWM), which also counts the pages of the image",
        "files that libtorrent maps.",
        "",
        "| image | " + " | ".join(f"{r['image_gib']} GiB" for r in results) + " |",
        "|---|" + "---:|" * len(results),
        row("piece size (policy of torrents.py)", lambda r: f"{r['piece_size'] >> 20} MiB"
            if r["piece_size"] >= MIB else f"{r['piece_size'] >> 10} KiB"),
        row("pieces", lambda r: r["pieces"]),
        row("torrent file", lambda r: f"{r['torrent_bytes'] / 1024:.0f} KiB"),
        row("registration (copy, hash, torrent, regenerate)", lambda r: f"{r['registration_s']} s"),
        row("two clients hold verified copies after", lambda r: f"{r['two_clients_s']} s"),
        row("copies byte for byte the image", lambda r: "yes" if r["intact"] else "NO"),
        *(row(f"{name}: own memory (RssAnon), peak", memory(name, "RssAnon"))
          for name in ("seeder", "c1", "c2")),
        *(row(f"{name}: resident set (VmHWM), peak", memory(name, "VmHWM"))
          for name in ("seeder", "c1", "c2")),
        "",
        "libtorrent 2.0 reads and writes the image through memory-mapped",
        "files: the resident set of a client that holds the whole image counts",
        "it, but those pages are the files' own (in the pivotal, /run's tmpfs",
        "pages), not a second copy. What the image costs a process beyond the",
        "file itself is its own memory.",
        "",
    ]
    (BENCH / "BIGIMAGE.md").write_text("\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m bench.bigimage",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--gib", default="1,4",
                        help="image sizes in GiB, comma-separated (default 1,4)")
    args = parser.parse_args(argv)
    results = []
    for gib in (int(g) for g in args.gib.split(",")):
        results.append(measure(gib))
        write(results)
        print(json.dumps(results[-1], indent=1), flush=True)
    return 0 if all(r["intact"] for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
