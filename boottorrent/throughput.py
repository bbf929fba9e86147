"""The boot's throughput over time, for the status page's chart: what the
server sent against what the machines got from each other, so that the
moment the peers take over shows.

The seeder samples two running totals about once a second; each sample
makes one point of the chart, the rates since the one before, and /status
sends the points of the last WINDOW seconds: a boot storm of a few
hundred machines is over well within it.
"""

from __future__ import annotations

from collections import deque

SAMPLE_EVERY = 1.0  # seconds
WINDOW = 1800  # seconds of points kept


class Throughput:
    def __init__(self) -> None:
        # The last sample: (time, bytes the server sent, bytes machines got
        # from peers), both summed since the seeder started.
        self._last: tuple[float, int, int] | None = None
        # (time, the server's bytes per second, the peers') since the sample before.
        self._points: deque[tuple[float, int, int]] = deque(maxlen=int(WINDOW / SAMPLE_EVERY))

    def sample(self, now: float, server: int, peers: int) -> None:
        """A total that went down (a machine that started again) counts as none."""
        if self._last:
            before, server_before, peers_before = self._last
            seconds = now - before
            if seconds < SAMPLE_EVERY:
                return
            self._points.append((round(now, 1), round(max(server - server_before, 0) / seconds),
                                 round(max(peers - peers_before, 0) / seconds)))
        self._last = (now, server, peers)

    def rates(self) -> dict[str, list]:
        """The chart's points, as three lists: their times, the server's
        rates and the peers'."""
        times, server, peers = zip(*self._points) if self._points else ((), (), ())
        return {"time": list(times), "server": list(server), "peers": list(peers)}
