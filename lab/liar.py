"""A machine of the chain that sends wrong bytes: it asks the server for
its place in a torrent's chain, as a pivotal does (GET /chain/INFOHASH),
then answers every stream it is asked for with as many bytes as the
torrent has, all wrong (relay.py's side of the chain, lying).

    python3 -m lab.liar --server http://ADDRESS:PORT --infohash HASH --size BYTES \\
        --listen ADDRESS --log FILE

It prints its port once it holds a place in the chain, and writes to
--log how many bytes it sent, after each stream.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import urllib.request
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from boottorrent.pivotal.report import send_report
from boottorrent.pivotal.wire import TOKEN_HEADER, Report
from lab.storm import mac_of
from lab.token import fetch_token

LIE = b"\xa5" * 65536


class Liar(ThreadingHTTPServer):
    daemon_threads = True
    size = 0
    sent = 0
    log: Path


class Handler(BaseHTTPRequestHandler):
    server: Liar
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args) -> None:  # noqa: A002
        pass

    def do_GET(self) -> None:
        wanted = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range", "bytes=0-"))
        start = int(wanted[1]) if wanted else 0
        self.send_response(HTTPStatus.PARTIAL_CONTENT)
        self.send_header("Content-Range", f"bytes {start}-{self.server.size - 1}/"
                         f"{self.server.size}")
        self.send_header("Content-Length", str(self.server.size - start))
        self.end_headers()
        try:
            for offset in range(start, self.server.size, len(LIE)):
                self.wfile.write(LIE[:self.server.size - offset])
                self.server.sent += min(len(LIE), self.server.size - offset)
        finally:
            self.server.log.write_text(json.dumps({"sent": self.server.sent}))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="lab.liar", description=__doc__.split("\n\n")[0])
    parser.add_argument("--server", required=True, help="the server's HTTP side")
    parser.add_argument("--infohash", required=True)
    parser.add_argument("--size", type=int, required=True, help="the torrent's bytes")
    parser.add_argument("--listen", required=True, help="this host's address")
    parser.add_argument("--log", type=Path, required=True)
    args = parser.parse_args(argv)
    liar = Liar((args.listen, 0), Handler)
    liar.size, liar.log = args.size, args.log
    port = liar.server_address[1]
    # A machine the server booted: its token, as its iPXE got it.
    token = fetch_token(f"{args.server}/boot", mac_of(None))
    asked = urllib.request.Request(f"{args.server}/chain/{args.infohash}?port={port}",
                                   headers={TOKEN_HEADER: token})
    with urllib.request.urlopen(asked, timeout=10) as answer:
        json.loads(answer.read())
    # Its first report, as a pivotal's: it is no longer on its way.
    send_report(f"{args.server}/report", Report(phase="downloading", mac=mac_of(None)), token)
    print(port, flush=True)
    liar.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
