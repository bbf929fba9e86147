"""What the pivotal prints on its console, and byte counts for people."""

from __future__ import annotations

import re
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


# What a terminal would act on rather than show: C0 and C1 controls (ESC
# sequences that clear the screen or set the window title, newlines that
# fake lines of a table), and Unicode's line separators and bidirectional
# overrides.
CONTROLS = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u200e\u200f\u202a-\u202e"
                      "\u2066-\u2069]")


def shown(text: str) -> str:
    """text from a machine or a request, safe to print: each control
    character as an escape (ESC as \\x1b, a newline as \\x0a)."""
    return CONTROLS.sub(lambda m: f"\\x{ord(m[0]):02x}" if ord(m[0]) < 256
                        else f"\\u{ord(m[0]):04x}", text)
