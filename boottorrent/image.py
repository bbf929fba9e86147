"""An image, from images.d to the pivotal, in one place:

    images.d/NAME.conf ──imageconf.py──► Image ──registration──► ImageRecord
        (what the admin wrote)       (its files named)     (copied, hashed, a torrent:
                                                            registry.json)
                                          ImageRecord.spec() ──► wire.ImageSpec
                                                       (what the pivotal boots)

Image is the description read (and checked) from images.d; ImageRecord is
the same image once registered, with what registering learnt: the files'
sizes and digests, the torrent's infohash. ImageSpec is the record as it
travels to the pivotal, in the pivotal's configuration.
"""

from __future__ import annotations

import base64
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from boottorrent.pivotal.node import LIVE_BOOT
from boottorrent.pivotal.wire import ImageSpec

# A rootfs image boots live-boot from the squashfs the server builds of its
# tree (rootfs.py), in this folder of its initramfs; these words come first
# on its command line.
LIVE_BOOT_MEDIUM = "boottorrent"
LIVE_BOOT_WORDS = f"{LIVE_BOOT} live-media=/{LIVE_BOOT_MEDIUM}"


@dataclass(frozen=True)
class VmSettings:
    """How the pivotal runs a qemu image."""

    format: str  # of the disk: raw or qcow2
    memory: str  # a share of the node's RAM ("50%") or a size ("2048M", "4G")
    cpus: int  # 0: as many as the node has
    firmware: str  # bios or uefi
    qemu_args: tuple[str, ...] = ()

    def to_json(self) -> dict:
        return {**asdict(self), "qemu_args": list(self.qemu_args)}


@dataclass(frozen=True)
class Image:
    """One image as described in images.d/NAME.conf."""

    name: str
    source: Path
    kernel: Path | None
    initrds: tuple[Path, ...]
    cmdline: str
    description: str = ""
    method: str = "kexec"
    arch: str = "x86_64"
    disk: Path | None = None  # qemu
    vm: VmSettings | None = None  # qemu
    program: Path | None = None  # exec
    program_files: tuple[Path, ...] = ()  # exec
    rootfs: Path | None = None  # kexec: the tree kernel and initrds are built from

    def files(self) -> list[tuple[str, Path]]:
        """(name inside the image, source path) for every file: the kernel
        and initrd.N, the disk, or the program and its files by their names."""
        if self.method == "qemu":
            assert self.disk
            return [("disk", self.disk)]
        if self.method == "exec":
            assert self.program
            return [("program", self.program)] + [(p.name, p) for p in self.program_files]
        assert self.kernel, "a rootfs image's files are known once it is built"
        return [("kernel", self.kernel)] + [(f"initrd.{i}", p) for i, p in enumerate(self.initrds)]


@dataclass(frozen=True)
class FileRecord:
    name: str  # inside the image: kernel, initrd.0, ...
    source: str
    size: int
    sha256: str
    source_mtime_ns: int


@dataclass(frozen=True)
class ImageRecord:
    name: str
    infohash: str
    description: str
    cmdline: str
    method: str
    arch: str
    registered: str  # ISO 8601, UTC
    piece_size: int
    conf_sha256: str
    files: tuple[FileRecord, ...] = field(default_factory=tuple)
    vm: dict = field(default_factory=dict)  # method qemu: VmSettings.to_json()

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files)

    @property
    def kernel(self) -> FileRecord:
        """Method kexec's kernel (the other methods' first file)."""
        return self.files[0]

    @property
    def initrds(self) -> tuple[FileRecord, ...]:
        return self.files[1:]

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> ImageRecord:
        files = tuple(FileRecord(**f) for f in data.pop("files"))
        return cls(files=files, **data)

    @classmethod
    def of(cls, image: Image, files: tuple[FileRecord, ...], infohash: str, piece_size: int,
           conf_sha256: str) -> ImageRecord:
        """The record of image, registered now with these files (copied
        and hashed) as the torrent of this infohash."""
        return cls(name=image.name, infohash=infohash, description=image.description,
                   cmdline=image.cmdline, method=image.method, arch=image.arch,
                   registered=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                   piece_size=piece_size, conf_sha256=conf_sha256, files=files,
                   vm=image.vm.to_json() if image.vm else {})

    def spec(self, torrent: bytes, kernel_signer: str = "") -> ImageSpec:
        """The image as the pivotal boots it (wire.ImageSpec), with its
        torrent (trackers and web seed in it) and its kernel's signer
        (signature.kernel_signer)."""
        kexec = self.method == "kexec"
        return ImageSpec(
            name=self.name, torrent=base64.b64encode(torrent).decode(),
            kernel=self.kernel.name if kexec else "",
            initrds=[f.name for f in self.initrds] if kexec else [],
            cmdline=self.cmdline, size=self.size, sha256={f.name: f.sha256 for f in self.files},
            method=self.method, vm=self.vm, kernel_signer=kernel_signer if kexec else "")
