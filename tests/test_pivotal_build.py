"""The pivotal builder (boottorrent.initramfs): the base, kernel and config
initramfs parts, built from this Debian system and Debian's kernel package,
their contents and reproducibility, and a real boot of the result in QEMU
(boottorrent.selftest).

The base and kernel parts are cached in the lab's pivotal cache between runs
(the one every test shares), keyed by their inputs, so only the first run
pays for building them.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from boottorrent import bzimage, nics
from boottorrent.initramfs import PivotalError, archive, kernel
from boottorrent.initramfs.base import build_base, cached_base
from boottorrent.nics import NicIndex
from lab import kernel as lab_kernel
from lab.cluster import PIVOTAL_CACHE
from lab.netns import Lab
from lab.qemu import VM

REPO = Path(__file__).resolve().parent.parent
CACHE = PIVOTAL_CACHE
CONFIG_NAME = "etc/boottorrent/pivotal.json"


@dataclass
class Entry:
    mode: int
    uid: int
    mtime: int
    data: bytes  # file content, or a symlink's target

    @property
    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.mode)

    @property
    def is_link(self) -> bool:
        return stat.S_ISLNK(self.mode)

    @property
    def is_file(self) -> bool:
        return stat.S_ISREG(self.mode)


def read_cpio(path: Path) -> dict[str, Entry]:
    """The entries of a newc cpio, zstd-compressed or not."""
    data = path.read_bytes()
    if data[:4] == b"\x28\xb5\x2f\xfd":
        data = subprocess.run(["zstd", "-dc"], input=data, check=True,
                              capture_output=True).stdout
    entries, offset = {}, 0
    while True:
        assert data[offset:offset + 6] == b"070701", f"bad cpio header at {offset}"
        fields = [int(data[offset + 6 + 8 * i:offset + 14 + 8 * i], 16) for i in range(13)]
        mode, uid, mtime, size, namesize = fields[1], fields[2], fields[5], fields[6], fields[11]
        name_start = offset + 110
        name = data[name_start:name_start + namesize - 1].decode()
        data_start = (name_start + namesize + 3) & ~3
        if name == "TRAILER!!!":
            return entries
        entries[name] = Entry(mode, uid, mtime, data[data_start:data_start + size])
        offset = (data_start + size + 3) & ~3


def resolve(entries: dict[str, Entry], name: str) -> str:
    """Follow symlinks (also in parent directories) inside the archive."""
    todo, done, hops = name.split("/"), [], 0
    while todo:
        part = todo.pop(0)
        if part in ("", "."):
            continue
        if part == "..":
            done = done[:-1]
            continue
        done.append(part)
        entry = entries.get("/".join(done))
        if entry and entry.is_link:
            hops += 1
            assert hops < 40, f"symlink loop at {name}"
            target = entry.data.decode()
            done = [] if target.startswith("/") else done[:-1]
            todo = target.split("/") + todo
    return "/".join(done)


# -- fixtures ------------------------------------------------------------------

@pytest.fixture(scope="module")
def base() -> Path:
    return cached_base(CACHE)


@pytest.fixture(scope="module")
def base_entries(base: Path) -> dict[str, Entry]:
    return read_cpio(base)


@pytest.fixture(scope="module")
def kernel_part() -> kernel.KernelPart:
    return kernel.build_kernel_part(lab_kernel.kernel_deb(), CACHE)


@pytest.fixture(scope="module")
def module_entries(kernel_part: kernel.KernelPart) -> dict[str, Entry]:
    return read_cpio(kernel_part.modules)


# -- the base part -------------------------------------------------------------

def test_base_is_merged_usr(base_entries):
    for top, target in (("bin", "usr/bin"), ("sbin", "usr/sbin"), ("lib", "usr/lib"),
                        ("lib64", "usr/lib64")):
        assert base_entries[top].is_link and base_entries[top].data.decode() == target
    stray = [n for n in base_entries if n.split("/")[0] in ("bin", "sbin", "lib", "lib64")
             and "/" in n]
    assert not stray


def test_base_has_the_programs(base_entries):
    def file(name: str) -> Entry:
        entry = base_entries[resolve(base_entries, name)]
        assert entry.is_file, name
        return entry

    assert file("bin/busybox").mode & 0o111
    assert resolve(base_entries, "bin/sh") == "usr/bin/busybox"
    assert resolve(base_entries, "sbin/modprobe") == "usr/bin/busybox"
    assert resolve(base_entries, "sbin/poweroff") == "usr/bin/busybox"
    assert file("usr/sbin/kexec").data.startswith(b"\x7fELF")
    assert resolve(base_entries, "usr/bin/python3") == "usr/bin/python3.11"
    assert file("usr/bin/python3").mode & 0o111
    init = file("init")
    assert init.mode & 0o111
    assert init.data == (REPO / "pivotal" / "init").read_bytes()
    # The dynamic loader at its real path through the /lib64 symlink.
    assert file("lib64/ld-linux-x86-64.so.2").data.startswith(b"\x7fELF")
    for library in ("libtorrent-rasterbar.so.2.0", "libboost_python311.so.1.74.0",
                    "libssl.so.3", "libcrypto.so.3", "libstdc++.so.6", "libz.so.1", "libc.so.6"):
        file(f"usr/lib/x86_64-linux-gnu/{library}")


def test_base_has_python_modules_compiled(base_entries):
    stdlib = "usr/lib/python3.11"
    assert base_entries[f"{stdlib}/os.pyc"].is_file  # the interpreter's landmark
    assert base_entries[f"{stdlib}/lib-dynload"].is_dir
    for module in ("encodings/__init__", "encodings/utf_8", "json/__init__", "subprocess",
                   "urllib/request", "argparse"):
        assert base_entries[f"{stdlib}/{module}.pyc"].is_file, module
    # Only what the client imports: no test suite, no tkinter, no sources.
    assert not any(n.startswith((f"{stdlib}/test/", f"{stdlib}/tkinter")) for n in base_entries)
    assert not [n for n in base_entries if n.startswith(stdlib) and n.endswith(".py")]
    assert len([n for n in base_entries if n.endswith(".pyc")]) < 200
    dist = "usr/lib/python3/dist-packages"
    assert base_entries[f"{dist}/libtorrent.cpython-311-x86_64-linux-gnu.so"].is_file
    # The pivotal program's package, all of it and nothing else of ours.
    shipped = sorted(n.removeprefix(f"{dist}/") for n in base_entries
                     if n.startswith(f"{dist}/boottorrent/") and n.endswith(".py"))
    package = sorted(str(p.relative_to(REPO)) for p in (REPO / "boottorrent" / "pivotal").glob("*.py"))
    assert shipped == ["boottorrent/__init__.py", *package]
    main = base_entries[f"{dist}/boottorrent/pivotal/__main__.py"]
    assert main.data == (REPO / "boottorrent" / "pivotal" / "__main__.py").read_bytes()
    assert base_entries[f"{dist}/boottorrent/pivotal/__pycache__/swarm.cpython-311.pyc"].is_file


def test_base_entries_are_normalized(base_entries):
    assert {e.uid for e in base_entries.values()} == {0}
    assert len({e.mtime for e in base_entries.values()}) == 1
    assert list(base_entries) == sorted(base_entries)


def test_base_python_runs_in_a_chroot(base: Path, tmp_path: Path):
    """The base's python finds its modules, libtorrent and the client, with
    nothing from the host: unpacked and run in a chroot (quick, no QEMU)."""
    if os.geteuid() != 0:
        pytest.skip("chroot needs root")
    root = tmp_path / "root"
    root.mkdir()
    subprocess.run(f"zstd -dc {base} | cpio -id --quiet", shell=True, cwd=root, check=True)
    code = ("import sys, libtorrent, boottorrent.pivotal.__main__; "
            "s = libtorrent.session({'listen_interfaces': '127.0.0.1:0', 'enable_dht': False}); "
            "print(sys.version.split()[0], libtorrent.__version__, sys.prefix)")
    result = subprocess.run(["/usr/sbin/chroot", str(root), "/usr/bin/python3", "-S", "-c", code],
                            env={"PYTHONPATH": "/usr/lib/python3/dist-packages",
                                 "PYTHONDONTWRITEBYTECODE": "1"},
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[1].startswith("2.") and result.stdout.split()[2] == "/usr"
    kexec = subprocess.run(["/usr/sbin/chroot", str(root), "/usr/sbin/kexec", "--version"],
                           env={}, capture_output=True, text=True)
    assert kexec.returncode == 0 and "kexec-tools" in kexec.stdout + kexec.stderr


def test_base_build_is_reproducible(tmp_path: Path, monkeypatch):
    """Two builds give the same archive (uncompressed here to keep the test
    quick; zstd -T0 itself is deterministic)."""
    monkeypatch.setattr(archive, "COMPRESS", ["cat"])
    first = build_base(tmp_path / "a.cpio")
    os.umask(0o077)
    try:
        second = build_base(tmp_path / "b.cpio")
    finally:
        os.umask(0o022)
    assert first.read_bytes() == second.read_bytes()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp files left


def test_cached_base_is_reused(base: Path):
    started = time.monotonic()
    assert cached_base(CACHE) == base
    assert time.monotonic() - started < 5


# -- the kernel part -------------------------------------------------------------

NIC_DRIVERS = ("virtio_net", "virtio_pci", "e1000", "e1000e", "igb", "ixgbe", "i40e", "ice",
               "bnxt_en", "tg3", "r8169", "mlx4_en", "mlx5_core", "igc", "bnx2x", "qede",
               "sfc", "cxgb4", "be2net", "enic", "vmxnet3", "hv_netvsc", "ena", "gve")

def test_kernel_part_from_the_debian_package(kernel_part: kernel.KernelPart):
    assert kernel_part.version.endswith("-amd64")
    assert kernel_part.vmlinuz.read_bytes()[0x202:0x206] == b"HdrS"
    assert bzimage.version(kernel_part.vmlinuz.read_bytes()) == kernel_part.version


def test_kernel_part_has_the_nic_modules_and_their_dependencies(kernel_part, module_entries):
    moddir = f"usr/lib/modules/{kernel_part.version}"
    dep_text = module_entries[f"{moddir}/modules.dep"].data.decode()
    deps = {}
    for line in dep_text.splitlines():
        module, _, needs = line.partition(":")
        deps[module] = needs.split()
    by_name = {Path(m).name.removesuffix(".ko").replace("-", "_"): m for m in deps}
    # What initramfs-tools' `auto_add_modules net` takes: the common server
    # and virtual NICs, not only a fixed short list.
    for name in NIC_DRIVERS:
        assert name in by_name, f"{name} is not in modules.dep"
        assert name in kernel_part.drivers
    assert not {"veth", "tun", "bonding", "dummy"} & set(by_name)  # excluded there too
    assert module_entries[f"{moddir}/boottorrent-nics"].data.decode().split() == \
        list(kernel_part.drivers)
    # Every module modules.dep names is in the archive, dependencies included.
    for module, needs in deps.items():
        for path in [module] + needs:
            assert module_entries[f"{moddir}/{path}"].is_file, path
            assert module_entries[f"{moddir}/{path}"].data.startswith(b"\x7fELF")
    dependencies = {Path(p).name for needs in deps.values() for p in needs}
    assert {"libphy.ko", "mdio_devres.ko", "virtio.ko", "virtio_ring.ko", "failover.ko",
            "mdio.ko", "mlx4_core.ko"} <= dependencies
    assert any(n.endswith("/virtio_ring.ko") for n in deps[by_name["virtio_net"]])
    aliases = module_entries[f"{moddir}/modules.alias"].data.decode()
    assert "alias pci:v00001AF4d*sv*sd*bc*sc*i* virtio_pci" in aliases
    assert "virtio_net" in aliases
    assert module_entries[f"{moddir}/modules.builtin"].is_file
    # Everything under usr/: a lib/ entry would clash with the base's /lib symlink.
    assert not [n for n in module_entries if n != "usr" and not n.startswith("usr/")]


def nic_part_modules(kernel_part: kernel.KernelPart, busid: str) -> set[str] | None:
    """The module names in the part the server sends a NIC of this busid
    (iPXE's ${netX/busid:hexraw}); None when it sends the whole part."""
    name = NicIndex.load(kernel_part.nics / nics.INDEX).part(busid)
    if name is None:
        return None
    entries = read_cpio(kernel_part.nics / name)
    # Whatever the part holds, modprobe finds it: every module has a modules.dep line.
    moddir = f"usr/lib/modules/{kernel_part.version}"
    listed = {line.partition(":")[0] for line in
              entries[f"{moddir}/modules.dep"].data.decode().splitlines()}
    modules = {n.removeprefix(f"{moddir}/") for n in entries if n.endswith(".ko")}
    assert listed == modules, (busid, listed ^ modules)
    return {Path(n).name.removesuffix(".ko").replace("-", "_") for n in modules}


def test_each_pci_nic_gets_a_part_of_its_own_drivers(kernel_part: kernel.KernelPart):
    """What the server sends per machine is as small as it can be: the
    drivers of its NIC, found by the PCI IDs iPXE names."""
    virtio = nic_part_modules(kernel_part, "011af41000")  # QEMU's virtio-net-pci
    assert {"virtio_pci", "virtio_net", "virtio_ring", "failover"} <= virtio, virtio
    assert nic_part_modules(kernel_part, "011AF41041") == virtio  # modern virtio-net
    e1000 = nic_part_modules(kernel_part, "018086100e")  # QEMU's e1000
    assert "e1000" in e1000 and not {"virtio_net", "e1000e", "igb"} & e1000, e1000
    assert "mlx4_en" in nic_part_modules(kernel_part, "0115b31003")  # loaded by mlx4_core
    # r8169 uses libphy, which loads its PHY's driver by ID: the PHYs come along.
    assert {"r8169", "libphy", "realtek"} <= nic_part_modules(kernel_part, "0110ec8168")
    assert "libphy" not in virtio
    # Another bus, an unknown device or junk: the whole part.
    for busid in ("0700000000", "01ffffffff", "0a0bda8153", "", "011af4100", "zz1af41000"):
        assert nic_part_modules(kernel_part, busid) is None, busid
    sizes = [p.stat().st_size for p in kernel_part.nics.glob("*.cpio.zst")]
    assert max(sizes) < kernel_part.modules.stat().st_size / 5, max(sizes)


def test_kernel_part_is_cached(kernel_part: kernel.KernelPart):
    started = time.monotonic()
    again = kernel.build_kernel_part(lab_kernel.kernel_deb(), CACHE)
    assert again == kernel_part
    assert time.monotonic() - started < 5


def test_kernel_part_from_a_bare_vmlinuz(kernel_part: kernel.KernelPart):
    """An unpacked kernel: the modules are found beside boot/vmlinuz-*."""
    vmlinuz = lab_kernel.vmlinuz()
    part = kernel.build_kernel_part(vmlinuz, CACHE)
    assert part.version == kernel_part.version
    assert part.vmlinuz.read_bytes() == kernel_part.vmlinuz.read_bytes()
    names = {Path(n).name for n in read_cpio(part.modules)}
    assert {"virtio_net.ko", "r8169.ko", "libphy.ko", "modules.dep"} <= names
    # The same kernel gives the same bytes, whichever way it was given.
    assert part.modules.read_bytes() == kernel_part.modules.read_bytes()


def test_kernel_part_names_the_firmware_it_lacks(kernel_part, module_entries, tmp_path):
    """Firmware a shipped module asks for (kmod's modinfo on the shipped
    files) is in the part if the server has it, else named in a warning."""
    for name, entry in module_entries.items():
        if name.endswith(".ko"):
            (tmp_path / Path(name).name).write_bytes(entry.data)
    info = subprocess.run(["modinfo", *map(str, sorted(tmp_path.glob("*.ko")))],
                          check=True, capture_output=True, text=True).stdout
    asked = {line.split(":", 1)[1].strip() for line in info.splitlines()
             if line.startswith("firmware:")}
    on_server = {name for name in asked
                 if any(Path("/usr/lib/firmware", name + s).is_file() for s in ("", ".xz", ".zst"))}
    shipped = {name.removeprefix("usr/lib/firmware/").removesuffix(".xz").removesuffix(".zst")
               for name, entry in module_entries.items()
               if name.startswith("usr/lib/firmware/") and entry.is_file}
    assert shipped == on_server
    named = {f for files in kernel_part.missing_firmware.values() for f in files}
    assert named == asked - on_server
    warnings = "\n".join(kernel_part.warnings())
    for driver, files in kernel_part.missing_firmware.items():
        assert f"warning: {driver} " in warnings and files[0] in warnings


# -- the config part -------------------------------------------------------------

def test_config_part_contents_and_determinism(tmp_path: Path):
    files = {CONFIG_NAME: b'{"images": []}\n', "etc/boottorrent/extra": b"x"}
    first = archive.build_config_part(files, tmp_path / "a.cpio")
    second = archive.build_config_part(dict(reversed(files.items())), tmp_path / "b.cpio")
    assert first.read_bytes() == second.read_bytes()
    entries = read_cpio(first)
    assert list(entries) == ["etc", "etc/boottorrent", "etc/boottorrent/extra", CONFIG_NAME]
    assert entries["etc/boottorrent"].is_dir and entries["etc/boottorrent"].mode & 0o777 == 0o755
    config = entries[CONFIG_NAME]
    assert config.is_file and config.mode & 0o777 == 0o644 and config.uid == 0
    assert config.data == files[CONFIG_NAME]
    # GNU cpio reads it back too (as the other tests and admins do).
    listing = subprocess.run(["cpio", "-it", "--quiet"], stdin=open(first, "rb"),
                             capture_output=True, text=True, check=True).stdout.split()
    assert CONFIG_NAME in listing


def test_config_part_replaces_atomically(tmp_path: Path):
    output = tmp_path / "config.cpio"
    output.write_bytes(b"old")
    archive.build_config_part({CONFIG_NAME: b"{}"}, output)
    assert read_cpio(output)[CONFIG_NAME].data == b"{}"
    assert [p.name for p in tmp_path.iterdir()] == ["config.cpio"]


@pytest.mark.parametrize("name", ["/etc/passwd", "../etc/passwd", "etc/../../x", ""])
def test_config_part_rejects_names_outside_the_archive(tmp_path: Path, name: str):
    with pytest.raises(PivotalError):
        archive.build_config_part({name: b"x"}, tmp_path / "c.cpio")


# -- errors ----------------------------------------------------------------------

def test_missing_kernel_is_a_clear_error(tmp_path: Path):
    missing = tmp_path / "linux-image-9.9.9-amd64_9.9.9-1_amd64.deb"
    with pytest.raises(PivotalError, match=re.escape(str(missing))):
        kernel.build_kernel_part(missing, tmp_path / "cache")


def _deb(tmp_path: Path, package: str, files: dict[str, bytes]) -> Path:
    root = tmp_path / package
    (root / "DEBIAN").mkdir(parents=True)
    (root / "DEBIAN" / "control").write_text(
        f"Package: {package}\nVersion: 1.0\nArchitecture: amd64\n"
        "Maintainer: Test <test@example.org>\nDescription: test package\n")
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    deb = tmp_path / f"{package}_1.0_amd64.deb"
    subprocess.run(["dpkg-deb", "--root-owner-group", "-Zxz", "-b", str(root), str(deb)],
                   check=True, capture_output=True)
    return deb


def test_deb_that_is_not_a_kernel_is_a_clear_error(tmp_path: Path):
    deb = _deb(tmp_path, "hello-world", {"usr/share/doc/hello-world/README": b"hi\n"})
    with pytest.raises(PivotalError, match=f"{re.escape(str(deb))}.*not a linux-image"):
        kernel.build_kernel_part(deb, tmp_path / "cache")


def test_kernel_metapackage_is_a_clear_error(tmp_path: Path):
    deb = _deb(tmp_path, "linux-image-amd64", {"usr/share/doc/linux-image-amd64/x": b"x"})
    with pytest.raises(PivotalError, match=f"{re.escape(str(deb))}.*no boot/vmlinuz"):
        kernel.build_kernel_part(deb, tmp_path / "cache")


def test_file_that_is_neither_deb_nor_kernel_is_a_clear_error(tmp_path: Path):
    junk = tmp_path / "vmlinuz-junk"
    junk.write_bytes(os.urandom(4096))
    with pytest.raises(PivotalError, match=re.escape(str(junk))):
        kernel.build_kernel_part(junk, tmp_path / "cache")


def test_vmlinuz_without_modules_is_a_clear_error(tmp_path: Path):
    version = bzimage.version(lab_kernel.vmlinuz().read_bytes())
    if Path("/lib/modules", version).exists():
        pytest.skip(f"this machine has /lib/modules/{version}")
    lonely = tmp_path / "vmlinuz"
    shutil.copyfile(lab_kernel.vmlinuz(), lonely)
    with pytest.raises(PivotalError, match=f"no modules for {re.escape(str(lonely))}.*{re.escape(version)}"):
        kernel.build_kernel_part(lonely, tmp_path / "cache")


# -- booting it ------------------------------------------------------------------

@pytest.mark.qemu
def test_pivotal_selftest_boots_in_qemu(base: Path, kernel_part: kernel.KernelPart,
                                        tmp_path: Path):
    """Debian's kernel with the three parts: the pivotal loads virtio_net,
    runs python with libtorrent and kexec, and reports on the console."""
    config = archive.build_config_part({CONFIG_NAME: b"{}\n"}, tmp_path / "config.cpio")
    with Lab() as lab:
        vm = VM(lab, "pivotal", tmp_path / "logs", "52:54:00:b0:07:01",
                kernel=kernel_part.vmlinuz, initrds=[base, kernel_part.modules, config],
                append="console=ttyS0 boottorrent.selftest", network=True)
        vm.start()
        try:
            seconds = vm.wait_for(r"BOOTTORRENT-SELFTEST (OK|FAIL)[^\n]*\n", timeout=300)
            console = vm.console()
            assert "BOOTTORRENT-SELFTEST OK python=3." in console, console[-3000:]
            line = next(l for l in console.splitlines() if "BOOTTORRENT-SELFTEST" in l)
            print(f"{line} after {seconds:.1f} s")
            assert "libtorrent=2." in line
            # /init's coldplug found the NIC by its modalias.
            assert re.search(r"network interface eth0 \(virtio_net, 52:54:00:b0:07:01\)", console)
            assert vm.wait_exit(60) == 0  # poweroff -f ends QEMU
        finally:
            vm.stop()
