"""The pivotal's report (wire.Report), POSTed to the server's /report once
a second from a thread of its own."""

from __future__ import annotations

import threading
import urllib.request

from boottorrent.pivotal.wire import Report


def send_report(url: str, report: Report) -> None:
    request = urllib.request.Request(url, data=report.to_json(),
                                     headers={"Content-Type": "application/json"})
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
