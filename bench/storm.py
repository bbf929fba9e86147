"""python3 -m bench.storm [--out bench/]: the server's HTTP side in a boot
storm, written to STORM.md and storm.json.

One lab: the real seeder and tracker in a server namespace with a small
registered image and the real pivotal (its kernel and initramfs parts, as
`boottorrent generate` builds them), and one namespace of stand-ins
(lab/storm.py) that play many machines at once:

- burst: N machines fetch boot.ipxe at the same moment (unshaped links);
- pivotal: N machines do what iPXE does, boot.ipxe, then the pivotal's
  kernel and initrds, with the server's link at --rate Mbit/s: failures,
  time to the last machine holding its pivotal, and the server's bytes on
  the wire per machine over the pivotal's size;
- reports: M machines, each from an address of its own, report to the
  seeder as the pivotal does for --seconds: the seeder's CPU share and RSS,
  the reports' latency, and how long `boottorrent status` takes;

then, each in a lab of its own with every link at --wave-rate Mbit/s:

- storms: N machines powered on at once, the whole boot: each loads what
  iPXE loads, then --real of them run the real pivotal program and the
  others are stand-ins (lab/standin.py) that serve the pivotal's files;

- waves: N machines powered on over S seconds, each doing what iPXE does
  (following redirects) and then running the real pivotal program, which
  downloads the image and shares the pivotal's files: the server's bytes
  on the wire for the whole boot over F + the pivotal's size.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import signal
import subprocess
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

from bench.__main__ import machine
from bench.methods import CpuMeter, process_cpu
from boottorrent.pivotal import paths
from lab.cluster import HTTP_URL, MIB, Cluster, pivotal_cache, sha256
from lab.standin import loaded_files, script_urls
from lab.server import PYTHON, REPO

HERE = Path(__file__).resolve().parent
BOOT = f"{HTTP_URL}{paths.BOOT}"
# Per storm. Memory would hold some 200 (82 MiB each), but the 2 cores do
# not: at 20 Mbit/s, 32 made the CPU the limit while they all ran (the image
# left the server 3.2 times), 16 did not (1.0 times). Choose it with the
# "busiest 5 s" column.
REAL_MACHINES = 16
# A storm's machines still running after this long are stopped and counted
# as failed, so that a run always ends.
STORM_MAX = 900.0  # seconds


def storm(crowd: tuple, count: int, urls: list[str], timeout: float,
          token: bool = False) -> list[dict]:
    """crowd: Cluster.crowd's host and network, of at least count addresses
    (None: the host's one address). token: each machine fetches its token
    first and sends it, as a machine the server boots does."""
    host, network = crowd
    argv = ["/usr/bin/python3", "-m", "lab.storm", "--count", str(count),
            "--timeout", str(timeout)]
    argv += ["--from", network] if network else []
    argv += ["--token", BOOT] if token else []
    out = host.run([*argv, *urls], cwd=HERE.parent)
    return json.loads(out.stdout)


def ipxe_urls(image: str, tries: int = 1) -> list[str]:
    """What a machine fetches: iPXE's loads from the server, then its
    /stage's first try of the base (tries: 0 for none, which leaves the
    storm rules out: the server serves it)."""
    return script_urls(BOOT, image) + [
        f"{BOOT}/{paths.BASE}" + (f"?{paths.try_query(tries)}" if tries else "")]


def percentile(values: list[float], share: float) -> float:
    values = sorted(values)
    return values[min(int(len(values) * share), len(values) - 1)] if values else 0.0


def burst(cluster: Cluster, crowd: tuple, count: int) -> dict:
    started = time.monotonic()
    results = storm(crowd, count, [f"{BOOT}/boot.ipxe"], timeout=30)
    times = [r["seconds"] for r in results if r["status"] == 200]
    return {"machines": count, "failed": count - len(times),
            "median_s": round(statistics.median(times), 2) if times else None,
            "p90_s": round(percentile(times, 0.9), 2), "max_s": round(max(times, default=0), 2),
            "wall_s": round(time.monotonic() - started, 1)}


def pivotal_storm(cluster: Cluster, crowd: tuple, count: int, pivotal: dict[str, int]) -> dict:
    # The server's HTTP side alone, sending the pivotal to N machines at once:
    # without try=, which would hold machines for others to serve it (they
    # never do here). Before the server capped each address, N fetchers
    # from one address were one machine to the storm rules, served at once.
    urls = ipxe_urls("bench", tries=0)
    sent_before = cluster.wire_bytes(cluster.server_host)[0]
    with CpuMeter() as cpu:
        started = time.monotonic()
        results = storm(crowd, count, urls, timeout=600)
        wall = time.monotonic() - started
    sent = cluster.wire_bytes(cluster.server_host)[0] - sent_before
    expected = {f"{BOOT}/pivotal/{name}": size for name, size in pivotal.items()}
    bad = [r for r in results if r["status"] != 200 or r["error"]
           or r["bytes"] != expected.get(r["url"].split("?")[0], r["bytes"])]
    size = sum(pivotal.values())
    return {"machines": count, "failed_requests": len(bad), "pivotal_bytes": size,
            "last_s": round(wall, 1),
            "server_wire_per_machine": round(sent / count),
            "server_wire_over_pivotal": round(sent / count / size, 2),
            "cpu_busy": round(cpu.busy, 2)}


def report_channel(cluster: Cluster, crowd: tuple, count: int, seconds: float) -> dict:
    host, network = crowd
    seeder = cluster.server.processes["seeder"].pid
    cpu_before, started = process_cpu(seeder), time.monotonic()
    out = host.run(["/usr/bin/python3", "-m", "lab.storm", "--report", "--from", network,
                    "--count", str(count), "--seconds", str(seconds),
                    f"{HTTP_URL}{paths.REPORT}"], cwd=HERE.parent)
    elapsed = time.monotonic() - started
    stats = json.loads(out.stdout)
    stats["seeder_cpu_share"] = round((process_cpu(seeder) - cpu_before) / elapsed, 3)
    rss = next(line for line in Path(f"/proc/{seeder}/status").read_text().splitlines()
               if line.startswith("VmRSS:"))
    stats["seeder_rss_mib"] = round(int(rss.split()[1]) / 1024, 1)
    started = time.monotonic()
    shown = cluster.server.boottorrent("status").stdout
    stats["status_s"] = round(time.monotonic() - started, 2)
    stats["status_lines"] = len(shown.splitlines())
    return stats


def boot_wave(tmp: Path, count: int, spread: float, rate: int, size: int) -> dict:
    """count machines powered on uniformly over spread seconds, every link
    at rate Mbit/s: each fetches what iPXE fetches (following the server's
    redirects to machines that serve the pivotal), then runs the real
    pivotal program (--dry-run) for an image of size bytes."""
    with Cluster(tmp / f"wave-{count}-{size // MIB}mib-{rate}mbit", rate_mbit=rate,
                 cache=pivotal_cache()) as cluster:
        files = cluster.add_image("bench", {"kernel": size // 4, "initrd.0": size - size // 4})
        cluster.start()
        cluster.server.wait_for_seeder()
        pivotal_size = sum(path.stat().st_size for path in loaded_files(
            cluster.state_dir / "current" / "boot" / "pivotal").values())
        urls = ipxe_urls("bench")
        clients = [cluster.client(f"m{i}", "bench") for i in range(count)]
        fetched: dict[str, list[dict]] = {}
        sent_before = cluster.wire_bytes(cluster.server_host)[0]
        started = time.time()

        def power_on(index: int, client) -> None:
            time.sleep(max(0.0, started + spread * index / max(count - 1, 1) - time.time()))
            fetched[client.name] = storm((client.host, None), 1, urls, timeout=600, token=True)
            client.start()

        with CpuMeter() as cpu:
            threads = [threading.Thread(target=power_on, args=(i, c)) for i, c in enumerate(clients)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            cluster.wait_all(clients, 600)
        sent = cluster.wire_bytes(cluster.server_host)[0] - sent_before
        status = cluster.server.status()
        failed = sum(1 for results in fetched.values() for r in results
                     if r["status"] != 200 or r["error"])
        summaries = [c.summary() for c in clients]
        image_bytes = sum(s["from_server"] + s["from_peers"] for s in summaries)
        return {"machines": count, "spread_s": spread, "rate_mbit": rate, "image_bytes": size,
                "pivotal_bytes": pivotal_size, "failed_requests": failed,
                "wrong_images": sum(not c.has_image(files) for c in clients),
                "last_s": round(max(s["verified_at"] for s in summaries) - started, 1),
                "server_wire_bytes": sent,
                "server_over_f_plus_pivotal": round(sent / (size + pivotal_size), 2),
                "server_over_f": round(sent / size, 2),
                "redirects": status.get("pivotal", {}).get("redirects", 0),
                "held": sum(r.get("retried", 0) for results in fetched.values() for r in results),
                "pivotal_from_server_http": status.get("pivotal", {}).get("http_sent", 0),
                # What the seeder's own counters say it sent (payload only).
                "image_from_server_over_f": round(sum(
                    i["uploaded"] + i["http_sent"] for i in status["images"]) / size, 2),
                "pivotal_torrent_from_server": status.get("pivotal", {}).get("uploaded", 0),
                "pivotal_fetches": count,  # the base, by each machine's /stage
                "image_from_peers_share": round(sum(s["from_peers"] for s in summaries)
                                                / image_bytes, 2),
                "cpu_busy": round(cpu.busy, 2)}


class CpuSampler:
    """The machine's busiest 5 s (share of both cores busy), sampled every
    second: an average over a long run hides a moment when the CPU set the pace."""

    def __enter__(self) -> "CpuSampler":
        self.samples = [CpuMeter._read()]
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        return self

    def _sample(self) -> None:
        while not self.stopped.wait(1.0):
            self.samples.append(CpuMeter._read())

    def __exit__(self, *exc) -> None:
        self.stopped.set()
        self.thread.join()
        self.samples.append(CpuMeter._read())
        self.by_second = [round(CpuMeter.busy_between(a, b), 2)
                          for a, b in zip(self.samples, self.samples[1:])]

    def busiest(self, seconds: float) -> float:
        """The busiest 5 s of the first seconds (the transfers, not the
        processes' exit that follows)."""
        samples = self.samples[:int(seconds) + 2]
        return max((CpuMeter.busy_between(a, b) for a, b in zip(samples, samples[5:])),
                   default=0.0)


def results_of(processes: list[subprocess.Popen], deadline: float) -> list[dict]:
    """Each stand-in's JSON result, read once it exits; one still running
    at deadline (time.monotonic()) is killed, and its result says so."""
    results = []
    for process in processes:
        try:
            process.wait(max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            results.append({"timed_out": True})
            continue
        results.append(json.loads(process.stdout.read() or "{}"))
    return results


def retry_cause(fetch: dict) -> str:
    """What failed a fetch of the boot script, and where: "peer: TimeoutError"."""
    where = "peer" if fetch["redirects"] else "server"
    return f"{where}: {fetch['error'].split(':')[0] if fetch['error'] else fetch['status']}"


def boot_storm(tmp: Path, count: int, real: int, rate: int, size: int,
               server_rate: int | None = None) -> dict:
    """count machines powered on within a few milliseconds, every link at
    rate Mbit/s (the server's at server_rate, if given), the whole boot: each loads what iPXE loads (following the
    server's redirects to machines that serve the pivotal, retrying as the
    boot script does); real of them, spread through the storm, then run the
    real pivotal program (--dry-run), which downloads the image of size
    bytes and shares the pivotal's files; the others are stand-ins
    (lab/standin.py) that serve the pivotal's files they loaded while the
    server counts machines on their way, and download no image."""
    # The harness holds a pipe to each machine's process.
    resource.setrlimit(resource.RLIMIT_NOFILE, (resource.getrlimit(resource.RLIMIT_NOFILE)[1],) * 2)
    # The storm's links are far slower than a cluster's, so it lasts minutes
    # where a real one lasts seconds, and its few real machines join the
    # image's chain minutes apart (in a real storm every machine does, the
    # one before always a recent one): the machines seed and serve for the
    # storm's whole length, not seed_time_max's 300 s.
    seed_max = {"clients": {"seed_time_max": int(STORM_MAX)}}
    with Cluster(tmp / f"storm-{count}", rate_mbit=rate, cache=pivotal_cache(),
                 conf=seed_max) as cluster:
        if server_rate:  # a cluster's server: its link far faster than one machine's
            cluster.server_host.shape(server_rate)
        files = cluster.add_image("bench", {"kernel": size // 4, "initrd.0": size - size // 4})
        cluster.start()
        cluster.server.wait_for_seeder()
        loaded = loaded_files(cluster.state_dir / "current" / "boot" / "pivotal")
        pivotal_size = sum(path.stat().st_size for path in loaded.values())
        share = tmp / f"storm-{count}" / "share"
        (share / "pivotal").mkdir(parents=True)
        for name, path in loaded.items():  # one copy on disk for all stand-ins: they showed they hold it
            os.link(path, share / "pivotal" / name)
        # Each machine's config part begins with its own token: its bytes are its own.
        config = Path(paths.CONFIG_PART).name
        expect = [f"--expect={name}={sha256(path)}" for name, path in loaded.items()
                  if name != config]
        infohash = cluster.server.status()["pivotal"]["infohash"]
        extra = cluster.extra_network(count)
        real_at = {round(i * count / real) for i in range(real)} if real else set()
        clients, loaders, standins, standin_hosts = [], [], [], []
        for index in range(count):
            if index in real_at:
                client = cluster.client(f"m{index}", "bench")
                client.host.run(["ip", "route", "add", str(extra), "dev", "eth0"])
                clients.append(client)
                loaders.append(client.host.popen(
                    [PYTHON, "-m", "lab.standin", *expect, BOOT], cwd=REPO,
                    stdout=subprocess.PIPE, text=True))
            else:
                host = cluster.add_host(f"s{index}", address=None)
                host.address = str(extra[len(standins) + 1])
                # /16: the lab's /24 is on the same link.
                host.run(["ip", "addr", "add", f"{host.address}/16", "dev", "eth0"])
                standin_hosts.append(host)
                standins.append(host.popen(
                    [PYTHON, "-m", "lab.standin", *expect, "--serve", str(share),
                     "--serve-max", str(STORM_MAX),
                     "--report", f"{HTTP_URL}{paths.REPORT}",
                     "--infohash", infohash, BOOT], cwd=REPO, stdout=subprocess.PIPE,
                    text=True))
        # Hundreds of hosts that talk to each other overflow the kernel's one
        # ARP table for all namespaces (lab.netns.Lab._add_neighbours).
        cluster.lab.add_neighbours([cluster.server_host, *(c.host for c in clients),
                                    *standin_hosts])
        for process in loaders + standins:
            if process.stdout.readline().strip() != "ready":
                raise RuntimeError(f"a stand-in did not start: {process.args}")
        sent_before = cluster.wire_bytes(cluster.server_host)[0]

        deadline = time.monotonic() + STORM_MAX

        loader_results: dict[int, dict] = {}

        def boot_real(index: int, client, loader) -> None:
            loader_results[index] = results_of([loader], deadline)[0]
            if loader_results[index].get("matched"):
                client.start()

        with CpuMeter() as cpu, CpuSampler() as peak:
            started = time.time()
            for process in loaders + standins:
                os.kill(process.pid, signal.SIGUSR1)
            threads = [threading.Thread(target=boot_real, args=(i, *pair))
                       for i, pair in enumerate(zip(clients, loaders))]
            for thread in threads:
                thread.start()
            standin_results = results_of(standins, deadline)
            for thread in threads:
                thread.join()
            booted = [c for c in clients if c.process]
            for client in booted:
                try:
                    client.process.wait(max(1.0, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    client.kill()
                    client.process.wait()
        sent = cluster.wire_bytes(cluster.server_host)[0] - sent_before
        status = cluster.server.status()
        summaries = [c.summary() for c in booted if (c.work / "summary.json").exists()]
        loads = standin_results + list(loader_results.values())
        last_pivotal = max(r.get("held_at") or started for r in loads)
        last_image = max((s["verified_at"] for s in summaries), default=started)
        fetches = [f for r in loads for f in r.get("fetches", [])]
        image_bytes = sum(s["from_server"] + s["from_peers"] for s in summaries) or 1
        return {
            "machines": count, "real": len(clients), "standins": len(standins),
            "rate_mbit": rate, "server_rate_mbit": server_rate or rate,
            "image_bytes": size, "pivotal_bytes": pivotal_size,
            "failed": sum(not r.get("matched") for r in loads)
            + sum(c.process is None or not c.has_image(files) for c in clients),
            # Real machines that held the image but still ran (seeding) at
            # the storm's end: killed then, without their kexec.
            "killed_at_end": sum(c.process is not None and c.process.returncode != 0
                                 and c.has_image(files) for c in clients),
            "boot_script_retries": sum(r.get("tries", 1) - 1 for r in loads),
            "retry_causes": dict(Counter(retry_cause(f) for f in fetches
                                         if f["error"] or f["status"] != 200)),
            "last_pivotal_s": round(last_pivotal - started, 1),
            "last_image_s": round(last_image - started, 1),
            "server_wire_bytes": sent,
            "server_wire_per_machine_over_pivotal": round(sent / count / pivotal_size, 3),
            "server_over_f_plus_pivotal": round(sent / (size + pivotal_size), 2),
            "redirects": status["pivotal"]["redirects"],
            "held": sum(f.get("retried", 0) for f in fetches),
            "pivotal_fetches": len(loads),  # the base, by each machine's /stage
            "pivotal_from_server_http": status["pivotal"]["http_sent"],
            "pivotal_torrent_from_server": status["pivotal"]["uploaded"],
            "image_from_server_over_f": round(sum(
                i["uploaded"] + i["http_sent"] for i in status["images"]) / size, 2),
            "image_from_peers_share": round(sum(s["from_peers"] for s in summaries)
                                            / image_bytes, 2),
            "largest_child_rss_mib": round(
                resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024),
            "cpu_busy": round(cpu.busy, 2), "cpu_busiest_5s": round(peak.busiest(max(last_pivotal, last_image) - started), 2),
            # For the figures' reading: when each machine held its pivotal
            # and (the real ones) its image, and the CPU second by second.
            "pivotal_held_s": sorted(round(r["held_at"] - started, 1)
                                     for r in loads if r.get("held_at")),
            "image_held_s": sorted(round(s["verified_at"] - started, 1) for s in summaries),
            "cpu_by_second": peak.by_second}


def write_markdown(path: Path, figures: dict) -> None:
    lines = [
        "# BootTorrent benchmark: the server's HTTP side in a boot storm", "",
        f"Generated by `python3 -m bench.storm` (`make bench`) on {figures['date']}, "
        f"in {figures['elapsed_s'] / 60:.1f} min; {figures['machine']['cpu']}, "
        f"{figures['machine']['cores']} cores. Stand-ins (lab/storm.py) play the "
        "machines' firmware and reports; the seeder is the real one. "
        f"Load average before/after: {figures['load'][0]:.2f} / {figures['load'][1]:.2f}.", "",
        "## Burst: N machines fetch boot.ipxe at the same moment", "",
        "Each machine from an address of its own (the server caps each address's connections).",
        "",
        "| N | failed | median (s) | p90 (s) | slowest (s) |", "|---:|---:|---:|---:|---:|"]
    lines += [f"| {b['machines']} | {b['failed']} | {b['median_s']} | {b['p90_s']} | "
              f"{b['max_s']} |" for b in figures["burst"]]
    lines += [
        "", f"## Pivotal: N machines load the pivotal from the server ({figures['rate']} Mbit/s "
        "server link)", "",
        "boot.ipxe, then the pivotal's kernel and initrds, as iPXE does, all machines at once, "
        "each from an address of its own, without the boot script's try= (no machine serves "
        "the pivotal here, so the storm rules would only hold them): the server's HTTP side "
        "alone. Server sent: its interface's bytes on the wire, per machine, over the "
        "pivotal's size.",
        "", "| N | pivotal (MiB) | failed requests | last machine (s) | server sent per machine "
        "(× pivotal) | CPU busy |", "|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {p['machines']} | {p['pivotal_bytes'] / MIB:.1f} | {p['failed_requests']} | "
              f"{p['last_s']} | {p['server_wire_over_pivotal']} | {p['cpu_busy']:.0%} |"
              for p in figures["pivotal"]]
    lines += [
        "", "## Boot waves: N machines powered on over some seconds, the whole boot", "",
        "Each machine fetches what iPXE fetches (following the server's redirects to machines "
        "that serve the pivotal), then runs the real pivotal program (`--dry-run`), which "
        "downloads the image and, once the server says machines wait for the "
        "pivotal, the pivotal's files to serve them. Server sent: its interface's bytes on the wire for "
        "the whole boot of all N, over F + the pivotal's size (target ≤ 2).", "",
        "| N | over (s) | links (Mbit/s) | F (MiB) | pivotal (MiB) | failed | last machine (s) | "
        "server sent ÷ (F + pivotal) | ÷ F | pivotal files from peers | told to wait (503) | "
        "pivotal over the server's HTTP (× pivotal) | pivotal's torrent from the server "
        "(× pivotal) | image from the server (× F) | image from peers | CPU busy |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {w['machines']} | {w['spread_s']:.0f} | {w['rate_mbit']} | "
              f"{w['image_bytes'] / MIB:.0f} | {w['pivotal_bytes'] / MIB:.1f} | "
              f"{w['failed_requests'] + w['wrong_images']} | {w['last_s']} | "
              f"{w['server_over_f_plus_pivotal']} | {w['server_over_f']} | "
              f"{w['redirects']} of {w['pivotal_fetches']} | {w.get('held', 0)} | "
              f"{w.get('pivotal_from_server_http', 0) / w['pivotal_bytes']:.2f} | "
              f"{w.get('pivotal_torrent_from_server', 0) / w['pivotal_bytes']:.2f} | "
              f"{w.get('image_from_server_over_f', 0)} | "
              f"{w['image_from_peers_share']:.0%} | {w['cpu_busy']:.0%} |"
              for w in figures["waves"]]
    lines += [
        "", "## Boot storms: N machines powered on at once, the whole boot", "",
        "All N started within a few milliseconds (each waits for a signal, sent to all in one "
        "loop), every machine's link at the first rate given, the server's at the second. Each "
        "loads what iPXE loads from the server (with QEMU's virtio NIC, so the server sends "
        "virtio's modules part), then the pivotal's base as its /stage does, following the "
        "server's redirects and retrying as the boot script does. The real ones (spread evenly through "
        "the storm) then run the real pivotal program (`--dry-run`): they download the image and "
        "share the pivotal's files. The others are light stand-ins (lab/standin.py): they serve "
        "the pivotal's files they loaded (busybox httpd, as the pivotal does) and report as the "
        "pivotal does while the server counts machines on their way; they download no image. "
        "Server sent: its interface's bytes on the wire for the whole boot of all N (image, "
        "pivotal, boot scripts, reports).", "",
        "| N | real / stand-ins | links: machines, server (Mbit/s) | F (MiB) | pivotal (MiB) | failed | "
        "still seeding at the end | "
        "boot script retries | last pivotal loaded (s) | last image (s) | "
        "server sent per machine (MiB) | server sent ÷ (F + pivotal) | "
        "pivotal files from peers | told to wait (503) | pivotal over the server's HTTP "
        "(× pivotal) | image from the server (× F) | image from peers | CPU busy: mean, "
        "busiest 5 s | largest process (MiB) |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|"]
    lines += [f"| {s['machines']} | {s['real']} / {s['standins']} | "
              f"{s['rate_mbit']}, {s.get('server_rate_mbit', s['rate_mbit'])} | "
              f"{s['image_bytes'] / MIB:.0f} | {s['pivotal_bytes'] / MIB:.1f} | {s['failed']} | "
              f"{s.get('killed_at_end', '')} | "
              f"{s['boot_script_retries']} | {s['last_pivotal_s']} | {s['last_image_s']} | "
              f"{s['server_wire_bytes'] / s['machines'] / MIB:.2f} | "
              f"{s['server_over_f_plus_pivotal']} | {s['redirects']} of {s['pivotal_fetches']} | "
              f"{s['held']} | {s['pivotal_from_server_http'] / s['pivotal_bytes']:.2f} | "
              f"{s['image_from_server_over_f']} | {s['image_from_peers_share']:.0%} | "
              f"{s['cpu_busy']:.0%}, {s['cpu_busiest_5s']:.0%} | {s['largest_child_rss_mib']} |"
              for s in figures["storms"]]
    causes = [f"N = {s['machines']}: " + ", ".join(f"{n} × {cause}" for cause, n in
                                               sorted(s["retry_causes"].items()))
              for s in figures["storms"] if s.get("retry_causes")]
    if causes:
        lines += ["", "What failed the fetches the boot scripts retried, and where: "
                  + "; ".join(causes) + "."]
    r = figures.get("reports")
    if r:
        lines += [
            "", f"## Reports: {r['machines']} machines report for {figures['report_seconds']:.0f} s",
            "", "| reports answered/s | failed | latency median (ms) | p99 (ms) | interval told (s) | "
            "seeder CPU | seeder RSS (MiB) | `boottorrent status` (s) |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|",
            f"| {r['reports_per_s']} | {r['failed']} | {r['latency_median_s'] * 1000:.0f} | "
            f"{r['latency_p99_s'] * 1000:.0f} | {r['interval']} | {r['seeder_cpu_share']:.0%} | "
            f"{r['seeder_rss_mib']} | {r['status_s']} |"]
    path.write_text("\n".join(lines + [""]))


def server_http_side(tmp: Path, args: argparse.Namespace, record) -> None:
    """The burst, the pivotal storm and the reports, in one lab."""
    with Cluster(tmp, cache=pivotal_cache()) as cluster:
        cluster.add_image("bench", {"kernel": MIB})
        cluster.start()
        cluster.server.wait_for_seeder()
        counts = {kind: [int(n) for n in getattr(args, kind).split(",") if n]
                  for kind in ("burst", "pivotal")}
        crowd = cluster.crowd("storm", max(*counts["burst"], *counts["pivotal"],
                                           args.reporters, 1))
        pivotal_dir = cluster.state_dir / "current" / "boot" / "pivotal"
        pivotal = {name: path.stat().st_size for name, path in loaded_files(pivotal_dir).items()}
        for count in counts["burst"]:
            record("burst", burst(cluster, crowd, count))
        cluster.server_host.shape(args.rate)
        for count in counts["pivotal"]:
            record("pivotal", pivotal_storm(cluster, crowd, count, pivotal))
        if args.reporters:
            record("reports", report_channel(cluster, crowd, args.reporters, args.seconds))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m bench.storm",
                                     description=__doc__.split("\n\n")[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--burst", default="200,500,1000", help="values of N for the burst")
    parser.add_argument("--pivotal", default="100,250,500", help="values of N for the pivotal")
    parser.add_argument("--rate", type=int, default=1000,
                        help="the server's link for the pivotal storm, Mbit/s (default: 1000)")
    parser.add_argument("--reporters", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=60.0, help="how long they report")
    parser.add_argument("--waves", default="4:0,16:30,32:30,32:30:256:20",
                        help="boot waves, N:SECONDS[:MIB:RATE], of an image of MIB MiB "
                        "(default: --size-mib) with every link at RATE Mbit/s (default: "
                        "--wave-rate) (default: %(default)s)")
    parser.add_argument("--wave-rate", type=int, default=50,
                        help="every link's rate in the boot waves, Mbit/s (default: %(default)s)")
    parser.add_argument("--size-mib", type=int, default=16,
                        help="the waves' and storms' image F, MiB")
    parser.add_argument("--storms", default="100:20:1000,250:10:1000,500:5:1000",
                        help="boot storms, N:RATE[:SERVER], every machine's link at RATE "
                        "Mbit/s (lower for larger N, so that the lab's traffic does not "
                        "saturate the CPU), the server's at SERVER (default: RATE) "
                        "(default: %(default)s)")
    parser.add_argument("--real", type=int, default=REAL_MACHINES,
                        help="machines of each storm that run the real pivotal program; "
                        "stand-ins play the others (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=HERE)
    args = parser.parse_args(argv)

    load_before, started = os.getloadavg(), time.time()
    figures: dict = {"date": time.strftime("%Y-%m-%d %H:%M %Z"), "machine": machine(),
                     "rate": args.rate, "report_seconds": args.seconds,
                     "burst": [], "pivotal": [], "waves": [], "storms": []}
    args.out.mkdir(parents=True, exist_ok=True)

    def record(kind: str, row: dict) -> None:
        """Keeps a row and rewrites the files, so that a later row's crash loses only itself."""
        if kind == "reports":
            figures[kind] = row
        else:
            figures[kind].append(row)
        print(f"bench.storm: {kind}", row, flush=True)
        figures["load"] = (load_before[0], os.getloadavg()[0])
        figures["elapsed_s"] = time.time() - started
        (args.out / "storm.json").write_text(json.dumps(figures, indent=1) + "\n")
        write_markdown(args.out / "STORM.md", figures)

    tmp = Path(tempfile.mkdtemp(prefix="boottorrent-storm-"))
    try:
        if args.burst or args.pivotal or args.reporters:
            server_http_side(tmp, args, record)
        for storm_size in (s for s in args.storms.split(",") if s):
            count, rate, server_rate = (storm_size.split(":") + ["", ""])[:3]
            record("storms", boot_storm(tmp, int(count), min(args.real, int(count)),
                                        int(rate or args.wave_rate), args.size_mib * MIB,
                                        int(server_rate or 0) or None))
        for wave in (w for w in args.waves.split(",") if w):
            count, spread, size_mib, rate = (wave.split(":") + ["", "", ""])[:4]
            record("waves", boot_wave(tmp, int(count), float(spread or 0),
                                      int(rate or args.wave_rate),
                                      int(size_mib or args.size_mib) * MIB))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"bench.storm: wrote {args.out}/STORM.md and storm.json", flush=True)
    failed = (sum(b["failed"] for b in figures["burst"])
              + sum(p["failed_requests"] for p in figures["pivotal"])
              + figures.get("reports", {}).get("failed", 0)
              + sum(w["failed_requests"] + w["wrong_images"] for w in figures["waves"])
              + sum(s["failed"] for s in figures["storms"]))
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
