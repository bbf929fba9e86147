"""A real Debian kernel for the lab, fetched with apt and cached in .cache/.

The tests, the benchmark and the demo boot Debian's own linux-image-*-amd64,
the same package an admin would give BootTorrent as its pivotal kernel.
"""

from __future__ import annotations

import os
import struct
import subprocess
import tempfile
from pathlib import Path

from boottorrent.signature import certificate_entry

REPO = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("BOOTTORRENT_LAB_CACHE", REPO / ".cache"))


def _kernel_package() -> str:
    """The versioned package that linux-image-amd64 depends on."""
    out = subprocess.run(["apt-cache", "depends", "linux-image-amd64"],
                         check=True, capture_output=True, text=True).stdout
    for line in out.splitlines():
        line = line.strip()
        if line.startswith("Depends: linux-image-"):
            return line.split()[1]
    raise RuntimeError("apt-cache: linux-image-amd64 depends on no linux-image-*; "
                       "run apt-get update")


def kernel_deb(cache: Path = CACHE) -> Path:
    """Debian's current amd64 kernel package, downloaded once."""
    cache.mkdir(parents=True, exist_ok=True)
    found = sorted(cache.glob("linux-image-*-amd64_*.deb"))
    if found:
        return found[-1]
    package = _kernel_package()
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        subprocess.run(["apt-get", "download", "-q", package], cwd=tmp, check=True,
                       capture_output=True)
        (deb,) = Path(tmp).glob("*.deb")
        # Rename into place so a half-downloaded file is never taken as the cache.
        return deb.rename(cache / deb.name)


def kernel_tree(cache: Path = CACHE) -> Path:
    """The kernel package unpacked (boot/vmlinuz-*, lib/modules/*), once."""
    deb = kernel_deb(cache)
    tree = cache / deb.name.removesuffix(".deb")
    if not tree.is_dir():
        with tempfile.TemporaryDirectory(dir=cache) as tmp:
            subprocess.run(["dpkg-deb", "-x", str(deb), tmp], check=True)
            os.rename(tmp, tree)
            os.mkdir(tmp)  # for TemporaryDirectory's cleanup
    return tree


def vmlinuz(cache: Path = CACHE) -> Path:
    (path,) = (kernel_tree(cache) / "boot").glob("vmlinuz-*")
    return path


def unsigned_vmlinuz(cache: Path = CACHE) -> Path:
    """Debian's kernel with its Secure Boot signature taken off (the
    certificate table cut and its directory entry zeroed, as sbattach
    --remove does): a kernel as an admin's own build would be, unsigned."""
    signed = vmlinuz(cache)
    target = cache / (signed.name + ".unsigned")
    if not target.exists():
        data = bytearray(signed.read_bytes())
        entry = certificate_entry(data)
        offset, size = struct.unpack_from("<II", data, entry)
        assert size and offset + size == len(data), "the signature is not at the end"
        struct.pack_into("<II", data, entry, 0, 0)
        partial = target.with_suffix(".partial")
        partial.write_bytes(bytes(data[:offset]))
        partial.rename(target)
    return target
