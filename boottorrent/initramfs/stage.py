"""The pivotal's stage part: /stage (pivotal/stage), busybox, and zstd with
its shared libraries, which /stage needs to fetch, check and unpack the
pivotal's base (busybox has no zstd). It comes from the server itself, as
the kernel does: built once and cached by the bytes it is made from."""

from __future__ import annotations

import hashlib
import tempfile
from pathlib import Path

from boottorrent.initramfs import Progress, archive, say
from boottorrent.initramfs.base import BUSYBOX, DRIVERS, add_busybox, add_script, script
from boottorrent.initramfs.staging import Tree, shared_libraries, which


def _zstd() -> list[Path]:
    """zstd and every shared library it needs."""
    zstd = which("zstd", "zstd")
    return [zstd, *shared_libraries([zstd])]


def cached_stage(cache_dir: Path, progress: Progress = None) -> Path:
    """The stage part (zstd-compressed newc cpio) in cache_dir, built when
    any of its inputs changed (a few MiB to hash: cheaper than a build)."""
    digest = hashlib.sha256()
    zstd = _zstd()
    for path in [Path(__file__), script("stage"), script("drivers"), BUSYBOX, *zstd]:
        digest.update(f"{path}\n".encode())
        digest.update(path.read_bytes())
    output = cache_dir / f"pivotal-stage-{digest.hexdigest()[:16]}.cpio.zst"
    if output.exists():
        return output
    say(progress, "building the stage part (busybox, zstd, /stage)")
    with tempfile.TemporaryDirectory(prefix="pivotal-stage.") as tmp:
        tree = Tree(Path(tmp))
        for name in ("proc", "sys", "dev", "etc/boottorrent"):
            tree.mkdir(name)
        add_busybox(tree)
        for path in zstd:
            tree.add_host_file(path)
        add_script(tree, "stage", "stage")
        add_script(tree, "drivers", DRIVERS, mode=0o644)
        archive.fix_dir_modes(tree.root)
        archive.archive(tree.root, output, archive.COMPRESS)
    for old in cache_dir.glob("pivotal-stage-*"):
        if old != output:
            old.unlink(missing_ok=True)
    return output
