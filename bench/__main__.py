"""python3 -m bench [--clients 1,4,16,32] [--rate 20] [--size-mib 16] ...

For each N, one lab: a server namespace (real opentracker and seeder) and N
client namespaces with static addresses (no DHCP: the bench measures the
image transfer, not dnsmasq), every link shaped to --rate both ways. On
those same hosts, one after the other: BootTorrent (the real client, all
started at once), central HTTP (curl against the seeder's web seed, all at
once) and multicast (udpcast). Results go to --out (default: bench/).
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

from bench import methods, report
from lab.cluster import MIB, Cluster, pivotal_cache

METHODS = {"boottorrent": methods.run_boottorrent, "http": methods.run_http,
           "multicast": methods.run_multicast}
HERE = Path(__file__).resolve().parent


def parse_settings(items: list[str]) -> dict[str, dict[str, str | None]]:
    # The product's announce interval, not the lab's 2 s (lab.server.lab_config).
    conf: dict[str, dict[str, str | None]] = {"tracker": {"announce_interval": None}}
    for item in items:
        key, _, value = item.partition("=")
        section, _, name = key.partition(".")
        if not (section and name and value):
            raise SystemExit(f"--set {item!r}: expected SECTION.KEY=VALUE")
        conf.setdefault(section, {})[name] = value
    return conf


def machine() -> dict[str, str]:
    cpu = next((line.split(":", 1)[1].strip() for line in
                Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    memory = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                  if line.startswith("MemTotal"))
    return {"cpu": cpu, "cores": str(os.cpu_count()), "memory": f"{memory / 1024 ** 2:.0f} GiB",
            "kernel": platform.release(),
            "os": Path("/etc/debian_version").read_text().strip()
            if Path("/etc/debian_version").exists() else platform.platform()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m bench", description=__doc__.split("\n\n")[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", default="1,4,16,32", help="values of N (default: %(default)s)")
    parser.add_argument("--rate", type=int, default=20,
                        help="every link's rate, Mbit/s, both ways (default: %(default)s)")
    parser.add_argument("--size-mib", type=int, default=16,
                        help="image size F in MiB: a kernel of F/4 and an initrd of 3F/4 "
                        "(default: %(default)s)")
    parser.add_argument("--methods", default="boottorrent,http,multicast",
                        help="comma-separated, from: " + ", ".join(METHODS))
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="a boottorrent.conf setting for the BootTorrent runs "
                        "(e.g. seeder.upload_slots=4)")
    parser.add_argument("--piece-kib", type=int,
                        help="piece size override (default: the policy of torrents.py)")
    parser.add_argument("--repeat", type=int, default=1, help="BootTorrent runs per N")
    parser.add_argument("--out", type=Path, default=HERE,
                        help="where results.csv, RESULTS.md and scaling.png go "
                        "(default: %(default)s)")
    parser.add_argument("--keep", action="store_true",
                        help="keep the lab's files (logs, client work folders) and say where")
    parser.add_argument("--label", default="", help="a note for this run's rows (tuning)")
    args = parser.parse_args(argv)

    counts = [int(n) for n in args.clients.split(",")]
    chosen = [m.strip() for m in args.methods.split(",")]
    for name in chosen:
        if name not in METHODS:
            parser.error(f"unknown method {name!r}")
    size = args.size_mib * MIB
    sizes = {"kernel": size // 4, "initrd.0": size - size // 4}
    # One server configuration (a list so that a tuning session can add more).
    setups = [("BootTorrent", parse_settings(args.set),
               args.piece_kib * 1024 if args.piece_kib else None, chosen)]

    load_before = os.getloadavg()
    print(f"bench: N={counts}, F={args.size_mib} MiB, {args.rate} Mbit/s links, methods "
          f"{', '.join(chosen)}; load average {load_before[0]:.2f}", flush=True)
    if load_before[0] > 0.5 * (os.cpu_count() or 1):
        print("bench: warning: the machine is busy; figures may be CPU-bound", flush=True)
    cache = pivotal_cache()
    started = time.time()
    results: list[methods.Result] = []
    tmp_root = Path(tempfile.mkdtemp(prefix="boottorrent-bench-"))
    transfer = size * 8 / (args.rate * 1e6)
    try:
        for count in counts:
            limit = methods.kumar_ross(size, count, args.rate)
            for index, (title, conf, piece_size, names) in enumerate(setups):
                with Cluster(tmp_root / f"n{count}-{index}", rate_mbit=args.rate, conf=conf,
                             cache=cache) as cluster:
                    files = cluster.add_image("bench", sizes, piece_size)
                    cluster.start()
                    hosts = [cluster.add_host(f"c{i}") for i in range(count)]
                    for name in names:
                        for attempt in range(args.repeat if name == "boottorrent" else 1):
                            timeout = {"boottorrent": 10 * transfer + 120,
                                       "http": 2 * count * transfer + 60,
                                       "multicast": 5 * transfer + 60}[name]
                            result = METHODS[name](cluster, hosts, "bench", files,
                                                   f"{name[:2]}{attempt}", timeout)
                            if name == "boottorrent":
                                result.method = title
                            result.note = "; ".join(filter(None, (args.label, result.note)))
                            results.append(result)
                            print(f"bench: N={count:3d} {result.method:20s} last "
                                  f"{result.last:7.2f} s ({result.last / limit:.2f}x the limit "
                                  f"{limit:.2f} s), median {result.median:7.2f} s, server sent "
                                  f"{result.server_wire_f:.2f} F on the wire, CPU "
                                  f"{result.cpu_busy:.0%} busy, {result.cpu_seconds:.0f} s, "
                                  f"{'ok' if result.ok else 'WRONG BYTES'}; {result.note}",
                                  flush=True)
    finally:
        if args.keep:
            print(f"bench: kept {tmp_root}", flush=True)
        else:
            shutil.rmtree(tmp_root, ignore_errors=True)
    elapsed = time.time() - started
    context = {
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
        "machine": machine(),
        "rate_mbit": args.rate,
        "size": size,
        "sizes": sizes,
        "setups": [(title, conf, piece_size) for title, conf, piece_size, _ in setups],
        "load_before": load_before,
        "load_after": os.getloadavg(),
        "elapsed": elapsed,
        "command": "python3 -m bench " + " ".join(argv if argv is not None else sys.argv[1:]),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    report.write_csv(args.out / "results.csv", results, context["machine"]["cpu"])
    report.write_markdown(args.out / "RESULTS.md", results, context)
    report.plot(args.out / "scaling.png", results, context)
    print(f"bench: done in {elapsed:.0f} s; wrote {args.out}/results.csv, RESULTS.md, "
          "scaling.png", flush=True)
    return 0 if all(r.ok for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
