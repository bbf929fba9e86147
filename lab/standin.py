"""One machine of a boot storm, played by a light stand-in rather than a
real pivotal (bench/storm.py, "Boot storm"): what its iPXE fetches, and,
with --serve, what its pivotal does for the machines that boot after it.

    python3 -m lab.standin --expect NAME=SHA256 ... [--serve FOLDER --report URL
                           --image NAME --infohash HEX] BOOT_URL

It starts when it receives SIGUSR1 (after printing "ready"), so that a
storm's machines can be started within milliseconds of each other. Then:

1. the boot script's loads, as iPXE runs them (boot.ipxe.j2): boot.ipxe,
   the pivotal's kernel and initrds with "try=x", following redirects and
   asking again after a 503 with Retry-After (lab.storm.fetch); when one
   fails (a peer that stopped serving), it waits 2, 4, 8, 16 s and loads
   them all again with one more "x", at most 5 times, as the script does;
2. each file's SHA-256 is compared with --expect;
3. with --serve: FOLDER (the same files, which this machine has just shown
   it holds) is served with busybox httpd on port 6980, as a pivotal that
   shares them does (boottorrent/pivotal/share.py), and it reports to the
   server with the pivotal's own Reporter, phase "seeding" and serving
   INFOHASH, while the server's answers count machines on their way or
   waiting (Swarm.seed's rule), at most --serve-max seconds; then a last
   report that it serves nothing, as a pivotal that kexecs.

It does not download the image: the storm's real pivotals do that. The
result, one JSON object on stdout: the fetches (lab.storm's entries), the
tries, whether every file matched, when it held them (time.time()), and
how long it served.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import subprocess
import sys
import time

from boottorrent.pivotal.report import Reporter
from boottorrent.pivotal.wire import Report
from boottorrent.render import PIVOTAL_INITRDS, PIVOTAL_KERNEL
from lab.storm import fetch

TRIES = 5  # the boot script's attempts before it reboots
PORT = 6980  # the seeder's HTTP port, where the server redirects machines to
IDLE = 5.0  # seconds without machines on their way before it stops (seed_idle_time)


def script_urls(boot_url: str, image: str, tries: str) -> list[str]:
    """What the boot script loads on its try tries ("x", "xx", ...; "":
    without the try= that puts the server's storm rules in charge)."""
    tried = f"try={tries}" if tries else ""
    return [f"{boot_url}/boot.ipxe",
            f"{boot_url}/{PIVOTAL_KERNEL}?image={image}" + (f"&{tried}" if tried else "")] + [
        f"{boot_url}/{path}" + (f"?{tried}" if tried else "") for path in PIVOTAL_INITRDS]


def file_name(result: dict) -> str:
    return result["url"].split("?")[0].rsplit("/", 1)[-1]


def load_pivotal(boot_url: str, image: str, expect: dict[str, str]) -> dict:
    """The boot script's loads, retried as it retries them."""
    fetches: list[dict] = []
    for attempt in range(1, TRIES + 1):
        urls = script_urls(boot_url, image, "x" * attempt)
        for url in urls:
            result = asyncio.run(fetch(url, timeout=300))
            fetches.append(result)
            if result["status"] != 200 or result["error"]:
                break
        else:
            loaded = fetches[-len(urls):]  # this attempt's, every one answered
            matched = all(r["sha256"] == expect[file_name(r)] for r in loaded
                          if file_name(r) in expect)
            return {"fetches": fetches, "tries": attempt, "matched": matched,
                    "held_at": time.time()}
        if attempt < TRIES:
            time.sleep(2 ** attempt)
    return {"fetches": fetches, "tries": TRIES, "matched": False, "held_at": None}


def serve(folder: str, report_url: str, image: str, infohash: str, longest: float) -> dict:
    httpd = subprocess.Popen(["busybox", "httpd", "-f", "-p", str(PORT), "-h", folder],
                             stdin=subprocess.DEVNULL)
    report = Report(image=image, phase="seeding", progress=1.0, serving=infohash,
                    started=time.time())
    reporter = Reporter(report_url, report)
    reporter.send()  # at once: the server redirects only to machines it heard from
    started = time.monotonic()
    idle_since: float | None = None
    try:
        while time.monotonic() - started < longest and httpd.poll() is None:
            time.sleep(0.5)
            on_their_way = (reporter.coming or 0) + (reporter.waiting or 0)
            if on_their_way or reporter.coming is None:
                idle_since = None
            else:
                idle_since = idle_since or time.monotonic()
                if time.monotonic() - idle_since >= IDLE:
                    break
    finally:
        report.serving, report.phase = "", "kexec"
        reporter.stop()
        httpd.terminate()
        httpd.wait(5)
    return {"served_s": round(time.monotonic() - started, 1)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m lab.standin",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("boot_url", metavar="BOOT_URL", help="http://SERVER:6980/boot")
    parser.add_argument("--image", default="bench", help="the image it boots")
    parser.add_argument("--expect", action="append", default=[], metavar="NAME=SHA256",
                        help="a pivotal file's expected SHA-256")
    parser.add_argument("--serve", metavar="FOLDER", help="serve FOLDER once it holds the files")
    parser.add_argument("--report", metavar="URL", help="the server's /report")
    parser.add_argument("--infohash", default="", help="of the pivotal's files it serves")
    parser.add_argument("--serve-max", type=float, default=300.0,
                        help="seconds it serves at most (seed_time_max)")
    args = parser.parse_args(argv)
    expect = dict(item.split("=", 1) for item in args.expect)

    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
    print("ready", flush=True)
    signal.sigwait({signal.SIGUSR1})
    result = {"started_at": time.time(), **load_pivotal(args.boot_url, args.image, expect)}
    if args.serve and result["matched"]:
        result.update(serve(args.serve, args.report, args.image, args.infohash, args.serve_max))
    json.dump(result, sys.stdout)
    return 0 if result["matched"] else 1


if __name__ == "__main__":
    sys.exit(main())
