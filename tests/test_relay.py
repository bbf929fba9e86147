"""A machine's place in the chain (boottorrent/pivotal/relay.py), with real
libtorrent on the loopback interface."""

from __future__ import annotations

import os
import time
import urllib.request
from pathlib import Path

import libtorrent as lt

from boottorrent import torrents
from boottorrent.pivotal.relay import Relay
from boottorrent.pivotal.relayserver import RelayServer

MIB = 1 << 20


def seeding_torrent(folder: Path) -> tuple[lt.session, lt.torrent_handle, lt.torrent_info, bytes]:
    """A torrent of two files in folder, added to a session of its own."""
    data = os.urandom(5 * MIB + 123)  # several pieces (torrents.piece_size_for)
    (folder / "t").mkdir()
    (folder / "t" / "a").write_bytes(data[:MIB + 7])
    (folder / "t" / "b").write_bytes(data[MIB + 7:])
    info = lt.torrent_info(lt.bdecode(torrents.create(
        folder, "t", [("a", MIB + 7), ("b", len(data) - MIB - 7)])))
    assert info.num_pieces() > 4
    session = lt.session({"listen_interfaces": "127.0.0.1:0", "enable_dht": False,
                          "enable_lsd": False, "enable_upnp": False, "enable_natpmp": False})
    params = lt.add_torrent_params()
    params.ti = info
    params.save_path = str(folder)
    Relay.hold_back(params)
    return session, session.add_torrent(params), info, data


def test_a_relay_settled_without_digests_serves_what_libtorrent_checked(tmp_path):
    """The pivotal's share settles without digests of its own: libtorrent
    checks every piece again, the chain's too. The machine after this one
    then gets the whole stream from it; before, it waited for the chain's
    pieces for ever, and this machine seeded for seed_time_max."""
    session, handle, info, data = seeding_torrent(tmp_path)
    server = RelayServer("127.0.0.1")
    try:
        # No server answers at port 9: the relay's own stream never starts.
        relay = Relay(handle, info, "http://127.0.0.1:9", "", tmp_path, server)
        with relay.changed:  # as if the chain had brought every piece
            relay.written = set(range(info.num_pieces()))
            relay.position = info.total_size()
        assert relay.settle({}) == {}
        deadline = time.monotonic() + 30
        while not handle.status().is_seeding:
            assert time.monotonic() < deadline, "libtorrent did not check the files"
            time.sleep(0.1)
        url = f"http://127.0.0.1:{server.port}/stream/{relay.infohash}"
        with urllib.request.urlopen(url, timeout=10) as answer:
            assert answer.read() == data
        # The stream is over: its handler ends once the last byte left
        # (after the client read it, at its own pace: a condition, not a time).
        while server.streaming:
            assert time.monotonic() < deadline + 30, "the relay kept streaming"
            time.sleep(0.05)
    finally:
        server.stop()
        del session
