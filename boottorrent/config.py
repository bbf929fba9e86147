"""BootTorrent's server configuration, /etc/boottorrent/boottorrent.conf
(configspec boottorrent/data/boottorrent.spec), and the check of the whole
configuration (`boottorrent check`): the server's, every images.d/NAME.conf
(imageconf.py), and what they name that the registry lacks.
"""

from __future__ import annotations

import ipaddress
import json
import re
import string
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path

from validate import ValidateError

from boottorrent import bzimage, secureboot
from boottorrent.configfile import SERVER_SPEC, ConfigError, check_mac, read_file
from boottorrent.fleet.policy import Policy
from boottorrent.imagecheck import read_image
from boottorrent.imageconf import (HOSTNAME_PARAMETER, IMAGES_DIR, check_ipxe_text,
                                   check_machines_cmdline, image_conf_path, image_conf_paths)
from boottorrent.nodes import TEMPLATES, Node, Templates
from boottorrent.pivotal.command import run
from boottorrent.pivotal.wire import SwarmSettings
from boottorrent.subnets import RelayedSubnet, relayed_subnets

CONFIG_FILE = "boottorrent.conf"
# A Linux interface name (IFNAMSIZ is 16 with the NUL), without the
# wildcards, commas and spaces that mean something else to dnsmasq.
INTERFACE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,14}")
# One DNS label (RFC 1123): what systemd.hostname= sets as the machine's
# static hostname.
HOSTNAME_MAX = 63
HOSTNAME = re.compile(r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
# The iPXE script adds the initrd= names, the image name and BOOTIF= to the
# pivotal's command line; this leaves them ample room.
PIVOTAL_CMDLINE_MAX = 1024


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
    seeder_port: int
    http_port: int
    pivotal_kernel: Path
    pivotal_cmdline: str
    swarm: SwarmSettings
    policy: Policy  # the boot storm's ([seeder] keys)
    default_image: str
    menu_timeout: int
    secure_boot: bool  # UEFI machines boot Debian's signed shim and GRUB (secureboot.py)
    page: bool  # the status page is served (page.py)
    # Where: (address, port) of a listener of its own; None: at / of http_port.
    page_address: tuple[str, int] | None
    # Subnets behind DHCP relays, served too ([dhcp] subsections).
    relayed: tuple[RelayedSubnet, ...] = ()
    # The primary this server follows (mirror.py), its HTTP side's URL; "": none.
    primary: str = ""
    # The followers of this one whose machines it lists (followers.py).
    followers: tuple[str, ...] = ()
    nodes: dict[str, Node] = field(default_factory=dict)  # the machines [machines] lists
    # Words the pivotal adds to a machine's image command line: its
    # hostname (systemd.hostname=) and its group's cmdline ([machines]).
    mac_cmdline: dict[str, str] = field(default_factory=dict)
    # The admin's templates of each machine's own files (nodes.py), checked.
    templates: Templates | None = None

    @property
    def mac_images(self) -> dict[str, str]:
        return {mac: node.image for mac, node in self.nodes.items()}

    @property
    def tracker_url(self) -> str:
        return f"http://{self.address}:{self.tracker_port}/announce"

    @property
    def http_url(self) -> str:
        return f"http://{self.address}:{self.http_port}"

    @property
    def page_url(self) -> str:
        """The status page's URL; "" when it is off."""
        if not self.page:
            return ""
        host, port = self.page_address or (self.address, self.http_port)
        return f"http://{f'[{host}]' if ':' in host else host}:{port}/"

    @property
    def network_address(self) -> str:
        return str(ipaddress.ip_network(f"{self.address}/{self.netmask}", strict=False)
                   .network_address)


def interface_ipv4(interface: str) -> ipaddress.IPv4Interface | None:
    """The first IPv4 address (with prefix) of a local interface."""
    result = run(["ip", "-j", "-4", "addr", "show", "dev", interface], check=False)
    if result.returncode != 0:
        return None
    for link in json.loads(result.stdout or "[]"):
        for info in link.get("addr_info", []):
            return ipaddress.IPv4Interface(f"{info['local']}/{info['prefixlen']}")
    return None


def listen_address(text: str) -> tuple[str, int]:
    """ADDRESS:PORT ([ADDRESS]:PORT for IPv6) as (address, port);
    ValueError says what is wrong."""
    host, colon, port = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        host = ""  # an IPv6 address without its brackets
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        address = None
    if not colon or address is None or not (port.isascii() and port.isdigit()
                                            and 0 < int(port) < 65536):
        raise ValueError(f"{text!r} is not ADDRESS:PORT (e.g. 192.0.2.10:8080, "
                         "0.0.0.0:8080 or [::]:8080)")
    return str(address), int(port)


def server_url(text: str) -> str:
    """Another BootTorrent server's HTTP side, http://ADDRESS:PORT (its
    [seeder] http_port); ValueError says what is wrong."""
    parsed = urllib.parse.urlsplit(text)
    try:
        ipaddress.ip_address(parsed.hostname or "")
        port = parsed.port
    except ValueError:
        port = None
    if (parsed.scheme != "http" or port is None or parsed.path.strip("/")
            or parsed.query or parsed.fragment or parsed.username):
        raise ValueError(f"{text!r} is not a server's http://ADDRESS:PORT (e.g. "
                         "http://192.0.2.1:6980, its [seeder] http_port)")
    return text.rstrip("/")


def machine_hostname(pattern: str, index: int, mac: str) -> str:
    """The hostname of the index-th machine (from 1) of a [machines] group:
    its pattern with {index} (e.g. node-{index:03}) and {mac} (as
    52-54-00-12-34-56) filled in. ValueError says what is wrong."""
    try:
        # Widths are read before they are used: {index:>300000000} would
        # take seconds and a gigabyte to make a name of 300 MB.
        specs = [spec for _, _, spec, _ in string.Formatter().parse(pattern) if spec]
        if any("{" in spec or any(int(n) > HOSTNAME_MAX for n in re.findall(r"\d+", spec))
               for spec in specs):
            raise ValueError(f"a width of more than {HOSTNAME_MAX}, the longest hostname, "
                             "or a format inside a format")
        hostname = pattern.format(index=index, mac=mac.replace(":", "-"))
    except (KeyError, IndexError, ValueError) as error:
        raise ValueError(f"{pattern!r} is not a pattern of {{index}} and {{mac}} "
                         f"({error})") from None
    if not HOSTNAME.fullmatch(hostname):
        raise ValueError(f"{hostname!r} (for {mac}) is not a hostname: letters, digits and "
                         f"'-' (not first or last), at most {HOSTNAME_MAX}")
    return hostname


def server_address_problem(address: str, netmask: str) -> str | None:
    """Why no machine could reach the server at address, or None: the
    machines' boot files, tracker and reports all go there."""
    ip = ipaddress.IPv4Address(address)
    network = ipaddress.IPv4Network(f"{address}/{netmask}", strict=False)
    for test, what in ((ip.is_unspecified, "the unspecified address"),
                       (ip.is_loopback, "a loopback address"),
                       (ip.is_multicast, "a multicast address"),
                       (ip.is_reserved, "a reserved address (240.0.0.0/4)"),
                       (network.prefixlen < 31 and ip == network.network_address,
                        f"the network {network}'s own address"),
                       (network.prefixlen < 31 and ip == network.broadcast_address,
                        f"the network {network}'s broadcast address")):
        if test:
            return f"{address} is not an address machines can reach: {what}"
    return None


def _interface_unset(path: Path) -> ConfigError:
    return ConfigError(path, "not set: name the network interface that faces the cluster "
                       "(BootTorrent serves nothing until then)", ("server",), "interface")


def unconfigured(config_dir: Path, follower: bool = False) -> ConfigError | None:
    """Why the server is not meant to run yet ([server] interface unset, as
    installed), or None. A configuration that is set but wrong is not
    "unconfigured": generate's own error says what is wrong with it.
    follower: also why it does not follow a primary ([follow] primary
    unset), for boottorrent-follow.service."""
    path = config_dir / CONFIG_FILE
    try:
        obj, problems = read_file(path, SERVER_SPEC)
    except ConfigError:
        return None
    if problems:
        return None
    if not obj["server"]["interface"]:
        return _interface_unset(path)
    if follower and not obj["follow"]["primary"]:
        return ConfigError(path, "not set: this server follows no primary", ("follow",),
                           "primary")
    return None


def _machines(path: Path, section: dict, problems: list[ConfigError]
              ) -> tuple[dict[str, Node], dict[str, str]]:
    """[machines]: each machine listed, by MAC, and the words its command
    line gets (hostname, the group's cmdline); problems are appended."""
    nodes: dict[str, Node] = {}
    mac_cmdline: dict[str, str] = {}
    names: dict[str, str] = {}  # MAC -> hostname
    hostnames: dict[str, str] = {}  # hostname -> the MAC it went to
    for key, value in section.items():
        if isinstance(value, dict):
            group, image, macs = (key,), value["image"], value["macs"]
            where = ("machines",) + group
            try:
                cmdline = check_machines_cmdline(value["cmdline"])
            except ValueError as error:
                problems.append(ConfigError(path, str(error), where, "cmdline"))
                cmdline = ""
            for index, mac in enumerate(macs, start=1):
                words = [cmdline] if cmdline else []
                if value["hostname"]:
                    try:
                        hostname = machine_hostname(value["hostname"], index, mac)
                    except ValueError as error:
                        problems.append(ConfigError(path, str(error), where, "hostname"))
                        break
                    if hostnames.setdefault(hostname, mac) != mac:
                        problems.append(ConfigError(path, f"{hostname} is the hostname of "
                                                    f"{hostnames[hostname]} and of {mac}",
                                                    where, "hostname"))
                        break
                    words.insert(0, HOSTNAME_PARAMETER + hostname)
                    names[mac] = hostname
                if words:
                    mac_cmdline[mac] = " ".join(words)
        else:
            group, image = (), value
            try:
                macs = [check_mac(key)]
            except ValidateError as error:
                problems.append(ConfigError(path, f"{error}; a machine is `MAC = image`, "
                                            "a group is a [[section]]", ("machines",), key))
                continue
        for index, mac in enumerate(macs, start=1):
            if mac in nodes:
                problems.append(ConfigError(path, f"{mac} is mapped twice",
                                            ("machines",) + group, "macs" if group else key))
            nodes[mac] = Node(mac, image, names.get(mac, ""), "".join(group), index)
    return nodes, mac_cmdline


def config_problems(config_dir: Path) -> tuple[Config | None, list[ConfigError]]:
    path = config_dir / CONFIG_FILE
    obj, problems = read_file(path, SERVER_SPEC)
    if problems:
        return None, problems
    server, dhcp = obj["server"], obj["dhcp"]

    nodes, mac_cmdline = _machines(path, obj["machines"], problems)
    templates = None
    try:
        loaded = Templates.load(config_dir / TEMPLATES)
        loaded.check(list(nodes.values()))
        templates = loaded
    except ConfigError as error:
        problems.append(error)

    interface, address, netmask = server["interface"], server["address"], dhcp["netmask"]
    if not interface:
        problems.append(_interface_unset(path))
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
    if address and netmask and (problem := server_address_problem(address, netmask)):
        problems.append(ConfigError(path, problem, ("server",), "address"))

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

    page_address = None
    if obj["seeder"]["page_address"]:
        try:
            page_address = listen_address(obj["seeder"]["page_address"])
        except ValueError as error:
            problems.append(ConfigError(path, str(error), ("seeder",), "page_address"))
        else:
            wildcard = ipaddress.ip_address(page_address[0]).is_unspecified
            if page_address[1] in owners and (wildcard or page_address[0] == address):
                other = owners[page_address[1]]
                problems.append(ConfigError(
                    path, f"port {page_address[1]} is [{other[0]}] {other[1]} on the server's "
                    "address already; the page needs a port of its own",
                    ("seeder",), "page_address"))

    try:
        check_ipxe_text(obj["pivotal"]["cmdline"], PIVOTAL_CMDLINE_MAX)
    except ValueError as error:
        problems.append(ConfigError(path, str(error), ("pivotal",), "cmdline"))

    kernel = Path(obj["pivotal"]["kernel"])
    if problem := bzimage.kernel_or_package_problem(kernel):
        problems.append(ConfigError(path, problem, ("pivotal",), "kernel"))

    if obj["boot"]["secure_boot"]:
        if missing := secureboot.missing():
            problems.append(ConfigError(path, missing, ("boot",), "secure_boot"))
        elif dhcp["mode"] == "proxy":
            problems.append(ConfigError(path, secureboot.PROXY_MODE, ("boot",), "secure_boot"))

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
    local = (ipaddress.ip_network(f"{address}/{netmask}", strict=False)
             if address and netmask else None)
    relayed = relayed_subnets(path, dhcp, local, problems)
    follow = obj["follow"]
    for key, urls in (("primary", [follow["primary"]] if follow["primary"] else []),
                      ("followers", follow["followers"])):
        for url in urls:
            try:
                server_url(url)
            except ValueError as error:
                problems.append(ConfigError(path, str(error), ("follow",), key))
    if follow["primary"] and follow["followers"]:
        problems.append(ConfigError(path, "a follower has no followers of its own: its "
                                    "primary lists them", ("follow",), "followers"))
    if problems:
        return None, problems

    return Config(
        path=path, interface=interface, address=address, netmask=netmask,
        dhcp_mode=dhcp["mode"], range_start=dhcp["range_start"], range_end=dhcp["range_end"],
        lease_time=dhcp["lease_time"], router=dhcp["router"],
        dns_servers=tuple(dhcp["dns_servers"]),
        tracker_port=obj["tracker"]["port"],
        seeder_port=obj["seeder"]["port"], http_port=obj["seeder"]["http_port"],
        pivotal_kernel=kernel, pivotal_cmdline=obj["pivotal"]["cmdline"],
        swarm=SwarmSettings.from_sections(obj), policy=Policy.from_sections(obj),
        default_image=obj["boot"]["default_image"], menu_timeout=obj["boot"]["menu_timeout"],
        secure_boot=obj["boot"]["secure_boot"],
        page=obj["seeder"]["page"], page_address=page_address, relayed=relayed,
        primary=follow["primary"].rstrip("/"),
        followers=tuple(url.rstrip("/") for url in follow["followers"]),
        nodes=nodes, mac_cmdline=mac_cmdline, templates=templates), []


def load_config(config_dir: Path) -> Config:
    config, problems = config_problems(config_dir)
    if problems:
        raise problems[0]
    assert config
    return config


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
            image, image_errors = read_image(path)
        except ConfigError as error:
            image, image_errors = None, [error]
        problems += image_errors
        if image:
            described.add(image.name)
    if config:
        problems += registry_problems(config, registered)
    return config, problems, described
