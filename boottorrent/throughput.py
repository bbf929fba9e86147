"""The boot's throughput over time, for the status page's chart: what the
server sent against what the machines got from each other, so that the
moment the peers take over shows.

The seeder samples two running totals about once a second; the rates
between samples go out in /status. The samples of the last WINDOW
seconds are kept: a boot storm of a few hundred machines is over well
within it.
"""

from __future__ import annotations

from collections import deque

SAMPLE_EVERY = 1.0  # seconds
WINDOW = 1800  # seconds of samples kept


class Throughput:
    def __init__(self) -> None:
        # (time, bytes the server sent, bytes machines got from peers), both
        # summed since the seeder started.
        self._samples: deque[tuple[float, int, int]] = deque(
            maxlen=int(WINDOW / SAMPLE_EVERY) + 1)

    def sample(self, now: float, server: int, peers: int) -> None:
        if self._samples and now - self._samples[-1][0] < SAMPLE_EVERY:
            return
        self._samples.append((now, server, peers))

    def rates(self) -> dict[str, list]:
        """Per interval between two samples: its end (time), and the server's
        and the peers' bytes per second in it; a total that went down (a
        machine that started again) counts as none."""
        chart: dict[str, list] = {"time": [], "server": [], "peers": []}
        samples = list(self._samples)
        for (before, server_before, peers_before), (now, server, peers) in zip(samples,
                                                                               samples[1:]):
            seconds = now - before
            chart["time"].append(round(now, 1))
            chart["server"].append(round(max(server - server_before, 0) / seconds))
            chart["peers"].append(round(max(peers - peers_before, 0) / seconds))
        return chart
