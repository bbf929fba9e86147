"""What the pivotal tells the server: its report, POSTed to /report once a
second from a thread of its own."""

from __future__ import annotations

import json
import socket
import threading
import time
import urllib.request
from dataclasses import asdict, dataclass, field


@dataclass
class Report:
    """What the client tells the server (POST /report) and prints."""

    mac: str = ""
    address: str = ""
    hostname: str = field(default_factory=socket.gethostname)
    image: str = ""
    phase: str = "pivotal"  # pivotal, dhcp, downloading, seeding, kexec, failed
    progress: float = 0.0
    size: int = 0
    peers: int = 0
    from_server: int = 0
    from_peers: int = 0
    uploaded: int = 0
    download_rate: int = 0
    upload_rate: int = 0
    message: str = ""
    started: float = field(default_factory=time.time)
    downloaded_at: float | None = None
    verified_at: float | None = None  # when the SHA-256 check of the files passed
    hashfails: int = 0  # pieces that failed their hash check (a bad peer or link)


def send_report(url: str, report: Report) -> None:
    body = json.dumps(asdict(report)).encode()
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    try:
        urllib.request.urlopen(request, timeout=2).close()
    except OSError:
        pass  # the server may be busy; the next report will do


class Reporter:
    """Sends the latest report to the server once a second, off the main loop."""

    def __init__(self, url: str, report: Report):
        self.url = url
        self.report = report
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        while not self.stopped.wait(1.0):
            self.send()

    def send(self) -> None:
        send_report(self.url, self.report)

    def stop(self) -> None:
        self.stopped.set()
        self.send()
