"""A tiny bootable test image: Debian's kernel plus a busybox initramfs.

Its /init mounts /proc, prints a marker, the kernel command line and the
host name on the console, then powers the machine off. Tests boot it (over
PXE, or as the image a pivotal downloads) and look for the marker on the
serial console.

The initramfs is written here byte by byte (newc cpio, gzip with a zero
timestamp), so the same inputs always give the same file: the same
torrent, the same info hash. Files are cached by a digest of the inputs.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import random
import tempfile
from pathlib import Path

from lab.kernel import vmlinuz

BUSYBOX = Path("/bin/busybox")  # Debian's busybox-static
FORMAT_VERSION = "2"  # bump when the layout or /init changes

# Lines /init prints, for tests to match.
MARKER_PREFIX = "TESTIMAGE-MARKER: "
CMDLINE_PREFIX = "TESTIMAGE-CMDLINE: "
HOSTNAME_PREFIX = "TESTIMAGE-HOSTNAME: "
EXTRA_PREFIX = "TESTIMAGE-EXTRA: "

INIT = """#!/bin/sh
# BootTorrent lab test image: say who we are, then power off.
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
echo
echo "{marker_prefix}$(cat /etc/testimage-marker)"
echo "{cmdline_prefix}$(cat /proc/cmdline)"
echo "{hostname_prefix}$(hostname)"
# Files that further initrds may add (to check that several initrds arrive).
for f in /testimage.d/*; do
    [ -f "$f" ] && echo "{extra_prefix}$(basename "$f"): $(cat "$f")"
done
echo "TESTIMAGE-POWEROFF"
sync
poweroff -f
# poweroff returned: do not let init exit (kernel panic); wait to be killed.
while true; do sleep 60; done
""".format(marker_prefix=MARKER_PREFIX, cmdline_prefix=CMDLINE_PREFIX,
           hostname_prefix=HOSTNAME_PREFIX, extra_prefix=EXTRA_PREFIX)

APPLETS = ["sh", "mount", "cat", "echo", "hostname", "poweroff", "sleep", "sync", "basename",
           "ls", "mkdir"]


class CpioWriter:
    """newc ("070701") cpio, deterministic: fixed owner, times and inode numbers."""

    def __init__(self, out) -> None:
        self.out = out
        self.inode = 1
        self.written = 0

    def _write(self, data: bytes) -> None:
        self.out.write(data)
        self.written += len(data)

    def _pad(self) -> None:
        if self.written % 4:
            self._write(b"\0" * (4 - self.written % 4))

    def _header(self, name: str, mode: int, size: int, nlink: int = 1,
                rdev: tuple[int, int] = (0, 0)) -> None:
        encoded = name.encode() + b"\0"
        fields = [self.inode, mode, 0, 0, nlink, 0, size, 0, 0, rdev[0], rdev[1],
                  len(encoded), 0]
        self.inode += 1
        self._write(b"070701" + b"".join(b"%08X" % f for f in fields) + encoded)
        self._pad()

    def directory(self, name: str, mode: int = 0o755) -> None:
        self._header(name, 0o040000 | mode, 0, nlink=2)

    def file(self, name: str, data: bytes, mode: int = 0o644) -> None:
        self._header(name, 0o100000 | mode, len(data))
        self._write(data)
        self._pad()

    def file_from_chunks(self, name: str, size: int, chunks, mode: int = 0o644) -> None:
        self._header(name, 0o100000 | mode, size)
        total = 0
        for chunk in chunks:
            self._write(chunk)
            total += len(chunk)
        assert total == size, (total, size)
        self._pad()

    def symlink(self, name: str, target: str) -> None:
        data = target.encode()
        self._header(name, 0o120000 | 0o777, len(data))
        self._write(data)
        self._pad()

    def chardev(self, name: str, major: int, minor: int, mode: int = 0o600) -> None:
        self._header(name, 0o020000 | mode, 0, rdev=(major, minor))

    def trailer(self) -> None:
        self.inode = 0
        self._header("TRAILER!!!", 0, 0)


def _pad_chunks(marker: str, pad_mib: int):
    """pad_mib MiB of incompressible bytes from a seed fixed by the marker."""
    rng = random.Random(f"boottorrent-testimage:{marker}")
    for _ in range(pad_mib):
        yield rng.randbytes(1 << 20)


def _atomic_gzip_cpio(path: Path, fill) -> None:
    with tempfile.NamedTemporaryFile(dir=path.parent, prefix=".tmp-", delete=False) as tmp:
        try:
            # mtime=0 and no file name in the gzip header: byte-identical output.
            with gzip.GzipFile(filename="", mode="wb", fileobj=tmp, mtime=0,
                               compresslevel=1) as gz:
                fill(CpioWriter(gz))
            # Zero padding to a multiple of 4 bytes. A UEFI kernel's EFI stub
            # loads its initrd= files back to back with no padding, and the
            # kernel only recognises an uncompressed cpio that starts on a
            # 4-byte boundary: an initrd after this one must start aligned.
            # The kernel (and Python's gzip) skip zero bytes between archives.
            tmp.write(b"\0" * (-tmp.tell() % 4))
            tmp.flush()
            os.fsync(tmp.fileno())
        except BaseException:
            os.unlink(tmp.name)
            raise
    os.chmod(tmp.name, 0o644)
    os.rename(tmp.name, path)


def build_test_image(out_dir: Path, marker: str, pad_mib: int = 0) -> dict:
    """Build (or reuse) the test initramfs; return {"kernel": Path, "initrd": Path}.

    pad_mib adds /pad.bin, that many MiB of incompressible bytes, so that
    the image is big enough for BitTorrent to have work to do.
    """
    if "\n" in marker or not marker:
        raise ValueError("marker must be one non-empty line")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    busybox = BUSYBOX.read_bytes()
    digest = hashlib.sha256()
    for part in (FORMAT_VERSION, INIT, marker, str(pad_mib)):
        digest.update(part.encode() + b"\0")
    digest.update(hashlib.sha256(busybox).digest())
    path = out_dir / f"testimage-{digest.hexdigest()[:16]}.cpio.gz"
    if not path.exists():
        def fill(cpio: CpioWriter) -> None:
            for d in ("bin", "dev", "etc", "proc", "sys", "testimage.d", "tmp"):
                cpio.directory(d)
            # The kernel opens /dev/console for init's stdio before /init
            # could mount devtmpfs, so the node must be in the archive.
            cpio.chardev("dev/console", 5, 1)
            cpio.chardev("dev/null", 1, 3, 0o666)
            cpio.file("bin/busybox", busybox, 0o755)
            for applet in APPLETS:
                cpio.symlink(f"bin/{applet}", "busybox")
            cpio.file("etc/testimage-marker", marker.encode() + b"\n")
            cpio.file("init", INIT.encode(), 0o755)
            if pad_mib:
                cpio.file_from_chunks("pad.bin", pad_mib << 20, _pad_chunks(marker, pad_mib))
            cpio.trailer()
        _atomic_gzip_cpio(path, fill)
    return {"kernel": vmlinuz(), "initrd": path}


def build_extra_initrd(out_dir: Path, files: dict[str, str]) -> Path:
    """A second, uncompressed initrd adding files under /testimage.d/.

    The test image's /init prints each such file (EXTRA_PREFIX name: text):
    a boot that shows them received and unpacked every initrd it was given.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256(repr(sorted(files.items())).encode()).hexdigest()[:16]
    path = out_dir / f"testimage-extra-{digest}.cpio"
    if not path.exists():
        with tempfile.NamedTemporaryFile(dir=out_dir, prefix=".tmp-", delete=False) as tmp:
            cpio = CpioWriter(tmp)
            cpio.directory("testimage.d")
            for name, text in sorted(files.items()):
                if "/" in name:
                    raise ValueError(f"bad file name {name!r}")
                cpio.file(f"testimage.d/{name}", text.encode() + b"\n")
            cpio.trailer()
        os.chmod(tmp.name, 0o644)
        os.rename(tmp.name, path)
    return path
