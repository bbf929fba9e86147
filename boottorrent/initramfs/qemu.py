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
from boottorrent.pivotal import run

QEMU = Path("/usr/bin") / run.QEMU
# Debian builds the accelerators as modules: TCG, when the node has no KVM.
MODULES = (Path("/usr/lib/x86_64-linux-gnu/qemu/accel-tcg-x86_64.so"),)
# What `-machine pc|q35 -nodefaults` loads: SeaBIOS and QEMU's small option ROMs.
FIRMWARE = (Path("/usr/share/seabios/bios-256k.bin"), Path("/usr/share/qemu/kvmvapic.bin"),
            Path("/usr/share/qemu/linuxboot_dma.bin"), Path("/usr/share/qemu/multiboot_dma.bin"))
# Package ovmf: the UEFI firmware and the template of its variable store.
OVMF = (run.OVMF_CODE, run.OVMF_VARS)
MISSING = "missing: install the qemu-system-x86 package, whose QEMU the pivotal ships"


def missing_inputs() -> list[str]:
    """What the part needs and this server lacks (add-image and check
    refuse a qemu image then, naming them)."""
    return [str(p) for p in (QEMU, *MODULES, *FIRMWARE) if not p.exists()]


def _inputs() -> list[Path]:
    """What goes in, OVMF when it is installed (an image with firmware =
    uefi cannot be registered without it: imageconf.py)."""
    if missing := missing_inputs():
        raise PivotalError(f"{', '.join(missing)} {MISSING}")
    return [QEMU, *MODULES, *FIRMWARE] + [p for p in OVMF if p.exists()]


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
