"""HTTP answers of files and byte ranges (RFC 9110), sent with sendfile
and cut off when the client reads slower than SEND_MIN_RATE; the seeder's
Handler (web.py) is one."""

from __future__ import annotations

import io
import os
import re
import socket
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler
from pathlib import Path

IDLE_TIMEOUT = 10  # seconds a client may leave an answer unread
# A client that reads an answer's body slower than this on average (after
# IDLE_TIMEOUT s) gives its worker back: a 256 kbit/s link, far below any
# machine's, far above a trickle that holds a worker for hours.
SEND_MIN_RATE = 32 * 1024  # bytes per second
SEND_SLICE = 8 << 20  # bytes sent between two looks at the rate
RANGE = re.compile(r"bytes=(\d{0,18})-(\d{0,18})")
RANGE_FORM = re.compile(r"bytes=\d*-\d*")


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


class Answers(BaseHTTPRequestHandler):
    """Answers of bytes; counted() hears of every byte sent."""

    def counted(self, counted_as: str, count: int) -> None:
        pass

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

    def _retry_later(self, seconds: int) -> None:
        self.send_response(HTTPStatus.SERVICE_UNAVAILABLE)
        self.send_header("Retry-After", str(seconds))
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _redirect(self, url: str) -> None:
        self.send_response(HTTPStatus.FOUND)
        self.send_header("Location", url)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _send_json(self, body: bytes) -> None:
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", "application/json")
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
        while sent < count:
            slice_sent = self.connection.sendfile(file, offset + sent,
                                                  min(SEND_SLICE, count - sent))
            # Counted as it goes: the status page charts the server's rate.
            self.counted(counted_as, slice_sent)
            if not slice_sent:
                raise EOFError(f"{file.name} ends before its byte {offset + count}")
            sent += slice_sent
            if time.monotonic() - started > IDLE_TIMEOUT + sent / SEND_MIN_RATE:
                raise TimeoutError(f"read slower than {SEND_MIN_RATE} bytes/s")
