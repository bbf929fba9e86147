"""The image descriptions, /etc/boottorrent/images.d/NAME.conf (configspec
boottorrent/data/image.spec), and the rules for what an image's name,
description, command line, method and files may be.

An image is booted by one of three methods, each with its own keys:
kexec (kernel, initrd, cmdline: the pivotal kexecs into the kernel), qemu
(disk and the VM's settings: the pivotal runs the disk under QEMU) and exec
(program and files: the pivotal runs the program). With qemu and exec the
machine stays in the swarm while the image runs.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from configobj import ConfigObj

from boottorrent import bzimage
from boottorrent.configfile import IMAGE_SPEC, ConfigError, read_file
from boottorrent.fsutil import open_regular
from boottorrent.image import LIVE_BOOT_WORDS, Image, VmSettings
from boottorrent.pivotal.console import CONTROLS

IMAGES_DIR = "images.d"
# Each method's keys, the one it cannot do without first.
METHOD_KEYS = {"kexec": ("kernel", "initrd", "cmdline", "rootfs"),
               "qemu": ("disk", "memory", "cpus", "firmware", "qemu_args"),
               "exec": ("program", "files")}
# The extra QEMU arguments an image may ask for, each one item of qemu_args
# as written here: the pivotal decides the disk, network, console and
# accelerator itself, and nothing here can reach a file or the network.
QEMU_ARGS = ("-no-reboot", "-usb", "-device usb-tablet", "-device usb-kbd",
             "-device virtio-rng-pci", "-rtc base=utc", "-rtc base=localtime",
             "-machine q35", "-machine pc")
MEMORY = re.compile(r"(?:(\d{1,2})%|(\d{1,7})([MG]))")
MEMORY_SHARE_MAX = 90  # percent of the node's RAM: the pivotal holds the image in RAM too
MEMORY_MIN_MIB = 16
QCOW2_MAGIC = b"QFI\xfb"
IMAGE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
# Text that goes into the iPXE script: printable ASCII without what iPXE
# would read as a setting ($), an operator (| &) or quoting (\ " ').
IPXE_TEXT = re.compile(r"[ !#%(-[\]-{}~]*")
DESCRIPTION_MAX = 80
# x86 COMMAND_LINE_SIZE is 2048 bytes with the NUL. The pivotal appends
# " BOOTIF=01-xx-xx-xx-xx-xx-xx" (28 bytes) to an image's command line.
CMDLINE_MAX = 2047
BOOTIF_LENGTH = 28
# What the pivotal may add for one machine ([machines]): systemd.hostname=
# with a 63-character name, and the group's cmdline.
HOSTNAME_PARAMETER = "systemd.hostname="
MACHINES_CMDLINE_MAX = 256
MACHINE_WORDS_LENGTH = len(HOSTNAME_PARAMETER) + 63 + 1 + MACHINES_CMDLINE_MAX + 1


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


def check_machines_cmdline(text: str) -> str:
    """The words a [machines] group adds to its machines' command line."""
    return check_cmdline(text, reserved=CMDLINE_MAX - MACHINES_CMDLINE_MAX)


def check_description(text: str) -> str:
    return check_ipxe_text(text, DESCRIPTION_MAX)


def check_cmdline(text: str, reserved: int = 0) -> str:
    """A kernel command line the kernel takes whole: one line, no control
    characters (Unicode's line separators and C1 controls included),
    within COMMAND_LINE_SIZE (less what is appended to it), that an
    images.d file can hold."""
    if CONTROLS.search(text):
        raise ValueError("the kernel command line must be one line without control characters")
    if "'''" in text and '"""' in text:
        # configobj quotes a value holding both kinds of quote with the
        # other kind of triple quote, and has none left for this one.
        raise ValueError("holds both ''' and \"\"\", which no images.d file can quote")
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
            ("cmdline", cmdline,
             lambda text: check_cmdline(text, BOOTIF_LENGTH + MACHINE_WORDS_LENGTH))):
        try:
            check(value)
        except ValueError as error:
            problems.append(ConfigError(path, str(error), key=key))
    return problems


def memory_problem(text: str) -> str | None:
    match = MEMORY.fullmatch(text)
    if not match:
        return (f"{text!r}: give a share of the node's RAM (e.g. 50%) or a size in MiB or "
                "GiB (e.g. 2048M, 4G)")
    share, number, unit = match.groups()
    if share is not None and not 1 <= int(share) <= MEMORY_SHARE_MAX:
        return f"{text!r}: a share of the node's RAM is 1% to {MEMORY_SHARE_MAX}%"
    if number is not None and int(number) * (1024 if unit == "G" else 1) < MEMORY_MIN_MIB:
        return f"{text!r}: a VM needs {MEMORY_MIN_MIB}M at least"
    return None


def disk_format(head: bytes) -> str:
    """qcow2 or raw; ValueError if head does not start a disk image."""
    if head.startswith(QCOW2_MAGIC):
        return "qcow2"
    offset, signature = bzimage.BOOT_FLAG  # an MBR's too, and a GPT disk's protective MBR's
    if head[offset:offset + len(signature)] == signature:
        return "raw"
    raise ValueError("is not a disk image: neither a qcow2 header nor the boot signature "
                     "of an MBR or GPT disk (raw disks must be partitioned or bootable)")


def check_program(head: bytes) -> None:
    if not (head.startswith(b"\x7fELF") or head.startswith(b"#!")):
        raise ValueError("is not a program: neither an ELF executable nor a #! script")


def method_problems(path: Path, obj: ConfigObj) -> list[ConfigError]:
    """Keys of another method, and what the method itself needs."""
    method = obj["method"]
    given = [key for key in obj if key not in obj.defaults]
    problems = [ConfigError(path, f"only for method {other}, and this image's method is "
                            f"{method}", key=key)
                for other, keys in METHOD_KEYS.items() if other != method
                for key in keys if key in given]
    needed = METHOD_KEYS[method][0]
    if method == "kexec" and obj["rootfs"]:
        problems += [ConfigError(path, "not with rootfs, whose tree gives the kernel and "
                                 "initramfs", key=key)
                     for key in ("kernel", "initrd") if key in given]
    elif not obj[needed]:
        problems.append(ConfigError(path, f"missing value (method {method} needs a {needed}"
                                    f"{' or a rootfs' if method == 'kexec' else ''})",
                                    key=needed))
    if method == "qemu":
        if problem := memory_problem(obj["memory"]):
            problems.append(ConfigError(path, problem, key="memory"))
        for arg in obj["qemu_args"]:
            if arg not in QEMU_ARGS:
                problems.append(ConfigError(path, f"{arg!r} is not one of the QEMU arguments "
                                            f"an image may add: {', '.join(QEMU_ARGS)}",
                                            key="qemu_args"))
    if method == "exec":
        names = ["program"] + [Path(value).name for value in obj["files"]]
        for name in {n for n in names if names.count(n) > 1}:
            problems.append(ConfigError(path, f"two files are named {name!r} in the image "
                                        "(the program runs beside its files, by name; "
                                        "'program' is the program's own)", key="files"))
    return problems


def image_problems(path: Path) -> tuple[Image | None, list[ConfigError]]:
    """Read images.d/NAME.conf; the image if it is valid, and every problem
    (of the description and the files it names: whether this server can
    boot it is imagecheck.py's)."""
    name = path.name.removesuffix(".conf")
    try:
        check_image_name(name)
    except ValueError as error:
        return None, [ConfigError(path, str(error))]
    obj, problems = read_file(path, IMAGE_SPEC)
    if problems:
        return None, problems
    heads: dict[str, bytes] = {}

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
        check = {"kernel": bzimage.check, "disk": disk_format, "program": check_program}.get(key)
        try:
            if check:
                check(head)
        except ValueError as error:
            raise ConfigError(path, f"{value}: {error}", key=key) from None
        heads[key] = head
        return candidate.resolve()

    method = obj["method"]
    tree = None
    cmdline = obj["cmdline"]
    if method == "kexec" and obj["rootfs"]:
        tree = Path(obj["rootfs"])
        tree = (tree if tree.is_absolute() else path.parent / tree).resolve()
        # live-boot's words first: the admin's may add to them or override them.
        cmdline = f"{LIVE_BOOT_WORDS} {cmdline}".strip()
    problems = text_problems(path, obj["description"], cmdline) + method_problems(path, obj)
    if problems:
        return None, problems
    try:
        files = {key: file_path(key, obj[key]) for key in ("kernel", "disk", "program")
                 if key in METHOD_KEYS[method] and obj[key]}
        initrds = tuple(file_path("initrd", value) for value in obj["initrd"])
        program_files = tuple(file_path("files", value) for value in obj["files"])
    except ConfigError as error:
        return None, [error]
    vm = None
    if method == "qemu":
        vm = VmSettings(format=disk_format(heads["disk"]), memory=obj["memory"],
                        cpus=obj["cpus"], firmware=obj["firmware"],
                        qemu_args=tuple(obj["qemu_args"]))
    image = Image(
        name=name, source=path, description=obj["description"], kernel=files.get("kernel"),
        initrds=initrds, cmdline=cmdline, method=method, arch=obj["arch"],
        disk=files.get("disk"), vm=vm, program=files.get("program"),
        program_files=program_files, rootfs=tree)
    return image, []


# The first line of an images.d file that add-image wrote: such a file is
# the tool's to delete at remove-image, even once edited; any other is the
# admin's own.
WRITTEN_BY_ADD_IMAGE = "# Written by boottorrent-add-image; edit and run it again to re-register."


def written_by_add_image(path: Path) -> bool:
    try:
        with path.open("rb") as file:
            first = file.readline(len(WRITTEN_BY_ADD_IMAGE) + 2)
    except FileNotFoundError:
        return True
    return first.rstrip(b"\r\n") == WRITTEN_BY_ADD_IMAGE.encode()


def image_conf_text(kernel: Path | None, initrds: list[Path], cmdline: str, description: str,
                    tree: Path | None = None) -> str:
    """The images.d file that `boottorrent-add-image NAME --kernel …` (or
    `--rootfs DIR`) writes."""
    obj = ConfigObj(list_values=True)
    obj.initial_comment = [WRITTEN_BY_ADD_IMAGE]
    obj["description"] = description
    if tree:
        obj["rootfs"] = str(tree)
    else:
        assert kernel
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
