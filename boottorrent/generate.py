"""Regenerating everything derived from configuration and registry, as one
new snapshot committed atomically (see registry.py)."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from boottorrent import render
from boottorrent.initramfs import PivotalError, archive, base, kernel, qemu
from boottorrent.config import Config
from boottorrent.configfile import ConfigError
from boottorrent.fsutil import remove_tree
from boottorrent.pivotal.wire import PivotalConfig
from boottorrent.registry import REGISTRY_FILE, ImageRecord, State, registry_json


def _place(source: Path, target: Path) -> None:
    """Put an immutable cached file into the snapshot without copying it."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)
    target.chmod(0o644)


def write_pivotal(config: Config, state: State, pivotal: PivotalConfig, snapshot: Path,
                  records: dict[str, ImageRecord]) -> None:
    """The pivotal's kernel and its initramfs parts (three, and QEMU's
    while an image's method is qemu), into snapshot/boot/pivotal/, and the
    torrent of the parts it shares."""
    target = snapshot / "boot" / "pivotal"
    def progress(line: str) -> None:
        print(f"pivotal: {line}", file=sys.stderr, flush=True)

    with_qemu = render.uses_qemu(records)
    try:
        kernel_part = kernel.build_kernel_part(config.pivotal_kernel, state.cache, progress,
                                               kvm=with_qemu)
        base_part = base.cached_base(state.cache, progress)
    except PivotalError as error:
        raise ConfigError(config.path, str(error), ("pivotal",), "kernel") from None
    try:
        qemu_part = qemu.cached_qemu_part(state.cache, progress) if with_qemu else None
    except PivotalError as error:
        name = next(r.name for r in records.values() if r.method == "qemu")
        raise ConfigError(state.root, f"image {name!r}: {error}") from None
    if kernel_part.missing_firmware:
        progress(f"{len(kernel_part.missing_firmware)} of the {len(kernel_part.drivers)} "
                 "network drivers may ask for firmware this server lacks "
                 "(`boottorrent build-pivotal` names them)")
    target.mkdir(mode=0o755)
    _place(kernel_part.vmlinuz, target / Path(render.PIVOTAL_KERNEL).name)
    config_name, base_name, modules_name = (Path(p).name for p in render.PIVOTAL_INITRDS)
    _place(base_part, target / base_name)
    _place(kernel_part.modules, target / modules_name)
    if qemu_part:
        _place(qemu_part, target / Path(render.PIVOTAL_QEMU).name)
    pivotal = render.write_pivotal_torrent(config, snapshot, pivotal,
                                           render.pivotal_shared(records))
    archive.build_config_part({render.PIVOTAL_CONFIG: pivotal.to_json()}, target / config_name)


def regenerate(config: Config, state: State, records: dict[str, ImageRecord]) -> Path:
    """Build a snapshot for records and make it current; returns its path.

    On any failure (bad configuration, full disk, Ctrl-C) the new snapshot is
    removed and the current one stays exactly as it was.
    """
    snapshot = state.new_snapshot()
    try:
        (snapshot / REGISTRY_FILE).write_text(registry_json(records))
        pivotal_config = render.write_snapshot(config, records, state, snapshot)
        write_pivotal(config, state, pivotal_config, snapshot, records)
        return state.commit(snapshot)
    except BaseException:
        remove_tree(snapshot)
        raise
