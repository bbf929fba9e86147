"""A stream of a torrent's bytes from the machine before this one in the
chain, or from the server (GET /stream/INFOHASH, Range: bytes=N-; served
by relay.RelayServer and the server's web.py), and what TCP may keep in
flight on it."""

from __future__ import annotations

import re
import socket
import time
from http import HTTPStatus

from boottorrent.pivotal.wire import TOKEN_HEADER

CONNECT_TIMEOUT = 1.0  # seconds
# A source that sends nothing for this long is gone (a machine that
# crashed sends no FIN). A source that waits for its own source keeps the
# connection open and silent meanwhile, shorter than a chain repairs itself.
READ_TIMEOUT = 30.0
HEAD_MAX = 16 * 1024  # bytes of a source's answer before its body
CONTENT_RANGE = re.compile(rb"(?im)^content-range:[ \t]*bytes (\d+)-\d+/\d+\r?$")
STATUS_LINE = re.compile(rb"HTTP/1\.[01] (\d{3}) ")


class Source:
    def __init__(self, address: str, infohash: str, offset: int, piece_length: int,
                 token: str = ""):
        """A connection to address ("HOST:PORT") streaming infohash's bytes
        from offset on; start: where the stream starts (offset, or the
        first byte of a later piece: the source lacks those before);
        token: this machine's, for the server's stream ("" for a machine's)."""
        host, port = address.rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT)
        try:
            self.window = Window(self.sock)
            self.sock.settimeout(READ_TIMEOUT)
            own = f"{TOKEN_HEADER}: {token}\r\n" if token else ""
            self.sock.sendall(f"GET /stream/{infohash} HTTP/1.1\r\nHost: {address}\r\n{own}"
                              f"Range: bytes={offset}-\r\nConnection: close\r\n\r\n".encode())
            head = b""
            while b"\r\n\r\n" not in head:
                more = self.sock.recv(HEAD_MAX)
                if not more or len(head) + len(more) > HEAD_MAX:
                    raise OSError("no answer" if not more else "an answer's head too long")
                head += more
            head, _, self.body = head.partition(b"\r\n\r\n")
            status = STATUS_LINE.match(head)
            if status is None or int(status[1]) != HTTPStatus.PARTIAL_CONTENT:
                raise OSError(f"HTTP {status[1].decode() if status else '?'}")
            ranged = CONTENT_RANGE.search(head)
            self.start = int(ranged[1]) if ranged else -1
            if self.start < offset or (self.start > offset and self.start % piece_length):
                raise ValueError(f"a stream from byte {self.start}, asked from {offset}")
        except BaseException:
            self.sock.close()
            raise

    def recv_into(self, buffer: memoryview) -> int:
        """The next bytes into buffer; how many (0: the stream ended)."""
        if self.body:  # what came with the answer's head
            count = min(len(self.body), len(buffer))
            buffer[:count] = self.body[:count]
            self.body = self.body[count:]
            return count
        count = self.sock.recv_into(buffer)
        self.window.received(count)
        return count

    def shutdown(self) -> None:
        """End the stream from another thread: recv_into returns 0."""
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def close(self) -> None:
        self.sock.close()


class Window:
    """What TCP may keep in flight towards this machine: the link's rate
    for WINDOW_TIME, at least WINDOW_MIN. With the kernel's own windows,
    every link of the chain fills its switch port's queue, and each
    machine passes the bytes on that much later: 32 machines at 20 Mbit/s
    took 2-3 s longer (bench/RESULTS.md, "The chain"); a fixed 16 KiB
    held a 10 Gbit/s link to a few hundred MB/s. The rate is the one the
    stream gets, measured as it arrives; with the window below a link's
    rate times its round trip the stream speeds up, and the window with it."""

    WINDOW_MIN = 16 * 1024
    WINDOW_MAX = 4 * 1024 * 1024
    WINDOW_TIME = 0.001  # seconds
    MEASURE_EVERY = 0.01  # seconds

    def __init__(self, sock: socket.socket):
        self.sock = sock
        # A receive buffer of our own size keeps the kernel from growing
        # the window by itself (its autotuning sets the clamp too); the
        # kernel gives at most twice net.core.rmem_max (416 KiB by
        # default), some hundred microseconds at 10 Gbit/s.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.WINDOW_MAX)
        self.clamp = 0
        self._set(self.WINDOW_MIN)
        self.since, self.count = time.monotonic(), 0

    def _set(self, clamp: int) -> None:
        if clamp != self.clamp:
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_WINDOW_CLAMP, clamp)
            self.clamp = clamp

    def received(self, count: int) -> None:
        self.count += count
        elapsed = time.monotonic() - self.since
        if elapsed >= self.MEASURE_EVERY:
            rate = self.count / elapsed
            self._set(min(self.WINDOW_MAX, max(self.WINDOW_MIN, int(rate * self.WINDOW_TIME))))
            self.since, self.count = time.monotonic(), 0
