"""The seeder's HTTP side: the boot files for iPXE, the images as a web seed,
and the status endpoint that pivotals report to.

    GET  /boot/PATH                    STATE/current/boot/PATH (iPXE script, pivotal);
                                       ?try=x (the pivotal's /stage, its first try)
                                       for one of SHARED_FILES: a redirect to a
                                       machine that serves it, or 503 and Retry-After
                                       while one is about to (Machines.pivotal_source)
    GET  /images/INFOHASH/NAME/FILE    a registered file (BEP 19 web seed; Range)
    GET  /chain/INFOHASH?port=P[&failed=ADDRESS:PORT]
                                       whom the asker (its relay on port P) streams a
                                       torrent's bytes from (chain.py), JSON:
                                       {"source": "ADDRESS:PORT"}, or "" for the server
    GET  /stream/INFOHASH              a torrent's bytes, its files one after the
                                       other (Range: bytes=N-), for the first machine
                                       of the chain
    POST /report                       a pivotal's state, JSON (pivotal/wire.py: Report);
                                       the answer: when to report next, and how
                                       many machines are on their way
    GET  /status                       the seeder's and the machines' state, JSON

It lives in the seeder process rather than in a separate web server: the
answers to reports and /status need the seeder's live state, and a Debian
web server package would start its own site on port 80 when installed.

Built for a boot storm (hundreds of machines powered on within seconds)
and for a LAN with hostile hosts: the kernel holds up to LISTEN_BACKLOG
connections; one thread reads every connection's request within a
deadline and caps what each source address holds (intake.py); a fixed pool
of WORKERS threads answers whole requests only, and a kept-alive
connection goes back to the intake after its answer (and is closed after
it while others wait). An answer's body that the client reads slower than
SEND_MIN_RATE is cut off. A bad request gets an error status and one log
line. `make bench` measures it (bench/RESULTS.md, "HTTP storm").
"""

from __future__ import annotations

import io
import json
import os
import queue
import re
import socket
import sys
import threading
import time
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from urllib.parse import parse_qs

from boottorrent import chain
from boottorrent.fleet import SERVER, WAIT, Machines
from boottorrent.intake import Intake, Request
from boottorrent.pivotal.console import shown
from boottorrent.pivotal.wire import TOKEN_HEADER, Report
from boottorrent.nics import INDEX, ServedIndex
from boottorrent.render import PIVOTAL_BASE, PIVOTAL_INITRDS, PIVOTAL_NICS, PIVOTAL_QEMU
from boottorrent.trust import Trust, token_part

WORKERS = 64
LISTEN_BACKLOG = 4096  # the kernel caps it at net.core.somaxconn (4096 by default)
IDLE_TIMEOUT = 10  # seconds a client may leave an answer unread
# A client that reads an answer's body slower than this on average (after
# IDLE_TIMEOUT s) gives its worker back: a 256 kbit/s link, far below any
# machine's, far above a trickle that holds a worker for hours.
SEND_MIN_RATE = 32 * 1024  # bytes per second
SEND_SLICE = 8 << 20  # bytes sent between two looks at the rate
REPORT_MAX_BYTES = 4096  # a report is about 600 bytes
DECIMAL = re.compile(r"[0-9]{1,18}")  # not str.isdigit(): that takes "²" and "٣" too
RANGE = re.compile(r"bytes=(\d{0,18})-(\d{0,18})")
RANGE_FORM = re.compile(r"bytes=\d*-\d*")
# The pivotal's parts that machines serve each other (Machines.pivotal_source):
# the ones its /stage fetches and checks before they run (render.pivotal_shared).
SHARED_FILES = tuple(f"/boot/{path}" for path in (PIVOTAL_BASE, PIVOTAL_QEMU))
CONFIG_PART = f"/boot/{PIVOTAL_INITRDS[0]}"  # with each machine's token (trust.py)
MODULES_PART = f"/boot/{PIVOTAL_INITRDS[1]}"  # or the part of the NIC its query names (nics.py)


def byte_range(header: str, size: int) -> tuple[int, int, bool] | None:
    """(first byte, last byte, partial?) to send of a file of size bytes for
    a Range header ("" when there is none; a form we do not serve means the
    whole file, as RFC 9110 allows), or None when it cannot be satisfied
    (also for numbers of more than 18 digits, beyond any file)."""
    wanted = RANGE.fullmatch(header)
    if not wanted:
        return None if RANGE_FORM.fullmatch(header) else (0, size - 1, False)
    if not (wanted[1] or wanted[2]):
        return 0, size - 1, False
    if wanted[1]:
        start, end = int(wanted[1]), min(int(wanted[2] or size - 1), size - 1)
    else:  # the last N bytes
        start, end = max(size - int(wanted[2]), 0), size - 1
    if start > end or start >= size:
        return None
    return start, end, True


class SocketWriter(io.BufferedIOBase):
    """An answer's head written to the connection whole (a raw socket file
    may write part of it)."""

    def __init__(self, sock: socket.socket):
        self._sock = sock

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        self._sock.sendall(data)
        return len(data)


class Handler(BaseHTTPRequestHandler):
    """One whole request (intake.Request: read by the intake), answered."""

    request: Request
    server: "WebServer"
    protocol_version = "HTTP/1.1"
    # What an error answer to a request line that is not HTTP is sent as
    # (the standard library's HTTP/0.9 would send it with no status line).
    default_request_version = "HTTP/1.0"

    def setup(self) -> None:
        self.connection = self.request.connection.sock
        self.connection.settimeout(IDLE_TIMEOUT)  # a client that stops reading
        self.rfile = io.BytesIO(self.request.data)
        self.wfile = SocketWriter(self.connection)

    def handle(self) -> None:
        # One request: a kept-alive connection waits for its next one in the intake.
        self.handle_one_request()

    def finish(self) -> None:
        pass  # the intake closes the connection, or keeps it for the next request

    def log_message(self, format: str, *args) -> None:  # noqa: A002
        self.server.log_request_line(f"{self.client_address[0]} {shown(format % args)}")

    def log_error(self, format: str, *args) -> None:  # noqa: A002
        # send_error's line: one per bad request, with what was asked.
        self.server.log_bad_request(f"{self.client_address[0]} {shown(format % args)} "
                                    f"({self.requestline[:200]!r})")

    def end_headers(self) -> None:
        # While connections wait for a worker, this one does not keep its
        # worker waiting for a next request.
        if self.server.busy() and not self.close_connection:
            self.send_header("Connection", "close")
        super().end_headers()

    def do_HEAD(self) -> None:
        self._serve_file(head=True)

    def do_GET(self) -> None:
        if self.path == "/status":
            self._send_json(self.server.status())
        elif self.path.startswith("/chain/"):
            self._chain_source()
        elif self.path.startswith("/stream/"):
            self._send_stream(self.path.removeprefix("/stream/")[:64])
        else:
            self._serve_file(head=False)

    def do_POST(self) -> None:
        if self.path != "/report":
            self.send_error(HTTPStatus.NOT_FOUND)
            return
        length = self.headers.get("Content-Length", "")
        if not DECIMAL.fullmatch(length):
            self.send_error(HTTPStatus.LENGTH_REQUIRED if not length else HTTPStatus.BAD_REQUEST,
                            "a report needs a Content-Length in decimal digits")
            return
        if not 0 < int(length) <= REPORT_MAX_BYTES:
            self.send_error(HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                            f"a report is 1 to {REPORT_MAX_BYTES} bytes")
            return
        try:
            data = json.loads(self.rfile.read(int(length)))
            if not isinstance(data, dict):
                raise ValueError("a JSON object is expected")
            report = Report.from_dict(data)
        except (ValueError, RecursionError) as error:
            reason = "JSON nested too deeply" if isinstance(error, RecursionError) else error
            self.send_error(HTTPStatus.BAD_REQUEST, str(reason)[:200])
            return
        mac = self._machine()
        if mac is None or report.mac not in ("", mac):
            self._refuse()
            return
        report.mac = mac
        self._send_json(self.server.machines.add(report, self.client_address[0]))

    def _chain_source(self) -> None:
        if not self._machine():
            self._refuse()
            return
        infohash, _, query = self.path.removeprefix("/chain/").partition("?")
        asked = parse_qs(query)
        port = asked.get("port", [""])[0]
        if not (DECIMAL.fullmatch(port) and 0 < int(port) < 65536):
            self.send_error(HTTPStatus.BAD_REQUEST, "port: a TCP port number is expected")
            return
        source = self.server.chains.source(infohash[:64], f"{self.client_address[0]}:{port}",
                                           asked.get("failed", [""])[0][:64])
        if source is None:
            self.send_error(HTTPStatus.NOT_FOUND)
        else:
            self._send_json({"source": source})

    def _send_stream(self, infohash: str) -> None:
        if not self._machine():
            self._refuse()
            return
        files = self.server.streams.get(infohash)
        if files is None:
            self.send_error(HTTPStatus.NOT_FOUND)
            return
        wanted = self._start_body(sum(size for _, size in files))
        if wanted is None:
            return
        start, end = wanted
        pivotal = infohash == self.server.pivotal_infohash
        if pivotal:
            self.server.machines.streaming_pivotal(started=True)
        try:
            offset = 0
            for path, size in files:
                first, last = max(start - offset, 0), min(end - offset, size - 1)
                if first <= last:
                    with path.open("rb") as file:
                        self._send_range(file, first, last - first + 1, f"/stream/{infohash}")
                offset += size
        finally:
            if pivotal:
                self.server.machines.streaming_pivotal(started=False)

    def _start_body(self, size: int) -> tuple[int, int] | None:
        """The status and headers for the bytes of size bytes that the
        request's Range asks for (all without one): the first and the last
        of them to send, or None once 416 is answered."""
        wanted = byte_range(self.headers.get("Range", ""), size)
        if wanted is None:
            self._not_satisfiable(size)
            return None
        start, end, partial = wanted
        self.send_response(HTTPStatus.PARTIAL_CONTENT if partial else HTTPStatus.OK)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Length", str(end - start + 1))
        if partial:
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.end_headers()
        return start, end

    def _not_satisfiable(self, size: int) -> None:
        self.log_error("code 416, Range %r of %d bytes", self.headers.get("Range", "")[:40], size)
        self.send_response(HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE)
        self.send_header("Content-Range", f"bytes */{size}")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _retry_later(self) -> None:
        self.send_response(HTTPStatus.SERVICE_UNAVAILABLE)
        self.send_header("Retry-After", str(self.server.machines.retry_after()))
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _redirect(self, url: str) -> None:
        self.send_response(HTTPStatus.FOUND)
        self.send_header("Location", url)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _send_json(self, data: dict) -> None:
        body = json.dumps(data).encode()
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _serve_file(self, head: bool) -> None:
        url_path, _, query = self.path.partition("?")
        path = self.server.resolve(url_path)
        if path is None:
            self.send_error(HTTPStatus.NOT_FOUND)
            return
        # iPXE and the stage ask for whole files; a Range is libtorrent's web seed.
        if url_path.startswith("/boot/") and not head and "Range" not in self.headers:
            asked = parse_qs(query)
            if url_path == CONFIG_PART:
                self._send_config_part(path, asked)
                return
            if url_path == MODULES_PART and "nic" in asked:
                url_path = self.server.nic_part(asked["nic"][0][:16]) or url_path
                path = self.server.resolve(url_path) or path
            # "try=x": the pivotal /stage's first try, "try=xx" its second
            # (pivotal/stage); without it, or from a machine the server did
            # not boot, the storm's rules are not asked: served here.
            if url_path in SHARED_FILES and "try" in asked and self._machine():
                source = self.server.machines.pivotal_source(
                    self.server.pivotal_infohash, self.client_address[0],
                    tries=min(len(asked["try"][0]), 99))
                if source == WAIT:
                    self._retry_later()
                    return
                if source != SERVER:
                    self._redirect(f"http://{source}:{self.server.server_port}"
                                   f"{url_path.removeprefix('/boot')}")
                    return
                self.server.machines.sending(self.client_address[0], started=True)
                try:
                    self._send_file(path, url_path, head)
                finally:
                    self.server.machines.sending(self.client_address[0], started=False)
                return
        self._send_file(path, url_path, head)

    def _send_config_part(self, path: Path, asked: dict[str, list[str]]) -> None:
        """The config part, and before it, for a machine that names its MAC
        (iPXE's ${netX/mac}), a part with its token (trust.py): it is then
        on its way to the swarm."""
        address = self.client_address[0]
        mac = asked.get("mac", [""])[0][:17].lower()
        token = self.server.trust.token(address, mac)
        own = token_part(token) if token else b""
        if token:
            self.server.machines.on_its_way(address, mac, asked.get("image", [""])[0][:64])
        with path.open("rb") as file:
            size = os.fstat(file.fileno()).st_size
            self.send_response(HTTPStatus.OK)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(len(own) + size))
            self.end_headers()
            self.wfile.write(own)
            self._send_range(file, 0, size, CONFIG_PART)

    def _machine(self) -> str | None:
        """The MAC of the machine the server booted that sent this request
        (its token, trust.py), or None."""
        return self.server.trust.machine(self.client_address[0],
                                         self.headers.get(TOKEN_HEADER, "")[:64])

    def _refuse(self) -> None:
        """403 for a request that only a machine this server booted may make."""
        address = self.client_address[0]
        if self.server.trust.first_refusal(address):
            self.server.log_bad_request(f"{address} {self.command} {self.path[:100]!r}: no "
                                        "token of a boot this server served to this address "
                                        "(further ones from it are not logged)")
        body = b"only a machine this server booted may ask this (its token)\n"
        self.send_response(HTTPStatus.FORBIDDEN)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _send_file(self, path: Path, url_path: str, head: bool) -> None:
        with path.open("rb") as file:
            wanted = self._start_body(os.fstat(file.fileno()).st_size)
            if wanted is None:
                return
            start, end = wanted
            if not head:
                self._send_range(file, start, end - start + 1, url_path)

    def _send_range(self, file, offset: int, count: int, counted_as: str) -> None:
        """count bytes of file from offset, counted as sent under counted_as;
        TimeoutError when the client reads them slower than SEND_MIN_RATE."""
        started = time.monotonic()
        sent = 0
        try:
            while sent < count:
                slice_sent = self.connection.sendfile(file, offset + sent,
                                                      min(SEND_SLICE, count - sent))
                if not slice_sent:
                    raise EOFError(f"{file.name} ends before its byte {offset + count}")
                sent += slice_sent
                if time.monotonic() - started > IDLE_TIMEOUT + sent / SEND_MIN_RATE:
                    raise TimeoutError(f"read slower than {SEND_MIN_RATE} bytes/s")
        finally:
            self.server.count_sent(counted_as, sent)


class WebServer:
    def __init__(self, address: tuple[str, int], state_root: Path,
                 status: Callable[[], dict], log_request_line: Callable[[str], None],
                 log_bad_request: Callable[[str], None], forget_after: float, trust: Trust):
        self.state_root = state_root
        self.trust = trust
        self.status = status
        self.log_request_line = log_request_line
        self.log_bad_request = log_bad_request
        self.machines = Machines(forget_after)
        self.chains = chain.Chains(self.machines.in_swarm)
        # The files of each torrent offered for streaming, in torrent order.
        self.streams: dict[str, list[tuple[Path, int]]] = {}
        self.pivotal_infohash = ""  # of the pivotal files the seeder seeds (seeder.py)
        self.sent_by_path: dict[str, int] = {}
        self.nic_index = ServedIndex()
        self._sent_lock = threading.Lock()
        self.socket = socket.create_server(address, backlog=LISTEN_BACKLOG)
        self.server_port = self.socket.getsockname()[1]
        # Whole requests waiting for a worker (the intake caps them).
        self._requests: queue.SimpleQueue[Request] = queue.SimpleQueue()
        self.intake = Intake(self.socket, self._requests.put, REPORT_MAX_BYTES, log_bad_request)

    def busy(self) -> bool:
        return not self._requests.empty()

    def _work(self) -> None:
        while True:
            request = self._requests.get()
            keep = False
            try:
                keep = not Handler(request, (request.connection.address,), self).close_connection
            except Exception:
                self.handle_error(request.connection.address)
            finally:
                self.intake.done(request, keep)

    def handle_error(self, address: str) -> None:
        """One line, not a traceback: a client that went away or stalled
        is no fault of ours."""
        kind, error, _ = sys.exc_info()
        self.log_request_line(f"{address} connection ended: "
                              f"{kind.__name__ if kind else '?'}: {error}")

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
        # Pivotal parts are links into the cache or /usr/lib; is_file() follows them.
        try:
            return path if path.is_file() else None
        except (OSError, ValueError):  # a name too long, a NUL byte
            return None

    def nic_part(self, busid: str) -> str | None:
        """The URL path of the modules part for the NIC of this busid
        (iPXE's), or None: the whole modules part is sent then."""
        name = self.nic_index.part(self.resolve(f"/boot/{PIVOTAL_NICS}/{INDEX}"), busid)
        return f"/boot/{PIVOTAL_NICS}/{name}" if name else None

    def offer(self, infohash: str, files: list[tuple[Path, int]]) -> None:
        """Stream this torrent's files (in torrent order) to the machines' chain."""
        self.streams[infohash] = files
        self.chains.offer(infohash)

    def withdraw(self, infohash: str) -> None:
        self.streams.pop(infohash, None)
        self.chains.withdraw(infohash)

    def count_sent(self, path: str, count: int) -> None:
        with self._sent_lock:
            self.sent_by_path[path] = self.sent_by_path.get(path, 0) + count

    def sent_by_part(self, prefix: str) -> dict[str, int]:
        """Bytes sent of each file under prefix, by its path after prefix."""
        with self._sent_lock:
            return {path.removeprefix(prefix): n for path, n in sorted(self.sent_by_path.items())
                    if path.startswith(prefix)}

    def sent_under(self, prefix: str) -> int:
        """Bytes sent of the files whose URL path starts with prefix."""
        with self._sent_lock:
            return sum(n for path, n in self.sent_by_path.items() if path.startswith(prefix))

    def start(self) -> None:
        for number in range(WORKERS):
            threading.Thread(target=self._work, name=f"http-{number}", daemon=True).start()
        threading.Thread(target=self.intake.run, name="http-intake", daemon=True).start()

    def server_close(self) -> None:
        self.socket.close()
