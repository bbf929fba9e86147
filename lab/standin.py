"""One machine of a boot storm, played by a light stand-in rather than a
real pivotal (bench/storm.py, "Boot storm"): what its iPXE fetches, and,
with --serve, what its pivotal does for the machines that boot after it.

    python3 -m lab.standin --expect NAME=SHA256 ... [--serve FOLDER --report URL
                           --image NAME --infohash HEX] BOOT_URL

It starts when it receives SIGUSR1 (after printing "ready"), so that a
storm's machines can be started within milliseconds of each other. Then:

1. the boot script's loads from the server, as iPXE runs them
   (boot.ipxe.j2): boot.ipxe, the pivotal's kernel and initrds, the config
   part with its MAC, which gives it its token (trust.py); when one
   fails, it waits 2, 4, 8, 16 s and loads them all again, at most 5 times,
   as the script does;
   then the loads of the pivotal's /stage (pivotal/stage): each shared part
   with "?try=x" (paths.try_query), following redirects and asking again after a 503 with
   Retry-After (lab.storm.fetch); a try that fails or whose bytes do not
   match --expect is followed by one with one more "x", at most 8;
2. each file's SHA-256 is compared with --expect (every file the stand-in
   was given a SHA-256 for);
3. with --serve: FOLDER (the same files, which this machine has just shown
   it holds) is served with busybox httpd on the HTTP port, as a pivotal that
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
from pathlib import Path

from boottorrent.nics import INDEX, NicIndex
from boottorrent.pivotal import paths
from boottorrent.pivotal.report import Reporter
from boottorrent.pivotal.wire import HTTP_PORT, Report
from lab.storm import fetch, fetch_token, mac_of
from lab.token import VIRTIO_BUSID, config_url, initrd_url

TRIES = 5  # the boot script's attempts before it reboots
STAGE_TRIES = 8  # the /stage's tries of a part before it gives up (TRIES_MAX)
PORT = HTTP_PORT  # the seeder's HTTP port, where the server redirects machines to
IDLE = 5.0  # seconds without machines on their way before it stops (seed_idle_time)


def script_urls(boot_url: str, image: str, mac: str = "") -> list[str]:
    """What the boot script loads from the server, as a machine with
    QEMU's virtio NIC (with mac, the config part that holds the machine's
    token)."""
    config = config_url(boot_url, mac, image) if mac else f"{boot_url}/{paths.CONFIG_PART}"
    return [f"{boot_url}/boot.ipxe", f"{boot_url}/{paths.KERNEL}", config] + [
        initrd_url(boot_url, path, mac, image) for path in paths.INITRDS[1:]]


def loaded_files(pivotal_dir: Path) -> dict[str, Path]:
    """What a machine with QEMU's virtio NIC loads of the pivotal in this
    folder (a snapshot's boot/pivotal), by the name it loads it as: the
    server sends its NIC's modules part as modules.cpio.zst (nics.py)."""
    files = {Path(p).name: pivotal_dir / Path(p).name
             for p in (paths.KERNEL, *paths.INITRDS, paths.BASE)}
    nic_parts = pivotal_dir.parent / paths.NICS
    part = NicIndex.load(nic_parts / INDEX).part(VIRTIO_BUSID)
    if part:
        files[Path(paths.MODULES_PART).name] = nic_parts / part
    return files


def file_name(result: dict) -> str:
    return result["url"].split("?")[0].rsplit("/", 1)[-1]


def matches(result: dict, expect: dict[str, str]) -> bool:
    return result["status"] == 200 and not result["error"] and (
        file_name(result) not in expect or result["sha256"] == expect[file_name(result)])


def load_pivotal(boot_url: str, image: str, expect: dict[str, str]) -> dict:
    """The boot script's loads and then the /stage's, retried as they retry."""
    fetches: list[dict] = []
    mac = mac_of(None)
    for attempt in range(1, TRIES + 1):
        urls = script_urls(boot_url, image, mac)
        for url in urls:
            result = asyncio.run(fetch(url, timeout=300))
            fetches.append(result)
            if not matches(result, expect):
                break
        else:
            break
        if attempt == TRIES:
            return {"fetches": fetches, "tries": TRIES, "matched": False, "held_at": None,
                    "token": ""}
        time.sleep(2 ** attempt)
    stage_tries = 0
    token = asyncio.run(fetch_token(boot_url, None))  # in the config part it holds
    for path in (paths.BASE, paths.QEMU):
        if path.rsplit("/", 1)[-1] not in expect:
            continue  # no QEMU part: no image's method is qemu
        for tries in range(1, STAGE_TRIES + 1):
            result = asyncio.run(fetch(f"{boot_url}/{path}?{paths.try_query(tries)}", timeout=300,
                                       token=token))
            fetches.append(result)
            if matches(result, expect):
                break
            if tries == STAGE_TRIES:
                return {"fetches": fetches, "tries": attempt, "stage_tries": stage_tries,
                        "matched": False, "held_at": None, "token": token}
            stage_tries += 1
            time.sleep(tries)
    return {"fetches": fetches, "tries": attempt, "stage_tries": stage_tries,
            "matched": True, "held_at": time.time(), "token": token}


def serve(folder: str, report_url: str, image: str, infohash: str, longest: float,
          token: str) -> dict:
    httpd = subprocess.Popen(["busybox", "httpd", "-f", "-p", str(PORT), "-h", folder],
                             stdin=subprocess.DEVNULL)
    report = Report(mac=mac_of(None), image=image, phase="seeding", progress=1.0,
                    serving=infohash, started=time.time())
    reporter = Reporter(report_url, report, token)
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
    token = result.pop("token")
    if args.serve and result["matched"]:
        result.update(serve(args.serve, args.report, args.image, args.infohash, args.serve_max,
                            token))
    json.dump(result, sys.stdout)
    return 0 if result["matched"] else 1


if __name__ == "__main__":
    sys.exit(main())
