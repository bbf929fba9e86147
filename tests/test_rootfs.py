"""Images built from a root file system tree (`boottorrent-add-image NAME
--rootfs DIR`, issue 13): the real command line, the real mksquashfs, on
small trees made here with the layout Debian gives one (a kernel in boot/,
its modules, an initramfs-tools initramfs with live-boot's script). The
QEMU test in test_e2e_qemu.py boots a real bookworm tree."""

from __future__ import annotations

import gzip
import io
import os
import signal
import subprocess
from pathlib import Path

import pytest

from conftest import PYTHON, REPO, cli, stamp_bzimage_header, tree, wait_for
from test_bad_input import option_refused, refused
from test_registry import registry

from lab.testimage import CpioWriter

VERSION = "6.1.0-99-amd64"
LIVE_WORDS = "boot=live live-media=/boottorrent"
SQUASHFS = "boottorrent/live/filesystem.squashfs"


def newc(entries: dict[str, bytes]) -> bytes:
    """A newc cpio of regular files (folders implied), as cpio -H newc writes."""
    out = io.BytesIO()
    cpio = CpioWriter(out)
    for name, data in entries.items():
        cpio.file(name, data)
    cpio.trailer()
    return out.getvalue()


def make_tree(root: Path, *, kernel: bool = True, modules: bool = True, initrd: bool = True,
              live_boot: bool = True, initrd_live: bool = True, live_bottom: bool = False,
              payload: int = 0) -> Path:
    """A tree as mmdebstrap leaves one, small: what the checks and the
    build look at, and payload bytes of random data (slow to pack)."""
    for folder in ("usr/bin", "etc", "boot", "proc/1", "tmp"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    (root / "etc/hostname").write_text("node\n")
    # The tree's identity, as openssh-server's postinst and systemd leave it.
    (root / "etc/ssh").mkdir()
    (root / "etc/ssh/ssh_host_ed25519_key").write_text("the tree's key\n")
    (root / "etc/ssh/sshd_config").write_text("# sshd\n")
    (root / "etc/machine-id").write_text("0123456789abcdef0123456789abcdef\n")
    (root / "usr/bin/hello").write_text("#!/bin/sh\necho hello\n")
    (root / "proc/1/status").write_text("not packed\n")
    if payload:
        with (root / "usr/payload.bin").open("wb") as file:
            for _ in range(payload >> 20):
                file.write(os.urandom(1 << 20))
    if kernel:
        (root / f"boot/vmlinuz-{VERSION}").write_bytes(os.urandom(200_000))
        stamp_bzimage_header(root / f"boot/vmlinuz-{VERSION}")
    if modules:
        (root / f"lib/modules/{VERSION}").mkdir(parents=True)
        (root / f"lib/modules/{VERSION}/modules.dep").write_text("")
    if live_boot:
        (root / "usr/share/initramfs-tools/scripts").mkdir(parents=True)
        (root / "usr/share/initramfs-tools/scripts/live").write_text("# live-boot\n")
    if initrd:
        # initramfs-tools' layout: an uncompressed early archive, then the main one.
        main = {"init": b"#!/bin/sh\n", "scripts/local": b""}
        if initrd_live:
            main["scripts/live"] = b"# live-boot\n"
        if live_bottom:
            main["scripts/live-bottom/ORDER"] = b"/scripts/live-bottom/theirs\n"
        early = newc({"kernel/x86/microcode/AuthenticAMD.bin": b"microcode"})
        (root / f"boot/initrd.img-{VERSION}").write_bytes(
            early + gzip.compress(newc(main), mtime=0))
    return root


def add_rootfs(root: Path, config_dir: Path, state_dir: Path, name: str = "node"):
    return cli("add-image", name, "--rootfs", root, "--cmdline", "quiet",
               config_dir=config_dir, state_dir=state_dir)


def squashfs_listing(cpio: Path, tmp_path: Path) -> list[str]:
    """The paths in the squashfs that the rootfs initrd holds."""
    squashfs = tmp_path / "filesystem.squashfs"
    with squashfs.open("wb") as out:
        subprocess.run(["cpio", "-i", "--quiet", "--to-stdout", SQUASHFS], stdin=cpio.open("rb"),
                       stdout=out, check=True)
    listing = subprocess.run(["unsquashfs", "-lc", "-d", "", str(squashfs)],
                             capture_output=True, text=True, check=True).stdout
    return [line.lstrip("/") for line in listing.splitlines() if line.strip()]


def test_a_tree_is_built_registered_and_rebuilt_only_when_it_changes(config_dir, state_dir,
                                                                     tmp_path):
    root = make_tree(tmp_path / "tree")
    first = add_rootfs(root, config_dir, state_dir)
    assert first.returncode == 0, first.stderr
    assert "node: packing the tree (mksquashfs): 100%" in first.stderr
    assert "node: warning: the tree's own etc/ssh/ssh_host_ed25519_key, etc/machine-id would " \
        "be every machine's: left out of the image" in first.stderr, first.stderr
    assert f"rootfs = {root}" in (config_dir / "images.d/node.conf").read_text()
    record = registry(state_dir)["node"]
    assert record["cmdline"] == f"{LIVE_WORDS} quiet"
    files = state_dir / "images" / record["infohash"] / "node"
    # The tree's own kernel and initramfs, as they are, and the tree before it.
    assert (files / "kernel").read_bytes() == (root / f"boot/vmlinuz-{VERSION}").read_bytes()
    assert (files / "initrd.1").read_bytes() == (root / f"boot/initrd.img-{VERSION}").read_bytes()
    listing = squashfs_listing(files / "initrd.0", tmp_path)
    assert {"etc/hostname", "usr/bin/hello", "proc", "tmp", "etc/ssh/sshd_config"} \
        <= set(listing), listing
    assert not {"etc/ssh/ssh_host_ed25519_key", "etc/machine-id"} & set(listing), listing
    assert not [p for p in listing if p.startswith(("proc/", "boot/vmlinuz", "boot/initrd"))]

    # Unchanged: nothing is packed, copied or hashed again.
    again = cli("add-image", "node", config_dir=config_dir, state_dir=state_dir)
    assert again.returncode == 0 and "unchanged" in again.stdout, again.stderr
    assert "packing" not in again.stderr

    # A changed file: a new build, a new torrent; the old build is gone.
    (root / "etc/hostname").write_text("changed\n")
    changed = cli("add-image", "node", config_dir=config_dir, state_dir=state_dir)
    assert changed.returncode == 0 and "re-registered" in changed.stdout, changed.stderr
    assert registry(state_dir)["node"]["infohash"] != record["infohash"]
    assert len(list((state_dir / "cache/rootfs").iterdir())) == 1


@pytest.mark.parametrize("tree_args, expected", [
    ({"kernel": False}, "no kernel in boot/ (vmlinuz-*): install one in the tree"),
    ({"modules": False}, f"the kernel {VERSION} has no modules (lib/modules/{VERSION})"),
    ({"initrd": False}, f"no initramfs for the kernel {VERSION}"),
    ({"live_boot": False}, "no live-boot (usr/share/initramfs-tools/scripts/live)"),
    ({"initrd_live": False}, "this initramfs has no live-boot (scripts/live): run "
                             "update-initramfs -u in the tree"),
    ({"live_bottom": True}, "this initramfs runs scripts of its own after live-boot "
                            "(scripts/live-bottom/ORDER), where BootTorrent lays"),
])
def test_a_tree_that_cannot_boot_is_refused(tree_args, expected, config_dir, state_dir,
                                             tmp_path):
    root = make_tree(tmp_path / "tree", **tree_args)
    before = tree(config_dir), tree(state_dir)
    result = add_rootfs(root, config_dir, state_dir)
    option_refused(result, "rootfs", f"{root}", before, config_dir, state_dir)
    assert expected in result.stderr, result.stderr


def kernel_links_to_shadow(root: Path) -> None:
    (root / f"boot/vmlinuz-{VERSION}").unlink()
    (root / f"boot/vmlinuz-{VERSION}").symlink_to("/etc/shadow")


def kernel_links_up_and_out(root: Path) -> None:
    (root / f"boot/vmlinuz-{VERSION}").unlink()
    (root / f"boot/vmlinuz-{VERSION}").symlink_to("../" * 12 + "etc/shadow")


def initrd_links_to_shadow(root: Path) -> None:
    (root / f"boot/initrd.img-{VERSION}").unlink()
    (root / f"boot/initrd.img-{VERSION}").symlink_to("/etc/shadow")


def boot_is_a_link_out(root: Path) -> None:
    """boot/ a link to a folder outside the tree that holds a kernel-named
    copy of a secret, stamped as a kernel."""
    outside = root.parent / "outside"
    (root / "boot").rename(outside)
    (root / "boot").symlink_to(outside)


def kernel_is_no_kernel(root: Path) -> None:
    (root / f"boot/vmlinuz-{VERSION}").write_bytes(b"root:$y$secret:19000:0:99999:7:::\n" * 100)


@pytest.mark.parametrize("tamper, expected", [
    (kernel_links_to_shadow, f"boot/vmlinuz-{VERSION}: a symbolic link (to /etc/shadow)"),
    (kernel_links_up_and_out, f"boot/vmlinuz-{VERSION}: a symbolic link (to ../../"),
    (initrd_links_to_shadow, f"boot/initrd.img-{VERSION}: a symbolic link (to /etc/shadow)"),
    (boot_is_a_link_out, f"boot/vmlinuz-{VERSION}: reached through a symbolic link"),
    (kernel_is_no_kernel, f"boot/vmlinuz-{VERSION}: not an x86 Linux kernel (bzImage)"),
])
def test_a_tree_cannot_make_the_server_serve_its_own_files(tamper, expected, config_dir,
                                                           state_dir, tmp_path):
    """A tree's kernel or initramfs that is a link (absolute, or up and out
    with ..) or sits behind one is refused, never followed to the server's
    own files and served to the LAN; a kernel must be a kernel."""
    root = make_tree(tmp_path / "tree")
    tamper(root)
    before = tree(config_dir), tree(state_dir)
    result = add_rootfs(root, config_dir, state_dir)
    option_refused(result, "rootfs", f"{root}", before, config_dir, state_dir)
    assert expected in result.stderr, result.stderr


def test_rootfs_goes_without_kernel_and_initrd(config_dir, state_dir, tmp_path):
    root = make_tree(tmp_path / "tree")
    conf = config_dir / "images.d/node.conf"
    conf.write_text(f"rootfs = {root}\nkernel = {root}/boot/vmlinuz-{VERSION}\n")
    before = tree(config_dir), tree(state_dir)
    for command in (["add-image", "node"], ["check"]):
        result = cli(*command, config_dir=config_dir, state_dir=state_dir)
        refused(result, conf, "kernel: not with rootfs", before, config_dir, state_dir)
    option = cli("add-image", "other", "--rootfs", root, "--kernel", root / "boot",
                 config_dir=config_dir, state_dir=state_dir)
    assert option.returncode == 2 and "--rootfs builds the kernel" in option.stderr


def packing(state_dir: Path) -> bool:
    return any((state_dir / "cache/rootfs").glob(".new-*/rootfs.cpio"))


def test_ctrl_c_while_packing_leaves_everything_as_it_was(config_dir, state_dir, tmp_path):
    root = make_tree(tmp_path / "tree", payload=512 << 20)
    before = tree(config_dir), tree(state_dir)
    process = subprocess.Popen(
        [PYTHON, "-m", "boottorrent", "add-image", "node", "--rootfs", str(root),
         "--config-dir", str(config_dir), "--state-dir", str(state_dir)],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL), start_new_session=True)
    wait_for(lambda: packing(state_dir) or process.poll() is not None, 120,
             "mksquashfs to be writing")
    os.killpg(process.pid, signal.SIGINT)  # the terminal's Ctrl-C: the command and mksquashfs
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    assert stderr.strip().splitlines()[-1] == \
        "boottorrent: interrupted; nothing was changed", stderr
    assert (tree(config_dir), tree(state_dir)) == before


def test_a_full_disk_while_packing_changes_nothing(config_dir, state_dir, tmp_path):
    """The builds' folder on a 4 MiB tmpfs of a mount namespace of the
    command's own: mksquashfs runs out of space."""
    root = make_tree(tmp_path / "tree", payload=16 << 20)
    (state_dir / "cache/rootfs").mkdir(parents=True)
    before = tree(config_dir), tree(state_dir)
    script = ('mount -t tmpfs -o size=4m tmpfs "$1/cache/rootfs" && shift && exec "$@"')
    result = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh",
         str(state_dir), PYTHON, "-m", "boottorrent", "add-image", "node", "--rootfs",
         str(root), "--config-dir", str(config_dir), "--state-dir", str(state_dir)],
        cwd=REPO, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert result.returncode == 1, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"boottorrent: mksquashfs {root} failed: ") and \
        last.endswith("; nothing was changed"), result.stderr
    assert (tree(config_dir), tree(state_dir)) == before
