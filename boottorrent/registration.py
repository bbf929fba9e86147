"""Registering and removing images: the transactions behind
`boottorrent-add-image` and `boottorrent remove-image`.

Each runs in one State.transaction(): validate, store the files, write the
images.d file, regenerate, commit; on any failure (bad input, full disk,
Ctrl-C, or a kill that the next transaction undoes) the registry, the
generated files and images.d stay as they were.
"""

from __future__ import annotations

import dataclasses
import tempfile
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from boottorrent.config import Config, default_image
from boottorrent.configfile import ConfigError
from boottorrent.imageconf import (Image, image_conf_path, image_conf_text, image_problems,
                                   text_problems)
from boottorrent.fsutil import remove_tree
from boottorrent.generate import regenerate
from boottorrent.images import is_unchanged, store
from boottorrent.registry import ImageRecord, State


@dataclass(frozen=True)
class NewImage:
    """What `boottorrent-add-image NAME --kernel ...` says of a new image."""

    kernel: Path
    initrds: list[Path]
    cmdline: str
    description: str


@dataclass(frozen=True)
class Registered:
    record: ImageRecord
    action: str  # registered, re-registered, unchanged
    default_image: str | None


def _staged_image(conf_path: Path, text: str) -> Image:
    """Validate a new images.d file where nobody can see it yet."""
    with tempfile.TemporaryDirectory() as scratch:
        staged = Path(scratch) / conf_path.name
        staged.write_text(text)
        image, problems = image_problems(staged)
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
            # Before the file is written: configobj cannot quote every value.
            for problem in text_problems(conf_path, new.description, new.cmdline):
                raise problem
            conf_text = image_conf_text(new.kernel, new.initrds, new.cmdline, new.description)
            image = _staged_image(conf_path, conf_text)
        else:
            image, problems = image_problems(conf_path)
            if problems:
                raise problems[0]
            assert image

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
    return record


def remove_image(config: Config, config_dir: Path, state: State, name: str) -> None:
    """Unregister an image and delete its images.d file; ConfigError if it
    is not registered."""
    with state.transaction():
        registry = state.registry()
        if name not in registry:
            raise ConfigError(state.root, f"no image {name!r} is registered")
        regenerate(config, state, {n: r for n, r in registry.items() if n != name})
        image_conf_path(config_dir, name).unlink(missing_ok=True)
