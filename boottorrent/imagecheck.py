"""Whether this server can boot an image as described. The description's
own rules are imageconf.py's, which reads images.d and the files it names
and imports neither the builder nor the pivotal; what an image asks of
this server is checked here: QEMU and the firmware its packages ship into
the pivotal (method qemu), and a tree live-boot can boot (rootfs)."""

from __future__ import annotations

from pathlib import Path

from boottorrent import rootfs
from boottorrent.configfile import ConfigError
from boottorrent.image import Image
from boottorrent.imageconf import check_image_name, image_conf_path, image_problems
from boottorrent.initramfs import qemu
from boottorrent.pivotal.run import OVMF_CODE


def server_problems(image: Image) -> list[ConfigError]:
    """What this server lacks to boot image."""
    problems = []
    if image.method == "qemu":
        # The pivotal takes QEMU and the firmware from this server's packages.
        if missing := qemu.missing_inputs():
            problems.append(ConfigError(image.source, f"{', '.join(missing)} {qemu.MISSING}",
                                        key="method"))
        if image.vm and image.vm.firmware == "uefi" and not OVMF_CODE.is_file():
            problems.append(ConfigError(image.source, f"{OVMF_CODE} is missing: install the "
                                        "ovmf package, whose firmware the pivotal ships",
                                        key="firmware"))
    if image.rootfs:
        try:
            rootfs.tree_boot(image.rootfs)
        except rootfs.TreeError as error:
            problems.append(ConfigError(image.source, str(error), key="rootfs"))
    return problems


def read_image(path: Path) -> tuple[Image | None, list[ConfigError]]:
    """images.d/NAME.conf: the image if this server can boot it as
    described, and every problem."""
    image, problems = image_problems(path)
    if image:
        problems = server_problems(image)
    return (None if problems else image), problems


def load_image(config_dir: Path, name: str) -> Image:
    image, problems = read_image(image_conf_path(config_dir, check_image_name(name)))
    if problems:
        raise problems[0]
    assert image
    return image
