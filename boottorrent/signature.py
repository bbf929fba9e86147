"""Who signed a kernel for UEFI Secure Boot: the Authenticode signature a
PE/COFF file (a bzImage with its EFI stub) carries in its certificate table,
read far enough to name the signer. Whether that signer is trusted is for
the machine to decide (its firmware's db, shim's and MOK's keys); the
server only tells a signed kernel from one a locked-down kernel refuses
outright."""

from __future__ import annotations

import struct
from pathlib import Path

from boottorrent.fsutil import open_regular

PE_POINTER = 0x3C  # the MS-DOS header's offset of the PE header
PE32_PLUS = 0x20B
SECURITY_DIRECTORY = 4  # the certificate table's entry among the data directories
WIN_CERT_PKCS_SIGNED_DATA = 2
COMMON_NAME = bytes([0x06, 0x03, 0x55, 0x04, 0x03])  # DER of the OID 2.5.4.3
TABLE_MAX = 1 << 20  # a certificate table beyond this is not a kernel's


def certificate_entry(head: bytes) -> int:
    """Where in a PE/COFF file (its first bytes, head) the data directory
    entry of its certificate table lies: offset and size, 4 bytes each.
    ValueError when it is no PE file at all."""
    if len(head) < PE_POINTER + 4 or head[:2] != b"MZ":
        raise ValueError("no EFI stub (not a PE file)")
    pe, = struct.unpack_from("<I", head, PE_POINTER)
    if head[pe:pe + 4] != b"PE\0\0":
        raise ValueError("no EFI stub (no PE header)")
    magic, = struct.unpack_from("<H", head, pe + 24)
    return pe + 24 + (112 if magic == PE32_PLUS else 96) + 8 * SECURITY_DIRECTORY


def kernel_signer(path: Path) -> str:
    """The common name of whoever signed the kernel at path ("" when it
    carries no signature); ValueError when it is no PE file at all."""
    with open_regular(path) as file:
        head = file.read(4096)
        offset, size = struct.unpack_from("<II", head, certificate_entry(head))
        if not size:
            return ""
        if size > TABLE_MAX:
            raise ValueError(f"a certificate table of {size} bytes")
        file.seek(offset)
        table = file.read(size)
    length, _, kind = struct.unpack_from("<IHH", table)
    if kind != WIN_CERT_PKCS_SIGNED_DATA:
        return ""
    return _signer_name(table[8:length]) or "an unnamed signer"


def _signer_name(signed_data: bytes) -> str:
    """The subject of the signing certificate: the last common name in the
    PKCS #7 blob whose certificate issued none of the others (the chain
    goes CA, then signer; a leaf's subject names no other's issuer)."""
    names = []
    start = 0
    while (at := signed_data.find(COMMON_NAME, start)) >= 0:
        start = at + len(COMMON_NAME)
        if start + 2 <= len(signed_data):
            length = signed_data[start + 1]
            if length < 0x80:
                names.append(signed_data[start + 2:start + 2 + length]
                             .decode("utf-8", errors="replace"))
    # Each certificate names its issuer, then its subject.
    issuers, subjects = set(names[0::2]), names[1::2]
    leaves = [name for name in subjects if name not in issuers]
    return (leaves or subjects or names or [""])[-1]
