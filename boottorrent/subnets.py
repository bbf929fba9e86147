"""The subnets behind DHCP relays: the [dhcp] subsections of boottorrent.conf.

Machines on another subnet reach this server's DHCP through a relay (a
router's `ip helper-address`, dhcrelay, dnsmasq --dhcp-relay). The relay
puts its own address on that subnet into the request (giaddr), and dnsmasq
answers from the dhcp-range of the subnet that address is in: each subnet
needs one, with its netmask, which dnsmasq cannot learn from an interface
of its own. In full mode each subnet also gets its own addresses and its
gateway (the machines' way back to the server, its tracker and the peers
on other subnets); in proxy mode the site's DHCP server hands out both,
and the relay forwards to it and to this server alike.

Everything else crosses the router as it is: TFTP and HTTP go to the
server's address, peers connect to each other's.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path

from boottorrent.configfile import ConfigError

# A /31 or /32 holds no machine behind a router beside the router itself.
PREFIX_MAX = 30


@dataclass(frozen=True)
class RelayedSubnet:
    name: str  # the [dhcp] subsection's
    network: ipaddress.IPv4Network
    router: str | None  # the machines' gateway (full mode)
    range_start: str | None  # full mode
    range_end: str | None

    @property
    def tag(self) -> str:
        """dnsmasq's tag of its dhcp-range (the name may be anything)."""
        return f"relayed-{self.network.network_address}"


def relayed_subnets(path: Path, dhcp: dict, local: ipaddress.IPv4Network | None,
                    problems: list[ConfigError]) -> tuple[RelayedSubnet, ...]:
    """The [dhcp] subsections, checked against each other and the server's
    own network (local, when known); problems are appended."""
    full = dhcp["mode"] == "full"
    found: list[RelayedSubnet] = []
    for name, section in dhcp.items():
        if not isinstance(section, dict):
            continue
        where = ("dhcp", name)
        count = len(problems)
        network = section["network"]
        if network.prefixlen > PREFIX_MAX:
            problems.append(ConfigError(path, f"{network} holds no machines: give the "
                                        "subnet's prefix, like 192.0.2.0/24", where, "network"))
            continue
        others = [(local, "the server's own network")] if local else []
        others += [(s.network, f"[dhcp] [[{s.name}]] already") for s in found]
        for other, what in others:
            if network.overlaps(other):
                problems.append(ConfigError(path, f"{network} overlaps {other}, {what}; a "
                                            "relayed subnet is another subnet", where, "network"))
        if full:
            for key, what in (("range_start", "the first address to give out"),
                              ("range_end", "the last address to give out"),
                              ("router", "the machines' gateway there (the relay's address)")):
                if section[key] is None:
                    problems.append(ConfigError(path, f"required when mode = full: {what}",
                                                where, key))
                elif ipaddress.ip_address(section[key]) not in network:
                    problems.append(ConfigError(path, f"{section[key]} is outside {network}",
                                                where, key))
            if len(problems) == count and (ipaddress.ip_address(section["range_start"])
                                           > ipaddress.ip_address(section["range_end"])):
                problems.append(ConfigError(path, f"{section['range_start']} comes after "
                                            f"range_end {section['range_end']}",
                                            where, "range_start"))
        if len(problems) == count:
            found.append(RelayedSubnet(name, network, section["router"],
                                       section["range_start"], section["range_end"]))
    return tuple(found)
