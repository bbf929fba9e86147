"""The pivotal's own files, shared: a pivotal that hears from the server
that machines wait for them fetches them from the swarm (a second torrent
in its libtorrent session, through the chain and from the other machines)
and, once it holds all of them, serves them over
HTTP with busybox httpd. The server then sends the iPXE of machines that
boot later here rather than serving the pivotal itself (web.py)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import libtorrent as lt

from boottorrent.pivotal import lan
from boottorrent.pivotal.console import say
from boottorrent.pivotal.relay import Relay
from boottorrent.pivotal.relayserver import RelayServer
from boottorrent.pivotal.wire import PivotalConfig, Report


class PivotalShare:
    def __init__(self, session: lt.session, config: PivotalConfig, folder: Path,
                 report: Report, relays: RelayServer):
        # Through the chain (relay.py) and from the swarm, never from the
        # server's web seed as such: the server's HTTP side is what this spares.
        params, web_seeds = lan.join_params(config.pivotal_torrent, folder,
                                            (config.server, config.seeder_port))
        if web_seeds:
            Relay.hold_back(params)
        self.handle = session.add_torrent(params)
        self.infohash = str(params.ti.info_hashes().v1)
        self.relay = Relay(self.handle, params.ti, config.http_url, config.token, folder,
                           relays) if web_seeds else None
        self.folder = folder
        self.port = config.http_port
        self.report = report
        self.httpd: subprocess.Popen | None = None
        self.failed = False

    def poll(self) -> None:
        """Serve once every piece is here; stop saying so if httpd died."""
        if self.failed:
            return
        if self.httpd is None:
            status = self.handle.status(lt.status_flags_t.query_pieces)
            if self.relay and not self.relay.settled and self.relay.covers(status.pieces):
                self.relay.settle({})  # no digests of its own: libtorrent checks the pieces
            elif status.is_seeding:
                self.httpd = subprocess.Popen(
                    ["busybox", "httpd", "-f", "-p", str(self.port), "-h", str(self.folder)],
                    stdin=subprocess.DEVNULL)
                self.report.serving = self.infohash
                say(f"serving the pivotal's files on port {self.port} to the machines "
                    "that boot after this one")
        elif self.httpd.poll() is not None:
            self.report.serving = ""
            self.failed = True
            say(f"busybox httpd exited ({self.httpd.returncode}): not serving the "
                "pivotal's files")

    def stop(self) -> None:
        if self.relay:
            self.relay.stop()
        self.report.serving = ""
        if self.httpd and self.httpd.poll() is None:
            self.httpd.terminate()
            self.httpd.wait(5)
