"""BootTorrent's configuration: /etc/boottorrent/boottorrent.conf and the
image descriptions in /etc/boottorrent/images.d/NAME.conf.

Both are read with configobj and validated against the configspecs in
boottorrent/data/. Every problem is reported as a ConfigError that names the
file, the section and the key, so that one line tells the admin what to fix.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import subprocess
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from configobj import (ConfigObj, ConfigObjError, DuplicateError, NestingError,
                       flatten_errors, get_extra_values)
from validate import ValidateError, VdtTypeError, Validator

from boottorrent import bzimage
from boottorrent.fsutil import open_regular

CONFIG_FILE = "boottorrent.conf"
IMAGES_DIR = "images.d"

IMAGE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
MAC_ADDRESS = re.compile(r"[0-9a-f]{2}(:[0-9a-f]{2}){5}")
# A Linux interface name (IFNAMSIZ is 16 with the NUL), without the
# wildcards, commas and spaces that mean something else to dnsmasq.
INTERFACE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,14}")
# Text that goes into the iPXE script: printable ASCII without what iPXE
# would read as a setting ($), an operator (| &) or quoting (\ " ').
IPXE_TEXT = re.compile(r"[ !#%(-[\]-{}~]*")
DESCRIPTION_MAX = 80
# x86 COMMAND_LINE_SIZE is 2048 bytes with the NUL. The pivotal appends
# " BOOTIF=01-xx-xx-xx-xx-xx-xx" (28 bytes) to an image's command line.
CMDLINE_MAX = 2047
BOOTIF_LENGTH = 28
# The iPXE script adds the initrd= names, the image name and BOOTIF= to the
# pivotal's command line; this leaves them ample room.
PIVOTAL_CMDLINE_MAX = 1024


class ConfigError(Exception):
    """One problem in one configuration file, printable as one line."""

    def __init__(self, path: Path | str, message: str, section: tuple[str, ...] = (),
                 key: str | None = None):
        super().__init__(message)
        self.path = Path(path)
        self.section = section
        self.key = key
        self.message = message

    def __str__(self) -> str:
        where = "".join(f"[{s}]" for s in self.section)
        if self.key is not None:
            where = f"{where} {self.key}" if where else self.key
        return f"{self.path}: {where}: {self.message}" if where else f"{self.path}: {self.message}"


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


@dataclass(frozen=True)
class Config:
    """The validated server configuration, with derived values filled in."""

    path: Path
    interface: str
    address: str
    netmask: str
    dhcp_mode: str
    range_start: str | None
    range_end: str | None
    lease_time: int
    router: str | None
    dns_servers: tuple[str, ...]
    tracker_port: int
    announce_interval: int
    seeder_port: int
    http_port: int
    upload_slots: int
    pivotal_kernel: Path
    pivotal_cmdline: str
    seed_time_max: int
    seed_idle_time: int
    fallback_after: int
    default_image: str
    menu_timeout: int
    mac_images: dict[str, str] = field(default_factory=dict)

    @property
    def tracker_url(self) -> str:
        return f"http://{self.address}:{self.tracker_port}/announce"

    @property
    def http_url(self) -> str:
        return f"http://{self.address}:{self.http_port}"

    @property
    def network_address(self) -> str:
        return str(ipaddress.ip_network(f"{self.address}/{self.netmask}", strict=False)
                   .network_address)


def _spec(name: str) -> list[str]:
    return resources.files("boottorrent").joinpath("data", name).read_text().splitlines()


def _mac_list(value, min=None) -> list[str]:  # noqa: A002 (validate's keyword)
    macs = [value] if isinstance(value, str) else list(value)
    if min is not None and len(macs) < int(min):
        raise ValidateError(f"needs at least {min} MAC address")
    return [check_mac(m) for m in macs]


def _ip_addr_list(value) -> list[str]:
    addresses = [value] if isinstance(value, str) else list(value)
    for address in addresses:
        try:
            ipaddress.IPv4Address(address)
        except ValueError:
            raise VdtTypeError(address) from None
    return addresses


VALIDATOR = Validator({"mac_list": _mac_list, "ip_addr_list": _ip_addr_list})


def check_mac(mac: str) -> str:
    """A MAC address in the lowercase colon form iPXE's ${mac} gives."""
    normal = mac.strip().lower().replace("-", ":")
    if not MAC_ADDRESS.fullmatch(normal):
        raise ValidateError(f"{mac!r} is not a MAC address (like 52:54:00:12:34:56)")
    return normal


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


# configobj's own messages quote the offending line; a configuration file
# may be a link to anything (a password file): say what is wrong and where.
SYNTAX_ERRORS = {DuplicateError: "a key or section appears twice",
                 NestingError: "a section is nested wrongly"}


def _syntax_error(error: ConfigObjError) -> str:
    line = getattr(error, "line_number", None)
    what = next((text for kind, text in SYNTAX_ERRORS.items() if isinstance(error, kind)),
                "neither a [section] nor a key = value")
    where = f"line {line}: " if line else ""
    return f"{where}not valid configobj syntax ({what})"


def _read(path: Path, spec: str) -> tuple[ConfigObj, list[ConfigError]]:
    """Parse and validate one file; returns the ConfigObj and every problem."""
    try:
        with open_regular(path) as file:
            text = file.read().decode("utf-8").splitlines()
    except FileNotFoundError:
        raise ConfigError(path, "no such file") from None
    except UnicodeDecodeError:
        raise ConfigError(path, "cannot read: not UTF-8 text") from None
    except OSError as error:
        raise ConfigError(path, f"cannot read: {error.strerror or error}") from None
    try:
        obj = ConfigObj(text, configspec=_spec(spec), file_error=True, list_values=True,
                        encoding="utf-8", raise_errors=True)
    except ConfigObjError as error:
        raise ConfigError(path, _syntax_error(error)) from None
    problems: list[ConfigError] = []
    result = obj.validate(VALIDATOR, preserve_errors=True)
    for sections, key, error in flatten_errors(obj, result):
        if key is None:
            problems.append(ConfigError(path, "missing section", tuple(sections[:-1]), sections[-1]))
        elif error is False:
            problems.append(ConfigError(path, "missing value", tuple(sections), key))
        else:
            problems.append(ConfigError(path, _describe(error), tuple(sections), key))
    for sections, key in get_extra_values(obj):
        what = "unknown section" if isinstance(_lookup(obj, sections)[key], dict) else "unknown key"
        problems.append(ConfigError(path, what, tuple(sections), key))
    return obj, problems


def _lookup(obj: ConfigObj, sections: tuple[str, ...]):
    for name in sections:
        obj = obj[name]
    return obj


def _describe(error: Exception) -> str:
    text = str(error)
    return text[0].lower() + text[1:] if text else type(error).__name__


# ---------------------------------------------------------------- images

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
    obj, problems = _read(path, "image.spec")
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


# ---------------------------------------------------------------- server

def interface_ipv4(interface: str) -> ipaddress.IPv4Interface | None:
    """The first IPv4 address (with prefix) of a local interface."""
    result = subprocess.run(["ip", "-j", "-4", "addr", "show", "dev", interface],
                            capture_output=True, text=True)
    if result.returncode != 0:
        return None
    for link in json.loads(result.stdout or "[]"):
        for info in link.get("addr_info", []):
            return ipaddress.IPv4Interface(f"{info['local']}/{info['prefixlen']}")
    return None


def config_problems(config_dir: Path) -> tuple[Config | None, list[ConfigError]]:
    path = config_dir / CONFIG_FILE
    obj, problems = _read(path, "boottorrent.spec")
    if problems:
        return None, problems
    server, dhcp = obj["server"], obj["dhcp"]

    mac_images: dict[str, str] = {}
    for key, value in obj["machines"].items():
        if isinstance(value, dict):
            group, image, macs = (key,), value["image"], value["macs"]
        else:
            group, image = (), value
            try:
                macs = [check_mac(key)]
            except ValidateError as error:
                problems.append(ConfigError(path, f"{error}; a machine is `MAC = image`, "
                                            "a group is a [[section]]", ("machines",), key))
                continue
        for mac in macs:
            if mac in mac_images:
                problems.append(ConfigError(path, f"{mac} is mapped twice",
                                            ("machines",) + group, "macs" if group else key))
            mac_images[mac] = image

    interface, address, netmask = server["interface"], server["address"], dhcp["netmask"]
    if not interface:
        problems.append(ConfigError(path, "not set: name the network interface that faces "
                                    "the cluster (BootTorrent serves nothing until then)",
                                    ("server",), "interface"))
    elif not INTERFACE_NAME.fullmatch(interface):
        problems.append(ConfigError(path, f"{interface!r} is not a network interface name "
                                    "(1 to 15 letters, digits, '.', '_' or '-', e.g. enp3s0 "
                                    "or bond0.100)", ("server",), "interface"))
    elif address is None or netmask is None:
        found = interface_ipv4(interface)
        if found is None:
            key = "address" if address is None else "netmask"
            problems.append(ConfigError(path, f"not set, and interface {interface} has no IPv4 "
                                        "address to take it from", ("server" if key == "address"
                                                                    else "dhcp",), key))
        else:
            address = address or str(found.ip)
            netmask = netmask or str(found.netmask)

    # Every port on the server's address belongs to one service: libtorrent
    # would silently take another port, opentracker or the HTTP side fail.
    ports = {("tracker", "port"): obj["tracker"]["port"], ("seeder", "port"):
             obj["seeder"]["port"], ("seeder", "http_port"): obj["seeder"]["http_port"]}
    owners: dict[int, tuple[str, str]] = {}
    for (section, key), port in ports.items():
        if port in owners:
            other = owners[port]
            problems.append(ConfigError(path, f"{port} is [{other[0]}] {other[1]} already; "
                                        "each service needs a port of its own",
                                        (section,), key))
        owners.setdefault(port, (section, key))

    try:
        check_ipxe_text(obj["pivotal"]["cmdline"], PIVOTAL_CMDLINE_MAX)
    except ValueError as error:
        problems.append(ConfigError(path, str(error), ("pivotal",), "cmdline"))

    kernel = Path(obj["pivotal"]["kernel"])
    if not kernel.is_file():
        problems.append(ConfigError(path, f"{kernel}: no such file (a vmlinuz or a "
                                    "linux-image .deb)", ("pivotal",), "kernel"))

    if dhcp["mode"] == "full":
        for key in ("range_start", "range_end"):
            if dhcp[key] is None:
                problems.append(ConfigError(path, "required when mode = full", ("dhcp",), key))
        if address and netmask and not problems:
            network = ipaddress.ip_network(f"{address}/{netmask}", strict=False)
            for key in ("range_start", "range_end"):
                if ipaddress.ip_address(dhcp[key]) not in network:
                    problems.append(ConfigError(path, f"{dhcp[key]} is outside the server's "
                                                f"network {network}", ("dhcp",), key))
    if problems:
        return None, problems

    return Config(
        path=path, interface=interface, address=address, netmask=netmask,
        dhcp_mode=dhcp["mode"], range_start=dhcp["range_start"], range_end=dhcp["range_end"],
        lease_time=dhcp["lease_time"], router=dhcp["router"],
        dns_servers=tuple(dhcp["dns_servers"]),
        tracker_port=obj["tracker"]["port"], announce_interval=obj["tracker"]["announce_interval"],
        seeder_port=obj["seeder"]["port"], http_port=obj["seeder"]["http_port"],
        upload_slots=obj["seeder"]["upload_slots"],
        pivotal_kernel=kernel, pivotal_cmdline=obj["pivotal"]["cmdline"],
        seed_time_max=obj["clients"]["seed_time_max"],
        seed_idle_time=obj["clients"]["seed_idle_time"],
        fallback_after=obj["clients"]["fallback_after"],
        default_image=obj["boot"]["default_image"], menu_timeout=obj["boot"]["menu_timeout"],
        mac_images=mac_images), []


def load_config(config_dir: Path) -> Config:
    config, problems = config_problems(config_dir)
    if problems:
        raise problems[0]
    assert config
    return config


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


def default_image(config: Config, registered: list[str]) -> str | None:
    """The image a machine boots when neither its MAC nor the menu says:
    [boot] default_image, else the first image registered (which stays the
    default until it is removed: registering another changes nothing)."""
    return config.default_image or (registered[0] if registered else None)


def registry_problems(config: Config, registered: list[str]) -> list[ConfigError]:
    """What the configuration names that the registry lacks; `generate` and
    `check` both refuse these. registered: the image names."""

    def missing(image: str) -> str:
        if image_conf_path(config.path.parent, image).is_file():
            return (f"image {image!r} is described in {IMAGES_DIR}/ but not registered; "
                    f"run `boottorrent-add-image {image}`")
        return f"image {image!r} is not registered"

    problems = []
    if config.default_image and config.default_image not in registered:
        problems.append(ConfigError(config.path, missing(config.default_image), ("boot",),
                                    "default_image"))
    for mac, image in sorted(config.mac_images.items()):
        if image not in registered:
            problems.append(ConfigError(config.path, f"{mac} boots {missing(image)}",
                                        ("machines",), mac))
    return problems


def all_problems(config_dir: Path, registered: list[str]
                 ) -> tuple[Config | None, list[ConfigError], set[str]]:
    """Every problem in the whole configuration, for `boottorrent check`, with
    the server configuration (None if invalid) and the names of the valid
    image descriptions.

    registered: the images in the registry, in registration order.
    """
    try:
        config, problems = config_problems(config_dir)
    except ConfigError as error:
        config, problems = None, [error]
    described: set[str] = set()
    try:
        paths = image_conf_paths(config_dir)
    except ConfigError as error:
        paths, problems = [], problems + [error]
    for path in paths:
        try:
            image, image_errors = image_problems(path)
        except ConfigError as error:
            image, image_errors = None, [error]
        problems += image_errors
        if image:
            described.add(image.name)
    if config:
        problems += registry_problems(config, registered)
    return config, problems, described
