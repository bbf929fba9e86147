"""Where things are, for the server and the pivotal alike: the pivotal's
parts on the server's HTTP side (under /boot/), the files in its config
part, the URL queries iPXE and /stage add, and the HTTP side's other
paths (web.py serves them). The messages themselves are wire.py's.

Standard library only: this module ships in the pivotal.
"""

from __future__ import annotations

# The HTTP side's paths (web.py).
BOOT = "/boot"  # STATE/current/boot: the iPXE script and the pivotal's parts
IMAGES = "/images"  # the images' files, a web seed (BEP 19)
REPORT = "/report"  # a pivotal POSTs its wire.Report here
CHAIN = "/chain"  # /chain/INFOHASH?port=P[&failed=ADDRESS:PORT]: wire.ChainAnswer
STREAM = "/stream"  # /stream/INFOHASH: a torrent's bytes, for the chain's first
STATUS = "/status"
# The registry and the images' torrents, for the servers that follow this
# one (the server's mirror.py): /follow/registry.json, /follow/torrents/NAME.torrent.
FOLLOW = "/follow"

KERNEL = "pivotal/vmlinuz"
# What iPXE loads, all from the server itself: iPXE cannot check what it
# loads. The uncompressed config part comes first: a UEFI kernel's EFI stub
# loads the initrd= files back to back with no padding, and the kernel finds
# an uncompressed cpio only on a 4-byte boundary; compressed ones anywhere.
CONFIG_PART = "pivotal/config.cpio"
MODULES_PART = "pivotal/modules.cpio.zst"
STAGE_PART = "pivotal/stage.cpio.zst"
INITRDS = (CONFIG_PART, MODULES_PART, STAGE_PART)
# What iPXE adds to an initrd's URL: the config part's query names the
# machine's MAC, for which the server adds its token (trust.py), and the
# image it comes for; the modules part's names the boot NIC's bus, vendor
# and device, for which the server sends that NIC's drivers alone
# (nics.py), the whole part when it cannot tell.
QUERIES = {CONFIG_PART: "mac=${netX/mac}&image=${boottorrent-image}",
           MODULES_PART: "nic=${netX/busid:hexraw}"}
NICS = "pivotal/nics"  # the NIC parts and their index (nics.py), in this folder
# The first program the kernel runs: it fetches the base (and QEMU's part)
# from the machines or the server, checks each, unpacks it and runs /init.
STAGE = "/stage"
BASE = "pivotal/base.cpio.zst"
QEMU = "pivotal/qemu.cpio.zst"  # QEMU and its firmware, while an image's method is qemu
TORRENT = "pivotal.torrent"  # of the shared parts (BASE, QEMU), beside them

# In the config part (etc/boottorrent/: the server writes them, the
# pivotal and its /stage read them).
CONFIG = "etc/boottorrent/pivotal.json"  # wire.PivotalConfig
STAGE_CONFIG = "etc/boottorrent/stage"  # shell variables: what /stage fetches
TOKEN_FILE = "etc/boottorrent/token"  # the machine's own token (wire.TOKEN_HEADER)
# The machine's own files (the server's nodes.py), as they go into the
# image's root (pivotal/node.py); root's alone.
NODE = "etc/boottorrent/node"

# /stage's try of a shared part, in its URL's query: "try=x" its first,
# "try=xx" its second (x's: its shell counts them with ${#tries}). Without
# it, the server serves the part itself; with it, the boot storm's rules
# say who does (fleet/rules.py).
TRY = "try"


def try_query(tries: int) -> str:
    return f"{TRY}={'x' * tries}"


def tries_of(value: str) -> int:
    """The try a query's TRY value counts (at most 99)."""
    return min(len(value), 99)
