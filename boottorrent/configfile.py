"""Reading one configuration file: configobj, validated against a configspec
of boottorrent/data/, every problem a ConfigError that names the file, the
section and the key, so that one line tells the admin what to fix."""

from __future__ import annotations

import ipaddress
import re
from importlib import resources
from pathlib import Path

from configobj import (ConfigObj, ConfigObjError, DuplicateError, NestingError,
                       flatten_errors, get_extra_values)
from validate import ValidateError, VdtTypeError, Validator

from boottorrent.fsutil import open_regular
from boottorrent.fleet.policy import Policy
from boottorrent.pivotal.wire import Ports, SwarmSettings

SERVER_SPEC = "boottorrent.spec"
IMAGE_SPEC = "image.spec"
# Far beyond any configuration file: a larger one (a sparse file of a GB
# saved in images.d by mistake) is refused before it is read.
FILE_MAX_BYTES = 1 << 20
# Where boottorrent.conf keys are declared beside the spec file.
SETTINGS = (SwarmSettings, Ports, Policy)

MAC_ADDRESS = re.compile(r"[0-9a-f]{2}(:[0-9a-f]{2}){5}")


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


def configspec(name: str) -> list[str]:
    """A configspec from boottorrent/data/; the settings declared where
    they are used (the swarm's and the port in the wire format they travel
    in, the boot storm's in the fleet's policy) join their sections."""
    lines = []
    declared: dict[str, list[str]] = {}
    for settings in (SETTINGS if name == SERVER_SPEC else ()):
        for section, keys in settings.configspec().items():
            declared.setdefault(section, []).extend(keys)
    for line in resources.files("boottorrent").joinpath("data", name).read_text().splitlines():
        lines.append(line)
        if line.startswith("[") and not line.startswith("[["):
            lines += declared.pop(line.strip("[] "), [])
    assert not declared, f"{name} lacks the sections {', '.join(declared)}"
    return lines


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


def _ipv4_network(value) -> ipaddress.IPv4Network:
    if not isinstance(value, str):
        raise VdtTypeError(value)
    try:
        return ipaddress.IPv4Network(value)
    except ValueError as error:
        raise ValidateError(f"{value!r} is not an IPv4 network like 192.0.2.0/24 ({error})"
                            ) from None


VALIDATOR = Validator({"mac_list": _mac_list, "ip_addr_list": _ip_addr_list,
                       "ipv4_network": _ipv4_network})


def check_mac(mac: str) -> str:
    """A MAC address in the lowercase colon form iPXE's ${mac} gives."""
    normal = mac.strip().lower().replace("-", ":")
    if not MAC_ADDRESS.fullmatch(normal):
        raise ValidateError(f"{mac!r} is not a MAC address (like 52:54:00:12:34:56)")
    return normal


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


def read_file(path: Path, spec: str) -> tuple[ConfigObj, list[ConfigError]]:
    """Parse and validate one file; returns the ConfigObj and every problem."""
    try:
        with open_regular(path) as file:
            data = file.read(FILE_MAX_BYTES + 1)
        if len(data) > FILE_MAX_BYTES:
            raise ConfigError(path, f"larger than {FILE_MAX_BYTES >> 20} MiB: not a "
                              "configuration file")
        # utf-8-sig: a byte order mark, as Windows editors write, is no key.
        # Lines end at a newline only: U+2028 and the like are characters of
        # a value (which its check may refuse), not lines of their own.
        text = [line.removesuffix("\r") for line in data.decode("utf-8-sig").split("\n")]
    except FileNotFoundError:
        raise ConfigError(path, "no such file") from None
    except UnicodeDecodeError:
        raise ConfigError(path, "cannot read: not UTF-8 text") from None
    except OSError as error:
        raise ConfigError(path, f"cannot read: {error.strerror or error}") from None
    try:
        obj = ConfigObj(text, configspec=configspec(spec), file_error=True, list_values=True,
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
