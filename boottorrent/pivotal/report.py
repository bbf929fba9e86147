"""The pivotal's report (wire.Report), POSTed to the server's /report from
a thread of its own. The server's answer says when to report next (later
when many machines report; each machine adds its own jitter, so that a
rack powered on at once does not report in lockstep), how many machines
are on their way to the swarm (Swarm.seed waits for them) and how many
wait for the pivotal's own files (Swarm shares them then)."""

from __future__ import annotations

import random
import threading
import urllib.request

from boottorrent.pivotal.wire import TOKEN_HEADER, Report, ReportAnswer

FIRST_INTERVAL = 1.0  # seconds, until the server says otherwise
MAX_INTERVAL = 60.0


def send_report(url: str, report: Report, token: str) -> ReportAnswer | None:
    """The server's answer, or None when it did not give one. token: this
    machine's (wire.TOKEN_FILE); a report without the right one is refused."""
    request = urllib.request.Request(url, data=report.to_json(),
                                     headers={"Content-Type": "application/json",
                                              TOKEN_HEADER: token})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return ReportAnswer.from_json(response.read(4096))
    except (OSError, ValueError):
        return None  # the server may be busy; the next report will do


class Reporter:
    """Sends the latest report to the server, off the main loop."""

    def __init__(self, url: str, report: Report, token: str):
        self.url = url
        self.report = report
        self.token = token
        self.interval = FIRST_INTERVAL
        # Machines on their way to the swarm, and machines waiting for the
        # pivotal's files, as the last answer said (None: no answer yet, or
        # the server's answer did not say).
        self.coming: int | None = None
        self.waiting: int | None = None
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        while not self.stopped.wait(self.interval * random.uniform(0.8, 1.2)):
            self.send()

    def send(self) -> None:
        answer = send_report(self.url, self.report, self.token)
        if answer is None:
            return
        if answer.interval is not None:
            self.interval = min(max(answer.interval, FIRST_INTERVAL), MAX_INTERVAL)
        self.coming, self.waiting = answer.coming, answer.waiting

    def stop(self) -> None:
        self.stopped.set()
        self.send()
