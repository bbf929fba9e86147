"""A kernel's modules as kmod sees them: which a set of modules needs
(modprobe), and what each binds and asks for (modinfo)."""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

from boottorrent import nics
from boottorrent.initramfs.staging import which
from boottorrent.pivotal.command import run

# The NIC drivers among a kernel's modules: every Ethernet driver (mlx4_en binds no bus
# itself: mlx4_core loads it) and any module with an alias on a device bus.
# The other modules (PHYs, tunnels) are loaded by what needs them.
ETHERNET = "kernel/drivers/net/ethernet/"
DEVICE_BUSES = ("pci", "usb", "virtio", "vmbus", "xen", "platform", "acpi")


@dataclass
class Module:
    name: str          # as modprobe knows it: "virtio_net"
    path: str          # relative to lib/modules/<version>, as in the kernel package
    source: Path       # the file to read
    firmware: list[str] = field(default_factory=list)
    device: bool = False  # binds hardware (see DEVICE_BUSES)
    buses: set[str] = field(default_factory=set)  # of its aliases
    pci: list[tuple[str, str]] = field(default_factory=list)  # nics.pci_ids of its aliases


def module_name(filename: str) -> str:
    return filename.split(".ko", 1)[0].replace("-", "_")


class Kmod:
    """kmod's depmod, modprobe and modinfo on a module directory, through a
    scratch tree of symlinks, so that the directory itself is never written."""

    def __init__(self, moddir: Path, scratch: Path) -> None:
        self.moddir = moddir
        self.version = moddir.name
        self.root = scratch
        staged = scratch / "lib/modules" / self.version
        staged.mkdir(parents=True)
        (staged / "kernel").symlink_to(moddir / "kernel")
        for name in ("modules.builtin", "modules.builtin.modinfo", "modules.order"):
            if (moddir / name).exists():
                shutil.copyfile(moddir / name, staged / name)
        self.staged = staged
        self._run(which("depmod", "kmod"), "-b", str(scratch), self.version)

    def _run(self, program: Path, *args: str) -> str:
        return run([program, *args]).stdout

    def closure(self, names: list[str]) -> list[Module]:
        """The modules and every module they need, as modprobe would load them."""
        found = [Module(module_name(Path(rel).name), rel, self.moddir / rel,
                         device=rel.startswith(ETHERNET))
                 for rel in sorted(self.depends(names))]
        self._read_info(found)
        return found

    def depends(self, names: list[str]) -> set[str]:
        """The paths (relative to the module directory) of the modules and
        every module they need."""
        out = self._run(which("modprobe", "kmod"), "-d", str(self.root), "-S", self.version,
                        "--show-depends", "--ignore-install", "-a", *names)
        return {str(Path(words[1]).relative_to(self.staged))
                for words in map(str.split, out.splitlines()) if words[:1] == ["insmod"]}

    def known(self, name: str) -> bool:
        """The module exists in this kernel, as a file or built in."""
        return run([which("modinfo", "kmod"), "-b", self.root, "-k", self.version,
                    "-F", "name", name], check=False).returncode == 0

    def _read_info(self, modules: list[Module]) -> None:
        out = self._run(which("modinfo", "kmod"), *(str(m.source) for m in modules))
        by_file = {str(m.source): m for m in modules}
        current = None
        for line in out.splitlines():
            key, _, value = line.partition(":")
            value = value.strip()
            if key == "filename":
                current = by_file.get(value)
            elif current and key == "firmware":
                current.firmware.append(value)
            elif current and key == "alias":
                bus = value.split(":", 1)[0]
                current.buses.add(bus)
                current.device |= bus in DEVICE_BUSES
                if ids := nics.pci_ids(value):
                    current.pci.append(ids)
