"""`boottorrent status`: the swarm as the seeder sees it, and every client
as it reports itself. The demo's live view draws the same table."""

from __future__ import annotations

import json
import time
import urllib.parse
import urllib.request

import libtorrent as lt

from boottorrent.asking import get
from boottorrent.pivotal import paths
from boottorrent.pivotal.console import human_bytes, shown
from boottorrent.pivotal.wire import Report

# /status holds about 450 bytes a machine.
STATUS_MAX = 64 << 20


def fetch(http_url: str, timeout: float = 3.0) -> dict:
    """A seeder's /status."""
    return json.loads(get(f"{http_url}{paths.STATUS}", STATUS_MAX, timeout))


def scrape(tracker_url: str, infohashes: list[str], timeout: float = 3.0) -> dict[str, dict]:
    """The tracker's counts per infohash: complete, incomplete, downloaded."""
    if not infohashes:
        return {}
    query = "&".join("info_hash=" + urllib.parse.quote_from_bytes(bytes.fromhex(h))
                     for h in infohashes)
    url = tracker_url.replace("/announce", "/scrape") + "?" + query
    with urllib.request.urlopen(url, timeout=timeout) as response:
        files = lt.bdecode(response.read()).get(b"files", {})
    return {key.hex(): {k.decode(): v for k, v in counts.items()}
            for key, counts in files.items()}


def with_tracker_counts(status: dict, tracker_url: str) -> dict:
    """Seeds, leechers and completions of each image as the tracker counts them."""
    counts = scrape(tracker_url, [i["infohash"] for i in status.get("images", [])])
    for image in status.get("images", []):
        found = counts.get(image["infohash"], {})
        image["seeds"] = found.get("complete", image["seeds"])
        image["leechers"] = found.get("incomplete", image["leechers"])
        image["completions"] = found.get("downloaded")
    return status


def bar(fraction: float, width: int = 20) -> str:
    filled = int(max(0.0, min(fraction, 1.0)) * width)
    return "[" + "#" * filled + "." * (width - filled) + "]"


def table(rows: list[tuple[str, ...]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows]


def format_status(status: dict, now: float | None = None) -> str:
    now = now or time.time()
    lines = []
    images = [("IMAGE", "SIZE", "SEEDS", "LEECHERS", "COMPLETIONS", "PEERS", "SENT BY SEEDER",
               "UP RATE")]
    for image in status.get("images", []):
        completions = image.get("completions")
        images.append((image["name"], human_bytes(image["size"]), str(image["seeds"]),
                       str(image["leechers"]), "?" if completions is None else str(completions),
                       str(image["peers"]),
                       human_bytes(image["uploaded"] + image.get("http_sent", 0)),
                       f"{human_bytes(image['upload_rate'])}/s"))
    lines += table(images) if len(images) > 1 else ["no images are being seeded"]
    if pivotal := status.get("pivotal"):
        lines.append(f"pivotal: the server sent {human_bytes(pivotal['http_sent'])} over HTTP "
                     f"and {human_bytes(pivotal['uploaded'])} of its torrent; "
                     f"{pivotal['redirects']} requests sent to machines that serve it")
    lines.append("")
    reports = [(Report.from_dict(entry), entry) for entry in status.get("clients", [])]
    # A primary lists its followers' machines too, each with the server it
    # booted from (followers.py).
    servers = any("server" in entry for _, entry in reports)
    clients = [("MAC", "ADDRESS", "IMAGE", "PHASE", "PROGRESS", "", "PEERS", "FROM SERVER",
                "FROM PEERS", "SEEN") + (("SERVER",) if servers else ())]
    for report, entry in reports:
        clients.append((shown(report.mac) or "?", shown(report.address),
                        shown(report.image) or "?", report.phase,
                        bar(report.progress), f"{report.progress:4.0%}", str(report.peers),
                        human_bytes(report.from_server), human_bytes(report.from_peers),
                        f"{now - entry.get('received', now):.0f}s ago")
                       + ((shown(str(entry.get("server", "this one"))),) if servers else ()))
    lines += table(clients) if len(clients) > 1 else ["no client has reported yet"]
    for follower in status.get("followers", []):
        if not follower["reachable"]:
            lines.append(f"follower {shown(follower['url'])} does not answer; its machines "
                         "as it last listed them")
    lines += failed([report for report, _ in reports])
    lines += ran_here([report for report, _ in reports])
    if problems := status.get("problems"):
        lines += ["", "not served as configured (`boottorrent check`):"]
        lines += [f"  {shown(problem)}" for problem in problems]
    return "\n".join(lines)


def failed(reports: list[Report]) -> list[str]:
    """Why each machine that failed did: its pivotal's one line (an image
    that cannot fit, a kernel a Secure Boot machine refuses, ...)."""
    lines = [f"{shown(report.mac or report.address)}: image {shown(report.image)}: "
             f"{shown(report.message)}"
             for report in reports if report.phase == "failed" and report.message]
    return ["", "failed:"] + lines if lines else []


def ran_here(reports: list[Report], output_lines: int = 5) -> list[str]:
    """The qemu and exec images that ran on machines: their exit status
    (running: none yet) and the end of a program's output."""
    lines = []
    for report in reports:
        if report.phase != "running" and report.exit_status is None:
            continue
        state = ("running" if report.exit_status is None
                 else f"exited with status {report.exit_status}")
        lines += ["", f"{shown(report.mac or report.address)}: image {shown(report.image)} "
                  f"{state}"]
        tail = report.output.rstrip("\n").splitlines()[-output_lines:]
        lines += [f"  | {shown(line)}" for line in tail]
    return lines
