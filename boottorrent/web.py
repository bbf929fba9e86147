"""The seeder's HTTP side: the boot files for iPXE, the images as a web seed,
and the status endpoint that pivotals report to.

    GET  /boot/PATH                    STATE/current/boot/PATH (iPXE script, pivotal)
    GET  /images/INFOHASH/NAME/FILE    a registered file (BEP 19 web seed; Range)
    POST /report                       a pivotal's state, JSON (pivotal/wire.py: Report)
    GET  /status                       the seeder's and the clients' state, JSON

It lives in the seeder process rather than in a separate web server: the
traffic is one pivotal download per client plus web-seed fallback, the
status endpoint needs the seeder's live state, and a Debian web server
package would start its own site on port 80 when installed.
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
from collections.abc import Callable
from dataclasses import asdict
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from boottorrent.pivotal.wire import Report

REPORT_MAX_BYTES = 16384
RANGE = re.compile(r"bytes=(\d*)-(\d*)")


class Reports:
    """The latest report of every pivotal, by MAC address."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_mac: dict[str, dict] = {}

    def add(self, report: Report, address: str) -> None:
        """address: where the report came from, which is what it is shown
        under (a report's body does not choose whose entry it replaces)."""
        entry = {**asdict(report), "address": address, "received": time.time()}
        with self._lock:
            self._by_mac[report.mac or address] = entry

    def all(self) -> list[dict]:
        with self._lock:
            return sorted(self._by_mac.values(), key=lambda r: str(r.get("mac")))


def byte_range(header: str, size: int) -> tuple[int, int, bool] | None:
    """(first byte, last byte, partial?) to send of a file of size bytes for
    a Range header ("" when there is none; a form we do not serve means the
    whole file, as RFC 9110 allows), or None when it cannot be satisfied."""
    wanted = RANGE.fullmatch(header)
    if not (wanted and (wanted[1] or wanted[2])):
        return 0, size - 1, False
    if wanted[1]:
        start, end = int(wanted[1]), min(int(wanted[2] or size - 1), size - 1)
    else:  # the last N bytes
        start, end = max(size - int(wanted[2]), 0), size - 1
    if start > end or start >= size:
        return None
    return start, end, True


class Handler(BaseHTTPRequestHandler):
    server: "WebServer"
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args) -> None:  # noqa: A002
        self.server.log(f"{self.client_address[0]} {format % args}")

    def do_HEAD(self) -> None:
        self._serve_file(head=True)

    def do_GET(self) -> None:
        if self.path == "/status":
            self._send_json(self.server.status())
        else:
            self._serve_file(head=False)

    def do_POST(self) -> None:
        if self.path != "/report":
            self.send_error(HTTPStatus.NOT_FOUND)
            return
        length = int(self.headers.get("Content-Length") or 0)
        if not 0 < length <= REPORT_MAX_BYTES:
            self.send_error(HTTPStatus.REQUEST_ENTITY_TOO_LARGE)
            return
        try:
            data = json.loads(self.rfile.read(length))
            if not isinstance(data, dict):
                raise ValueError("a JSON object is expected")
            report = Report.from_dict(data)
        except ValueError as error:
            self.send_error(HTTPStatus.BAD_REQUEST, str(error))
            return
        self.server.reports.add(report, self.client_address[0])
        self._send_json({"ok": True})

    def _send_json(self, data: dict) -> None:
        body = json.dumps(data).encode()
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _serve_file(self, head: bool) -> None:
        path = self.server.resolve(self.path.split("?", 1)[0])
        if path is None:
            self.send_error(HTTPStatus.NOT_FOUND)
            return
        with path.open("rb") as file:
            size = os.fstat(file.fileno()).st_size
            wanted = byte_range(self.headers.get("Range", ""), size)
            if wanted is None:
                self.send_response(HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE)
                self.send_header("Content-Range", f"bytes */{size}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            start, end, partial = wanted
            status = HTTPStatus.PARTIAL_CONTENT if partial else HTTPStatus.OK
            self.send_response(status)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Accept-Ranges", "bytes")
            self.send_header("Content-Length", str(end - start + 1))
            if status == HTTPStatus.PARTIAL_CONTENT:
                self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
            self.end_headers()
            if not head:
                self.wfile.flush()
                sent = self.connection.sendfile(file, start, end - start + 1)
                self.server.count_sent(self.path, sent)


class WebServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], state_root: Path,
                 status: Callable[[], dict], log: Callable[[str], None]):
        self.state_root = state_root
        self.status = status
        self.log = log
        self.reports = Reports()
        self.sent_by_path: dict[str, int] = {}
        self._sent_lock = threading.Lock()
        super().__init__(address, Handler)

    def resolve(self, url_path: str) -> Path | None:
        """The file a URL names, or None; nothing outside the two trees."""
        parts = [p for p in url_path.split("/") if p]
        if len(parts) < 2 or any(p in (".", "..") for p in parts):
            return None
        if parts[0] == "boot":
            root = (self.state_root / "current" / "boot").resolve()
        elif parts[0] == "images":
            root = (self.state_root / "images").resolve()
        else:
            return None
        path = root.joinpath(*parts[1:])
        # Pivotal parts are links into the cache or /usr/lib; resolve() follows them.
        return path if path.is_file() else None

    def count_sent(self, path: str, count: int) -> None:
        with self._sent_lock:
            self.sent_by_path[path] = self.sent_by_path.get(path, 0) + count

    def start(self) -> threading.Thread:
        thread = threading.Thread(target=self.serve_forever, name="http", daemon=True)
        thread.start()
        return thread
