"""BootTorrent: network boot of large clusters over BitTorrent."""

__version__ = "0.1.0"
