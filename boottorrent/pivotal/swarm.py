"""The pivotal's download: one torrent from the server and the other
machines, then seeding it while others still need it, with an account of
who sent what."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import libtorrent as lt

from boottorrent.pivotal import ClientError, lan
from boottorrent.pivotal.console import human_bytes, say
from boottorrent.pivotal.counter import SourceCounter
from boottorrent.pivotal.gate import ServerGate
from boottorrent.pivotal.relay import Relay
from boottorrent.pivotal.relayserver import RelayServer
from boottorrent.pivotal.report import Reporter
from boottorrent.pivotal.share import PivotalShare
from boottorrent.pivotal.wire import ImageSpec, PivotalConfig, Report


def choose_image(config: PivotalConfig, params: dict[str, str], mac: str) -> ImageSpec:
    name = params.get("boottorrent.image") or config.mac_images.get(mac) \
        or config.default_image
    if not name:
        raise ClientError("no image registered on the server")
    if name not in config.images:
        raise ClientError(f"image {name!r} is not in this pivotal's configuration")
    return config.images[name]


# Seconds libtorrent may take to seed the files handed over (Swarm._hand_over)
# before the client's loop, every half second, checks again.
HAND_OVER_MAX = 2.0


class Swarm:
    """One torrent download, then seeding, with accounting of who sent what."""

    def __init__(self, config: PivotalConfig, image: ImageSpec, save_path: Path, listen: str,
                 report: Report, server: Reporter | None = None,
                 share_folder: Path | None = None):
        """server: the reporter, whose answers from the server say how many
        machines are on their way to the swarm and how many wait for the
        pivotal's files (None: nobody says). share_folder: where the
        pivotal's own files go to be shared (share.py) once machines wait
        for them (nobody else needs them); None: not shared."""
        self.server = config.server
        self.settings = config.swarm
        self.image = image
        self.report = report
        self.session = lan.session(listen, self.settings.upload_slots, seed=False)
        self.sources = SourceCounter(config.server)
        self.last_error = ""
        # The web seeds are the fallback only: from the start they would
        # make every client pull from the server's HTTP side.
        params, self.web_seeds = lan.join_params(image.torrent, save_path,
                                                 (config.server, config.seeder_port))
        self.gate = ServerGate(self.session, (config.server, config.seeder_port))
        if self.web_seeds:  # the server offers the chain (relay.py)
            Relay.hold_back(params)
        self.handle = self.session.add_torrent(params)
        self.save_path = save_path
        # What the files must be before they are seeded and booted.
        self.expected = {save_path / image.name / name: digest
                         for name, digest in image.sha256.items()}
        self.digests: dict[Path, str] = {}  # the files' SHA-256, once the chain settled
        self.uploaded_before = 0  # by the torrent before it was added again as a seed
        self.last_announce = time.monotonic()
        report.size = params.ti.total_size()
        # The chain (relay.py), where the server offers it (it has web seeds).
        self.relays = RelayServer(listen.rpartition(":")[0])
        self.relay = Relay(self.handle, params.ti, config.http_url, config.token, save_path,
                           self.relays) if self.web_seeds else None
        self.server_answer = server
        self.config = config
        self.share_folder = share_folder if config.pivotal_torrent else None
        self.share: PivotalShare | None = None

    def coming(self) -> int | None:
        """The machines on their way to this swarm, and, while this machine
        serves the pivotal's files, those waiting for them (None: the
        server does not say)."""
        answer = self.server_answer
        if answer is None or answer.coming is None:
            return None
        return answer.coming + ((answer.waiting or 0) if self.share else 0)

    def _tick(self, alerts: list[lt.alert]) -> None:
        """Each turn of the loop: the pivotal's share, the sources' count,
        the server's gate, and what libtorrent said."""
        self._share_pivotal()
        peer_info = self._count_sources()
        if self.relay:
            self.relay.use_seeds(peer_info, self.server)
        relays = [r for r in (self.relay, self.share and self.share.relay) if r]
        self.gate.update([self.handle] + ([self.share.handle] if self.share else []),
                         any(not r.done for r in relays), sum(r.position for r in relays))
        self._say_alerts(alerts)

    def _share_pivotal(self) -> None:
        """Serve the pivotal's shared parts once the server says machines wait for them."""
        if self.share:
            self.share.poll()
        elif self.share_folder and self.server_answer and self.server_answer.waiting:
            self.share = PivotalShare(self.session, self.config, self.share_folder, self.report,
                                      self.relays)

    def _count_sources(self) -> list[lt.peer_info]:
        """The report's bytes from the server and from peers (the chain's
        included); the connections' peer_info, as read for that."""
        # The torrent's total first, then the connections: see SourceCounter.
        received = self.handle.status().total_payload_download
        peer_info = self.handle.get_peer_info()
        peers = [(p.ip, p.local_endpoint, p.total_download) for p in peer_info]
        from_server, from_peers = self.sources.update(received, peers)
        from_server += self.relay.from_server if self.relay else 0
        from_peers += self.relay.from_peers if self.relay else 0
        # The image's bytes by where they came from: what arrived again for
        # a piece already here counts once. libtorrent downloads the chain's
        # last piece again when it takes the files over (relay.py: so that
        # the tracker hears "completed"), and in its end game asks two peers
        # for the same block.
        self.report.from_server = min(from_server, self.image.size)
        self.report.from_peers = min(from_peers, self.image.size - self.report.from_server)
        return peer_info

    def _say_alerts(self, alerts: list[lt.alert]) -> None:
        for alert in alerts:
            if isinstance(alert, (lt.tracker_error_alert, lt.file_error_alert,
                                  lt.url_seed_alert)):
                if alert.message() != self.last_error:
                    self.last_error = alert.message()
                    say(self.last_error)
            elif isinstance(alert, lt.hash_failed_alert):
                self.report.hashfails += 1

    def _announce_when_due(self) -> None:
        # opentracker's interval is 30 minutes; a boot swarm needs seconds.
        if time.monotonic() - self.last_announce >= self.settings.announce_interval:
            self.handle.force_reannounce(0, -1, lt.reannounce_flags_t.ignore_min_interval)
            self.last_announce = time.monotonic()

    def _update_report(self) -> lt.torrent_status:
        status = self.handle.status(lt.status_flags_t.query_pieces)
        # Of the whole image: libtorrent counts only BitTorrent's pieces
        # until the chain settled (relay.py).
        chain = self.relay.done_bytes() if self.relay and not self.relay.verified else 0
        self.report.progress = (status.total_done + chain) / max(self.report.size, 1)
        self.report.peers = status.num_peers
        self.report.download_rate = status.download_payload_rate
        self.report.upload_rate = status.upload_payload_rate
        self.report.uploaded = (self.uploaded_before + status.all_time_upload
                                + (self.relay.sent if self.relay else 0))
        return status

    def _whole(self, status: lt.torrent_status) -> bool:
        """The image is in the files, and checked: by libtorrent, piece by
        piece, or, for what the chain brought, against the SHA-256 the
        server gave, after which libtorrent takes the files over."""
        if self.relay and not self.relay.settled and self.relay.covers(status.pieces):
            self.digests = self.relay.settle(self.expected)
            if self.digests:
                return self._hand_over()
        return status.is_seeding

    def _hand_over(self) -> bool:
        """Give libtorrent the checked files: the torrent added again with
        every piece held but the last, which it then gets as a download of
        its own (add_piece: it hashes and writes that one). So the torrent
        completes as a download does, and the tracker hears "completed" and
        counts the machine (libtorrent never says so of a torrent added in
        seed mode). Whether it seeds now."""
        params, _ = lan.join_params(self.image.torrent, self.save_path,
                                    (self.config.server, self.config.seeder_port))
        last = params.ti.num_pieces() - 1
        params.have_pieces = [True] * last + [False]
        self.uploaded_before += self.handle.status().all_time_upload
        self._close_written_files()
        self.session.remove_torrent(self.handle)
        self.handle = self.session.add_torrent(params)
        self.relay.handle = self.handle
        data = self.relay.read_piece(last)
        deadline = time.monotonic() + HAND_OVER_MAX
        # libtorrent drops a piece added before it has read the torrent's
        # state: add it again until it is held (its hash and write take
        # milliseconds).
        while time.monotonic() < deadline and not self.handle.status().is_seeding:
            if not self.handle.have_piece(last):
                self.handle.add_piece(last, data, 0)
            time.sleep(0.01)
        return self.handle.status().is_seeding

    def download(self) -> None:
        self.report.phase = "downloading"
        last_progress, stalled_since = -1, time.monotonic()
        last_said = 0.0
        while True:
            # The chain's end is a moment to check at once (Relay.arrived).
            wake = self.relay.arrived if self.relay and not self.relay.arrived.is_set() else None
            self._tick(lan.alerts_after(self.session, 0.5, wake))
            status = self._update_report()
            if self._whole(status):
                break
            if status.state == lt.torrent_status.downloading and status.errc.value():
                raise ClientError(f"download failed: {status.errc.message()}")
            # The chain's bytes count as progress too, which libtorrent does not see.
            progress = status.total_done + (self.relay.position if self.relay else 0)
            if progress != last_progress:
                last_progress, stalled_since = progress, time.monotonic()
            elif (self.web_seeds and time.monotonic() - stalled_since
                  > self.settings.fallback_after):
                say(f"no progress for {self.settings.fallback_after} s: "
                    "falling back to HTTP from the server")
                for url in self.web_seeds:
                    self.handle.add_url_seed(url)
                self.web_seeds = []
                self.gate.hold_open()  # for the web seed, on the server's address
            elif time.monotonic() - stalled_since > 2 * self.settings.fallback_after:
                # Neither the swarm nor the server's HTTP side gave a byte
                # for as long again: this attempt is over.
                raise ClientError(self._stalled(status, 2 * self.settings.fallback_after))
            self._announce_when_due()
            if time.monotonic() - last_said >= 2:
                last_said = time.monotonic()
                say(f"{self.image.name}: {self.report.progress:.0%} from {status.num_peers} peers "
                    f"({human_bytes(self.report.from_server)} from the server, "
                    f"{human_bytes(self.report.from_peers)} from peers; tracker: "
                    f"{max(status.num_complete, 0)} seeds, "
                    f"{max(status.num_incomplete, 0)} downloading)")
        self._close_written_files()
        self.report.downloaded_at = time.time()
        say(f"{self.image.name}: downloaded, {human_bytes(self.report.from_server)} from the "
            f"server, {human_bytes(self.report.from_peers)} from peers")

    def _close_written_files(self) -> None:
        """Have libtorrent close the files it wrote. It does so by itself
        when a download completes, but with the chain's pieces wanted by
        nobody (relay.py) the torrent counts as complete from the start, and
        an exec image's program cannot run while a file handle writes it
        ("Text file busy")."""
        self.handle.flush_cache()
        # Asynchronous; files a peer's request opens again are opened to read
        # (the binding cannot show how a file is open: wait for none, 2 s at most).
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline and self.handle.file_status():
            time.sleep(0.05)

    def _stalled(self, status: lt.torrent_status, seconds: int) -> str:
        last = f" (last error: {self.last_error})" if self.last_error else ""
        if status.num_peers == 0:
            return (f"no progress for {seconds} s and no peer: the server "
                    f"{self.server} does not answer{last}; is it running, and is "
                    "this machine on its network?")
        return (f"no progress for {seconds} s from {status.num_peers} peers nor from the "
                f"server's HTTP side{last}")

    def seed_while(self, running: Callable[[], bool]) -> None:
        """Seed for as long as running() says the image runs here (a qemu
        or exec image), however long that is."""
        self.report.phase = "running"
        while running():
            self._tick(lan.alerts_after(self.session, 0.5))
            self._update_report()
            self._announce_when_due()

    def seed(self, phase: str = "seeding") -> None:
        """Seed while machines are on their way to the swarm (the server's
        count, when it gives one), else until no peer is
        incomplete for seed_idle_time; seed_time_max at most. phase: what
        the reports say meanwhile.

        Incomplete peers that the tracker still lists but that never connect
        (a machine that died mid-download stays listed for the tracker's
        peer timeout, half an hour) hold us for two more announce intervals
        only: they would otherwise keep every client from booting until
        seed_time_max.
        """
        self.report.phase = phase
        started = time.monotonic()
        idle_since: float | None = None
        said_coming = None
        self.handle.force_reannounce(0, -1, lt.reannounce_flags_t.ignore_min_interval)
        self.last_announce = time.monotonic()
        while time.monotonic() - started < self.settings.seed_time_max:
            self._tick(lan.alerts_after(self.session, 0.5))
            status = self._update_report()
            on_their_way = self.coming()
            if on_their_way != said_coming and on_their_way is not None:
                said_coming = on_their_way
                machines = "1 machine" if on_their_way == 1 else f"{on_their_way} machines"
                say(f"{self.image.name}: seeding; the server counts {machines} on their way"
                    + (", waiting" if on_their_way else ""))
            # num_incomplete is what the tracker said at the last announce,
            # -1 while it does not answer: then no new peer can find us
            # either, and only the peers already connected count.
            # (peer_info.seed is the flag's value, always true: test the flags.)
            if on_their_way or self.relays.streaming:
                idle_since = None
            elif all(p.flags & lt.peer_info.seed for p in self.handle.get_peer_info()):
                idle_since = idle_since or time.monotonic()
                wait = self.settings.seed_idle_time
                if status.num_incomplete > 0:
                    wait += 2 * self.settings.announce_interval
                if time.monotonic() - idle_since >= wait:
                    break
            else:
                idle_since = None
            self._announce_when_due()
        say(f"{self.image.name}: seeded {human_bytes(self.report.uploaded)} to peers")

    def leave(self) -> None:
        """Tell the tracker we are gone before the kernel is replaced."""
        if self.share:
            self.share.stop()
        if self.relay:
            self.relay.stop()
        self.relays.stop()
        self.handle.pause()  # which announces "stopped"
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline:
            alerts = lan.alerts_after(self.session, 0.1)
            if any(isinstance(a, (lt.tracker_reply_alert, lt.tracker_error_alert))
                   for a in alerts):
                break
        self.session.pause()
