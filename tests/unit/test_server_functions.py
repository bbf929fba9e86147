"""Unit tests of the server's pure functions: piece sizes, input checks,
HTTP ranges, status text."""

from __future__ import annotations

import pytest
from validate import ValidateError

from boottorrent.configfile import check_mac
from boottorrent.imageconf import check_cmdline, check_image_name
from boottorrent.pivotal.console import human_bytes
from boottorrent.status import format_status
from boottorrent.torrents import PIECES_MAX, piece_size_for
from boottorrent.intake import split_request
from boottorrent.answers import byte_range

MIB = 1 << 20


@pytest.mark.parametrize("size, piece", [
    (1, 256 * 1024), (16 * MIB, 256 * 1024), (1024 * MIB, 256 * 1024),
    (1024 * MIB + 1, 512 * 1024), (64 * 1024 * MIB, 16 * MIB), (1 << 50, 16 * MIB)])
def test_piece_size_policy(size, piece):
    assert piece_size_for(size) == piece
    if piece < 16 * MIB:
        assert -(-size // piece) <= PIECES_MAX


def test_mac_addresses_are_normalized_or_refused():
    assert check_mac(" 52-54-00-AA-bb-0C ") == "52:54:00:aa:bb:0c"
    for bad in ("52:54:00:aa:bb", "52:54:00:aa:bb:0g", "5254.00aa.bb0c", ""):
        with pytest.raises(ValidateError):
            check_mac(bad)


@pytest.mark.parametrize("name", ["a/b", "..", "a..b", "-x", "", "x" * 65, "é"])
def test_image_names_refused(name):
    with pytest.raises(ValueError, match="not allowed"):
        check_image_name(name)


def test_image_names_allowed():
    assert check_image_name("debian-12.4_compute") == "debian-12.4_compute"


def test_cmdline_limits():
    assert check_cmdline("a" * 2047) == "a" * 2047
    with pytest.raises(ValueError, match="at most 2019"):
        check_cmdline("a" * 2020, reserved=28)
    with pytest.raises(ValueError, match="control characters"):
        check_cmdline("quiet\nsplash")


@pytest.mark.parametrize("header, expected", [
    ("", (0, 999, False)),
    ("bytes=0-99", (0, 99, True)),
    ("bytes=900-", (900, 999, True)),
    ("bytes=-100", (900, 999, True)),
    ("bytes=-5000", (0, 999, True)),
    ("bytes=990-5000", (990, 999, True)),
    ("bytes=1000-", None),
    ("bytes=50-10", None),
    ("bytes=0-1,5-6", (0, 999, False)),  # several ranges: the whole file
    ("items=0-1", (0, 999, False)),
    ("bytes=" + "9" * 19 + "-", None),  # beyond any file, and int() of 5000 digits fails
    ("bytes=" + "9" * 5000 + "-", None),
])
def test_range_header(header, expected):
    assert byte_range(header, 1000) == expected


def test_human_bytes():
    assert [human_bytes(n) for n in (0, 1023, 1024, 5 * MIB + MIB // 2, 3 << 40)] == \
        ["0 B", "1023 B", "1.0 KiB", "5.5 MiB", "3072.0 GiB"]


def test_status_text():
    status = {"images": [{"name": "compute", "size": 16 * MIB, "seeds": 1, "leechers": 2,
                          "completions": None, "peers": 2, "uploaded": MIB,
                          "http_sent": MIB, "upload_rate": 1024}],
              "clients": [{"mac": "52:54:00:00:00:01", "address": "198.18.0.100",
                           "image": "compute", "phase": "downloading", "progress": 0.5,
                           "peers": 2, "from_server": 3 * MIB, "from_peers": 5 * MIB,
                           "received": 990.0}]}
    lines = format_status(status, now=1000.0).splitlines()
    assert lines[0].split() == ["IMAGE", "SIZE", "SEEDS", "LEECHERS", "COMPLETIONS", "PEERS",
                                "SENT", "BY", "SEEDER", "UP", "RATE"]
    assert lines[1].split() == ["compute", "16.0", "MiB", "1", "2", "?", "2", "2.0", "MiB",
                                "1.0", "KiB/s"]
    assert "[##########..........]   50%" in lines[4]
    assert lines[4].endswith("3.0 MiB      5.0 MiB     10s ago")
    # A machine that failed says why, as text (shown() escapes what it sent).
    refused = {"mac": "52:54:00:00:00:02", "address": "198.18.0.101", "image": "custom",
               "phase": "failed", "message": "its kernel is not signed\x1b[2J",
               "received": 990.0}
    text = format_status({"clients": [refused]}, now=1000.0)
    assert "52:54:00:00:00:02: image custom: its kernel is not signed" in text
    assert "\x1b" not in text
    assert format_status({}, now=1.0).splitlines() == [
        "no images are being seeded", "", "no client has reported yet"]


@pytest.mark.parametrize("buffer, expected", [
    (b"GET / HTTP/1.1\r\nHost: x\r\n", None),  # the head is not over yet
    (b"GET / HTTP/1.1\r\nHost: x\r\n\r\nGET /2", (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", True)),
    (b"POST /report HTTP/1.1\r\ncontent-length: 4\r\n\r\n{}", None),  # its body is not
    (b"POST /report HTTP/1.1\r\nContent-Length:4\r\n\r\n{ }\nGET",
     (b"POST /report HTTP/1.1\r\nContent-Length:4\r\n\r\n{ }\n", True)),
    # A body beyond what is read goes to the handler without it (413), and
    # the connection is closed after the answer.
    (b"POST /report HTTP/1.1\r\nContent-Length: 99999\r\n\r\nxx",
     (b"POST /report HTTP/1.1\r\nContent-Length: 99999\r\n\r\n", False)),
    # Other scripts' digits are no length (the handler answers 400).
    ("POST /report HTTP/1.1\r\nContent-Length: \u00b2\r\n\r\n".encode(),
     ("POST /report HTTP/1.1\r\nContent-Length: \u00b2\r\n\r\n".encode(), True)),
])
def test_a_request_is_whole_once_its_head_and_small_body_are_in(buffer, expected):
    assert split_request(bytearray(buffer), 4096) == expected
