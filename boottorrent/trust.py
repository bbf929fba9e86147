"""Which requests come from a machine this server booted.

Any host on the LAN can send the seeder anything. What the server believes
of a machine (its reports, its place in a chain, that it serves the
pivotal's base, that it is on its way) it believes only of a machine it can
tie to a boot it served: one that fetched the pivotal's config part, which
iPXE loads from the server itself over the machine's own connection. The
server appends to that part a token for the address that fetched it and
the MAC iPXE named (wire.TOKEN_FILE); the pivotal sends it with every
request (wire.TOKEN_HEADER). The token is an HMAC of the address and the
MAC under a key only the server holds (KEY_FILE in the state folder, made
once by `boottorrent generate`, readable by root and the seeder's group
only, since the seeder writes nothing there): nothing to store per
machine, and no table that a flood of forged requests could fill. A token
works from its own address only, so no source weighs more than one
machine.

The MAC in the config part's query is whatever the asker says; a
machine's own files (nodes.py), its secrets, go only to the MAC the
kernel's neighbour table holds for the asking address (neighbour_mac):
the one its packets come from.
"""

from __future__ import annotations

import grp
import hashlib
import hmac
import os
import re
import secrets
import threading
from pathlib import Path

from boottorrent.fsutil import write_atomic
from boottorrent.pivotal import newc
from boottorrent.pivotal.wire import TOKEN_FILE

KEY_FILE = "token.key"
KEY_BYTES = 32
MAC = re.compile(r"[0-9a-f]{2}(?::[0-9a-f]{2}){5}")
TOKEN = re.compile(r"([0-9a-f]{12})-([0-9a-f]{32})")
# Sources whose refused request was logged: each is logged once (while it
# is among the last LOGGED_MAX such sources).
LOGGED_MAX = 4096
# The kernel's IPv4 neighbour table, and its flag of an entry with a MAC.
ARP_TABLE = Path("/proc/net/arp")
ARP_COMPLETE = 0x2


SEEDER_GROUP = "boottorrent"  # the seeder's (debian/boottorrent.postinst)


def make_key(state_root: Path) -> None:
    """Make the server's token key unless it is there."""
    path = state_root / KEY_FILE
    if path.exists():
        return
    write_atomic(path, secrets.token_hex(KEY_BYTES) + "\n", mode=0o640)
    try:
        os.chown(path, -1, grp.getgrnam(SEEDER_GROUP).gr_gid)
    except KeyError:
        pass  # no such group: a seeder run as root (the lab)


def load_key(state_root: Path) -> bytes:
    """The server's token key; OSError or ValueError when it cannot be read."""
    return bytes.fromhex((state_root / KEY_FILE).read_text().strip())


class Trust:
    def __init__(self, key: bytes):
        self._key = key
        self._lock = threading.Lock()
        self._logged: dict[str, None] = {}  # in the order they were logged

    def _digest(self, address: str, mac: str) -> str:
        return hmac.new(self._key, f"{address} {mac}".encode(), hashlib.sha256).hexdigest()[:32]

    def token(self, address: str, mac: str) -> str | None:
        """The token of the machine at address with this MAC (as iPXE writes
        it: lower-case hex with colons), or None for a MAC of another form."""
        if not MAC.fullmatch(mac):
            return None
        return f"{mac.replace(':', '')}-{self._digest(address, mac)}"

    def machine(self, address: str, token: str) -> str | None:
        """The MAC of the machine that a request from address with this
        token comes from, or None: a token of no boot this server served
        to that address."""
        match = TOKEN.fullmatch(token)
        if not match:
            return None
        mac = ":".join(match[1][i:i + 2] for i in range(0, 12, 2))
        return mac if hmac.compare_digest(match[2], self._digest(address, mac)) else None

    def first_refusal(self, address: str) -> bool:
        """Whether a refused request from address is the first lately (to log)."""
        with self._lock:
            if address in self._logged:
                return False
            self._logged[address] = None
            while len(self._logged) > LOGGED_MAX:
                del self._logged[next(iter(self._logged))]
            return True


def token_part(token: str) -> bytes:
    """The part that carries a machine's token to its pivotal (TOKEN_FILE,
    root's alone), with its folders (it comes before the config part)."""
    return newc.archive({TOKEN_FILE: (f"{token}\n".encode(), 0o600)}, block=512)


def neighbour_mac(address: str, table: Path = ARP_TABLE) -> str | None:
    """The MAC the kernel's neighbour table holds for an IPv4 address on a
    link of this host (lower-case, with colons), or None. A host that
    talks TCP with this one from the address has answered its ARP, so this
    is the MAC its packets come from: a MAC it claims in a request's query
    is another's unless it takes that MAC on the wire too."""
    try:
        lines = table.read_text().splitlines()[1:]
    except OSError:
        return None
    for line in lines:
        # IP address, HW type, flags, HW address, mask, device
        fields = line.split()
        if len(fields) >= 4 and fields[0] == address and int(fields[2], 16) & ARP_COMPLETE:
            return fields[3].lower()
    return None
