"""Registering and removing images: the transactions behind
`boottorrent-add-image` and `boottorrent remove-image`.

Each runs in one State.transaction(): validate, store the files, write the
images.d file, regenerate, commit; on any failure (bad input, full disk,
Ctrl-C, or a kill that the next transaction undoes) the registry, the
generated files and images.d stay as they were.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from boottorrent import rootfs, torrents
from boottorrent.config import Config, default_image, registry_problems
from boottorrent.configfile import ConfigError
from boottorrent.fsutil import remove_tree
from boottorrent.generate import regenerate
from boottorrent.image import Image, ImageRecord
from boottorrent.imagecheck import read_image
from boottorrent.imageconf import (image_conf_path, image_conf_paths, image_conf_text,
                                   text_problems, written_by_add_image)
from boottorrent.images import is_unchanged, store
from boottorrent.registry import TORRENT_FILE, State, read_registry


@dataclass(frozen=True)
class NewImage:
    """What `boottorrent-add-image NAME --kernel ...` says of a new image."""

    kernel: Path | None
    initrds: list[Path]
    cmdline: str
    description: str
    rootfs: Path | None = None  # instead of kernel and initrds


@dataclass(frozen=True)
class Registered:
    record: ImageRecord
    action: str  # registered, re-registered, unchanged
    default_image: str | None


class OptionError(ConfigError):
    """A problem with what add-image's options say of a new image: named by
    the option, since the images.d file it names is not written."""

    def __str__(self) -> str:
        return f"--{self.key}: {self.message}" if self.key else self.message


def _staged_image(conf_path: Path, text: str) -> Image:
    """Validate a new images.d file where nobody can see it yet."""
    with tempfile.TemporaryDirectory() as scratch:
        staged = Path(scratch) / conf_path.name
        staged.write_text(text)
        try:
            image, problems = read_image(staged)
        except ConfigError as error:
            problems = [error]
    if problems:
        raise ConfigError(conf_path, problems[0].message, key=problems[0].key)
    assert image
    # The staged file is gone; the image is described by the real one.
    return dataclasses.replace(image, source=conf_path)


def add_image(config: Config, config_dir: Path, state: State, name: str,
              new: NewImage | None, stream: TextIO) -> Registered:
    """Register images.d/NAME.conf, written first from new if given."""
    conf_path = image_conf_path(config_dir, name)
    with state.transaction():
        conf_text = None
        if new:
            if conf_path.exists():
                raise ConfigError(conf_path, f"image {name!r} exists already; edit this file "
                                  f"and run `boottorrent-add-image {name}`, or remove the "
                                  "image first")
            try:
                # Before the file is written: configobj cannot quote every value.
                for problem in text_problems(conf_path, new.description, new.cmdline):
                    raise problem
                conf_text = image_conf_text(new.kernel, new.initrds, new.cmdline,
                                            new.description, new.rootfs)
                image = _staged_image(conf_path, conf_text)
                if image.rootfs:
                    image = _built_image(image, state, stream)
            except ConfigError as error:
                raise OptionError(conf_path, error.message, key=error.key) from None
        else:
            image, problems = read_image(conf_path)
            if problems:
                raise problems[0]
            assert image
            if image.rootfs:
                image = _built_image(image, state, stream)

        registry = state.registry()
        previous = registry.get(name)
        if previous and not new and is_unchanged(image, previous, state):
            return Registered(previous, "unchanged", default_image(config, list(registry)))
        records = {**registry}
        writing = (nullcontext() if conf_text is None
                   else state.adding_conf(conf_path, conf_text, name))
        with writing:
            record = _store_and_commit(config, state, image, records, stream)
    return Registered(record, "re-registered" if previous else "registered",
                      default_image(config, list(records)))


def _built_image(image: Image, state: State, stream: TextIO) -> Image:
    """A rootfs image with the files built from its tree (cached by the
    tree's fingerprint)."""
    assert image.rootfs
    try:
        built = rootfs.build(image.rootfs, state.rootfs_builds, image.name, stream)
    except rootfs.TreeError as error:
        raise ConfigError(image.source, str(error), key="rootfs") from None
    kernel, *initrds = built.files
    return dataclasses.replace(image, kernel=kernel, initrds=tuple(initrds))


def _remove_unused_builds(state: State, records: dict[str, ImageRecord]) -> None:
    used = {Path(f.source).parent for record in records.values() for f in record.files}
    rootfs.remove_unused(state.rootfs_builds, used)


def _store_and_commit(config: Config, state: State, image: Image,
                      records: dict[str, ImageRecord],
                      stream: TextIO) -> ImageRecord:
    record, created = store(image, state, stream)
    # Updating a key keeps its place: a re-registered image keeps its turn.
    records[image.name] = record
    try:
        regenerate(config, state, records)
    except BaseException:
        if created:
            remove_tree(created)
        raise
    _remove_unused_builds(state, records)
    return record


def remove_image(config: Config, config_dir: Path, state: State, name: str) -> None:
    """Unregister an image and delete the images.d file add-image wrote for
    it; ConfigError if it is not registered, or if the admin wrote that
    file (which would describe the image still)."""
    with state.transaction():
        registry = state.registry()
        if name not in registry:
            raise ConfigError(state.root, f"no image {name!r} is registered")
        conf_path = image_conf_path(config_dir, name)
        if not written_by_add_image(conf_path):
            raise ConfigError(conf_path, "not written by boottorrent-add-image, so it is "
                              "yours to delete: remove or rename it, then remove the image")
        records = {n: r for n, r in registry.items() if n != name}
        regenerate(config, state, records)
        conf_path.unlink(missing_ok=True)
        _remove_unused_builds(state, records)


@dataclass
class Synced:
    """What sync_images did: lines for the journal, and the files it skipped."""

    changes: list[str] = dataclasses.field(default_factory=list)
    problems: list[ConfigError] = dataclasses.field(default_factory=list)


def sync_images(config: Config, config_dir: Path, state: State, stream: TextIO) -> Synced:
    """Make the registry follow images.d/: register each file that is new or
    changed, unregister each image whose file is gone.

    A file with a problem is skipped and reported; its image, if it was
    registered, keeps serving as it was, and every other image is synced.
    Each change is its own transaction, as add-image's and remove-image's.
    """
    synced = Synced()
    try:
        paths = image_conf_paths(config_dir)
    except ConfigError as error:  # an unreadable folder: unregister nothing
        synced.problems.append(error)
        return synced
    described = {path.name.removesuffix(".conf") for path in paths}
    for path in paths:
        name = path.name.removesuffix(".conf")
        try:
            result = add_image(config, config_dir, state, name, None, stream)
        except ConfigError as error:
            synced.problems.append(error)
            continue
        if result.action != "unchanged":
            synced.changes.append(f"{name}: {result.action} from {path}, "
                                  f"infohash {result.record.infohash}")
    for name in state.registry():
        if name not in described:
            try:
                remove_image(config, config_dir, state, name)
            except ConfigError as error:
                synced.problems.append(error)
                continue
            synced.changes.append(f"{name}: removed, {image_conf_path(config_dir, name)} is gone")
    return synced


def sync_mirror(config: Config, state: State) -> list[str]:
    """On a follower: make the registry the one its mirror wrote
    (mirror.py: its primary's images that it holds), in one transaction;
    lines for the journal. Each image's folder is hard links to the
    mirror's checked files, and its torrent. Nothing is changed when the
    mirror wrote nothing yet, or what it wrote cannot be read."""
    if not state.mirror_registry.exists():
        return []
    with state.transaction():
        wanted = read_registry(state.mirror)
        registered = state.registry()
        if list(wanted.items()) == list(registered.items()):
            return []
        for problem in registry_problems(config, list(wanted)):
            raise problem
        created = [_place_mirrored(state, record) for record in wanted.values()]
        try:
            regenerate(config, state, wanted)
        except BaseException:
            for folder in created:
                if folder:
                    remove_tree(folder)
            raise
    return ([f"{name}: registered from the primary, infohash {record.infohash}"
             for name, record in wanted.items() if registered.get(name) != record]
            + [f"{name}: removed, the primary has it no more"
               for name in registered if name not in wanted])


def _place_mirrored(state: State, record: ImageRecord) -> Path | None:
    """images/INFOHASH/ of a mirrored image, unless it is there: links to
    the mirror's files; the folder if this made it."""
    final = state.content_dir(record.infohash)
    if final.is_dir():
        return None
    source = state.mirror / record.infohash
    state.images.mkdir(parents=True, exist_ok=True)
    # .new-*: the next transaction removes it if this one dies (registry.py).
    work = Path(tempfile.mkdtemp(prefix=".new-", dir=state.images))
    try:
        (work / record.name).mkdir()
        for file in record.files:
            os.link(source / record.name / file.name, work / record.name / file.name)
        os.link(source / TORRENT_FILE, work / TORRENT_FILE)
        torrents.read_checked(work / TORRENT_FILE, record.infohash)
        work.chmod(0o755)
        os.rename(work, final)
    except (OSError, ValueError) as error:
        remove_tree(work)
        raise ConfigError(state.mirror_registry, f"image {record.name!r}: its mirrored copy "
                          f"is incomplete ({error})") from None
    return final
