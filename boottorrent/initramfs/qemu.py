"""The pivotal's QEMU part: Debian's qemu-system-x86_64, its TCG accelerator
module, their shared libraries and the firmware a PC machine loads (SeaBIOS,
and OVMF for UEFI images), for images whose method is qemu. Built only when
such an image is registered, and cached by its inputs like the base."""

from __future__ import annotations

import hashlib
import tempfile
from pathlib import Path

from boottorrent.fsutil import write_atomic
from boottorrent.initramfs import PivotalError, Progress, archive, say
from boottorrent.initramfs.base import fingerprint, manifest_current
from boottorrent.initramfs.staging import Tree, shared_libraries

QEMU = Path("/usr/bin/qemu-system-x86_64")
# Debian builds the accelerators as modules: TCG, when the node has no KVM.
MODULES = (Path("/usr/lib/x86_64-linux-gnu/qemu/accel-tcg-x86_64.so"),)
# What `-machine pc|q35 -nodefaults` loads: SeaBIOS and QEMU's small option ROMs.
FIRMWARE = (Path("/usr/share/seabios/bios-256k.bin"), Path("/usr/share/qemu/kvmvapic.bin"),
            Path("/usr/share/qemu/linuxboot_dma.bin"), Path("/usr/share/qemu/multiboot_dma.bin"))
# Package ovmf: the UEFI firmware and the template of its variable store.
OVMF = (Path("/usr/share/OVMF/OVMF_CODE.fd"), Path("/usr/share/OVMF/OVMF_VARS.fd"))


def _inputs() -> list[Path]:
    """What goes in, OVMF when it is installed (an image with firmware =
    uefi cannot be registered without it: imageconf.py)."""
    wanted = [QEMU, *MODULES, *FIRMWARE]
    missing = [str(p) for p in wanted if not p.exists()]
    if missing:
        raise PivotalError(f"{', '.join(missing)} missing: install the qemu-system-x86 "
                           "package (images of method qemu run with this server's QEMU)")
    return wanted + [p for p in OVMF if p.exists()]


def _build(output: Path, inputs: list[Path], progress: Progress) -> list[Path]:
    with tempfile.TemporaryDirectory(prefix="pivotal-qemu.") as tmp:
        tree = Tree(Path(tmp))
        binaries = [p for p in inputs if p == QEMU or p in MODULES]
        libraries = shared_libraries(binaries)
        say(progress, f"staging QEMU with {len(libraries)} shared libraries")
        for path in [*inputs, *libraries]:
            tree.add_host_file(path)
        archive.fix_dir_modes(tree.root)
        say(progress, f"compressing {output.name}")
        archive.archive(tree.root, output, archive.COMPRESS)
        return sorted(tree.sources)


def cached_qemu_part(cache_dir: Path, progress: Progress = None) -> Path:
    """The QEMU part, built once into cache_dir and again when QEMU, its
    libraries or firmware changed (a package upgrade) or this builder did."""
    inputs = _inputs()
    digest = hashlib.sha256(Path(__file__).read_bytes())
    digest.update(repr(sorted(map(str, inputs))).encode())
    key = digest.hexdigest()[:16]
    output = cache_dir / f"pivotal-qemu-{key}.cpio.zst"
    manifest = cache_dir / f"pivotal-qemu-{key}.sources"
    if output.exists() and manifest.exists() and manifest_current(manifest):
        return output
    cache_dir.mkdir(parents=True, exist_ok=True)
    sources = _build(output, inputs, progress)
    write_atomic(manifest, "".join(fingerprint(p) + "\n" for p in sources))
    for old in cache_dir.glob("pivotal-qemu-*"):
        if old not in (output, manifest):
            old.unlink(missing_ok=True)
    return output
