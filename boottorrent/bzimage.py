"""The x86 Linux boot protocol's setup header (Documentation/arch/x86/boot.rst):
enough of it to tell a kernel from any other file, and to read its release."""

from __future__ import annotations

import struct

HEADER_END = 0x210  # the fields read here all lie before this offset
BOOT_FLAG = (0x1FE, b"\x55\xaa")
MAGIC = (0x202, b"HdrS")
VERSION_POINTER = 0x20E


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
