"""A machine's token (boottorrent/trust.py), got as its iPXE gets it: the
config part, asked for with the machine's MAC, begins with a part that
holds it (wire.TOKEN_FILE), then, for a machine [machines] lists, a part
with its own files (paths.NODE)."""

from __future__ import annotations

import urllib.request

from boottorrent.pivotal.wire import TOKEN_FILE
from boottorrent.pivotal import paths

HEADER = 110  # bytes of a newc entry's header, its name follows
# iPXE's ${netX/busid:hexraw} of QEMU's virtio-net-pci, as the lab's
# machines have (PCI, vendor 1af4, device 1000).
VIRTIO_BUSID = "011af41000"


def initrd_url(boot_url: str, path: str, mac: str, image: str = "",
               busid: str = VIRTIO_BUSID) -> str:
    """An initrd's URL as iPXE asks for it (boot.ipxe.j2, paths.QUERIES),
    for a machine of this MAC, image and NIC (BOOT_URL: http://SERVER:PORT/boot)."""
    query = paths.QUERIES.get(path, "")
    for name, value in (("netX/mac", mac), ("boottorrent-image", image),
                        ("netX/busid:hexraw", busid)):
        query = query.replace(f"${{{name}}}", value)
    return f"{boot_url}/{path}" + (f"?{query}" if query else "")


def config_url(boot_url: str, mac: str, image: str = "") -> str:
    """The config part's URL, as iPXE asks for it."""
    return initrd_url(boot_url, paths.CONFIG_PART, mac, image)


def newc_files(data: bytes) -> dict[str, tuple[int, bytes]]:
    """The files of the newc archives at the start of data, one after the
    other as the kernel reads them (NULs between them skipped), by name:
    mode and bytes. Stops at the first bytes that are no archive."""
    files: dict[str, tuple[int, bytes]] = {}
    offset = 0
    while True:
        while data[offset:offset + 1] == b"\0":
            offset += 1
        if data[offset:offset + 6] != b"070701":
            return files
        try:
            fields = [int(data[offset + 6 + 8 * i:offset + 14 + 8 * i], 16) for i in range(13)]
        except ValueError:
            return files
        mode, size, name_size = fields[1], fields[6], fields[11]
        name = data[offset + HEADER:offset + HEADER + name_size - 1].decode("latin-1")
        start = offset + HEADER + name_size + (-(HEADER + name_size) % 4)
        if name != "TRAILER!!!":
            files[name] = (mode, data[start:start + size])
        offset = start + size + (-size % 4)


def token_in(config_part: bytes) -> str:
    """The token in the parts at the start of a config part ("" when there
    is none)."""
    return newc_files(config_part).get(TOKEN_FILE, (0, b""))[1].decode().strip()


def fetch_token(boot_url: str, mac: str, image: str = "") -> str:
    """The token the server hands the machine of this MAC here, as iPXE asks."""
    with urllib.request.urlopen(config_url(boot_url, mac, image), timeout=30) as answer:
        return token_in(answer.read())
