"""The pivotal's kernel and its modules parts: the network drivers of one
Debian kernel, chosen as initramfs-tools' ``auto_add_modules net`` chooses
them, their dependencies as kmod resolves them, and their firmware; all of
them in one part, and each PCI NIC driver's in a small part of its own
with an index of the devices it binds (boottorrent/nics.py)."""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from boottorrent import bzimage, nics
from boottorrent.initramfs import PivotalError, Progress, archive, say
from boottorrent.initramfs.base import BUSYBOX
from boottorrent.initramfs.kmod import Kmod, Module, module_name
from boottorrent.pivotal.command import CommandError, run

# initramfs-tools' hook-functions, `auto_add_modules net`: every module under
# kernel/drivers/net except these (directory or file names).
NET_DRIVERS = "kernel/drivers/net"
NET_EXCLUDED = (
    "appletalk", "arcnet", "bonding", "can", "cdc-phonet.ko", "cdc_mbim.ko",
    "cdc_subset.ko", "cx82310_eth.ko", "dummy.ko", "gl620a.ko", "hamradio", "hippi",
    "hso.ko", "huawei_cdc_ncm.ko", "ifb.ko", "ipheth.ko", "irda", "kalmia.ko",
    "lg-vl600.ko", "macvlan.ko", "macvtap.ko", "net1080.ko", "pcmcia", "plusb.ko",
    "qmi_wwan.ko", "sb1000.ko", "sierra_net.ko", "team", "tokenring", "tun.ko",
    "veth.ko", "wan", "wimax", "wireless", "xen-netback.ko", "zaurus.ko")
# virtio_net sits on the virtio_pci transport: not a symbol dependency.
EXTRA_MODULES = ("virtio_pci",)
# For images of method qemu: KVM (/init loads it when the QEMU part is there).
KVM_MODULES = ("kvm_intel", "kvm_amd")
# A PCI driver that makes a bus of its own, whose NIC driver then binds the
# NIC: the PCI device of a virtio NIC is virtio_pci's, virtio_net binds the
# virtio device that virtio_pci makes.
TRANSPORTS = {"virtio_pci": "virtio"}
# A PCI driver that loads its NIC's driver by name, not by a symbol.
COMPANIONS = {"mlx4_core": ("mlx4_en",)}
# libphy loads PHY drivers by the PHY's ID, not by a symbol: a NIC driver
# that uses libphy gets every PHY driver in its part.
PHY_LIBRARY = "libphy"
PHY_DRIVERS = "kernel/drivers/net/phy/"
# The NIC parts are small and many (one per driver): compressed quickly.
NIC_COMPRESS = ["zstd", "-q", "-9", "-c"]
NIC_PARTS = "nics"  # the folder of the NIC parts and their index, in a kernel's cache entry

_COMPRESSED = {".xz": ["xz", "-dc"], ".zst": ["zstd", "-qdc"], ".gz": ["gzip", "-dc"]}
_FIRMWARE = Path("/usr/lib/firmware")


@dataclass(frozen=True)
class KernelPart:
    """A kernel for the pivotal: its bzImage and its modules initramfs part."""

    vmlinuz: Path
    modules: Path  # zstd-compressed newc cpio, usr/lib/modules/<version>/...
    version: str
    nics: Path  # a folder: one part per PCI NIC driver and nics.INDEX
    drivers: tuple[str, ...] = ()  # the NIC drivers shipped
    # driver -> firmware files it may ask for that this server does not have
    missing_firmware: dict[str, list[str]] = field(default_factory=dict, compare=False)

    def warnings(self) -> list[str]:
        return [f"warning: {driver} may ask for firmware this server lacks "
                f"(/usr/lib/firmware): {', '.join(files)}"
                for driver, files in sorted(self.missing_firmware.items())]


def _excluded(name: str) -> bool:
    return any(fnmatch.fnmatch(name, pattern + ("*" if pattern.endswith(".ko") else ""))
               for pattern in NET_EXCLUDED)


def net_driver_names(moddir: Path) -> list[str]:
    """What `auto_add_modules net` would add from moddir (lib/modules/<version>)."""
    names = []
    for top, dirs, files in os.walk(moddir / NET_DRIVERS):
        dirs[:] = sorted(d for d in dirs if not _excluded(d))
        names += [module_name(f) for f in files if ".ko" in f and not _excluded(f)]
    return sorted(names)


# -- reading a kernel --------------------------------------------------------

@contextmanager
def _unpacked(kernel: Path) -> Iterator[tuple[Path, Path]]:
    """(vmlinuz, module directory) of a linux-image-*.deb unpacked by
    dpkg-deb, or of a bare vmlinuz whose modules are on disk: beside it
    (<root>/boot/vmlinuz-* with <root>/lib/modules/<version>) or installed."""
    if not bzimage.is_package(kernel):
        yield kernel, _installed_modules(kernel)
        return
    _check_kernel_package(kernel)
    with tempfile.TemporaryDirectory(prefix="pivotal-kernel.") as tmp:
        root = Path(tmp)
        try:
            run(["dpkg-deb", "-x", kernel, tmp])
        except CommandError as error:
            raise PivotalError(f"{kernel}: dpkg-deb cannot unpack it: {error.reason}") from None
        images = sorted((root / "boot").glob("vmlinuz-*"))
        if not images:
            raise PivotalError(f"{kernel} contains no boot/vmlinuz-*: "
                               "give the versioned kernel package, not a metapackage")
        moddirs = sorted(d for sub in ("lib/modules", "usr/lib/modules")
                         for d in (root / sub).glob("*") if d.is_dir())
        versions = {p.name.removeprefix("vmlinuz-") for p in images} | {d.name for d in moddirs}
        if len(versions) != 1 or len(moddirs) != 1:
            raise PivotalError(f"{kernel} holds several kernel versions: {sorted(versions)}")
        yield images[0], moddirs[0]


def _check_kernel_package(deb: Path) -> None:
    from debian.arfile import ArError
    from debian.debfile import DebError, DebFile
    try:
        package = DebFile(str(deb)).debcontrol().get("Package", "")
    except (ArError, DebError, OSError, KeyError, ValueError) as error:
        raise PivotalError(f"{deb} is not a Debian package: {error}") from error
    if not package.startswith("linux-image-"):
        raise PivotalError(f"{deb} is {package!r}, not a linux-image-* kernel package")


def _installed_modules(kernel: Path) -> Path:
    try:
        version = bzimage.version(kernel.read_bytes())
    except ValueError as error:
        raise PivotalError(f"{kernel} is neither a linux-image-*.deb nor a vmlinuz "
                           f"({error})") from error
    candidates = [kernel.resolve().parent.parent / sub / version
                  for sub in ("lib/modules", "usr/lib/modules")]
    candidates.append(Path("/lib/modules") / version)
    for candidate in candidates:
        if (candidate / "kernel").is_dir():
            return candidate
    raise PivotalError(f"no modules for {kernel} (kernel {version}): looked in "
                       + ", ".join(map(str, candidates)))


def _firmware_files(names: list[str]) -> dict[str, Path]:
    """The host's firmware files for these names (as the kernel would find
    them, also compressed), keyed by their path under lib/firmware."""
    found = {}
    for name in sorted(set(names)):
        for suffix in ("", ".xz", ".zst"):
            path = _FIRMWARE / (name + suffix)
            if path.is_file():
                found[name + suffix] = path
                break
    return found


def _firmware_key(firmware: dict[str, Path]) -> list[list[str]]:
    return [[name, hashlib.sha256(path.read_bytes()).hexdigest()]
            for name, path in sorted(firmware.items())]


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _builder_key() -> str:
    here = Path(__file__).parent
    digest = hashlib.sha256()
    for name in ("__init__.py", "archive.py", "kernel.py", "kmod.py", "../nics.py"):
        digest.update((here / name).read_bytes())
    return digest.hexdigest()[:8]


# -- the part ----------------------------------------------------------------

def build_kernel_part(kernel: Path, cache_dir: Path, progress: Progress = None,
                      kvm: bool = False) -> KernelPart:
    """The pivotal's kernel and its network-driver modules part (and KVM's
    modules if kvm).

    kernel is a linux-image-*.deb (unpacked with dpkg-deb, not installed) or
    a vmlinuz whose modules are on disk. The result is cached in cache_dir by
    the kernel file's sha256, so a second call is quick. Raises PivotalError
    with the file's name when the kernel is unusable.
    """
    kernel = Path(kernel)
    if not kernel.is_file():
        raise PivotalError(f"kernel {kernel} does not exist")
    kernel_key = _file_sha256(kernel)[:16]
    built_by = f"kernel-{kernel_key}-{_builder_key()}"
    entry = Path(cache_dir) / (built_by + ("-kvm" if kvm else ""))
    cached = _cached(entry)
    if cached:
        return cached
    entry.parent.mkdir(parents=True, exist_ok=True)
    say(progress, f"reading the network drivers of {kernel.name}")
    with tempfile.TemporaryDirectory(prefix=".kernel-", dir=entry.parent) as tmp, \
            _unpacked(kernel) as (vmlinuz, moddir):
        work = Path(tmp)
        kmod = Kmod(moddir, work / "kmod")
        extra = EXTRA_MODULES + (KVM_MODULES if kvm else ())
        roots = net_driver_names(moddir) + [n for n in extra if kmod.known(n)]
        if not roots:
            raise PivotalError(f"{kernel} has no network drivers under {NET_DRIVERS}")
        wanted = kmod.closure(roots)
        drivers = sorted(m.name for m in wanted if m.device and m.name in roots)
        firmware = _firmware_files([f for m in wanted for f in m.firmware])
        missing = {m.name: [f for f in m.firmware if not _firmware_files([f])]
                   for m in wanted}
        shutil.copyfile(vmlinuz, work / f"vmlinuz-{kmod.version}")
        (work / f"vmlinuz-{kmod.version}").chmod(0o644)
        modules = work / f"modules-{kmod.version}.cpio.zst"
        _build_modules_part(moddir, wanted, drivers, firmware, modules, work / "tree",
                            archive.COMPRESS)
        say(progress, "a modules part for each PCI network driver")
        _build_nic_parts(kmod, wanted, drivers, [n for n in KVM_MODULES if kvm and n in roots],
                         work / NIC_PARTS, work / "nic-tree")
        meta = {"version": kmod.version, "vmlinuz": f"vmlinuz-{kmod.version}",
                "modules": modules.name, "drivers": drivers,
                "missing_firmware": {k: v for k, v in missing.items() if v},
                "firmware_names": sorted({f for m in wanted for f in m.firmware}),
                "firmware": _firmware_key(firmware)}
        (work / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
        shutil.rmtree(work / "tree")
        shutil.rmtree(work / "kmod")
        _store(work, entry)
    for old in entry.parent.glob(f"kernel-{kernel_key}-*"):  # by an older builder
        if not old.name.startswith(built_by):
            shutil.rmtree(old, ignore_errors=True)
    part = _cached(entry)
    assert part
    say(progress, f"{len(part.drivers)} network drivers for kernel {part.version}: "
        + " ".join(part.drivers))
    for warning in part.warnings():
        say(progress, warning)
    return part


def _store(work: Path, entry: Path) -> None:
    """Rename the finished work folder to entry (the TemporaryDirectory
    context still removes a folder of work's name, so one is left there)."""
    if entry.exists():  # a stale entry (firmware changed) or a concurrent build
        shutil.rmtree(entry, ignore_errors=True)
    try:
        os.rename(work, entry)
    except OSError:  # another build won the race: keep its result
        if not _cached(entry):
            raise
    else:
        os.chmod(entry, 0o755)
        os.mkdir(work)


def _cached(entry: Path) -> KernelPart | None:
    try:
        meta = json.loads((entry / "meta.json").read_text())
    except (OSError, ValueError):
        return None
    # Firmware comes from the host's firmware packages, which may have changed.
    if _firmware_key(_firmware_files(meta["firmware_names"])) != meta["firmware"]:
        return None
    return KernelPart(entry / meta["vmlinuz"], entry / meta["modules"], meta["version"],
                      entry / NIC_PARTS, tuple(meta["drivers"]), meta["missing_firmware"])


def _plain_module(source: Path) -> bytes:
    """A module's ELF bytes: busybox modprobe has no decompressor, and the
    part is compressed as a whole anyway."""
    for suffix, command in _COMPRESSED.items():
        if source.name.endswith(".ko" + suffix):
            return run([*command, source], text=False).stdout
    return source.read_bytes()


def _build_nic_parts(kmod: Kmod, wanted: list[Module], drivers: list[str],
                     kvm: list[str], folder: Path, work: Path) -> None:
    """Into folder: for each PCI NIC driver among drivers, a part with it,
    the NIC drivers of the bus it makes (TRANSPORTS) or that it loads
    (COMPANIONS), what they need, and the kvm modules; and the index of the
    devices each binds."""
    by_name = {m.name: m for m in wanted}
    phy_drivers = [m for m in wanted if m.path.startswith(PHY_DRIVERS)]
    parts: dict[str, str] = {}
    pci: list[tuple[str, str, str]] = []
    folder.mkdir()
    for driver in drivers:
        if not by_name[driver].pci:
            continue
        bus = TRANSPORTS.get(driver)
        roots = [driver, *COMPANIONS.get(driver, ())]
        roots += [d for d in drivers if bus in by_name[d].buses]
        paths = kmod.depends(roots + kvm)
        modules = [m for m in wanted if m.path in paths]
        if any(m.name == PHY_LIBRARY for m in modules):
            modules += [m for m in phy_drivers if m.path not in paths]
        firmware = _firmware_files([f for m in modules for f in m.firmware])
        parts[driver] = f"{driver}.cpio.zst"
        _build_modules_part(kmod.moddir, modules, roots, firmware, folder / parts[driver],
                            work, NIC_COMPRESS)
        shutil.rmtree(work)
        pci += [(vendor, device, driver) for vendor, device in by_name[driver].pci]
    nics.write_index(folder / nics.INDEX, parts, pci)


def _build_modules_part(moddir: Path, wanted: list[Module], drivers: list[str],
                        firmware: dict[str, Path], output: Path, root: Path,
                        compress: list[str]) -> None:
    version = moddir.name
    target = root / "usr/lib/modules" / version
    target.mkdir(parents=True)
    for module in wanted:
        path = target / re.sub(r"\.ko\.(xz|zst|gz)$", ".ko", module.path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(_plain_module(module.source))
        path.chmod(0o644)
    if (moddir / "modules.builtin").exists():
        shutil.copyfile(moddir / "modules.builtin", target / "modules.builtin")
    (target / "boottorrent-nics").write_text("".join(f"{n}\n" for n in drivers))
    # busybox's depmod writes the modules.dep/alias/symbols that its modprobe reads.
    run([BUSYBOX, "depmod", "-b", root / "usr", version])
    for name in ("modules.dep", "modules.alias", "modules.symbols"):
        path = target / name
        if path.exists():  # line order follows readdir: sort for reproducibility
            path.write_text("".join(sorted(path.read_text().splitlines(keepends=True))))
    for name, path in firmware.items():
        dest = root / "usr/lib/firmware" / name
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, dest)
        dest.chmod(0o644)
    archive.fix_dir_modes(root)
    archive.archive(root, output, compress)
