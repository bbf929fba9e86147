"""This machine's side of the chain towards the machine after it: GET
/stream/INFOHASH answered from the torrent's relay (relay.Relay), as the
bytes arrive."""

from __future__ import annotations

import re
import socket
import sys
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Protocol

from boottorrent.pivotal.console import say
from boottorrent.pivotal.paths import STREAM
from boottorrent.pivotal.source import READ_TIMEOUT


class Relayed(Protocol):
    """A torrent's place in the chain, as this server sends it on (relay.Relay)."""

    total: int  # the torrent's bytes

    def first_servable(self, offset: int) -> int: ...
    def serve(self, sock: socket.socket, offset: int) -> None: ...
    def stop(self) -> None: ...


class RelayServer(ThreadingHTTPServer):
    """This machine's side of the chain: GET /stream/INFOHASH (Range:
    bytes=N-) answers with the bytes from N on (or from where this
    machine's own stream started, said in Content-Range), as they arrive."""

    daemon_threads = True

    def __init__(self, address: str):
        self.relays: dict[str, Relayed] = {}  # by infohash
        self.streaming = 0  # connections sending a stream
        self.lock = threading.Lock()
        super().__init__((address, 0), StreamHandler)
        self.port = self.server_address[1]
        threading.Thread(target=self.serve_forever, name="relay", daemon=True).start()

    def handle_error(self, request, client_address) -> None:
        """A successor that goes away (it has the rest, or failed) is the
        chain's normal life, not the socketserver's traceback on the console."""
        kind, error, _ = sys.exc_info()
        if not isinstance(error, OSError):
            say(f"relay: a stream to {client_address[0]} failed: "
                f"{kind.__name__ if kind else '?'}: {error}")

    def stop(self) -> None:
        for relay in list(self.relays.values()):
            relay.stop()
        self.shutdown()
        self.server_close()


class StreamHandler(BaseHTTPRequestHandler):
    server: RelayServer
    protocol_version = "HTTP/1.1"
    timeout = READ_TIMEOUT

    def log_message(self, format: str, *args) -> None:  # noqa: A002
        pass  # the console is for what the admin needs to see

    def do_GET(self) -> None:
        relay = self.server.relays.get(self.path.removeprefix(f"{STREAM}/"))
        wanted = re.fullmatch(r"bytes=(\d{1,18})-", self.headers.get("Range", "bytes=0-"))
        if relay is None or wanted is None or int(wanted[1]) >= relay.total:
            self.send_error(HTTPStatus.NOT_FOUND)
            return
        start = relay.first_servable(int(wanted[1]))
        self.send_response(HTTPStatus.PARTIAL_CONTENT)
        self.send_header("Content-Range", f"bytes {start}-{relay.total - 1}/{relay.total}")
        self.send_header("Content-Length", str(relay.total - start))
        self.end_headers()
        self.wfile.flush()
        with self.server.lock:
            self.server.streaming += 1
        try:
            relay.serve(self.connection, start)
        finally:
            with self.server.lock:
                self.server.streaming -= 1
