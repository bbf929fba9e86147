"""What a follower takes from its primary (boottorrent/mirror.py): the
registry and each image's torrent, refused unless every name, hash and
file in them is what it should be."""

from __future__ import annotations

import json

import libtorrent as lt
import pytest

from boottorrent import torrents
from boottorrent.image import FileRecord, ImageRecord
from boottorrent.mirror import PrimaryError, check_torrent, parse_registry
from boottorrent.registry import registry_json


@pytest.fixture
def image(tmp_path) -> tuple[ImageRecord, bytes]:
    """A registered image of two files, its record and its full torrent."""
    (tmp_path / "compute").mkdir()
    (tmp_path / "compute" / "kernel").write_bytes(b"k" * 300_000)
    (tmp_path / "compute" / "initrd.0").write_bytes(b"i" * 500_000)
    torrent = torrents.create(tmp_path, "compute", [("kernel", 300_000), ("initrd.0", 500_000)])
    record = ImageRecord(
        name="compute", infohash=torrents.info_hash(torrent), description="Compute node",
        cmdline="quiet", method="kexec", arch="x86_64", registered="2026-12-08T00:00:00Z",
        piece_size=torrents.load(torrent).piece_length(), conf_sha256="",
        files=(FileRecord("kernel", "/srv/kernel", 300_000, "0" * 64, 1),
               FileRecord("initrd.0", "/srv/initrd", 500_000, "1" * 64, 1)))
    full = torrents.with_urls(torrent, "http://192.0.2.1:6969/announce",
                              "http://192.0.2.1:6980/images/x/")
    return record, full


def test_a_registry_as_the_primary_writes_it(image):
    record, _ = image
    assert parse_registry(registry_json({"compute": record}).encode()) == {"compute": record}


@pytest.mark.parametrize("change, expected", [
    (lambda r: r.update(name="other"), "malformed record"),
    (lambda r: r.update(infohash="../../etc"), "malformed record"),
    (lambda r: r["files"][0].update(name="../../../etc/passwd"), "malformed record"),
    (lambda r: r.update(files=[]), "malformed record"),
    (lambda r: r.update(description="Compute\nchain http://evil/x"), "description: must be one"),
    (lambda r: r.update(cmdline="quiet\x85init=/bin/sh"), "cmdline: the kernel command line"),
    (lambda r: r.pop("infohash"), "not a registry"),
])
def test_a_registry_that_cannot_be_taken(image, change, expected):
    record, _ = image
    data = json.loads(registry_json({"compute": record}))
    change(data["images"]["compute"])
    with pytest.raises(PrimaryError, match=expected):
        parse_registry(json.dumps(data).encode())


def test_a_torrent_is_taken_without_its_web_seed(image):
    record, full = image
    taken = lt.bdecode(check_torrent(full, record))
    assert b"url-list" not in taken
    assert taken[b"announce"] == b"http://192.0.2.1:6969/announce"
    assert torrents.info_hash(lt.bencode(taken)) == record.infohash


def test_a_torrent_of_other_bytes_or_files_is_refused(image, tmp_path):
    record, full = image
    other = torrents.create(tmp_path, "compute", [("kernel", 300_000)])
    with pytest.raises(PrimaryError, match="has infohash"):
        check_torrent(other, record)
    # The same infohash named by a record listing other files: refused too.
    fewer = ImageRecord(**{**record.__dict__, "files": record.files[:1]})
    with pytest.raises(PrimaryError, match="other files than the registry lists"):
        check_torrent(full, fewer)
    with pytest.raises(PrimaryError, match="the torrent of 'compute'"):
        check_torrent(b"not bencoded", record)
