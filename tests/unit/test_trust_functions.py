"""Which requests come from a machine the server booted (boottorrent/trust.py)."""

from __future__ import annotations

import subprocess

from boottorrent import trust
from boottorrent.pivotal.wire import TOKEN_FILE
from lab.token import token_in

MAC = "52:54:00:aa:bb:cc"


def test_a_token_works_from_its_own_address_only(tmp_path):
    trust.make_key(tmp_path)
    key = trust.load_key(tmp_path)
    assert (tmp_path / trust.KEY_FILE).stat().st_mode & 0o777 == 0o640
    trust.make_key(tmp_path)  # made once: tokens handed out stay good
    assert trust.load_key(tmp_path) == key
    server = trust.Trust(key)
    token = server.token("198.18.0.10", MAC)
    assert server.machine("198.18.0.10", token) == MAC
    assert server.machine("198.18.0.11", token) is None  # another machine's address
    assert trust.Trust(b"x" * 32).machine("198.18.0.10", token) is None  # another server's
    other_mac = token.replace("cc-", "cd-", 1)
    assert server.machine("198.18.0.10", other_mac) is None
    for bad in ("", "x", token.upper(), token + "0", "52:54:00:aa:bb:cc"):
        assert server.machine("198.18.0.10", bad) is None, bad
    # A MAC in another form than iPXE's gets no token.
    assert server.token("198.18.0.10", "52-54-00-AA-BB-CC") is None
    assert server.token("198.18.0.10", "") is None


def test_a_refused_source_is_logged_once_among_the_latest(monkeypatch):
    monkeypatch.setattr(trust, "LOGGED_MAX", 3)
    server = trust.Trust(b"k" * 32)
    assert [server.first_refusal(a) for a in ("a", "a", "b", "c", "d", "a")] == [
        True, False, True, True, True, True]  # "a" fell out: logged again


def test_the_token_part_is_a_cpio_that_cpio_reads():
    part = trust.token_part("525400aabbcc-0123")
    assert len(part) % 512 == 0
    unpacked = subprocess.run(["cpio", "-i", "--quiet", "--to-stdout", TOKEN_FILE],
                              input=part, capture_output=True, check=True).stdout
    assert unpacked == b"525400aabbcc-0123\n"
    assert token_in(part + b"070701...") == "525400aabbcc-0123"
