"""libtorrent settings for a boot swarm on one LAN, shared by the server's
seeder and the pivotal's client, how a torrent is added, and how the
pivotal joins a swarm.

Two calls of libtorrent 2.0.8's Python binding crash the interpreter, and
this module has what is used instead:

- session.wait_for_alert() hands Python a pointer into the alert queue,
  which the network thread may move (the queue grows) before Python wraps
  it: a segfault, seen in CI (fixed upstream after 2.0.8, where it returns
  a bool). Loops pace themselves with alerts_after().
- A torrent_info made in Python and set as add_torrent_params.ti stays
  Python's inside the session (the binding passes that very pointer on),
  and the network thread drops the last reference without the GIL.
  add_params() has libtorrent parse the torrent itself.
"""

from __future__ import annotations

import base64
import threading
import time
from pathlib import Path

import libtorrent as lt

ALERTS = (lt.alert.category_t.error_notification | lt.alert.category_t.status_notification
          | lt.alert.category_t.tracker_notification)


def settings(listen: str, upload_slots: int, *, seed: bool) -> dict:
    """Settings for a session listening on listen ("ADDRESS:PORT").

    seed: the server's seeder, which starts from libtorrent's
    high_performance_seed() pack (big send buffers, fast accept of hundreds
    of connections: listen_queue_size 3000, connection_speed 500).
    """
    pack = lt.high_performance_seed() if seed else lt.default_settings()
    pack.update({
        "listen_interfaces": listen,
        "user_agent": "boottorrent",
        "alert_mask": ALERTS,
        # The tracker is the discovery path; DHT, LSD, UPnP and NAT-PMP only
        # add traffic (the DHT keeps one node per /24, useless on one subnet).
        "enable_dht": False,
        "enable_lsd": False,
        "enable_upnp": False,
        "enable_natpmp": False,
        # TCP only, unencrypted: uTP's congestion control and RC4 both cost
        # LAN throughput and CPU.
        "enable_outgoing_utp": False,
        "enable_incoming_utp": False,
        "mixed_mode_algorithm": lt.bandwidth_mixed_algo_t.prefer_tcp,
        "out_enc_policy": lt.enc_policy.pe_disabled,
        "in_enc_policy": lt.enc_policy.pe_disabled,
        # Few upload slots, rotated: a seed that unchoked every client at
        # once would give each a trickle and none a whole piece to pass on.
        "unchoke_slots_limit": upload_slots,
        "choking_algorithm": lt.choking_algorithm_t.fixed_slots_choker,
        "seed_choking_algorithm": lt.seed_choking_algorithm_t.round_robin,
        # A boot swarm is hundreds of machines on one switch, behind one
        # tracker, announcing every few seconds.
        "min_announce_interval": 1,
        "connections_limit": 2000 if seed else 500,
        "listen_queue_size": 3000,
        "connection_speed": 500,
        # Commit little to any one peer ahead of time: libtorrent's defaults
        # (3 s of requests per peer, whole pieces from fast peers) make every
        # client ask the server for the same rare pieces at once, so the
        # server sends each piece several times (measured in bench/RESULTS.md).
        "request_queue_time": 1,
        "whole_pieces_threshold": 0,
        "peer_connect_timeout": 3,
        # A peer silent for 20 s is gone (a machine that crashed or kexec'd
        # sends no FIN); keep-alives go out every 10 s. The default, 120 s,
        # kept seeding clients waiting for peers that no longer exist.
        "peer_timeout": 20,
        "request_timeout": 10,
        "piece_timeout": 10,
        # A machine that got the image between two of its polls of the
        # connections (a small image on a fast link) still finds the
        # server's connection there and counts what came from it
        # (counter.SourceCounter): neither side closes a connection because
        # both are seeds.
        "close_redundant_connections": False,
        # The pivotal filters the server's address out at times (gate.ServerGate):
        # for BitTorrent, not for the tracker it runs.
        "apply_ip_filter_to_trackers": False,
        # Labs and tests run several sessions behind one address.
        "allow_multiple_connections_per_ip": True,
        "active_downloads": -1,
        "active_seeds": -1,
        "active_limit": -1,
    })
    return pack


def put_every_peer_in_global_class(session: lt.session) -> None:
    """libtorrent exempts peers in 10/8, 172.16/12, 192.168/16 and link-local
    from unchoke slots and rate limits (its "local" class). On a cluster LAN
    that is every peer; treat them all alike so the slots above hold."""
    peer_classes = lt.ip_filter()
    peer_classes.add_rule("0.0.0.0", "255.255.255.255", 1 << lt.session.global_peer_class_id)
    peer_classes.add_rule("::", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
                          1 << lt.session.global_peer_class_id)
    session.set_peer_class_filter(peer_classes)


def session(listen: str, upload_slots: int, *, seed: bool) -> lt.session:
    created = lt.session(settings(listen, upload_slots, seed=seed))
    put_every_peer_in_global_class(created)
    return created


def alerts_after(session: lt.session, seconds: float,
                 wake: threading.Event | None = None) -> list[lt.alert]:
    """The alerts posted until seconds from now, or until wake is set;
    they stay valid until the next call."""
    if wake:
        wake.wait(seconds)
    else:
        time.sleep(seconds)
    return session.pop_alerts()


def add_params(torrent: bytes, save_path: Path) -> lt.add_torrent_params:
    """What adding this bencoded torrent takes, started at once and not
    managed by libtorrent's queue; raises ValueError if it is corrupt."""
    try:
        params = lt.load_torrent_buffer(torrent)
    except RuntimeError as error:
        raise ValueError(str(error)) from None
    params.save_path = str(save_path)
    params.flags &= ~(lt.torrent_flags.auto_managed | lt.torrent_flags.paused)
    return params


def join_params(torrent_base64: str, save_path: Path,
                server: tuple[str, int]) -> tuple[lt.add_torrent_params, list[str]]:
    """A torrent as pivotal.json carries it, to download into save_path,
    without its web seeds, and the web seeds (the pivotal adds them only as
    a fallback). The server is among its peers from the start, for when
    gate.ServerGate lets it in."""
    params = add_params(base64.b64decode(torrent_base64), save_path)
    web_seeds = list(params.url_seeds)
    params.url_seeds = []
    params.peers = [server]
    return params, web_seeds
