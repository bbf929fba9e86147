"""A follower's mirror of its primary's images ([follow] primary = URL):
`boottorrent follow`, run by boottorrent-follow.service as the seeder's
user, with no privilege.

A follower is a whole BootTorrent server for its own subnet (its dnsmasq,
tracker, seeder and pivotal, from its own configuration); its registry is
its primary's. Every POLL_SECONDS the mirror asks the primary for the
registry (/follow/registry.json) and, for each image it lacks, the torrent
(/follow/torrents/NAME.torrent), which must have the infohash the registry
names and hold the files it lists. The images' bytes come through the
primary's swarm, without its web seed: from every other follower fetching
or holding the image, and from the primary's seeder only what none of
them has (pivotal/gate.py, the pivotal's own rule for its server), so
that the primary sends about one copy however many follow it. Each file
is checked against the registry's SHA-256.

The mirror registers nothing itself. It writes the registry the follower
should have (STATE/mirror/registry.json: the primary's images it holds,
in the primary's order) whenever that changes; boottorrent-images.path
sees it and reloads the server, whose `sync-images` registers it in one
new snapshot, as root, as for images.d (registration.sync_mirror). An
image the primary changed stays as it was until its new bytes are here.

While the primary cannot be reached nothing changes: the follower keeps
booting its subnet with what it holds, and says so once in its journal.

Images are fetched into STATE/mirror/INFOHASH/ and stay there to seed to
the other followers; the registered copy in images/INFOHASH/ is a hard
link to the same files.
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import time
import urllib.parse
from pathlib import Path

import libtorrent as lt
from systemd import daemon

from boottorrent import torrents
from boottorrent.asking import get
from boottorrent.config import Config
from boottorrent.fsutil import remove_tree, write_atomic
from boottorrent.image import ImageRecord
from boottorrent.imageconf import check_image_name, text_problems
from boottorrent.pivotal import lan, paths
from boottorrent.pivotal.digest import file_sha256
from boottorrent.pivotal.gate import ServerGate
from boottorrent.registry import REGISTRY_FILE, TORRENT_FILE, State, registry_json

log = logging.getLogger("boottorrent.mirror")

POLL_SECONDS = 2  # between asks of the primary: a new image starts within this
REGISTRY_MAX = 4 << 20  # bytes: about 2 KiB an image
TORRENT_MAX = 4 << 20  # bytes: 4096 pieces (torrents.PIECES_MAX) take 80 KiB
INFOHASH = re.compile(r"[0-9a-f]{40}")
FILE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,254}")


class PrimaryError(Exception):
    """What the primary answered cannot be used (one line saying why)."""


def parse_registry(data: bytes) -> dict[str, ImageRecord]:
    """The primary's registry.json, every name and path in it checked."""
    try:
        images = json.loads(data)["images"]
        records = {name: ImageRecord.from_json(dict(record)) for name, record in images.items()}
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        raise PrimaryError(f"{REGISTRY_FILE}: not a registry ({error})") from None
    for name, record in records.items():
        try:
            check_image_name(name)
        except ValueError as error:
            raise PrimaryError(f"{REGISTRY_FILE}: {error}") from None
        if record.name != name or not INFOHASH.fullmatch(record.infohash) or not all(
                FILE_NAME.fullmatch(f.name) and isinstance(f.size, int) for f in record.files) \
                or not record.files:
            raise PrimaryError(f"{REGISTRY_FILE}: image {name!r} has a malformed record")
        # What goes into this server's iPXE script and kernel command lines,
        # checked as add-image checks it on the primary.
        for problem in text_problems(Path(REGISTRY_FILE), record.description, record.cmdline):
            raise PrimaryError(f"{REGISTRY_FILE}: image {name!r}: {problem.key}: "
                               f"{problem.message}")
    return records


def check_torrent(torrent: bytes, record: ImageRecord) -> bytes:
    """The primary's torrent of record, without its web seed (the bytes
    come from the swarm), once it has the registered infohash and files."""
    try:
        info = torrents.load(torrent)
    except ValueError as error:
        raise PrimaryError(f"the torrent of {record.name!r}: {error}") from None
    if str(info.info_hashes().v1) != record.infohash:
        raise PrimaryError(f"the torrent of {record.name!r} has infohash "
                           f"{info.info_hashes().v1}, the registry {record.infohash}")
    storage = info.files()
    found = [(storage.file_path(i), storage.file_size(i)) for i in range(storage.num_files())]
    listed = [(os.path.join(record.name, f.name), f.size) for f in record.files]
    if found != listed:
        raise PrimaryError(f"the torrent of {record.name!r} holds other files than the "
                           "registry lists")
    entry = lt.bdecode(torrent)
    entry.pop(b"url-list", None)
    return lt.bencode(entry)


class Mirror:
    def __init__(self, config: Config, state: State):
        self.config = config
        self.state = state
        self.folder = state.mirror
        self.folder.mkdir(mode=0o755, exist_ok=True)
        # Port 0: the seeder has [seeder] port; peers learn this one from the tracker.
        self.session = lan.session(f"{config.address}:0", config.swarm.upload_slots, seed=False)
        # The primary's seeder sends only what no other follower has: the
        # pivotal's own rule for its server (gate.py).
        self.gate = ServerGate(self.session, (urllib.parse.urlsplit(config.primary).hostname, 0))
        self.fetching: dict[str, tuple[ImageRecord, lt.torrent_handle, bytes]] = {}
        self.checked: set[str] = set()  # infohashes fetched and checked
        self.primary_records: dict[str, ImageRecord] = {}
        self.reachable: bool | None = None
        self.failed: dict[str, str] = {}  # why an image failed, logged once each
        self.last_announce = 0.0
        # The registry last written (publish), as it is after a restart.
        self.published = (state.mirror_registry.read_text()
                          if state.mirror_registry.exists() else "")

    # ------------------------------------------------------------ the primary

    def poll(self) -> None:
        """Ask the primary for its registry, and start fetching what is new."""
        try:
            records = parse_registry(get(f"{self.config.primary}{paths.FOLLOW}/{REGISTRY_FILE}",
                                           REGISTRY_MAX))
        except (OSError, PrimaryError) as error:
            if self.reachable is not False:
                log.warning("the primary %s cannot be reached (%s); this server keeps "
                            "serving the %d images it holds", self.config.primary,
                            getattr(error, "reason", error), len(self.state.registry()))
            self.reachable = False
            return
        if self.reachable is not True:
            log.info("following %s: %d images", self.config.primary, len(records))
        self.reachable = True
        self.primary_records = records
        registered = self.state.registry()
        for record in records.values():
            if record.infohash not in self.fetching and not self._held(record, registered):
                self._start(record)
        wanted = {r.infohash for r in records.values()}
        for infohash in [i for i in self.fetching if i not in wanted]:
            log.info("image %s: gone from the primary", self.fetching[infohash][0].name)
            self._drop(infohash)
        # Copies of images the primary no longer has (fetched before a
        # restart of this service): the registered ones are links of their own.
        for folder in self.folder.iterdir():
            if INFOHASH.fullmatch(folder.name) and folder.name not in wanted | set(self.fetching):
                remove_tree(folder)

    def _held(self, record: ImageRecord, registered: dict[str, ImageRecord]) -> bool:
        """Whether this server has record registered (registered: its registry)."""
        return (registered.get(record.name) == record
                and self.state.content_dir(record.infohash).is_dir())

    def _start(self, record: ImageRecord) -> None:
        url = f"{self.config.primary}{paths.FOLLOW}/torrents/{record.name}.torrent"
        try:
            torrent = get(url, TORRENT_MAX)
            swarm_only = check_torrent(torrent, record)
        except (OSError, PrimaryError) as error:
            self._say_once(record.infohash, f"image {record.name}: {error}")
            return
        params = lan.add_params(swarm_only, self.folder / record.infohash)
        self.fetching[record.infohash] = (record, self.session.add_torrent(params), torrent)
        log.info("image %s: fetching %d bytes through the primary's swarm", record.name,
                 record.size)

    def _drop(self, infohash: str) -> None:
        _, handle, _ = self.fetching.pop(infohash)
        self.session.remove_torrent(handle)
        self.checked.discard(infohash)
        remove_tree(self.folder / infohash)

    # ------------------------------------------------------------ the swarm

    def step(self) -> bool:
        """Re-announce while fetching (the tracker's own interval is 30
        minutes) and check what has arrived; whether an image was checked."""
        checked = False
        lan.alerts_after(self.session, 0)
        busy = [h for r, h, _ in self.fetching.values() if not h.status().is_seeding]
        self.gate.update(busy, False, 0)
        if busy and time.monotonic() - self.last_announce > self.config.swarm.announce_interval:
            for handle in busy:
                handle.force_reannounce(0, -1, lt.reannounce_flags_t.ignore_min_interval)
            self.last_announce = time.monotonic()
        for infohash, (record, handle, _) in list(self.fetching.items()):
            if infohash in self.checked or not handle.status().is_seeding:
                continue
            folder = self.folder / infohash / record.name
            wrong = [f.name for f in record.files if file_sha256(folder / f.name) != f.sha256]
            if wrong:
                log.error("image %s: %s differ from the registry's SHA-256; fetching again",
                          record.name, ", ".join(wrong))
                self._drop(infohash)
                continue
            for file in record.files:
                (folder / file.name).chmod(0o644)  # dnsmasq's and the tracker's users too
            write_atomic(self.folder / infohash / TORRENT_FILE, self.fetching[infohash][2])
            self.checked.add(infohash)
            checked = True
            log.info("image %s: fetched and checked", record.name)
        return checked

    # ------------------------------------------------------------ the registry

    def publish(self) -> bool:
        """Write the registry this follower should have, when it differs
        from the one written last; True if it did. After a poll, or an
        image checked: nothing else changes it."""
        if not self.reachable:
            return False
        registered = self.state.registry()
        wanted = {}
        for name, record in self.primary_records.items():
            if self._held(record, registered) or record.infohash in self.checked:
                wanted[name] = record
            elif name in registered:  # changed there: the old one until the new is here
                wanted[name] = registered[name]
        text = registry_json(wanted)
        if text == self.published:
            return False
        write_atomic(self.state.mirror_registry, text)
        self.published = text
        log.info("images to register: %s", ", ".join(wanted) or "none")
        return True

    def _say_once(self, key: str, message: str) -> None:
        if self.failed.get(key) != message:
            self.failed[key] = message
            log.error("%s", message)

    def status_line(self) -> str:
        fetching = [r.name for i, (r, h, _) in self.fetching.items() if i not in self.checked]
        where = "reachable" if self.reachable else "unreachable, serving what it holds"
        return (f"primary {self.config.primary} {where}; {len(self.state.registry())} images "
                f"registered" + (f", fetching {', '.join(fetching)}" if fetching else ""))


def run(config: Config, state: State) -> int:
    """Follow the primary until SIGTERM."""
    stop: list[bool] = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.append(True))
    mirror = Mirror(config, state)
    daemon.notify("READY=1")
    log.info("following %s", config.primary)
    watchdog = "WATCHDOG_USEC" in os.environ
    next_poll = 0.0
    while not stop:
        polled = time.monotonic() >= next_poll
        if polled:
            mirror.poll()
            next_poll = time.monotonic() + POLL_SECONDS
        if mirror.step() or polled:
            mirror.publish()
        daemon.notify(f"STATUS={mirror.status_line()}" + ("\nWATCHDOG=1" if watchdog else ""))
        lan.alerts_after(mirror.session, 0.5)
    daemon.notify("STOPPING=1")
    return 0
