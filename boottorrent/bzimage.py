"""The x86 Linux boot protocol's setup header (Documentation/arch/x86/boot.rst):
enough of it to tell a kernel from any other file, and to read its release."""

from __future__ import annotations

import struct
from pathlib import Path

from boottorrent.fsutil import open_regular

HEADER_END = 0x210  # the fields read here all lie before this offset
BOOT_FLAG = (0x1FE, b"\x55\xaa")
MAGIC = (0x202, b"HdrS")
VERSION_POINTER = 0x20E
DEB_MAGIC = b"!<arch>\n"  # ar(5), which a .deb is: a kernel package, for the pivotal


def check(data: bytes) -> None:
    """ValueError unless data starts like a bzImage (boot flag and "HdrS")."""
    if len(data) < HEADER_END:
        raise ValueError("not an x86 Linux kernel (bzImage): too short")
    for offset, expected in (BOOT_FLAG, MAGIC):
        if data[offset:offset + len(expected)] != expected:
            raise ValueError("not an x86 Linux kernel (bzImage): no boot protocol header")


def version(data: bytes) -> str:
    """The kernel release the setup header points to, e.g. 6.1.0-27-amd64."""
    check(data)
    pointer, = struct.unpack_from("<H", data, VERSION_POINTER)
    start = pointer + 0x200
    text = data[start:start + 256].split(b"\0", 1)[0].decode(errors="replace")
    if not text:
        raise ValueError("bzImage has no kernel version string")
    return text.split()[0]


def is_package(path: Path) -> bool:
    """Whether path starts as a .deb does (a kernel package, for the pivotal)."""
    with open_regular(path) as file:
        return file.read(len(DEB_MAGIC)) == DEB_MAGIC


def kernel_or_package_problem(path: Path) -> str | None:
    """Why path is neither a vmlinuz nor a .deb, from its first bytes, or
    None (`check` says it at once; the pivotal's build looks closer)."""
    try:
        with open_regular(path) as file:
            head = file.read(HEADER_END)
    except FileNotFoundError:
        return f"{path}: no such file (a vmlinuz or a linux-image .deb)"
    except OSError as error:
        return f"{path}: cannot read: {error.strerror or error}"
    if head.startswith(DEB_MAGIC):
        return None
    try:
        check(head)
    except ValueError:
        return f"{path}: neither a kernel (vmlinuz) nor a linux-image .deb"
    return None
