"""When this machine's BitTorrent may ask the server (ServerGate)."""

from __future__ import annotations

import time

import libtorrent as lt


class ServerGate:
    """The server as a BitTorrent peer only for what it cannot get otherwise.

    The image arrives through the chain (relay.py), which the server
    feeds once, and BitTorrent fills the gaps from the other machines. The
    server's address is filtered out of this machine's BitTorrent from the
    start (its connection closes and it is not dialled), so that
    libtorrent does not also ask the server for whatever it lacks. The
    server is let in when a piece this machine misses has been on no
    connected peer for STALL seconds once the chain brings nothing more,
    or when nothing arrived for STALL seconds
    (peers that choke us, or a server without /chain), and then stays in
    for REOPEN_FOR seconds at least; it is filtered out again while the
    peers hold, between them, every piece this machine misses.
    """

    STALL = 3.0
    REOPEN_FOR = 5.0

    def __init__(self, session: lt.session, server: tuple[str, int]):
        """server: its address and BitTorrent port (0: not known)."""
        self.session = session
        self.server = server
        self.shut = False
        self.open_until = 0.0
        self.last_done, self.last_change = -1, time.monotonic()
        self.lacking_since: float | None = None
        self._shut(True, [])

    def hold_open(self) -> None:
        self.open_until = float("inf")
        if self.shut:
            self._shut(False, [])

    def update(self, handles: list[lt.torrent_handle], server_gives: bool,
               arrived: int) -> None:
        """server_gives: the chain still brings this machine the image
        (relay.py); what the peers lack meanwhile comes that way. arrived:
        the bytes the chain brought so far, which libtorrent does not count."""
        downloading, lacking, done = False, False, arrived
        for handle in handles:
            status = handle.status(lt.status_flags_t.query_pieces)
            done += status.total_done
            if status.is_seeding:
                continue
            downloading = True
            missing = {i for i, have in enumerate(status.pieces) if not have}
            for peer in handle.get_peer_info():
                if peer.ip[0] != self.server[0]:
                    missing.difference_update(i for i, has in enumerate(peer.pieces) if has)
            lacking = lacking or bool(missing)
        now = time.monotonic()
        if done != self.last_done:
            self.last_done, self.last_change = done, now
        if not downloading:
            return
        if lacking and not server_gives:
            self.lacking_since = self.lacking_since or now
        else:
            self.lacking_since = None
        stalled = now - self.last_change >= self.STALL
        if self.shut and (stalled or (self.lacking_since is not None
                                      and now - self.lacking_since >= self.STALL)):
            self._shut(False, handles)
            self.open_until = now + self.REOPEN_FOR
        elif (not self.shut and not stalled and now >= self.open_until
              and (server_gives or not lacking)):
            self._shut(True, handles)

    def _shut(self, shut: bool, handles: list[lt.torrent_handle]) -> None:
        rules = lt.ip_filter()
        if shut:
            rules.add_rule(self.server[0], self.server[0], 1)  # 1: blocked
        self.session.set_ip_filter(rules)
        self.shut = shut
        if not shut:  # the filter dropped the server from the peer lists
            for handle in handles:
                if self.server[1]:
                    handle.connect_peer(self.server)
                else:  # its port unknown: the tracker names it
                    handle.force_reannounce(0, -1, lt.reannounce_flags_t.ignore_min_interval)
