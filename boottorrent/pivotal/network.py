"""The pivotal's network: the interface that booted, and its DHCP lease."""

from __future__ import annotations

import os
from pathlib import Path

from boottorrent.pivotal import ClientError
from boottorrent.pivotal.command import run
from boottorrent.pivotal.console import say
from boottorrent.pivotal.wire import Report

UDHCPC_SCRIPT = """#!/bin/sh
# Written by the BootTorrent client: configure the lease udhcpc got.
case "$1" in
bound|renew)
    ip addr flush dev "$interface"
    ip addr add "$ip/${mask:-24}" dev "$interface"
    [ -n "$router" ] && ip route add default via "${router%% *}" dev "$interface"
    env > "$LEASE_FILE"
    ;;
esac
exit 0
"""


def kernel_parameters(cmdline: str) -> dict[str, str]:
    params = {}
    for word in cmdline.split():
        key, _, value = word.partition("=")
        params[key] = value
    return params


def bootif_mac(bootif: str | None) -> str | None:
    """The MAC address in pxelinux's BOOTIF=01-aa-bb-cc-dd-ee-ff, lower case."""
    return bootif[3:].replace("-", ":").lower() if bootif else None


def interfaces() -> dict[str, str]:
    """Ethernet interfaces by name, with their MAC addresses."""
    found = {}
    for path in sorted(Path("/sys/class/net").iterdir()):
        if (path / "type").read_text().strip() == "1":  # ARPHRD_ETHER
            found[path.name] = (path / "address").read_text().strip()
    return found


def ipv4_address(interface: str) -> str | None:
    out = run(["ip", "-4", "-o", "addr", "show", "dev", interface], check=False).stdout.split()
    return out[out.index("inet") + 1].split("/")[0] if "inet" in out else None


def bring_up_network(bootif: str | None, report: Report, work: Path) -> str:
    """Configure the boot interface; returns its name."""
    found = interfaces()
    if not found:
        raise ClientError("no Ethernet interface: is the NIC's driver in the pivotal?")
    wanted = bootif_mac(bootif)
    names = [n for n, mac in found.items() if mac == wanted] or list(found)
    for name in names:
        run(["ip", "link", "set", name, "up"])
    for name in names:
        report.mac = found[name]
        if address := ipv4_address(name):
            report.address = address
            return name
        report.phase = "dhcp"
        say(f"{name} ({found[name]}): asking for an address (DHCP)")
        script = work / "udhcpc.script"
        script.write_text(UDHCPC_SCRIPT)
        script.chmod(0o755)
        result = run(["busybox", "udhcpc", "-i", name, "-f", "-q", "-n", "-t", "10", "-T", "2",
                      "-s", script], env={**os.environ, "LEASE_FILE": str(work / f"lease.{name}")},
                     check=False)
        if result.returncode == 0 and (address := ipv4_address(name)):
            report.address = address
            say(f"{name}: address {address}")
            return name
    raise ClientError(f"no DHCP answer on {', '.join(names)}")
