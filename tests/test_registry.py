"""The server core: registering images, the generated files, and the
commands, run as the real command line on real files."""

from __future__ import annotations

import base64
import hashlib
import json
import shlex
import signal
import subprocess
import time
from pathlib import Path

import libtorrent as lt
import pytest

from boottorrent.pivotal import lan
from conftest import (PYTHON, REPO, cli, interruptible, stamp_bzimage_header, tree,
                      wait_for)


def add(image_files, config_dir, state_dir, name="compute", **kwargs):
    return cli("add-image", name, "--kernel", image_files["vmlinuz"],
               "--initrd", image_files["initrd-a.img"], "--initrd", image_files["initrd-b.img"],
               "--cmdline", "root=/dev/ram0 quiet", "--description", "Compute node",
               config_dir=config_dir, state_dir=state_dir, **kwargs)


def registry(state_dir: Path) -> dict:
    return json.loads((state_dir / "current" / "registry.json").read_text())["images"]


def libtorrent_check(torrent: bytes, save_path: Path) -> bool:
    """Let libtorrent itself check the files against the torrent."""
    session = lt.session({"listen_interfaces": "127.0.0.1:0", "enable_dht": False,
                          "enable_lsd": False, "enable_upnp": False, "enable_natpmp": False})
    params = lan.add_params(torrent, save_path)
    handle = session.add_torrent(params)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        status = handle.status()
        if status.state not in (lt.torrent_status.checking_files,
                                lt.torrent_status.checking_resume_data):
            return status.is_seeding and status.num_pieces == params.ti.num_pieces()
        time.sleep(0.1)
    raise TimeoutError("libtorrent did not finish checking")


def test_add_image_registers_files_and_torrent(image_files, config_dir, state_dir):
    result = add(image_files, config_dir, state_dir)
    assert result.returncode == 0, result.stderr
    assert "compute: registered" in result.stdout

    conf = (config_dir / "images.d" / "compute.conf").read_text()
    assert str(image_files["vmlinuz"]) in conf

    record = registry(state_dir)["compute"]
    content = state_dir / "images" / record["infohash"]
    sources = [image_files["vmlinuz"], image_files["initrd-a.img"], image_files["initrd-b.img"]]
    for file, source in zip(record["files"], sources):
        copy = content / "compute" / file["name"]
        assert copy.read_bytes() == source.read_bytes()
        assert file["sha256"] == hashlib.sha256(source.read_bytes()).hexdigest()
        assert file["size"] == source.stat().st_size
    assert [f["name"] for f in record["files"]] == ["kernel", "initrd.0", "initrd.1"]

    torrent = (state_dir / "current" / "torrents" / "compute.torrent").read_bytes()
    info = lt.torrent_info(lt.bdecode(torrent))
    assert str(info.info_hashes().v1) == record["infohash"]
    assert info.priv()
    assert [t.url for t in info.trackers()] == ["http://198.18.0.1:6969/announce"]
    assert info.web_seeds()[0]["url"] == f"http://198.18.0.1:6980/images/{record['infohash']}/"
    assert libtorrent_check((content / "torrent").read_bytes(), content)

    # The tracker serves the image and the pivotal's shared files, nothing else.
    whitelist = (state_dir / "current" / "tracker" / "whitelist").read_text().split()
    pivotal = (state_dir / "current" / "boot" / "pivotal.torrent").read_bytes()
    assert whitelist == [record["infohash"], str(lt.torrent_info(lt.bdecode(pivotal))
                                                 .info_hashes().v1)]


def test_progress_is_shown_in_plain_lines(image_files, config_dir, state_dir):
    result = add(image_files, config_dir, state_dir)
    assert "compute: copying: 100%" in result.stderr
    assert "compute: hashing pieces: 100%" in result.stderr


def test_pivotal_config_describes_images(image_files, config_dir, state_dir):
    assert add(image_files, config_dir, state_dir).returncode == 0
    conf = config_dir / "boottorrent.conf"
    conf.write_text(conf.read_text() + "[machines]\n52:54:00:AA:BB:CC = compute\n"
                    "[[rack1]]\nimage = compute\nmacs = 52:54:00:00:01:01, 52:54:00:00:01:02\n"
                    "hostname = rack1-node{index:03}\ncmdline = slurm.role=compute quiet\n")
    assert cli("generate", config_dir=config_dir, state_dir=state_dir).returncode == 0
    cpio = state_dir / "current" / "boot" / "pivotal" / "config.cpio"
    listing = subprocess.run(["cpio", "-i", "--to-stdout", "etc/boottorrent/pivotal.json"],
                             input=cpio.read_bytes(), capture_output=True, check=True)
    pivotal = json.loads(listing.stdout)
    image = pivotal["images"]["compute"]
    assert image["cmdline"] == "root=/dev/ram0 quiet"
    assert image["initrds"] == ["initrd.0", "initrd.1"]
    assert pivotal["mac_images"] == {"52:54:00:aa:bb:cc": "compute",
                                     "52:54:00:00:01:01": "compute",
                                     "52:54:00:00:01:02": "compute"}
    # Each machine of a group gets its own hostname, and the group's words.
    assert pivotal["mac_cmdline"] == {
        "52:54:00:00:01:01": "systemd.hostname=rack1-node001 slurm.role=compute quiet",
        "52:54:00:00:01:02": "systemd.hostname=rack1-node002 slurm.role=compute quiet"}
    assert pivotal["default_image"] == "compute"
    # The torrent the pivotal downloads names the tracker the server runs.
    info = lt.torrent_info(lt.bdecode(base64.b64decode(image["torrent"])))
    assert [t.url for t in info.trackers()] == ["http://198.18.0.1:6969/announce"]
    assert str(info.info_hashes().v1) == registry(state_dir)["compute"]["infohash"]
    for name in ("vmlinuz", "base.cpio.zst", "modules.cpio.zst", "stage.cpio.zst"):
        assert (state_dir / "current" / "boot" / "pivotal" / name).stat().st_size > 100_000


def test_generated_dnsmasq_config_passes_dnsmasq_test(image_files, config_dir, state_dir):
    assert add(image_files, config_dir, state_dir).returncode == 0
    for mode in ("full", "proxy"):
        conf = config_dir / "boottorrent.conf"
        conf.write_text(conf.read_text().replace("mode = full", f"mode = {mode}")
                        .replace("mode = proxy", f"mode = {mode}"))
        assert cli("generate", config_dir=config_dir, state_dir=state_dir).returncode == 0
        generated = state_dir / "current" / "dnsmasq.conf"
        result = subprocess.run(["dnsmasq", "--test", "-C", str(generated)],
                                capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
        assert "syntax check OK" in result.stderr


def test_reregistering_unchanged_image_changes_nothing(image_files, config_dir, state_dir):
    assert add(image_files, config_dir, state_dir).returncode == 0
    before = tree(state_dir)
    started = time.monotonic()
    again = cli("add-image", "compute", config_dir=config_dir, state_dir=state_dir)
    assert again.returncode == 0, again.stderr
    assert "unchanged" in again.stdout
    assert time.monotonic() - started < 5
    assert tree(state_dir) == before


def test_changed_file_gives_new_torrent(image_files, config_dir, state_dir):
    assert add(image_files, config_dir, state_dir).returncode == 0
    old = registry(state_dir)["compute"]["infohash"]
    image_files["initrd-b.img"].write_bytes(b"new content" * 1000)
    result = cli("add-image", "compute", config_dir=config_dir, state_dir=state_dir)
    assert result.returncode == 0, result.stderr
    assert "re-registered" in result.stdout
    new = registry(state_dir)["compute"]["infohash"]
    assert new != old
    # The new one only, and the pivotal's.
    assert (state_dir / "current" / "tracker" / "whitelist").read_text().split()[:-1] == [new]


def test_add_image_command_is_the_same_as_subcommand(image_files, config_dir, state_dir):
    result = cli("compute", "--kernel", image_files["vmlinuz"], config_dir=config_dir,
                 state_dir=state_dir, command="boottorrent-add-image")
    assert result.returncode == 0, result.stderr
    assert list(registry(state_dir)) == ["compute"]


def test_list_and_remove(image_files, config_dir, state_dir):
    assert add(image_files, config_dir, state_dir).returncode == 0
    assert add(image_files, config_dir, state_dir, name="second").returncode == 0
    listing = cli("list", config_dir=config_dir, state_dir=state_dir).stdout.splitlines()
    assert listing[0].split() == ["NAME", "SIZE", "INFOHASH", "REGISTERED"]
    assert [line.split()[0] for line in listing[1:]] == ["compute", "second"]
    infohash = registry(state_dir)["second"]["infohash"]

    result = cli("remove-image", "second", config_dir=config_dir, state_dir=state_dir)
    assert result.returncode == 0, result.stderr
    assert list(registry(state_dir)) == ["compute"]
    assert not (config_dir / "images.d" / "second.conf").exists()
    assert infohash not in (state_dir / "current" / "tracker" / "whitelist").read_text()


def test_remove_keeps_an_images_d_file_the_admin_wrote(image_files, config_dir, state_dir):
    conf = config_dir / "images.d" / "mine.conf"
    text = f"# my own\nkernel = {image_files['vmlinuz']}\n"
    conf.write_text(text)
    assert cli("add-image", "mine", config_dir=config_dir, state_dir=state_dir).returncode == 0
    before = registry(state_dir)

    refused = cli("remove-image", "mine", config_dir=config_dir, state_dir=state_dir)
    assert refused.returncode == 2
    assert f"{conf}: not written by boottorrent-add-image" in refused.stderr, refused.stderr
    assert conf.read_text() == text and registry(state_dir) == before

    conf.unlink()
    assert cli("remove-image", "mine", config_dir=config_dir, state_dir=state_dir).returncode == 0
    assert registry(state_dir) == {}


def test_sync_images_follows_images_d(image_files, config_dir, state_dir):
    """What boottorrent.service does at start and reload (and so whenever
    boottorrent-images.path sees images.d change)."""
    images = config_dir / "images.d"
    (images / "one.conf").write_text(f"kernel = {image_files['vmlinuz']}\n")
    (images / "bad.conf").write_text("kernel = /nonexistent\n")
    result = cli("sync-images", config_dir=config_dir, state_dir=state_dir)
    assert result.returncode == 2
    assert f"one: registered from {images / 'one.conf'}" in result.stdout, result.stdout
    assert f"{images / 'bad.conf'}: kernel: /nonexistent: no such file; skipped" \
        in result.stderr, result.stderr
    assert list(registry(state_dir)) == ["one"]
    infohash = registry(state_dir)["one"]["infohash"]

    # A second image, and an edit of the first; the bad file is still named.
    (images / "two.conf").write_text(f"kernel = {image_files['vmlinuz']}\n")
    (images / "one.conf").write_text(f"kernel = {image_files['vmlinuz']}\n"
                                     f"initrd = {image_files['initrd-a.img']},\n")
    result = cli("sync-images", config_dir=config_dir, state_dir=state_dir)
    assert result.returncode == 2 and "bad.conf" in result.stderr
    assert "one: re-registered" in result.stdout and "two: registered" in result.stdout
    assert sorted(registry(state_dir)) == ["one", "two"]
    assert registry(state_dir)["one"]["infohash"] != infohash

    # Removing a file unregisters its image; then everything agrees.
    (images / "two.conf").unlink()
    (images / "bad.conf").unlink()
    result = cli("sync-images", config_dir=config_dir, state_dir=state_dir)
    assert result.returncode == 0, result.stderr
    assert f"two: removed, {images / 'two.conf'} is gone" in result.stdout
    assert list(registry(state_dir)) == ["one"]
    before = tree(state_dir)
    result = cli("sync-images", config_dir=config_dir, state_dir=state_dir)
    assert result.returncode == 0 and "images.d and the registry agree" in result.stdout
    assert tree(state_dir) == before


def test_configured_says_whether_the_server_is_meant_to_run(config_dir, state_dir):
    assert cli("configured", config_dir=config_dir, state_dir=state_dir).returncode == 0
    conf = config_dir / "boottorrent.conf"
    text = conf.read_text()
    conf.write_text(text.replace("[server]\n", "[server]\ncolour = blue\n"))
    # Set but wrong is configured: generate names the mistake.
    assert cli("configured", config_dir=config_dir, state_dir=state_dir).returncode == 0
    lines = [line for line in text.splitlines() if not line.startswith("interface")]
    conf.write_text("\n".join(lines) + "\n")
    result = cli("configured", config_dir=config_dir, state_dir=state_dir)
    assert result.returncode == 1
    assert result.stderr == (f"boottorrent: {conf}: [server] interface: not set: name the "
                             "network interface that faces the cluster (BootTorrent serves "
                             "nothing until then)\n")


def test_check_reports_every_problem(image_files, config_dir, state_dir):
    ok = cli("check", config_dir=config_dir, state_dir=state_dir)
    assert ok.returncode == 0, ok.stderr
    conf = config_dir / "boottorrent.conf"
    conf.write_text(conf.read_text().replace("announce_interval = 2", "announce_interval = often")
                    + "colour = blue\n")
    (config_dir / "images.d" / "bad.conf").write_text("kernel = /nonexistent\n")
    result = cli("check", config_dir=config_dir, state_dir=state_dir)
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert any("[boot] colour: unknown key" in line for line in lines), lines
    assert any("[tracker] announce_interval:" in line for line in lines), lines
    assert any("bad.conf: kernel: /nonexistent: no such file" in line for line in lines), lines


# ---------------------------------------------------------------- bad input

def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


BAD_SERVER_CONFIGS = [
    # (what, text replaced, replacement, expected in the error line)
    ("unknown key", "mode = full", "mode = full\nmodee = full", "[dhcp] modee: unknown key"),
    ("wrong type", "announce_interval = 2", "announce_interval = sixty",
     "[tracker] announce_interval:"),
    ("malformed MAC", "menu_timeout = 0", "menu_timeout = 0\n[machines]\n52:54:00:zz:00:01 = x",
     "[machines] 52:54:00:zz:00:01:"),
    ("malformed MAC in group", "menu_timeout = 0",
     "menu_timeout = 0\n[machines]\n[[rack1]]\nimage = compute\nmacs = 52:54:00:1",
     "[machines][rack1] macs:"),
    ("hostname pattern", "menu_timeout = 0",
     "menu_timeout = 0\n[machines]\n[[rack1]]\nimage = compute\nmacs = 52:54:00:00:00:01\n"
     "hostname = node-{rack}", "[machines][rack1] hostname: 'node-{rack}' is not a pattern"),
    ("not a hostname", "menu_timeout = 0",
     "menu_timeout = 0\n[machines]\n[[rack1]]\nimage = compute\nmacs = 52:54:00:00:00:01\n"
     "hostname = node_{index}", "[machines][rack1] hostname: 'node_1' (for 52:54:00:00:00:01) "
     "is not a hostname"),
    ("one hostname for two", "menu_timeout = 0",
     "menu_timeout = 0\n[machines]\n[[rack1]]\nimage = compute\n"
     "macs = 52:54:00:00:00:01, 52:54:00:00:00:02\nhostname = node",
     "[machines][rack1] hostname: node is the hostname of 52:54:00:00:00:01 and of "
     "52:54:00:00:00:02"),
    ("one upload slot", "announce_interval = 2", "announce_interval = 2\n[seeder]\nupload_slots = 1",
     "[seeder] upload_slots:"),
    ("not configobj", "[dhcp]", "[dhcp", "not valid configobj syntax"),
]


@pytest.mark.parametrize("what,old,new,expected", BAD_SERVER_CONFIGS,
                         ids=[c[0] for c in BAD_SERVER_CONFIGS])
def test_bad_server_config(what, old, new, expected, image_files, config_dir, state_dir):
    assert add(image_files, config_dir, state_dir).returncode == 0
    conf = config_dir / "boottorrent.conf"
    assert old in conf.read_text()
    conf.write_text(conf.read_text().replace(old, new))
    before = tree(state_dir), tree(config_dir)
    result = cli("generate", config_dir=config_dir, state_dir=state_dir)
    assert_bad_input(result, str(conf), expected)
    assert (tree(state_dir), tree(config_dir)) == before


def assert_bad_input(result: subprocess.CompletedProcess, path: str, expected: str) -> None:
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = result.stderr.splitlines()
    assert len(lines) == 1, lines
    assert path in lines[0] and expected in lines[0], lines[0]


@pytest.mark.parametrize("name", ["a/b", "..", "two words", "caf\u00e9", "-x", ""])
def test_bad_image_name(name, image_files, config_dir, state_dir):
    before = tree(state_dir), tree(config_dir)
    result = cli("add-image", "--kernel", image_files["vmlinuz"], "--", name,
                 config_dir=config_dir, state_dir=state_dir)
    # argparse itself rejects "-x" as an unknown option, also with exit 2.
    assert result.returncode == 2, result.stderr
    assert len(result.stderr.strip().splitlines()) >= 1
    if name != "-x":
        assert "image name" in result.stderr and result.stderr.count("\n") == 1
    assert (tree(state_dir), tree(config_dir)) == before


def test_bad_image_descriptions(image_files, config_dir, state_dir, tmp_path):
    assert add(image_files, config_dir, state_dir).returncode == 0
    empty = write(tmp_path / "empty", "")
    images_d = config_dir / "images.d"
    cases = [
        ("missing kernel", "kernel = /nonexistent/vmlinuz\n", "kernel: /nonexistent/vmlinuz: no such file"),
        ("empty kernel", f"kernel = {empty}\n", "kernel: " + str(empty) + ": file is empty"),
        ("missing initrd", f"kernel = {image_files['vmlinuz']}\ninitrd = /nope,\n", "initrd: /nope: no such file"),
        ("newline in cmdline", f"kernel = {image_files['vmlinuz']}\ncmdline = '''a\nb'''\n", "cmdline: the kernel command line must be one line"),
        ("unknown key", f"kernel = {image_files['vmlinuz']}\nkernal = x\n", "kernal: unknown key"),
        ("no kernel key", "cmdline = quiet\n", "kernel: missing value"),
        ("bad method", f"kernel = {image_files['vmlinuz']}\nmethod = pxe\n", "method:"),
        ("not configobj", "kernel = [unclosed\n[[x\n", "not valid configobj syntax"),
        ("kernel is a folder", f"kernel = {tmp_path}\n", f"kernel: {tmp_path}: cannot read"),
    ]
    for what, text, expected in cases:
        conf = write(images_d / "broken.conf", text)
        before = tree(state_dir), tree(config_dir)
        result = cli("add-image", "broken", config_dir=config_dir, state_dir=state_dir)
        assert_bad_input(result, str(conf), expected)
        assert (tree(state_dir), tree(config_dir)) == before, what


def test_unreadable_image_description(image_files, config_dir, state_dir):
    # Root can read any file, so a folder stands in for an unreadable file.
    conf = config_dir / "images.d" / "broken.conf"
    conf.mkdir()
    before = tree(state_dir)
    assert_bad_input(cli("add-image", "broken", config_dir=config_dir, state_dir=state_dir),
                     str(conf), "cannot read: Is a directory")
    assert tree(state_dir) == before


def test_unreadable_config(image_files, config_dir, state_dir):
    conf = config_dir / "boottorrent.conf"
    conf.write_bytes(b"[server]\ninterface = \xff\xfe\n")
    result = cli("generate", config_dir=config_dir, state_dir=state_dir)
    assert_bad_input(result, str(conf), "cannot read")


def test_duplicate_image(image_files, config_dir, state_dir):
    assert add(image_files, config_dir, state_dir).returncode == 0
    before = tree(state_dir), tree(config_dir)
    result = add(image_files, config_dir, state_dir)
    assert_bad_input(result, str(config_dir / "images.d" / "compute.conf"), "exists already")
    assert (tree(state_dir), tree(config_dir)) == before


def test_newline_in_cmdline_option(image_files, config_dir, state_dir):
    result = cli("add-image", "x", "--kernel", image_files["vmlinuz"], "--cmdline", "a\nb",
                 config_dir=config_dir, state_dir=state_dir)
    assert_bad_input(result, ": --cmdline: ", "one line")
    assert not (config_dir / "images.d" / "x.conf").exists()


def test_unknown_default_image(image_files, config_dir, state_dir):
    assert add(image_files, config_dir, state_dir).returncode == 0
    conf = config_dir / "boottorrent.conf"
    conf.write_text(conf.read_text().replace("menu_timeout = 0", "menu_timeout = 0\n"
                                             "default_image = nosuch"))
    before = tree(state_dir)
    assert_bad_input(cli("generate", config_dir=config_dir, state_dir=state_dir), str(conf),
                     "[boot] default_image: image 'nosuch' is not registered")
    assert tree(state_dir) == before


def test_missing_pivotal_kernel(image_files, config_dir, state_dir):
    conf = config_dir / "boottorrent.conf"
    conf.write_text(conf.read_text().replace("kernel = /", "kernel = /nonexistent/"))
    result = add(image_files, config_dir, state_dir)
    assert_bad_input(result, str(conf), "[pivotal] kernel:")
    assert tree(state_dir / "images") == {}
    assert not (state_dir / "current").exists()
    assert not (config_dir / "images.d" / "compute.conf").exists()


@pytest.mark.parametrize("damage", [b"not bencoded", b"d4:infod4:name1:xee"])
def test_corrupt_torrent(damage, image_files, config_dir, state_dir):
    assert add(image_files, config_dir, state_dir).returncode == 0
    torrent = state_dir / "images" / registry(state_dir)["compute"]["infohash"] / "torrent"
    torrent.write_bytes(damage)
    before = tree(state_dir), tree(config_dir)
    result = cli("generate", config_dir=config_dir, state_dir=state_dir)
    assert_bad_input(result, str(torrent), "corrupt torrent of image 'compute'")
    assert (tree(state_dir), tree(config_dir)) == before
    # The way out the message names works, and keeps the infohash.
    infohash = registry(state_dir)["compute"]["infohash"]
    result = cli("add-image", "compute", config_dir=config_dir, state_dir=state_dir)
    assert result.returncode == 0 and "compute: re-registered" in result.stdout, result.stderr
    assert registry(state_dir)["compute"]["infohash"] == infohash
    assert cli("generate", config_dir=config_dir, state_dir=state_dir).returncode == 0


# ---------------------------------------------------------------- failures

def test_disk_full_changes_nothing(image_files, config_dir, state_dir, tmp_path):
    """Register onto a tmpfs (in a private mount namespace) with 24 MiB free
    an image of 40 MiB; the registry and generated files stay as they were."""
    assert add(image_files, config_dir, state_dir, name="small").returncode == 0
    big = tmp_path / "big.img"
    big.write_bytes(b"\0" * (40 << 20))
    stamp_bzimage_header(big)
    before = tree(state_dir), tree(config_dir)
    # The command runs on the tmpfs copy; the trees compared are read there,
    # after it failed, and printed as JSON on the last line.
    dump = (f"import json, sys; sys.path.insert(0, {str(REPO / 'tests')!r}); "
            f"from conftest import tree; "
            f"print(json.dumps([tree(__import__('pathlib').Path({str(state_dir)!r})), "
            f"tree(__import__('pathlib').Path({str(config_dir)!r}))]))")
    script = (f"set -e; d=$(mktemp -d); cp -a {state_dir}/. $d/; "
              f"size=$(( $(du -sm $d | cut -f1) + 24 )); "
              f"mount -t tmpfs -o size=${{size}}m tmpfs {state_dir}; cp -a $d/. {state_dir}/; "
              f"rm -rf $d; rc=0; {PYTHON} -m boottorrent add-image big --kernel {big} || rc=$?; "
              f"{PYTHON} -c {shlex.quote(dump)}; exit $rc")
    result = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c",
                             script], capture_output=True, text=True,
                            env={"PYTHONPATH": str(REPO), "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
                                 "BOOTTORRENT_CONFIG_DIR": str(config_dir),
                                 "BOOTTORRENT_STATE_DIR": str(state_dir)})
    assert result.returncode == 1, result.stderr
    assert "No space left on device" in result.stderr
    assert "nothing was changed" in result.stderr
    state_after, config_after = json.loads(result.stdout.splitlines()[-1])
    assert (state_after, config_after) == before


def test_interrupt_changes_nothing(image_files, config_dir, state_dir, tmp_path):
    assert add(image_files, config_dir, state_dir).returncode == 0
    big = tmp_path / "big.img"
    with big.open("wb") as out:
        for _ in range(64):
            out.write(hashlib.sha512(out.tell().to_bytes(8, "little")).digest() * (1 << 18))
    stamp_bzimage_header(big)
    before = tree(state_dir), tree(config_dir)
    process = subprocess.Popen(
        [PYTHON, "-m", "boottorrent", "add-image", "big", "--kernel", str(big),
         "--config-dir", str(config_dir), "--state-dir", str(state_dir)],
        cwd=REPO, stderr=subprocess.PIPE, text=True, preexec_fn=interruptible)
    # Interrupt it in the middle of storing the files.
    wait_for(lambda: any((state_dir / "images").glob(".new-*/big/kernel")), 60,
             "add-image to be copying the kernel")
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    assert "interrupted; nothing was changed" in stderr
    assert (tree(state_dir), tree(config_dir)) == before
