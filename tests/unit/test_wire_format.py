"""Unit tests of what the server and the pivotal tell each other
(boottorrent/pivotal/wire.py), and of the one declaration of each swarm
setting driving the configspec and the shipped example configuration."""

from __future__ import annotations

import json
import re
from dataclasses import asdict, fields, replace
from pathlib import Path

import pytest

from boottorrent.configfile import SERVER_SPEC, configspec
from boottorrent.pivotal.console import shown
from boottorrent.pivotal.wire import (VERSION, ImageSpec, PivotalConfig, Report,
                                      SwarmSettings)

EXAMPLE_CONF = Path(__file__).resolve().parents[2] / "etc" / "boottorrent.conf"

CONFIG = PivotalConfig(
    server="198.18.0.1", seeder_port=6881, report_url="http://198.18.0.1:6980/report",
    swarm=SwarmSettings(fallback_after=30), default_image="compute",
    mac_images={"52:54:00:00:00:02": "compute"},
    images={"compute": ImageSpec(name="compute", torrent="ZDEwOmU=", kernel="kernel", initrds=["initrd.0"],
                                 cmdline="quiet", size=3, sha256={"kernel": "ab"})})


def test_the_token_is_the_machines_own_beside_pivotal_json(tmp_path):
    (tmp_path / "pivotal.json").write_bytes(CONFIG.to_json())
    assert PivotalConfig.load(tmp_path / "pivotal.json") == CONFIG  # none: ""
    (tmp_path / "token").write_text("525400aabbcc-0123\n")
    loaded = PivotalConfig.load(tmp_path / "pivotal.json")
    assert loaded.token == "525400aabbcc-0123"
    assert b"token" not in loaded.to_json()  # never in what the server writes for all


def test_pivotal_config_round_trip():
    text = CONFIG.to_json()
    assert PivotalConfig.from_json(text) == CONFIG
    assert json.loads(text)["swarm"]["fallback_after"] == 30


@pytest.mark.parametrize("change, message", [
    (lambda d: {**d, "version": VERSION + 1}, f"of version {VERSION + 1}; this pivotal"),
    (lambda d: [d], "of version None"),
    (lambda d: {k: v for k, v in d.items() if k != "server"}, "incomplete"),
    (lambda d: {**d, "images": {"x": {"kernel": "k"}}}, "incomplete"),
    (lambda d: {**d, "swarm": {**d["swarm"], "retries": 3}}, "incomplete"),
])
def test_pivotal_config_refuses_other_data(change, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        PivotalConfig.from_json(json.dumps(change(json.loads(CONFIG.to_json()))))


def test_report_from_the_wire():
    sent = Report(mac="52:54:00:00:00:01", phase="seeding", progress=1, from_server=5,
                  downloaded_at=12.5)
    received = Report.from_dict({**json.loads(sent.to_json()), "extra": "ignored"})
    assert received == replace(sent, progress=1)
    assert Report.from_dict({}) == Report()


@pytest.mark.parametrize("data, message", [
    ({"progress": "half"}, "'progress' must be float"),
    ({"from_server": 1.5}, "'from_server' must be int"),
    ({"peers": True}, "'peers' must be int"),
    ({"mac": None}, "'mac' must be str"),
    ({"phase": "dancing"}, "phase 'dancing' is none of"),
    ({"version": 0}, "report of version 0"),
])
def test_report_refuses_bad_fields(data, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        Report.from_dict(data)


def test_each_swarm_setting_is_in_the_configspec_and_documented():
    spec = configspec(SERVER_SPEC)
    example = EXAMPLE_CONF.read_text()
    for setting in fields(SwarmSettings):
        section = setting.metadata["section"]
        line = next(i for i, text in enumerate(spec) if text == f"[{section}]")
        following = spec[line + 1:]
        section_lines = following[:next((i for i, t in enumerate(following)
                                         if t.startswith("[")), len(following))]
        assert any(t.startswith(f"{setting.name} = ") and f"default={setting.default})" in t
                   for t in section_lines), (setting.name, section_lines)
        # The shipped configuration shows each setting, in its section, at its default.
        shown = re.search(rf"^\[{section}\]$(.*?)(?=^\[|\Z)", example, re.M | re.S)
        assert shown and re.search(rf"^#?\s*{setting.name} = {setting.default}$",
                                   shown[1], re.M), (section, setting.name)
    assert asdict(SwarmSettings()) == {f.name: f.default for f in fields(SwarmSettings)}


@pytest.mark.parametrize("field, value", [
    ("from_server", 10 ** 400), ("from_server", -1), ("progress", -3.0), ("progress", 1e308),
    ("progress", float("nan")), ("size", float("inf")), ("uploaded", float("-inf")),
    ("exit_status", 1 << 40), ("started", -1.0)])
def test_a_report_with_a_number_no_machine_sends_is_refused(field, value):
    with pytest.raises(ValueError, match=f"report field '{field}' must be "):
        Report.from_dict({field: value})


def test_text_from_a_machine_is_shown_with_its_controls_escaped():
    assert shown("node\x1b[2J\x1b]0;t\x07\nx\r\x85\u2028\u202e.") == \
        "node\\x1b[2J\\x1b]0;t\\x07\\x0ax\\x0d\\x85\\u2028\\u202e."
    assert shown("plain text, café") == "plain text, café"
