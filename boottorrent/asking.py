"""Asking another BootTorrent server's HTTP side: a follower its primary
(mirror.py), a primary its followers (followers.py), `boottorrent status`
its own seeder. One GET with a deadline and a size limit: the answer of a
server that misbehaves costs at most that."""

from __future__ import annotations

import urllib.request

TIMEOUT = 10  # seconds one answer may take


class TooLarge(OSError):
    """An answer larger than its limit."""


def get(url: str, limit: int, timeout: float = TIMEOUT) -> bytes:
    """The body of url, at most limit bytes; OSError (urllib's, or
    TooLarge) if it cannot be had."""
    with urllib.request.urlopen(url, timeout=timeout) as answer:
        data = answer.read(limit + 1)
    if len(data) > limit:
        raise TooLarge(f"{url}: more than {limit} bytes")
    return data
