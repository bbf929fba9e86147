"""The image descriptions, /etc/boottorrent/images.d/NAME.conf (configspec
boottorrent/data/image.spec), and the rules for what an image's name,
description and command line may be."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from configobj import ConfigObj

from boottorrent import bzimage
from boottorrent.configfile import IMAGE_SPEC, ConfigError, read_file
from boottorrent.fsutil import open_regular

IMAGES_DIR = "images.d"
# How the pivotal boots an image (the original's qemu and exec are not built).
METHODS = ("kexec",)
IMAGE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
# Text that goes into the iPXE script: printable ASCII without what iPXE
# would read as a setting ($), an operator (| &) or quoting (\ " ').
IPXE_TEXT = re.compile(r"[ !#%(-[\]-{}~]*")
DESCRIPTION_MAX = 80
# x86 COMMAND_LINE_SIZE is 2048 bytes with the NUL. The pivotal appends
# " BOOTIF=01-xx-xx-xx-xx-xx-xx" (28 bytes) to an image's command line.
CMDLINE_MAX = 2047
BOOTIF_LENGTH = 28


@dataclass(frozen=True)
class Image:
    """One image as described in images.d/NAME.conf."""

    name: str
    source: Path
    kernel: Path
    initrds: tuple[Path, ...]
    cmdline: str
    description: str = ""
    method: str = "kexec"
    arch: str = "x86_64"

    def files(self) -> list[tuple[str, Path]]:
        """(name inside the image, source path) for every file, kernel first."""
        return [("kernel", self.kernel)] + [(f"initrd.{i}", p) for i, p in enumerate(self.initrds)]


def check_image_name(name: str) -> str:
    if not IMAGE_NAME.fullmatch(name) or ".." in name:
        raise ValueError(f"image name {name!r} is not allowed: use 1 to 64 ASCII letters, "
                         "digits, '.', '_' or '-', starting with a letter or digit, no '..'")
    return name


def check_ipxe_text(text: str, limit: int) -> str:
    """Text that goes into the iPXE script: nothing iPXE would run or expand."""
    if not IPXE_TEXT.fullmatch(text):
        raise ValueError("must be one line of printable ASCII without $ | & \\ \" ' "
                         "(it goes into the iPXE script)")
    if len(text) > limit:
        raise ValueError(f"is {len(text)} characters long; at most {limit}")
    return text


def check_description(text: str) -> str:
    return check_ipxe_text(text, DESCRIPTION_MAX)


def check_cmdline(text: str, reserved: int = 0) -> str:
    """A kernel command line the kernel takes whole: one line, no control
    characters, within COMMAND_LINE_SIZE (less what is appended to it)."""
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in text):
        raise ValueError("the kernel command line must be one line without control characters")
    limit = CMDLINE_MAX - reserved
    if len(text.encode()) > limit:
        raise ValueError(f"is {len(text.encode())} bytes; the kernel takes at most {limit} here")
    return text


def image_conf_path(config_dir: Path, name: str) -> Path:
    return config_dir / IMAGES_DIR / f"{name}.conf"


def text_problems(path: Path, description: str, cmdline: str) -> list[ConfigError]:
    """What is wrong with an image's description and command line."""
    problems = []
    for key, value, check in (
            ("description", description, check_description),
            ("cmdline", cmdline, lambda text: check_cmdline(text, BOOTIF_LENGTH))):
        try:
            check(value)
        except ValueError as error:
            problems.append(ConfigError(path, str(error), key=key))
    return problems


def image_problems(path: Path) -> tuple[Image | None, list[ConfigError]]:
    """Read images.d/NAME.conf; the image if it is valid, and every problem."""
    name = path.name.removesuffix(".conf")
    try:
        check_image_name(name)
    except ValueError as error:
        return None, [ConfigError(path, str(error))]
    obj, problems = read_file(path, IMAGE_SPEC)
    if problems:
        return None, problems

    def file_path(key: str, value: str) -> Path:
        candidate = Path(value)
        if not candidate.is_absolute():
            candidate = path.parent / candidate
        try:
            with open_regular(candidate) as file:
                size = os.fstat(file.fileno()).st_size
                head = file.read(bzimage.HEADER_END)
        except FileNotFoundError:
            raise ConfigError(path, f"{value}: no such file", key=key) from None
        except OSError as error:
            raise ConfigError(path, f"{value}: cannot read: {error.strerror}", key=key) from None
        if size == 0:
            raise ConfigError(path, f"{value}: file is empty (0 bytes)", key=key)
        if key == "kernel":
            try:
                bzimage.check(head)
            except ValueError as error:
                raise ConfigError(path, f"{value}: {error}", key=key) from None
        return candidate.resolve()

    problems = text_problems(path, obj["description"], obj["cmdline"])
    if obj["method"] not in METHODS:
        problems.append(ConfigError(path, f"{obj['method']!r}: this version boots an image "
                                    f"by {' or '.join(METHODS)} only", key="method"))
    if problems:
        return None, problems
    try:
        image = Image(
            name=name, source=path, description=obj["description"],
            kernel=file_path("kernel", obj["kernel"]),
            initrds=tuple(file_path("initrd", value) for value in obj["initrd"]),
            cmdline=obj["cmdline"], method=obj["method"], arch=obj["arch"])
    except ConfigError as error:
        return None, [error]
    return image, []


def load_image(config_dir: Path, name: str) -> Image:
    path = image_conf_path(config_dir, check_image_name(name))
    image, problems = image_problems(path)
    if problems:
        raise problems[0]
    assert image
    return image


def image_conf_text(kernel: Path, initrds: list[Path], cmdline: str, description: str) -> str:
    """The images.d file that `boottorrent-add-image NAME --kernel …` writes."""
    obj = ConfigObj(list_values=True)
    obj.initial_comment = ["# Written by boottorrent-add-image; edit and run it again to "
                           "re-register."]
    obj["description"] = description
    obj["kernel"] = str(kernel)
    obj["initrd"] = [str(p) for p in initrds]
    obj["cmdline"] = cmdline
    obj["method"] = "kexec"
    obj["arch"] = "x86_64"
    return "\n".join(obj.write()) + "\n"


def image_conf_paths(config_dir: Path) -> list[Path]:
    """Every images.d/*.conf; a ConfigError if the folder cannot be listed
    (a missing folder describes no image)."""
    folder = config_dir / IMAGES_DIR
    try:
        names = sorted(entry.name for entry in os.scandir(folder))
    except FileNotFoundError:
        return []
    except OSError as error:
        raise ConfigError(folder, f"cannot list: {error.strerror}") from None
    return [folder / name for name in names if name.endswith(".conf")]
