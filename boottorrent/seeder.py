"""The seeder daemon (`boottorrent seeder`, boottorrent-seeder.service).

One libtorrent session seeds every registered image, plus the HTTP side in
web.py. SIGHUP (`systemctl reload`) re-reads the registry: new images are
added, removed ones dropped, the others keep seeding untouched. Runs as
Type=notify: READY=1 once seeding, a STATUS= line every second, and the
watchdog kept fed.
"""

from __future__ import annotations

import errno
import logging
import os
import resource
import secrets
import signal
import socket
import time
from dataclasses import dataclass
from pathlib import Path

import libtorrent as lt
from systemd import daemon, journal

from boottorrent import torrents, trust
from boottorrent.config import Config
from boottorrent.configfile import ConfigError
from boottorrent.fleet import Fleet
from boottorrent.followers import Followers
from boottorrent.pivotal import lan, paths
from boottorrent.pivotal.console import human_bytes
from boottorrent.image import ImageRecord
from boottorrent.nodes import NodeFiles
from boottorrent.page import Page, PageServer
from boottorrent.registry import State, StateError, read_registry
from boottorrent.throughput import Throughput
from boottorrent.web import WebServer

log = logging.getLogger("boottorrent.seeder")


@dataclass
class Seeded:
    record: ImageRecord
    handle: lt.torrent_handle


class ListenError(Exception):
    """A port of the seeder's cannot be had; the message names it."""


def wait_for_address(config: Config) -> None:
    """Return once the server's address is on this host.

    At boot the cluster NIC may come up after the seeder starts (dnsmasq
    waits for it too, bind-dynamic). Until then the unit stays "activating"
    with a STATUS= line saying why, and the watchdog is fed.
    """
    said = False
    while True:
        with socket.socket() as probe:
            try:
                probe.bind((config.address, 0))
                return
            except OSError as error:
                if error.errno != errno.EADDRNOTAVAIL:
                    raise
        if not said:
            log.warning("waiting for address %s on %s", config.address, config.interface)
            said = True
        daemon.notify(f"STATUS=waiting for address {config.address} on {config.interface}"
                      + ("\nWATCHDOG=1" if "WATCHDOG_USEC" in os.environ else ""))
        time.sleep(1)


class Seeder:
    def __init__(self, config: Config, state: State):
        self.config = config
        self.state = state
        self.session = lan.session(f"{config.address}:{config.seeder_port}",
                                   config.swarm.upload_slots, seed=True)
        # libtorrent takes another port rather than fail; clients would then
        # knock on the configured one in vain.
        if self.session.listen_port() != config.seeder_port:
            raise ListenError(f"cannot listen on {config.address}:{config.seeder_port} "
                              f"({config.path}: [seeder] port): is another program using it?")
        self.seeded: dict[str, Seeded] = {}  # by infohash
        self.pivotal: tuple[str, lt.torrent_handle] | None = None  # its infohash, its torrent
        self.fleet = Fleet(config.policy)
        try:
            key = trust.load_key(state.root)
        except (OSError, ValueError) as error:
            # `boottorrent generate` makes it; until it did, a key of this
            # run's own (the tokens it hands out end with it).
            log.warning("no token key (%s): `boottorrent generate` makes one", error)
            key = secrets.token_bytes(trust.KEY_BYTES)
        page = Page() if config.page else None
        try:
            self.web = WebServer((config.address, config.http_port), state.root,
                                 self.status, lambda line: log.debug("http: %s", line),
                                 lambda line: log.warning("http: %s", line),
                                 self.fleet, trust.Trust(key),
                                 None if config.page_address else page)
        except OSError as error:
            raise ListenError(f"cannot listen on {config.address}:{config.http_port} "
                              f"({config.path}: [seeder] http_port): {error.strerror}") from None
        self.page: PageServer | None = None
        if page and config.page_address:
            try:
                self.page = PageServer(config.page_address, page, self.status,
                                       lambda line: log.debug("page: %s", line),
                                       lambda line: log.warning("page: %s", line))
            except OSError as error:
                raise ListenError(f"cannot listen on {config.page_address[0]}:"
                                  f"{config.page_address[1]} ({config.path}: [seeder] "
                                  f"page_address): {error.strerror}") from None
        self.throughput = Throughput()
        # The machines of the servers that follow this one (followers.py).
        self.followers = Followers(config.followers, config.policy.forget_machines_after)
        self._status: dict = {"images": [], "peers": []}
        self.reload_requested = False
        self.stop_requested = False

    # ------------------------------------------------------------ torrents

    def sync(self) -> None:
        """Seed exactly the images of the current snapshot (if it cannot be
        read, go on seeding what is seeded, and say why)."""
        snapshot = self.state.current.resolve()
        try:
            wanted = {r.infohash: r for r in read_registry(snapshot).values()}
        except StateError as error:
            log.error("%s (%s); still seeding the images as they were", error,
                      self.state.current)
            return
        for infohash in list(self.seeded):
            if infohash not in wanted:
                seeded = self.seeded.pop(infohash)
                self.session.remove_torrent(seeded.handle)
                self.web.withdraw(infohash)
                log.info("stopped seeding %s", seeded.record.name,
                         extra={"IMAGE": seeded.record.name, "INFOHASH": infohash})
        for infohash, record in wanted.items():
            torrent = (snapshot / "torrents" / f"{record.name}.torrent").read_bytes()
            if infohash in self.seeded:
                self._update_trackers(self.seeded[infohash].handle, torrent)
                self.seeded[infohash].record = record
            else:
                self.seeded[infohash] = Seeded(record, self._add(
                    torrent, self.state.content_dir(record.infohash)))
                log.info("seeding %s (%s)", record.name, human_bytes(record.size),
                         extra={"IMAGE": record.name, "INFOHASH": infohash})
        self._sync_pivotal(snapshot)
        try:
            self.web.node_files = NodeFiles(snapshot, self.state.root)
        except (OSError, ValueError, KeyError, ConfigError) as error:
            log.error("the machines' own files: %s; machines get none until this is mended",
                      error)
            self.web.node_files = None

    def _sync_pivotal(self, snapshot: Path) -> None:
        """Seed the pivotal's shared files, for the pivotals to share them.

        From current/boot, not from the snapshot it names: the next
        snapshot holds the same files (links to the same cache) as long as
        the infohash stays the same.
        """
        path = snapshot / "boot" / paths.TORRENT
        torrent = path.read_bytes() if path.exists() else None
        infohash = torrents.info_hash(torrent) if torrent else ""
        if self.pivotal and self.pivotal[0] != infohash:
            self.session.remove_torrent(self.pivotal[1])
            self.web.withdraw(self.pivotal[0])
            self.pivotal = None
        if torrent and not self.pivotal:
            self.pivotal = (infohash, self._add(torrent, self.state.current / "boot"))
            log.info("seeding the pivotal's files (%s)", infohash, extra={"INFOHASH": infohash})
        self.fleet.pivotal_infohash = infohash

    def _pause_pivotal_while_served(self) -> None:
        """While a machine serves the pivotal's files, the machines that
        fetch them to serve them too take them from it, not from us: the
        server sends them once (the pivotal is as large as an image)."""
        if not self.pivotal:
            return
        infohash, handle = self.pivotal
        served = bool(self.fleet.serving(infohash))
        paused = bool(handle.flags() & lt.torrent_flags.paused)
        if served and not paused:
            handle.pause()
            log.info("a machine serves the pivotal's files: the seeder stops seeding them")
        elif paused and not served:
            handle.resume()
            log.info("no machine serves the pivotal's files: the seeder seeds them again")

    def _add(self, torrent: bytes, save_path: Path) -> lt.torrent_handle:
        params = lan.add_params(torrent, save_path)
        # The files were hashed when they were registered (generated) and
        # are never written again: seed at once, and trust every piece
        # without reading it a second time.
        params.flags |= lt.torrent_flags.seed_mode
        params.verified_pieces = [True] * params.ti.num_pieces()
        # The first machine of the chain streams the files over HTTP (fleet/chain.py).
        files = params.ti.files()
        self.web.offer(str(params.ti.info_hashes().v1),
                       [(save_path / files.file_path(i), files.file_size(i))
                        for i in range(files.num_files())])
        return self.session.add_torrent(params)

    @staticmethod
    def _update_trackers(handle: lt.torrent_handle, torrent: bytes) -> None:
        urls = [t.url for t in torrents.load(torrent).trackers()]
        if [t["url"] for t in handle.trackers()] != urls:
            handle.replace_trackers([{"url": url, "tier": 0} for url in urls])

    # ------------------------------------------------------------ status

    def status(self) -> dict:
        followers = {"followers": self.followers.summary()} if self.followers.urls else {}
        return {**self._status, "clients": self.fleet.all() + self.followers.clients(),
                "throughput": self.throughput.rates(), **followers}

    def _collect_status(self) -> None:
        images, peers = [], []
        for infohash, seeded in self.seeded.items():
            status = seeded.handle.status()
            images.append({
                "name": seeded.record.name, "infohash": infohash, "size": seeded.record.size,
                "peers": status.num_peers, "seeds": max(status.num_complete, 0),
                "leechers": max(status.num_incomplete, 0),
                "upload_rate": status.upload_payload_rate,
                "uploaded": status.all_time_upload,
                "http_sent": (self.web.sent_under(f"{paths.IMAGES}/{infohash}/")
                              + self.web.sent_under(f"{paths.STREAM}/{infohash}")),
                "state": str(status.state),
            })
            for peer in seeded.handle.get_peer_info():
                peers.append({"address": peer.ip[0], "port": peer.ip[1],
                              "image": seeded.record.name, "progress": peer.progress,
                              "sent": peer.total_upload, "upload_rate": peer.up_speed})
        pivotal = {"infohash": "", "uploaded": 0}
        if self.pivotal:
            pivotal = {"infohash": self.pivotal[0],
                       "uploaded": self.pivotal[1].status().all_time_upload}
        parts = f"{paths.BOOT}/pivotal/"
        pivotal.update(http_sent=self.web.sent_under(parts)
                       + (self.web.sent_under(f"{paths.STREAM}/{self.pivotal[0]}")
                          if self.pivotal else 0),
                       # each part's bytes over HTTP, by its path under /boot/pivotal/
                       http_sent_by_part=self.web.sent_by_part(parts),
                       redirects=self.fleet.redirects_given())
        now = time.time()
        # Every byte the seeder sent: over HTTP, and over BitTorrent.
        self.throughput.sample(now, self.web.sent_under("") + pivotal["uploaded"]
                               + sum(image["uploaded"] for image in images),
                               self.fleet.from_peers())
        self._status = {"images": images, "peers": peers, "pivotal": pivotal, "time": now}

    def _status_line(self) -> str:
        images = self._status["images"]
        rate = sum(i["upload_rate"] for i in images)
        sent = ", ".join(f"{i['name']} {human_bytes(i['uploaded'])}" for i in images)
        return (f"{len(images)} images, {len(self._status['peers'])} peers, "
                f"up {human_bytes(rate)}/s; sent: {sent or 'nothing yet'}")

    # ------------------------------------------------------------ main loop

    def _handle_alerts(self, alerts: list[lt.alert]) -> None:
        for alert in alerts:
            if isinstance(alert, (lt.listen_failed_alert, lt.torrent_error_alert,
                                  lt.file_error_alert)):
                log.error("%s", alert.message())
            elif isinstance(alert, lt.tracker_error_alert):
                log.warning("%s", alert.message())

    def run(self) -> None:
        signal.signal(signal.SIGHUP, lambda *_: setattr(self, "reload_requested", True))
        for stop in (signal.SIGTERM, signal.SIGINT):
            signal.signal(stop, lambda *_: setattr(self, "stop_requested", True))
        self.sync()
        self.web.start()
        if self.page:
            self.page.start()
        self.followers.start()
        self._collect_status()
        daemon.notify(f"READY=1\nSTATUS={self._status_line()}")
        log.info("seeder ready on %s:%d, HTTP on port %d; %s", self.config.address,
                 self.config.seeder_port, self.config.http_port,
                 f"status page at {self.config.page_url}" if self.config.page_url
                 else "no status page ([seeder] page = no)")
        watchdog = "WATCHDOG_USEC" in os.environ
        while not self.stop_requested:
            if self.reload_requested:
                self.reload_requested = False
                daemon.notify("RELOADING=1")
                self.sync()
                daemon.notify("READY=1")
            self._handle_alerts(lan.alerts_after(self.session, 1))
            self._pause_pivotal_while_served()
            self._collect_status()
            daemon.notify(f"STATUS={self._status_line()}" + ("\nWATCHDOG=1" if watchdog else ""))
        daemon.notify("STOPPING=1")
        # Not web.shutdown(): that waits for a worker to take the next
        # waiting connection; the threads end with the process.
        self.web.server_close()
        if self.page:
            self.page.server_close()
        log.info("seeder stopped")


def setup_logging(identifier: str = "boottorrent-seeder") -> None:
    if os.environ.get("JOURNAL_STREAM"):
        handler: logging.Handler = journal.JournalHandler(SYSLOG_IDENTIFIER=identifier)
    else:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    logging.basicConfig(level=logging.INFO, handlers=[handler])


def run(config: Config, state: State) -> int:
    setup_logging()
    # A storm holds thousands of connections at once (intake.CONNECTIONS_MAX),
    # beside libtorrent's; systemd leaves the soft limit at 1024 for the
    # sake of select(), which nothing here uses.
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    wait_for_address(config)
    try:
        seeder = Seeder(config, state)
    except ListenError as error:
        log.error("%s", error)
        return 1
    seeder.run()
    return 0
