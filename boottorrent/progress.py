"""Progress of long work: a bar on a terminal, a plain line now and then
otherwise (journal, CI logs, pipes)."""

from __future__ import annotations

import sys
import time
from typing import TextIO

from boottorrent.pivotal.console import human_bytes

PLAIN_LINE_EVERY = 5.0  # seconds between lines when not on a terminal


class Progress:
    def __init__(self, label: str, total: int, stream: TextIO | None = None, unit: str = ""):
        """unit: what is counted ("machines"); bytes when none."""
        self.label = label
        self.unit = unit
        self.total = max(total, 1)
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.started = self.last_shown = time.monotonic()
        self.done = 0

    def advance(self, count: int) -> None:
        self.update(self.done + count)

    def update(self, done: int) -> None:
        self.done = done
        now = time.monotonic()
        if self.tty and now - self.last_shown >= 0.1:
            self._show(end="\r")
        elif not self.tty and now - self.last_shown >= PLAIN_LINE_EVERY:
            self._show(end="\n")
        else:
            return
        self.last_shown = now

    def close(self) -> None:
        self.done = self.total
        self._show(end="\n")

    def _show(self, end: str) -> None:
        fraction = min(self.done / self.total, 1.0)
        elapsed = max(time.monotonic() - self.started, 1e-6)
        if self.unit:
            rate = f"{self.done / elapsed:.1f} {self.unit}/s"
            amounts = f"{self.done} of {self.total} {self.unit}"
        else:
            rate = f"{human_bytes(self.done / elapsed)}/s"
            amounts = f"{human_bytes(self.done)} of {human_bytes(self.total)}"
        if self.tty:
            bar = "#" * int(fraction * 30)
            line = f"{self.label} [{bar:<30}] {fraction:4.0%} {amounts} {rate}"
            self.stream.write(f"\x1b[2K{line}{end}")
        else:
            self.stream.write(f"{self.label}: {fraction:.0%} ({amounts}, {rate}){end}")
        self.stream.flush()
