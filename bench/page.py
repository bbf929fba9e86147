"""The status page with a thousand machines: while M machines report to
the real seeder (lab/storm.py, each from its own address with its own
token), the seeder's CPU share for a window without the page and for one
with it open in headless Chromium (lab/browser.py), the size of /status
and how long the seeder takes to answer it, and how long the browser
takes to redraw the page once a second. Writes bench/PAGE.md and
bench/page.json.

    /usr/bin/python3 -m bench.page [--machines 1000]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

from bench.__main__ import machine
from bench.methods import process_cpu
from boottorrent.pivotal import paths
from boottorrent.pivotal.wire import HTTP_PORT
from lab.browser import Browser
from lab.cluster import HTTP_URL, MIB, Cluster, pivotal_cache, wait_for
from lab.forward import forward
from lab.netns import SERVER_ADDRESS
from lab.server import PYTHON, REPO

BENCH = Path(__file__).resolve().parent
WINDOW = 20.0  # seconds of each measurement
SETTLE = 5.0  # seconds for every machine's first report


class CoreShare:
    """The share of one core a process used within the with block (share)."""

    def __init__(self, pid: int):
        self.pid = pid
        self.share = 0.0

    def __enter__(self) -> "CoreShare":
        self.before, self.started = process_cpu(self.pid), time.monotonic()
        return self

    def __exit__(self, *exc) -> None:
        self.share = round((process_cpu(self.pid) - self.before)
                           / (time.monotonic() - self.started), 3)


def measure(count: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="boottorrent-page-") as tmp, \
            Cluster(Path(tmp), cache=pivotal_cache()) as cluster:
        cluster.add_image("bench", {"kernel": MIB})  # the image lab.storm's machines report
        cluster.start(("seeder",))
        seeder = cluster.server.processes["seeder"].pid
        host, network = cluster.crowd("crowd", count)
        reporters = host.popen([PYTHON, "-m", "lab.storm", "--report", "--from", network,
                                "--count", str(count), "--seconds",
                                str(2 * WINDOW + 3 * SETTLE), f"{HTTP_URL}{paths.REPORT}"],
                               cwd=REPO, stdout=subprocess.PIPE, text=True)
        wait_for(lambda: len(cluster.server.status()["clients"]) == count, 60,
                 f"{count} machines to report")
        time.sleep(SETTLE)
        with CoreShare(seeder) as without_page:
            time.sleep(WINDOW)
        page = f"http://127.0.0.1:{forward(cluster.server_host, SERVER_ADDRESS, HTTP_PORT)}/"
        with Browser() as browser:
            browser.open(page)
            wait_for(lambda: browser.run("return document.getElementById('shown').textContent")
                     == f"{count} of {count} machines shown", 60, "the page to list them")
            draws: list[float] = []
            with CoreShare(seeder) as with_page:
                while time.monotonic() - with_page.started < WINDOW:
                    draws.append(browser.run("return view.drawMs"))
                    time.sleep(1)
        answers = []
        for _ in range(10):
            asked = time.monotonic()
            with urllib.request.urlopen(f"{page}status", timeout=10) as response:
                size = len(response.read())
            answers.append(time.monotonic() - asked)
        out, _ = reporters.communicate(timeout=120)
        reports = json.loads(out)
    return {"machines": count, "status_bytes": size,
            "status_answer_ms_median": round(statistics.median(answers) * 1000, 1),
            "redraw_ms_median": round(statistics.median(draws), 1),
            "redraw_ms_max": round(max(draws), 1),
            "seeder_cpu_without_page": without_page.share,
            "seeder_cpu_with_page": with_page.share,
            "reports_failed": reports["failed"], "report_interval_s": reports["interval"]}


def write_markdown(path: Path, figures: dict) -> None:
    f = figures["page"]
    path.write_text("\n".join([
        "# The status page with many machines", "",
        f"`python3 -m bench.page`, {figures['date']}, on {figures['machine']['cpu']} "
        f"({figures['machine']['cores']} cores). {f['machines']} machines report to the real "
        "seeder as the pivotal does (lab/storm.py), each from its own address with its own "
        f"token; the seeder's CPU is measured for {WINDOW:.0f} s without the page, then "
        f"{WINDOW:.0f} s with the page open in headless Chromium, which fetches /status "
        "once a second and redraws every row.", "",
        "| machines | /status (KiB) | its answer, median (ms) | redraw, median (ms) | "
        "redraw, max (ms) | seeder CPU without the page | with it | reports failed |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
        f"| {f['machines']} | {f['status_bytes'] / 1024:.0f} | {f['status_answer_ms_median']} | "
        f"{f['redraw_ms_median']} | {f['redraw_ms_max']} | {f['seeder_cpu_without_page']:.0%} | "
        f"{f['seeder_cpu_with_page']:.0%} | {f['reports_failed']} |", ""]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m bench.page",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--machines", type=int, default=1000)
    parser.add_argument("--out", type=Path, default=BENCH)
    args = parser.parse_args(argv)
    figures = {"date": time.strftime("%Y-%m-%d %H:%M %Z"), "machine": machine(),
               "page": measure(args.machines)}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "page.json").write_text(json.dumps(figures, indent=1) + "\n")
    write_markdown(args.out / "PAGE.md", figures)
    print(f"bench.page: {figures['page']}; wrote {args.out}/PAGE.md and page.json")
    return 0 if figures["page"]["reports_failed"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
