"""The seeder's HTTP connections until a request is whole: accepted, capped
per source address, and read without a worker.

One thread watches every connection with a selector. A connection gets
REQUEST_TIMEOUT seconds for its whole request head (and a body of up to
body_max bytes, a report): the deadline is for the request, not for each
read, so a client sending a byte every few seconds (slowloris) is cut off
as surely as an idle one. Only a whole request goes to a worker
(Intake.dispatch), so the workers answer and never wait for a client to
speak; a kept-alive connection comes back here after its answer
(Intake.done) and gets a new deadline.

The caps, so that no source address crowds out the others: PER_SOURCE
connections open at once (one more is closed at once), PER_SOURCE_WORKERS
of its requests answered at once (the next wait here, whole), and
CONNECTIONS_MAX in all (the one that has waited longest for its request
is closed to make room: a real client's request arrives within
milliseconds of its connection, an attacker's never).
"""

from __future__ import annotations

import re
import selectors
import socket
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field

REQUEST_TIMEOUT = 10.0  # seconds for a whole request head and body
HEAD_MAX_BYTES = 16384
CONNECTIONS_MAX = 4096
# A machine holds a handful at once: its firmware's (one at a time) or its
# pivotal's report, chain question, stream and libtorrent's web seed.
PER_SOURCE = 16
PER_SOURCE_WORKERS = 4
ACCEPTS_PER_ROUND = 256  # so that a flood of connections does not starve the reads

HEAD_END = re.compile(rb"\r?\n\r?\n")
CONTENT_LENGTH = re.compile(rb"^content-length[ \t]*:[ \t]*([0-9]{1,18})[ \t]*\r?$",
                            re.IGNORECASE | re.MULTILINE)
TOO_LARGE = (b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
             b"Connection: close\r\nContent-Length: 0\r\n\r\n")


@dataclass(eq=False)
class Connection:
    sock: socket.socket
    address: str
    deadline: float = 0.0
    buffer: bytearray = field(default_factory=bytearray)


@dataclass(eq=False)
class Request:
    """A whole request as it arrived: head and body (data), and the
    connection it came on, with what followed it (a pipelined request).
    whole: data holds all the body the head announces (otherwise the
    connection is closed after the answer)."""

    connection: Connection
    data: bytes
    whole: bool


def split_request(buffer: bytes, body_max: int) -> tuple[bytes, bool] | None:
    """The first request in buffer (its head and body) and whether its body
    is all there, or None while its head (or a body of at most body_max
    bytes) is still to come."""
    end = HEAD_END.search(buffer)
    if end is None:
        return None
    length = CONTENT_LENGTH.search(buffer, 0, end.start() + 2)
    body = int(length[1]) if length else 0
    if body > body_max:  # answered without its body (413), and closed
        return bytes(buffer[:end.end()]), False
    if len(buffer) < end.end() + body:
        return None
    return bytes(buffer[:end.end() + body]), True


class Intake:
    def __init__(self, listener: socket.socket, dispatch: Callable[[Request], None],
                 body_max: int, log: Callable[[str], None],
                 clock: Callable[[], float] = time.monotonic):
        self.listener = listener
        self.dispatch = dispatch
        self.body_max = body_max
        self.log = log
        self.clock = clock
        self._selector = selectors.DefaultSelector()
        # Waiting for their request, the longest-waiting first (deadlines grow).
        self._reading: OrderedDict[Connection, None] = OrderedDict()
        self._open: dict[str, int] = {}  # connections per source address
        self._working: dict[str, int] = {}  # requests with a worker, per source
        self._parked: dict[str, deque[Request]] = {}  # whole, waiting for a worker
        self._count = 0  # connections open
        self._returned: deque[tuple[Request, bool]] = deque()
        self._wake_read, self._wake_write = socket.socketpair()

    # ------------------------------------------------------------ workers' side

    def done(self, request: Request, keep: bool) -> None:
        """A worker answered request; keep: its connection stays open for the next."""
        self._returned.append((request, keep and request.whole))
        try:
            self._wake_write.send(b"\0")
        except BlockingIOError:  # the selector has wake-ups queued already
            pass

    # ------------------------------------------------------------ its own thread

    def run(self) -> None:
        self.listener.setblocking(False)
        self._wake_read.setblocking(False)
        self._wake_write.setblocking(False)
        self._selector.register(self.listener, selectors.EVENT_READ, "accept")
        self._selector.register(self._wake_read, selectors.EVENT_READ, "wake")
        while True:
            timeout = 1.0
            if self._reading:
                timeout = min(max(next(iter(self._reading)).deadline - self.clock(), 0), 1.0)
            for key, _ in self._selector.select(timeout):
                if key.data == "accept":
                    self._accept()
                elif key.data == "wake":
                    self._take_back()
                else:
                    self._read(key.data)
            self._expire()

    def _accept(self) -> None:
        for _ in range(ACCEPTS_PER_ROUND):
            try:
                sock, peer = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as error:  # out of file descriptors: the next round
                self.log(f"cannot accept a connection: {error}")
                return
            address = peer[0]
            if self._open.get(address, 0) >= PER_SOURCE:
                sock.close()
                continue
            if self._count >= CONNECTIONS_MAX:
                if not self._reading:  # all of them answered or about to be
                    sock.close()
                    continue
                self._close(next(iter(self._reading)))
            self._open[address] = self._open.get(address, 0) + 1
            self._count += 1
            self._listen_to(Connection(sock, address))

    def _listen_to(self, connection: Connection) -> None:
        connection.sock.setblocking(False)
        connection.deadline = self.clock() + REQUEST_TIMEOUT
        self._reading[connection] = None
        self._selector.register(connection.sock, selectors.EVENT_READ, connection)
        if connection.buffer:  # a pipelined request may be whole already
            self._advance(connection)

    def _read(self, connection: Connection) -> None:
        try:
            data = connection.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._close(connection)
            return
        connection.buffer += data
        self._advance(connection)

    def _advance(self, connection: Connection) -> None:
        found = split_request(connection.buffer, self.body_max)
        if found is None:
            if len(connection.buffer) > HEAD_MAX_BYTES + self.body_max:
                self.log(f"{connection.address} request head of more than "
                         f"{HEAD_MAX_BYTES} bytes: 431")
                try:
                    connection.sock.send(TOO_LARGE)
                except OSError:
                    pass
                self._close(connection)
            return
        data, whole = found
        del connection.buffer[:len(data)]
        self._selector.unregister(connection.sock)
        del self._reading[connection]
        self._hand_over(Request(connection, data, whole))

    def _hand_over(self, request: Request) -> None:
        address = request.connection.address
        if self._working.get(address, 0) >= PER_SOURCE_WORKERS:
            self._parked.setdefault(address, deque()).append(request)
            return
        self._working[address] = self._working.get(address, 0) + 1
        request.connection.sock.setblocking(True)
        self.dispatch(request)

    def _take_back(self) -> None:
        try:
            while self._wake_read.recv(4096):
                pass
        except BlockingIOError:
            pass
        while self._returned:
            request, keep = self._returned.popleft()
            connection = request.connection
            address = connection.address
            self._working[address] -= 1
            if not self._working[address]:
                del self._working[address]
            if keep:
                self._listen_to(connection)
            else:
                self._forget(connection)
            parked = self._parked.get(address)
            if parked:
                next_request = parked.popleft()
                if not parked:
                    del self._parked[address]
                self._hand_over(next_request)

    def _expire(self) -> None:
        now = self.clock()
        while self._reading:
            oldest = next(iter(self._reading))
            if oldest.deadline > now:
                return
            self._close(oldest)

    def _close(self, connection: Connection) -> None:
        """Close a connection that is waiting for its request."""
        self._selector.unregister(connection.sock)
        del self._reading[connection]
        self._forget(connection)

    def _forget(self, connection: Connection) -> None:
        try:
            connection.sock.close()
        except OSError:
            pass
        self._count -= 1
        self._open[connection.address] -= 1
        if not self._open[connection.address]:
            del self._open[connection.address]

