"""A boot storm's HTTP side, from one process in one network namespace.

    python3 -m lab.storm --count 1000 [--from NETWORK] URL [URL ...] > results.json

    python3 -m lab.storm --token BOOT_URL ... URL [URL ...]

N machines fetching the same URLs at the same moment, as N iPXEs do: each
of COUNT fetchers opens its own connection for each URL in turn (all
fetchers start together; with --from, each from its own address of
NETWORK, which must be on this namespace's interface: the server caps the
connections of each address), sends a plain HTTP/1.1 GET as iPXE does, follows
redirects, asks again after a 503 with Retry-After as iPXE does (after
that many seconds, with no limit), and reads the whole
answer. The result, as JSON: one entry per fetcher and URL with the status,
the bytes and the SHA-256 of the body, the redirects, how often it was told
to ask again, the seconds taken, and the error if there was one. With
--token, each machine first fetches the config part of BOOT_URL with its
MAC, as iPXE does, and sends the token in it to the server, as the
pivotal's /stage does (boottorrent/trust.py).

    python3 -m lab.storm --report --from 198.18.4.0/22 --count 1000 --seconds 60 URL

COUNT machines reporting to URL (the seeder's /report) for SECONDS, each
from its own address of NETWORK, at the interval the server's answers say, as the pivotal's
Reporter does (boottorrent/pivotal/report.py), with the token each got as
iPXE gets it (--forged: none, as hosts the server never booted, each
reporting once at a moment of its own within SECONDS). The result:
reports sent,
answered, failed, and the answers' latencies.

Stand-ins for the firmware's HTTP client and for the pivotals' reports
only: what they talk to is the real seeder.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import hashlib
import ipaddress
import json
import random
import resource
import sys
import time
from urllib.parse import urljoin, urlsplit

from boottorrent.pivotal.wire import TOKEN_HEADER, VERSION
from lab.token import config_url, token_in

MAX_REDIRECTS = 5
# Seconds iPXE's TCP waits for its SYN to be answered: its retransmission
# timer doubles from 0.25 s and gives up once past 10 s (retry.c); then
# the boot script's command fails, as it does here.
CONNECT_TIMEOUT = 16


async def fetch(url: str, timeout: float, source: str | None = None, token: str = "") -> dict:
    """timeout: for each request and its answer; the waits a 503 asks for
    are not counted (iPXE waits as long as it is told, as often as it is).
    source: the address to connect from; token: the machine's, sent to the
    server (not to another machine it redirects to), as its /stage does."""
    started = time.monotonic()
    result: dict = {"url": url, "status": None, "bytes": 0, "sha256": None, "error": None,
                    "redirects": [], "retried": 0}
    try:
        while True:
            async with asyncio.timeout(timeout):
                status, headers, size, digest = await get(
                    url, source, {} if result["redirects"] or not token else {TOKEN_HEADER: token})
            if status in (301, 302, 303, 307, 308) and "location" in headers \
                    and len(result["redirects"]) < MAX_REDIRECTS:
                url = urljoin(url, headers["location"])
                result["redirects"].append(url)
            elif status == 503 and headers.get("retry-after", "").isdigit():
                result["retried"] += 1
                await asyncio.sleep(int(headers["retry-after"]))
            else:
                break
        result.update(status=status, bytes=size, sha256=digest)
    except (OSError, asyncio.TimeoutError, ValueError, asyncio.IncompleteReadError) as error:
        result["error"] = f"{type(error).__name__}: {error}"
    result["seconds"] = round(time.monotonic() - started, 3)
    return result


async def get(url: str, source: str | None = None, sent: dict[str, str] | None = None,
              keep: bool = False) -> tuple[int, dict[str, str], int, str | bytes]:
    """The status, the headers, and the body's size and SHA-256, read as it
    comes (a storm's machines do not hold their pivotals in memory), or
    with keep, the body itself. sent: headers to send."""
    parts = urlsplit(url)
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection(parts.hostname, parts.port or 80,
                                local_addr=(source, 0) if source else None), CONNECT_TIMEOUT)
    try:
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        extra = "".join(f"{name}: {value}\r\n" for name, value in (sent or {}).items())
        writer.write(f"GET {target} HTTP/1.1\r\nHost: {parts.netloc}\r\n{extra}"
                     "User-Agent: iPXE-stand-in\r\nConnection: close\r\n\r\n".encode())
        await writer.drain()
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {k.strip().lower(): v.strip()
                   for k, _, v in (line.partition(":") for line in lines[1:] if line)}
        length = headers.get("content-length")
        left = int(length) if length else None
        digest, size, body = hashlib.sha256(), 0, bytearray()
        while left is None or left > 0:
            chunk = await reader.read(1 << 16 if left is None else min(left, 1 << 16))
            if not chunk:
                if left:
                    raise asyncio.IncompleteReadError(b"", left)
                break
            digest.update(chunk)
            if keep:
                body += chunk
            size += len(chunk)
            if left is not None:
                left -= len(chunk)
        return status, headers, size, bytes(body) if keep else digest.hexdigest()
    finally:
        writer.close()


def sources(network: str | None, count: int) -> list[str | None]:
    """The address each of count machines talks from: its own of network
    (taken in turn when there are fewer), or the namespace's one."""
    if network is None:
        return [None] * count
    hosts = [str(a) for a in itertools.islice(ipaddress.ip_network(network).hosts(), count)]
    return [hosts[i % len(hosts)] for i in range(count)]


def mac_of(source: str | None) -> str:
    """The MAC of the machine that talks from source: one made of the
    address (locally administered), or the namespace's own."""
    if source is None:
        with open("/sys/class/net/eth0/address") as address:
            return address.read().strip()
    return "02:00:" + ":".join(f"{octet:02x}" for octet in ipaddress.ip_address(source).packed)


async def fetch_token(boot_url: str, source: str | None) -> str:
    """The token the server hands the machine at source (lab/token.py), as
    its iPXE asks for it."""
    _, _, _, part = await get(config_url(boot_url, mac_of(source)), source, keep=True)
    return token_in(part)


async def storm(urls: list[str], machines: list[str | None], timeout: float,
                boot_url: str = "") -> list[dict]:
    """boot_url: each machine first fetches its token there (and sends it)."""
    async def machine(source: str | None) -> list[dict]:
        token = await fetch_token(boot_url, source) if boot_url else ""
        return [await fetch(url, timeout, source, token) for url in urls]

    return [r for results in await asyncio.gather(*(machine(s) for s in machines))
            for r in results]


async def report_loop(url: str, source: str, until: float, stats: dict, forged: bool) -> None:
    parts = urlsplit(url)
    progress, interval = 0.0, 1.0
    # Booted by the server, as a machine is: its token (trust.py); forged: none.
    token = "" if forged else await fetch_token(url.rsplit("/", 1)[0] + "/boot", source)
    if forged:  # once each, at a moment of its own in the whole time
        interval = (until - time.monotonic()) / random.uniform(0.8, 1.2) * random.random()
    while time.monotonic() < until:
        await asyncio.sleep(interval * random.uniform(0.8, 1.2))
        if forged:
            until = 0.0
        progress = min(progress + 0.01, 1.0)
        body = json.dumps({"mac": mac_of(source), "image": "bench", "phase": "downloading",
                           "progress": progress, "size": 1 << 30, "peers": 8,
                           "from_server": 1 << 20, "from_peers": 1 << 24,
                           "message": "", "version": VERSION}).encode()
        started = time.monotonic()
        stats["sent"] += 1
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(
                parts.hostname, parts.port, local_addr=(source, 0)), 10)
            try:
                writer.write(f"POST {parts.path} HTTP/1.1\r\nHost: {parts.netloc}\r\n"
                             f"{TOKEN_HEADER}: {token}\r\n"
                             "Content-Type: application/json\r\nConnection: close\r\n"
                             f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
                answer = await asyncio.wait_for(reader.read(), 10)
            finally:
                writer.close()
            head, _, payload = answer.partition(b"\r\n\r\n")
            status = head[9:12].decode("latin-1")
            stats["statuses"][status] = stats["statuses"].get(status, 0) + 1
            if not head.startswith(b"HTTP/1.1 200"):
                raise ValueError(head[:40])
            interval = float(json.loads(payload).get("interval", 1.0))
            stats["answered"] += 1
            stats["latencies"].append(time.monotonic() - started)
            stats["interval"] = interval
        except (OSError, asyncio.TimeoutError, ValueError) as error:
            stats["failed"] += 1
            stats["errors"][type(error).__name__] = stats["errors"].get(type(error).__name__, 0) + 1


async def reports(url: str, machines: list[str], seconds: float, forged: bool = False) -> dict:
    stats = {"sent": 0, "answered": 0, "failed": 0, "latencies": [], "errors": {}, "statuses": {},
             "interval": None, "machines": len(machines)}
    until = time.monotonic() + seconds
    await asyncio.gather(*(report_loop(url, source, until, stats, forged)
                           for source in machines))
    latencies = sorted(stats.pop("latencies")) or [0.0]
    stats["latency_median_s"] = round(latencies[len(latencies) // 2], 4)
    stats["latency_p99_s"] = round(latencies[int(len(latencies) * 0.99)], 4)
    stats["reports_per_s"] = round(stats["answered"] / seconds, 1)
    return stats


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m lab.storm", description=__doc__.split("\n\n")[0])
    parser.add_argument("urls", nargs="+", metavar="URL")
    parser.add_argument("--count", type=int, default=100, help="fetchers (default: %(default)s)")
    parser.add_argument("--timeout", type=float, default=60.0,
                        help="seconds one request and its answer may take, the waits a 503 "
                        "asks for not included (default: %(default)s)")
    parser.add_argument("--from", dest="network", metavar="NETWORK",
                        help="each machine from its own address of NETWORK")
    parser.add_argument("--token", metavar="BOOT_URL",
                        help="each machine first fetches its token from BOOT_URL's config "
                        "part, as iPXE does, and sends it to the server")
    reporting = parser.add_argument_group("reports")
    reporting.add_argument("--report", action="store_true",
                           help="send reports to the one URL (with --from) instead of fetching")
    reporting.add_argument("--forged", action="store_true",
                           help="as hosts the server never booted (no token)")
    reporting.add_argument("--seconds", type=float, default=60.0,
                           help="how long to report (default: %(default)s)")
    args = parser.parse_args(argv)
    # Each fetcher holds one socket.
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    machines = sources(args.network, args.count)
    if args.report:
        if args.network is None:
            parser.error("--report needs --from")
        result = asyncio.run(reports(args.urls[0], machines, args.seconds, args.forged))
    else:
        result = asyncio.run(storm(args.urls, machines, args.timeout, args.token or ""))
    json.dump(result, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
