"""The pivotal's modules for one NIC: which small modules part a machine
gets for the NIC it boots from.

iPXE names the boot NIC's bus, vendor and device in ``${netX/busid}``
(with ``:hexraw``, ``011af41000``: type 01 for PCI, then vendor and device,
the same on BIOS and UEFI). The builder (initramfs/kernel.py) writes one
small modules part per PCI network driver and an index of the devices each
binds, by its PCI aliases; the server sends a machine the part of the one
driver that binds its NIC, and the whole modules part when it cannot tell
(another bus, no driver or more than one).
"""

from __future__ import annotations

import json
import re
import threading
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path

INDEX = "index.json"
# iPXE's busid as :hexraw: bus type (01: PCI), vendor and device, 2 bytes each.
BUSID = re.compile(r"01([0-9a-f]{4})([0-9a-f]{4})")
# A PCI modalias's vendor and device fields, hex digits or fnmatch patterns.
PCI_ALIAS = re.compile(r"pci:v([0-9A-F*?\[\]]{1,8})d([0-9A-F*?\[\]]{1,8})sv")
_PATTERN = re.compile(r"[*?\[]")


def pci_ids(alias: str) -> tuple[str, str] | None:
    """(vendor, device) patterns of a module's PCI alias, as in its modalias
    ("00008086", "0000100E"); None for another bus, or an alias that names
    no vendor and no device (a class alone would take every NIC)."""
    match = PCI_ALIAS.match(alias)
    if not match or match.groups() == ("*", "*"):
        return None
    return match.group(1), match.group(2)


def write_index(path: Path, parts: dict[str, str], pci: list[tuple[str, str, str]]) -> None:
    """parts: driver -> its part's file name beside path; pci: (vendor,
    device, driver) of every PCI alias of those drivers."""
    path.write_text(json.dumps({"parts": dict(sorted(parts.items())),
                                "pci": sorted(map(list, pci))}, indent=0) + "\n")


@dataclass
class NicIndex:
    """The index the builder wrote: what part a NIC's busid gets."""

    parts: dict[str, str]
    exact: dict[tuple[str, str], set[str]] = field(default_factory=dict)
    patterns: list[tuple[str, str, str]] = field(default_factory=list)

    @classmethod
    def load(cls, path: Path) -> NicIndex:
        data = json.loads(path.read_text())
        index = cls(dict(data["parts"]))
        for vendor, device, driver in data["pci"]:
            if _PATTERN.search(vendor + device):
                index.patterns.append((vendor, device, driver))
            else:
                index.exact.setdefault((vendor, device), set()).add(driver)
        return index

    def part(self, busid: str) -> str | None:
        """The file name of the part for this busid, or None: the whole
        modules part then."""
        match = BUSID.fullmatch(busid.lower())
        if not match:
            return None
        vendor, device = (f"0000{group.upper()}" for group in match.groups())
        drivers = set(self.exact.get((vendor, device), ()))
        drivers |= {driver for v, d, driver in self.patterns
                    if fnmatchcase(vendor, v) and fnmatchcase(device, d)}
        if len(drivers) != 1:
            return None
        return self.parts.get(drivers.pop())


class ServedIndex:
    """The index of the snapshot being served, read again when that changes
    (each snapshot has its own file: generate.py links it in)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._path: Path | None = None
        self._index: NicIndex | None = None

    def part(self, path: Path | None, busid: str) -> str | None:
        """NicIndex.part of the index at path (None: there is none)."""
        if path is None:
            return None
        with self._lock:
            if path != self._path:
                try:
                    self._index = NicIndex.load(path)
                except (OSError, ValueError, KeyError, TypeError):
                    self._index = None
                self._path = path
            index = self._index
        return index.part(busid) if index else None
