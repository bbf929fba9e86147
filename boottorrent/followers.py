"""The primary's view of its followers' machines ([follow] followers = URLs).

Each follower's seeder takes its own machines' reports, tied to the boots
it served (trust.py); the primary asks each follower it lists for its
/status every ASK_EVERY seconds and shows those machines beside its own,
each with the follower it booted from ("server"), in /status, `boottorrent
status` and the status page. The primary asks only the followers its
configuration names, with a deadline and a size limit: no host on the LAN
can add machines to its view. A follower that does not answer keeps its
machines listed until they are older than [seeder] forget_machines_after.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import urllib.parse

from boottorrent.asking import get
from boottorrent.pivotal import paths
from boottorrent.status import STATUS_MAX

log = logging.getLogger("boottorrent.followers")

ASK_EVERY = 2  # seconds


class Followers:
    def __init__(self, urls: tuple[str, ...], forget_after: float):
        self.urls = urls
        self.forget_after = forget_after
        self._lock = threading.Lock()
        self._machines: dict[str, list[dict]] = {url: [] for url in urls}
        self._reachable: dict[str, bool | None] = {url: None for url in urls}

    def start(self) -> None:
        if self.urls:
            threading.Thread(target=self._run, name="followers", daemon=True).start()

    def _run(self) -> None:
        while True:
            for url in self.urls:
                self._ask(url)
            time.sleep(ASK_EVERY)

    def _ask(self, url: str) -> None:
        asked = time.time()
        try:
            status = json.loads(get(f"{url}{paths.STATUS}", STATUS_MAX))
            clients = status["clients"]
            # The follower's clock may differ from this one's: "received" is
            # moved by the difference its own "time" shows.
            skew = asked - float(status["time"])
            server = urllib.parse.urlsplit(url).hostname
            machines = [{**entry, "server": server,
                         "received": float(entry.get("received", 0)) + skew}
                        for entry in clients if isinstance(entry, dict)]
        except (OSError, ValueError, KeyError, TypeError) as error:
            if self._reachable[url] is not False:
                log.warning("follower %s: no status (%s); its machines stay listed for "
                            "%.0f s", url, getattr(error, "reason", error), self.forget_after)
            self._reachable[url] = False
            return
        if self._reachable[url] is not True:
            log.info("follower %s: %d machines", url, len(machines))
        self._reachable[url] = True
        with self._lock:
            self._machines[url] = machines

    def clients(self) -> list[dict]:
        """Every follower's machines heard of lately, as /status lists them."""
        oldest = time.time() - self.forget_after
        with self._lock:
            return [m for machines in self._machines.values() for m in machines
                    if m["received"] >= oldest]

    def summary(self) -> list[dict]:
        with self._lock:
            return [{"url": url, "reachable": bool(self._reachable[url]),
                     "machines": len(self._machines[url])} for url in self.urls]
