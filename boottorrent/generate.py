"""Regenerating everything derived from configuration and registry, as one
new snapshot committed atomically (see registry.py)."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from boottorrent import nodes, render, secureboot, trust
from boottorrent.config import Config
from boottorrent.configfile import ConfigError
from boottorrent.fsutil import remove_tree
from boottorrent.image import ImageRecord
from boottorrent.initramfs import PivotalError, archive, base, kernel, qemu, stage
from boottorrent.pivotal import paths
from boottorrent.pivotal.command import CommandError
from boottorrent.pivotal.digest import file_sha256
from boottorrent.registry import REGISTRY_FILE, State, registry_json


def _place(source: Path, target: Path) -> None:
    """Put an immutable cached file into the snapshot without copying it."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)
    target.chmod(0o644)


def write_pivotal(config: Config, state: State, torrents_by_name: dict[str, bytes],
                  snapshot: Path, records: dict[str, ImageRecord]) -> None:
    """The pivotal's kernel and its parts into snapshot/boot/pivotal/: what
    iPXE loads (config, modules or its NIC's part from nics/, stage), what
    the stage fetches (the base, and QEMU's part while an image's method
    is qemu), and the torrent of the latter, which the machines share."""
    target = snapshot / "boot" / "pivotal"
    def progress(line: str) -> None:
        print(f"pivotal: {line}", file=sys.stderr, flush=True)

    with_qemu = render.uses_qemu(records)
    try:
        kernel_part = kernel.build_kernel_part(config.pivotal_kernel, state.cache, progress,
                                               kvm=with_qemu)
        base_part = base.cached_base(state.cache, progress)
        stage_part = stage.cached_stage(state.cache, progress)
    except (PivotalError, CommandError) as error:
        raise ConfigError(config.path, str(error), ("pivotal",), "kernel") from None
    try:
        qemu_part = qemu.cached_qemu_part(state.cache, progress) if with_qemu else None
    except (PivotalError, CommandError) as error:
        name = next(r.name for r in records.values() if r.method == "qemu")
        raise ConfigError(state.root, f"image {name!r}: {error}") from None
    if kernel_part.missing_firmware:
        progress(f"{len(kernel_part.missing_firmware)} of the {len(kernel_part.drivers)} "
                 "network drivers may ask for firmware this server lacks "
                 "(`boottorrent build-pivotal` names them)")
    target.mkdir(mode=0o755)
    placed = {paths.KERNEL: kernel_part.vmlinuz, paths.BASE: base_part,
              paths.MODULES_PART: kernel_part.modules, paths.STAGE_PART: stage_part}
    if qemu_part:
        placed[paths.QEMU] = qemu_part
    for path, source in placed.items():
        _place(source, target / Path(path).name)
    nic_parts = snapshot / "boot" / paths.NICS
    nic_parts.mkdir(mode=0o755)
    for source in kernel_part.nics.iterdir():
        _place(source, nic_parts / source.name)
    shared = render.pivotal_shared(records)
    pivotal = render.pivotal_config(config, records, torrents_by_name,
                                    render.write_pivotal_torrent(config, snapshot, shared),
                                    render.kernel_signers(state, records))
    archive.build_config_part({
        paths.CONFIG: pivotal.to_json(),
        paths.STAGE_CONFIG: render.stage_config(
            config, {path: file_sha256(placed[path]) for path in shared}).encode(),
    }, target / Path(paths.CONFIG_PART).name)
    if config.secure_boot:
        secureboot.ram_disk(snapshot / "boot")


def regenerate(config: Config, state: State, records: dict[str, ImageRecord]) -> Path:
    """Build a snapshot for records and make it current; returns its path.

    On any failure (bad configuration, full disk, Ctrl-C) the new snapshot is
    removed and the current one stays exactly as it was.
    """
    trust.make_key(state.root)
    machines = list(config.nodes.values())
    try:
        nodes.make_identities(state.root, machines, sys.stderr)
    except CommandError as error:
        raise ConfigError(config.path, f"the machines' SSH host keys: {error}",
                          ("machines",)) from None
    snapshot = state.new_snapshot()
    try:
        (snapshot / REGISTRY_FILE).write_text(registry_json(records))
        nodes.write_snapshot_file(machines, config.templates, snapshot / nodes.SNAPSHOT_FILE)
        torrents_by_name = render.write_snapshot(config, records, state, snapshot)
        write_pivotal(config, state, torrents_by_name, snapshot, records)
        return state.commit(snapshot)
    except BaseException:
        remove_tree(snapshot)
        raise
