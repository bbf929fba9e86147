"""A tiny bootable disk for the qemu method's tests: a raw disk whose boot
sector prints a marker on the first serial port and halts. Real firmware
(SeaBIOS, in the QEMU that the pivotal runs) boots it in a fraction of a
second, which keeps a VM inside a software-emulated VM quick."""

from __future__ import annotations

from pathlib import Path

# 16-bit real mode, loaded at 0000:7C00 by the BIOS:
#   cli; xor ax,ax; mov ds,ax; mov si,MESSAGE; mov dx,0x3F8 (COM1)
#   next: lodsb; test al,al; jz halt; out dx,al; jmp next
#   halt: hlt; jmp halt
MESSAGE_OFFSET = 22
CODE = bytes([0xFA, 0x31, 0xC0, 0x8E, 0xD8,
              0xBE, MESSAGE_OFFSET, 0x7C, 0xBA, 0xF8, 0x03,
              0xAC, 0x84, 0xC0, 0x74, 0x03, 0xEE, 0xEB, 0xF8,
              0xF4, 0xEB, 0xFD])
assert len(CODE) == MESSAGE_OFFSET


def boot_sector_disk(path: Path, marker: str, size_mib: int = 1) -> Path:
    """Write the disk to path: the boot sector, then zeros to size_mib."""
    message = f"\r\n{marker}\r\n".encode() + b"\0"
    sector = CODE + message
    if len(sector) > 446:  # the partition table starts there
        raise ValueError("marker too long for a boot sector")
    sector = sector.ljust(510, b"\0") + b"\x55\xaa"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as disk:
        disk.write(sector)
        disk.truncate(size_mib << 20)
    return path
