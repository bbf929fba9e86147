"""Who sent this machine the image: the server or the other machines."""

from __future__ import annotations


class SourceCounter:
    """The payload received, split into what the server sent and what peers sent.

    libtorrent counts payload per connection (peer_info.total_download); a
    connection's counter is gone when it closes and starts again from 0 when
    the peer reconnects, so the last value of every connection seen is kept
    and added up. The torrent's own total, read before the connections,
    only adds bytes from connections that came and went between two updates,
    which go to the peers. (Taking the peers' share as that total minus the
    server's, read after the connections, made it jump up and back to 0
    while only the server was connected: the bytes that arrived in between.)
    Both figures only grow.
    """

    def __init__(self, server: str):
        self.server = server
        self.connections: dict[tuple, int] = {}  # (remote, local endpoint) -> bytes
        self.closed = {True: 0, False: 0}  # from the server? -> bytes of closed connections
        self.from_server = 0
        self.from_peers = 0

    def update(self, received: int, peers: list[tuple[tuple, tuple, int]]) -> tuple[int, int]:
        """received: the torrent's payload total, read before peers, the
        (remote endpoint, local endpoint, bytes received) of each connection."""
        for remote, local, total in peers:
            key = (tuple(remote), tuple(local))
            last = self.connections.get(key, 0)
            if total < last:  # the same endpoints again: a new connection
                self.closed[remote[0] == self.server] += last
            self.connections[key] = total
        by_source = dict(self.closed)
        for (remote, _), total in self.connections.items():
            by_source[remote[0] == self.server] += total
        self.from_server = max(self.from_server, by_source[True])
        self.from_peers = max(self.from_peers, by_source[False],
                              received - self.from_server)
        return self.from_server, self.from_peers
