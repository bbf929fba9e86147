"""What the pivotal prints on its console, and byte counts for people."""

from __future__ import annotations

import time

STARTED = time.monotonic()


def say(message: str) -> None:
    print(f"boottorrent [{time.monotonic() - STARTED:6.1f}]: {message}", flush=True)


def human_bytes(count: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(count) < 1024 or unit == "GiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    raise AssertionError
