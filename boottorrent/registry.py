"""The image registry and everything derived from it, in /var/lib/boottorrent.

Layout of the state directory:

    images/<infohash>/NAME/kernel, initrd.0, ...   registered files (immutable)
    images/<infohash>/torrent                      the torrent's info, as created
    snapshots/<N>/registry.json                    the registry ...
    snapshots/<N>/...                              ... and every file made from it
    current -> snapshots/<N>                       what the services use
    cache/                                         pivotal parts, reusable (*)
    cache/rootfs/<fingerprint>/                    images built from trees (*)
    pending-conf.json                              an images.d file being added
    mirror/INFOHASH/NAME/FILE, mirror/INFOHASH/torrent
                                                   a follower's: its primary's images
    mirror/registry.json                           ... and the registry they make (mirror.py)

(*) The system's state folder, /var/lib/boottorrent, keeps its cache in
/var/cache/boottorrent instead (FHS: files that can be rebuilt). The
pivotal's parts are built there from this server's own packages and rebuilt
when one of them changes; losing the folder costs one rebuild.

A change builds a whole new snapshot beside the current one and then swaps
the `current` symlink with one rename(2): the registry and all generated
files change together or not at all. Image files are stored by infohash, so
a running seeder keeps reading the files it seeds until it reloads.

Every change runs in State.transaction(): under the state lock, after
undoing what a killed command left (unfinished folders, an images.d file
written for an image that never got registered).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from boottorrent.fsutil import locked, remove_tree, write_atomic
from boottorrent.image import ImageRecord

REGISTRY_FILE = "registry.json"
TORRENT_FILE = "torrent"
SYSTEM_STATE = Path("/var/lib/boottorrent")
SYSTEM_CACHE = Path("/var/cache/boottorrent")
SNAPSHOTS_KEPT = 2  # the current one and the one before, which a seeder may still read


class StateError(Exception):
    """The state folder is not as this program left it (one line naming
    what is wrong): nothing is changed until an admin has looked."""


class State:
    """Paths in the state directory and the snapshot commit."""

    def __init__(self, root: Path):
        self.root = root
        self.images = root / "images"
        self.snapshots = root / "snapshots"
        self.current = root / "current"
        self.cache = SYSTEM_CACHE if root.absolute() == SYSTEM_STATE else root / "cache"
        self.rootfs_builds = self.cache / "rootfs"  # images built from trees (rootfs.py)
        self.pending_conf = root / "pending-conf.json"
        # A follower's (mirror.py): written by boottorrent-follow.service,
        # registered by `sync-images` (registration.sync_mirror).
        self.mirror = root / "mirror"
        self.mirror_registry = self.mirror / REGISTRY_FILE

    def content_dir(self, infohash: str) -> Path:
        return self.images / infohash

    def torrent_path(self, infohash: str) -> Path:
        return self.content_dir(infohash) / TORRENT_FILE

    def registry(self) -> dict[str, ImageRecord]:
        """The committed registry (empty before the first generate);
        StateError when `current` names a snapshot that is not there: an
        empty registry then would unregister every image and, on the next
        commit, delete their files."""
        if not self.current.is_symlink() and not self.current.exists():
            return {}
        return read_registry(self.current)

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """Hold the state lock, after recovering from a killed command."""
        with locked(self.root):
            self._recover()
            yield

    @contextmanager
    def adding_conf(self, path: Path, text: str, image: str) -> Iterator[None]:
        """Write an images.d file for an image being registered.

        The file is in /etc, outside the snapshot, so it cannot be part of
        the commit's rename: a marker records it first, and the next
        transaction removes it if the command died before image was
        registered. On an error in the block it is removed at once.
        """
        write_atomic(self.pending_conf, json.dumps(
            {"path": str(path), "image": image,
             "sha256": hashlib.sha256(text.encode()).hexdigest()}))
        try:
            write_atomic(path, text)
            yield
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        finally:
            self.pending_conf.unlink(missing_ok=True)

    def _recover(self) -> None:
        if self.pending_conf.exists():
            pending = json.loads(self.pending_conf.read_text())
            path = Path(pending["path"])
            try:
                written = hashlib.sha256(path.read_bytes()).hexdigest() == pending["sha256"]
            except FileNotFoundError:
                written = False
            if written and pending["image"] not in self.registry():
                path.unlink()
            self.pending_conf.unlink()
        for folder in (self.snapshots, self.images, self.rootfs_builds):
            for leftover in folder.glob(".new-*"):
                remove_tree(leftover)

    def new_snapshot(self) -> Path:
        self.snapshots.mkdir(parents=True, exist_ok=True)
        path = Path(tempfile.mkdtemp(prefix=".new-", dir=self.snapshots))
        path.chmod(0o755)
        return path

    def commit(self, snapshot: Path) -> Path:
        """Make a fully written snapshot current, atomically; returns its path."""
        numbers = [int(p.name) for p in self.snapshots.iterdir() if p.name.isdigit()]
        final = self.snapshots / f"{max(numbers, default=0) + 1:06d}"
        os.rename(snapshot, final)
        link = self.root / ".current.new"
        link.unlink(missing_ok=True)
        link.symlink_to(final.relative_to(self.root))
        _fsync_dir(self.snapshots)
        os.replace(link, self.current)
        _fsync_dir(self.root)
        self._collect_garbage()
        return final

    def _collect_garbage(self) -> None:
        """Remove old snapshots, and images no snapshot kept needs."""
        numbered = sorted(p for p in self.snapshots.iterdir() if p.name.isdigit())
        kept, old = numbered[-SNAPSHOTS_KEPT:], numbered[:-SNAPSHOTS_KEPT]
        for snapshot in old:
            remove_tree(snapshot)
        try:
            needed = {r.infohash for s in kept for r in read_registry(s).values()}
        except StateError:
            return  # an image a snapshot kept may need cannot be told: keep them all
        if self.images.is_dir():
            for content in self.images.iterdir():
                if content.name not in needed:
                    remove_tree(content)


def read_registry(snapshot: Path) -> dict[str, ImageRecord]:
    """A snapshot's registry; StateError if it is missing or unreadable."""
    path = snapshot / REGISTRY_FILE
    try:
        data = json.loads(path.read_text())
        return {name: ImageRecord.from_json(record) for name, record in data["images"].items()}
    except FileNotFoundError:
        if snapshot.is_symlink():
            raise StateError(
                f"{snapshot}: points to {os.readlink(snapshot)}, which "
                f"{'has no ' + REGISTRY_FILE if snapshot.exists() else 'is missing'}; "
                "the registered images cannot be known, so nothing is changed: point it "
                "at the newest snapshot that is there (ln -sfn snapshots/N "
                f"{snapshot}) or restore the state folder") from None
        raise StateError(f"{path}: missing; the snapshot is incomplete") from None
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise StateError(f"{path}: unreadable ({error})") from None


def registry_json(records: dict[str, ImageRecord]) -> str:
    """The registry in registration order: the first image is the default
    one unless the configuration names another."""
    images = {name: record.to_json() for name, record in records.items()}
    return json.dumps({"version": 1, "images": images}, indent=2) + "\n"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
