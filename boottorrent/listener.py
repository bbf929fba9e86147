"""One HTTP listener of the seeder: its socket, its intake (intake.py:
requests read within a deadline, capped per source address) and a fixed
pool of workers that answer whole requests. The HTTP side for the machines
(web.py) is one; the status page on an address of its own (page.py) is
another.
"""

from __future__ import annotations

import io
import queue
import socket
import sys
import threading
from collections.abc import Callable

from boottorrent.answers import IDLE_TIMEOUT, Answers, SocketWriter
from boottorrent.intake import Intake, Request
from boottorrent.pivotal.console import shown

LISTEN_BACKLOG = 4096  # the kernel caps it at net.core.somaxconn (4096 by default)


class Served(Answers):
    """One whole request (intake.Request: read by the intake), answered."""

    request: Request
    server: "Listener"
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


class Listener:
    """handler answers the requests of address with workers threads;
    body_max: the longest request body the intake reads."""

    def __init__(self, address: tuple[str, int], handler: type[Served], workers: int,
                 body_max: int, log_request_line: Callable[[str], None],
                 log_bad_request: Callable[[str], None]):
        self.handler = handler
        self.workers = workers
        self.log_request_line = log_request_line
        self.log_bad_request = log_bad_request
        family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.socket = socket.create_server(address, family=family, backlog=LISTEN_BACKLOG)
        self.server_port = self.socket.getsockname()[1]
        # Whole requests waiting for a worker (the intake caps them).
        self._requests: queue.SimpleQueue[Request] = queue.SimpleQueue()
        self.intake = Intake(self.socket, self._requests.put, body_max, log_bad_request)

    def busy(self) -> bool:
        return not self._requests.empty()

    def _work(self) -> None:
        while True:
            request = self._requests.get()
            keep = False
            try:
                keep = not self.handler(request, (request.connection.address,),
                                        self).close_connection
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

    def start(self) -> None:
        name = self.handler.__name__.lower()
        for number in range(self.workers):
            threading.Thread(target=self._work, name=f"{name}-{number}", daemon=True).start()
        threading.Thread(target=self.intake.run, name=f"{name}-intake", daemon=True).start()

    def server_close(self) -> None:
        self.socket.close()
