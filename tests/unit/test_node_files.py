"""Each machine's own files: made on the server (boottorrent/nodes.py), laid
into the image by the pivotal (boottorrent/pivotal/node.py)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from boottorrent import nodes
from boottorrent.configfile import ConfigError
from boottorrent.pivotal import node, paths
from boottorrent.pivotal.wire import ImageSpec
from boottorrent.trust import neighbour_mac
from lab.token import newc_files

MAC = "52:54:00:e3:00:01"
RACK = nodes.Node(MAC, "compute", name="rack-01", group="rack", index=1)
LONE = nodes.Node("52:54:00:e3:00:02", "compute")  # a `MAC = image` line: no name
MOTD = "{{ name }} ({{ group }} #{{ index }}, {{ mac }}) runs {{ image }} at {{ address }}\n"


def image(cmdline: str, initrds: tuple[str, ...] = ("initrd.0",)) -> ImageSpec:
    return ImageSpec(name="compute", torrent="", kernel="kernel", initrds=list(initrds),
                     cmdline=cmdline, sha256={}, size=1)


@pytest.fixture(scope="module")
def state(tmp_path_factory) -> Path:
    """A state folder with the identities of RACK and LONE (the real ssh-keygen)."""
    root = tmp_path_factory.mktemp("state")
    assert nodes.make_identities(root, [RACK, LONE], sys.stderr) == 2
    return root


def snapshot_with(tmp_path: Path, templates: dict[str, str]) -> Path:
    source = tmp_path / nodes.TEMPLATES
    source.mkdir()
    for target, text in templates.items():
        (source / target).parent.mkdir(parents=True, exist_ok=True)
        (source / target).write_text(text)
    loaded = nodes.Templates.load(source)
    loaded.check([RACK, LONE])
    snapshot = tmp_path / "snapshot"
    snapshot.mkdir()
    nodes.write_snapshot_file([RACK, LONE], loaded, snapshot / nodes.SNAPSHOT_FILE)
    return snapshot


def test_identities_are_made_once_and_kept(state):
    folder = nodes.identity_folder(state, MAC)
    keys = {path.name: path.read_bytes() for path in folder.iterdir()}
    assert set(keys) == {nodes.MACHINE_ID, *(f"ssh_host_{kind}_key{pub}"
                                            for kind in nodes.KEY_TYPES for pub in ("", ".pub"))}
    assert all(path.stat().st_mode & 0o777 == 0o640 for path in folder.iterdir())
    assert folder.stat().st_mode & 0o777 == 0o750
    assert nodes.make_identities(state, [RACK], sys.stderr) == 0  # kept as they are
    assert keys == {path.name: path.read_bytes() for path in folder.iterdir()}
    other = nodes.identity_folder(state, LONE.mac) / "ssh_host_ed25519_key"
    assert other.read_bytes() != keys["ssh_host_ed25519_key"]


def test_a_listed_machine_gets_its_name_identity_and_templates(state, tmp_path):
    snapshot = snapshot_with(tmp_path, {"etc/motd": MOTD})
    files = newc_files(nodes.NodeFiles(snapshot, state).part(MAC, "198.18.0.7"))
    mine = {name.removeprefix(f"{paths.NODE}/"): entry for name, entry in files.items()}
    assert mine["etc/hostname"] == (0o100644, b"rack-01\n")
    assert b"127.0.1.1\track-01\n" in mine["etc/hosts"][1]
    assert mine["etc/motd"][1] == b"rack-01 (rack #1, 52:54:00:e3:00:01) runs compute at " \
                                  b"198.18.0.7\n"
    identity = nodes.identity_folder(state, MAC)
    assert mine["etc/ssh/ssh_host_ed25519_key"] == (
        0o100600, (identity / "ssh_host_ed25519_key").read_bytes())
    assert mine["etc/machine-id"][1] == (identity / "machine-id").read_bytes()
    assert files[paths.NODE][0] == 0o040700  # root's alone in the pivotal
    # A machine with no name gets no hostname; one not listed gets nothing.
    lone = newc_files(nodes.NodeFiles(snapshot, state).part(LONE.mac, "198.18.0.8"))
    assert f"{paths.NODE}/etc/hostname" not in lone and f"{paths.NODE}/etc/machine-id" in lone
    assert nodes.NodeFiles(snapshot, state).part("52:54:00:e3:00:99", "198.18.0.9") == b""


@pytest.mark.parametrize("text, expected", [
    ("{{ name }\n", "line 1: unexpected '}'"),
    ("{{ rack }}\n", "for 52:54:00:e3:00:01: 'rack' is undefined"),
])
def test_a_template_that_cannot_be_rendered_is_named(text, expected, tmp_path):
    (tmp_path / "etc").mkdir(parents=True)
    (tmp_path / "etc/motd").write_text(text)
    with pytest.raises(ConfigError) as error:
        nodes.Templates.load(tmp_path).check([RACK])
    assert str(error.value) == f"{tmp_path}/etc/motd: {expected}"


def test_a_template_that_is_a_link_is_refused(tmp_path):
    (tmp_path / "shadow").symlink_to("/etc/shadow")
    with pytest.raises(ConfigError, match="shadow: not a regular file or folder"):
        nodes.Templates.load(tmp_path)


def test_the_neighbour_table_names_the_mac_of_an_address(tmp_path):
    table = tmp_path / "arp"
    table.write_text(
        "IP address       HW type     Flags       HW address            Mask     Device\n"
        "198.18.0.7       0x1         0x2         52:54:00:E3:00:01     *        eth0\n"
        "198.18.0.8       0x1         0x0         00:00:00:00:00:00     *        eth0\n"
        "198.18.0.9       0x1         0x6         52:54:00:e3:00:09     *        eth0\n")
    assert neighbour_mac("198.18.0.7", table) == MAC
    assert neighbour_mac("198.18.0.8", table) is None  # incomplete: no answer yet
    assert neighbour_mac("198.18.0.9", table) == "52:54:00:e3:00:09"  # permanent
    assert neighbour_mac("198.18.0.70", table) is None


def own_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "node"
    (folder / "etc/ssh").mkdir(parents=True)
    (folder / "etc/hostname").write_text("rack-01\n")
    (folder / "etc/machine-id").write_text("0123\n")
    (folder / "etc/ssh/ssh_host_ed25519_key").write_text("key\n")
    (folder / "etc/ssh/ssh_host_ed25519_key").chmod(0o600)
    (folder / "srv").mkdir()
    (folder / "srv/role").write_text("gpu\n")
    folder.chmod(0o700)
    return folder


def test_an_image_without_live_boot_gets_the_files_at_their_paths(tmp_path):
    files = newc_files(node.image_part(image("root=/dev/ram0"), own_folder(tmp_path)))
    assert files["etc/hostname"][1] == b"rack-01\n"
    assert files["etc/ssh/ssh_host_ed25519_key"][0] == 0o100600
    assert node.image_part(image("root=/dev/ram0"), tmp_path / "none") == b""


def busybox_root(tmp_path: Path, part: bytes) -> Path:
    """An initramfs as the kernel unpacks it (busybox for its tools), with
    the part appended, and the image's root mounted at /root."""
    root = tmp_path / "initramfs"
    (root / "bin").mkdir(parents=True)
    shutil.copy("/bin/busybox", root / "bin/busybox")
    for tool in ("sh", "cp", "mkdir", "ln", "find", "rm"):
        (root / "bin" / tool).symlink_to("busybox")
    (root / "run").mkdir()
    (root / "conf").mkdir()
    (root / "conf/param.conf").write_text("")
    (root / "root/etc/ssh").mkdir(parents=True)
    (root / "root/etc").chmod(0o755)
    (root / "root/etc/machine-id").write_text("the tree's own\n")
    subprocess.run(["cpio", "-id", "--quiet"], input=part, cwd=root, check=True)
    return root


def run_live_bottom(root: Path) -> None:
    """initramfs-tools' run_scripts /scripts/live-bottom, once live-boot mounted the root."""
    subprocess.run(["/usr/sbin/chroot", str(root), "/bin/sh", "-c", f". /{node.LIVE_BOTTOM_ORDER}"],
                   env={"rootmnt": "/root", "PATH": "/bin"}, check=True)


@pytest.mark.skipif(os.geteuid() != 0, reason="chroot needs root")
def test_a_live_boot_image_gets_the_files_over_its_root(tmp_path):
    part = node.image_part(image("boot=live live-media=/boottorrent quiet"),
                           own_folder(tmp_path))
    root = busybox_root(tmp_path, part)
    run_live_bottom(root)
    assert (root / "root/etc/hostname").read_text() == "rack-01\n"
    assert (root / "root/etc/machine-id").read_text() == "0123\n"
    key = root / "root/etc/ssh/ssh_host_ed25519_key"
    assert key.read_text() == "key\n" and key.stat().st_mode & 0o777 == 0o600
    assert not (root / "run/systemd").exists()  # it has keys: nothing made at boot
    # The root's own folders keep their mode; the files' new folders are made.
    assert (root / "root").stat().st_mode & 0o777 == 0o755
    assert (root / "root/etc").stat().st_mode & 0o777 == 0o755
    assert (root / "root/srv/role").read_text() == "gpu\n"


@pytest.mark.skipif(os.geteuid() != 0, reason="chroot needs root")
def test_a_live_boot_image_the_server_sent_nothing_makes_its_own_identity(tmp_path):
    part = node.image_part(image("boot=live live-media=/boottorrent"), tmp_path / "none")
    root = busybox_root(tmp_path, part)
    run_live_bottom(root)
    assert (root / "root/etc/machine-id").read_text() == ""  # systemd makes one at boot
    units = root / "run/systemd/system"
    assert "ssh-keygen -A" in (units / "boottorrent-host-keys.service").read_text()
    assert os.readlink(units / "ssh.service.wants/boottorrent-host-keys.service") == \
        "../boottorrent-host-keys.service"
