"""A virtual LAN in network namespaces, for tests, the benchmark and the demo.

One "switch" namespace holds a bridge; every host is a namespace joined to
the bridge by a veth pair; QEMU taps are added to the bridge as well. The
root namespace is never configured: the only thing created there is the
namespace names themselves. Addresses come from 198.18.0.0/15, the range
reserved for network tests.

More subnets (Lab.add_subnet) are bridges of their own in the switch
namespace, each behind a router namespace that forwards between it and the
first subnet and relays DHCP to the server, as a site's router does with
`ip helper-address` (here dnsmasq --dhcp-relay).

Every process started through a Lab runs in its own process group and is
killed by PID when the lab closes, also after a failure.
"""

from __future__ import annotations

import ipaddress
import itertools
import os
import shlex
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

SUBNET = ipaddress.ip_network("198.18.0.0/24")
SERVER_ADDRESS = "198.18.0.1"
BRIDGE = "br0"
# Subnet N (Lab.add_subnet) is 198.18.N.0/24; its router is .1 there and
# 198.18.0.(ROUTERS_FROM - N) on the first subnet.
ROUTERS_FROM = 254

_lab_counter = itertools.count()


def _ip(*args: str, netns: str | None = None) -> None:
    cmd = ["ip"] + (["-n", netns] if netns else []) + list(args)
    subprocess.run(cmd, check=True, capture_output=True, text=True)


@dataclass
class Host:
    """One machine of the lab: a namespace with one interface on the bridge."""

    lab: "Lab"
    name: str
    netns: str
    ifname: str
    address: str | None
    mac: str
    subnet: "Subnet | None" = None  # None: the lab's first subnet (SUBNET, BRIDGE)

    def command(self, argv: list[str]) -> list[str]:
        return ["ip", "netns", "exec", self.netns] + argv

    def run(self, argv: list[str], **kwargs) -> subprocess.CompletedProcess:
        kwargs.setdefault("check", True)
        kwargs.setdefault("capture_output", True)
        kwargs.setdefault("text", True)
        return subprocess.run(self.command(argv), **kwargs)

    def popen(self, argv: list[str], **kwargs) -> subprocess.Popen:
        return self.lab.popen(self.command(argv), **kwargs)

    def shape(self, rate_mbit: int) -> None:
        """Limit this host's link to rate_mbit both ways.

        Egress is shaped on the host's end of the veth, ingress on the
        bridge's end (the egress towards the host). Token bucket only: the
        kernels these labs run on have no netem, so no added delay.
        """
        burst_kb = max(32, rate_mbit * 1000 // 8 // 100)  # 10 ms worth of bytes
        for netns, dev in ((self.netns, self.ifname), (self.lab.switch, self.peer_ifname)):
            subprocess.run(
                ["ip", "netns", "exec", netns, "tc", "qdisc", "replace", "dev", dev, "root",
                 "tbf", "rate", f"{rate_mbit}mbit", "burst", f"{burst_kb}kb", "latency", "100ms"],
                check=True, capture_output=True)

    @property
    def peer_ifname(self) -> str:
        return f"v{self.lab.tag}{self.name}"[:15]


@dataclass
class Subnet:
    """A subnet of its own behind a router (Lab.add_subnet)."""

    number: int
    network: ipaddress.IPv4Network
    bridge: str
    router: Host  # its eth0 on the first subnet, eth1 on this one
    gateway: str  # the router's address on this subnet
    next_address: int = 10
    relay_log: Path | None = None  # its DHCP relay's

    @property
    def upstream(self) -> str:
        """The router's address on the first subnet."""
        return self.router.address


@dataclass
class Lab:
    """A bridge in its own namespace plus hosts; use as a context manager."""

    tag: str = field(default_factory=lambda: f"{os.getpid() % 100000}{next(_lab_counter)}")
    hosts: dict[str, Host] = field(default_factory=dict)
    subnets: list[Subnet] = field(default_factory=list)
    processes: list[subprocess.Popen] = field(default_factory=list)
    _next_address: int = 10

    def __post_init__(self) -> None:
        self.switch = f"bt{self.tag}sw"
        self._namespaces: list[str] = []
        self._add_namespace(self.switch)
        _ip("link", "add", BRIDGE, "type", "bridge", netns=self.switch)
        # No STP and no forwarding delay: a test LAN must pass frames at once.
        _ip("link", "set", BRIDGE, "type", "bridge", "stp_state", "0", "forward_delay", "0",
            netns=self.switch)
        _ip("link", "set", BRIDGE, "up", netns=self.switch)

    def __enter__(self) -> "Lab":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _add_namespace(self, netns: str) -> None:
        subprocess.run(["ip", "netns", "add", netns], check=True, capture_output=True)
        self._namespaces.append(netns)
        _ip("link", "set", "lo", "up", netns=netns)

    def add_host(self, name: str, address: str | None = "auto", mac: str | None = None,
                 subnet: Subnet | None = None) -> Host:
        """Add a namespace on the bridge (of subnet, default the first).

        address: "auto" takes the next free address from .10 up, None
        leaves the interface unconfigured (for DHCP clients), anything else
        is used as given (the server is 198.18.0.1). A host with an address
        routes to the other subnets through their routers.
        """
        if name in self.hosts:
            raise ValueError(f"host {name!r} exists")
        index = len(self.hosts) + 1
        mac = mac or f"52:54:00:{int(self.tag) % 256:02x}:{index // 256:02x}:{index % 256:02x}"
        network = subnet.network if subnet else SUBNET
        if address == "auto":
            if subnet:
                address = str(network.network_address + subnet.next_address)
                subnet.next_address += 1
            else:
                address = str(network.network_address + self._next_address)
                self._next_address += 1
        netns = f"bt{self.tag}{name}"[:32]
        self._add_namespace(netns)
        host = Host(self, name, netns, "eth0", address, mac, subnet)
        self._plug(host, "eth0", mac, subnet.bridge if subnet else BRIDGE)
        if address:
            _ip("addr", "add", f"{address}/{network.prefixlen}", "dev", "eth0", netns=netns)
            self._add_neighbours(host)
            self._add_routes(host)
        self.hosts[name] = host
        return host

    def _plug(self, host: Host, ifname: str, mac: str, bridge: str) -> None:
        """A veth pair: ifname in host's namespace, its peer on bridge."""
        # A second interface's peer: another first letter, the same tail
        # (cutting the tail would give router2's and router3's one name).
        peer = host.peer_ifname if ifname == "eth0" else "w" + host.peer_ifname[1:]
        _ip("link", "add", peer, "type", "veth", "peer", "name", ifname, "netns", host.netns,
            netns=self.switch)
        _ip("link", "set", peer, "master", bridge, "up", netns=self.switch)
        _ip("link", "set", ifname, "address", mac, netns=host.netns)
        _ip("link", "set", ifname, "up", netns=host.netns)

    def add_subnet(self, log_dir: Path, relay_to: tuple[str, ...] = (SERVER_ADDRESS,)
                   ) -> Subnet:
        """A subnet of its own, 198.18.N.0/24, on a bridge of its own, behind
        a router that forwards between it and the first subnet and relays
        DHCP to the addresses relay_to (dnsmasq --dhcp-relay, the lab's
        `ip helper-address`; none when empty), logging to log_dir/relayN.log.
        Hosts with an address on either side get a route to the other
        through it; DHCP clients get theirs by DHCP."""
        number = len(self.subnets) + 2
        network = ipaddress.ip_network(f"198.18.{number}.0/24")
        bridge = f"br{number}"
        _ip("link", "add", bridge, "type", "bridge", netns=self.switch)
        _ip("link", "set", bridge, "type", "bridge", "stp_state", "0", "forward_delay", "0",
            netns=self.switch)
        _ip("link", "set", bridge, "up", netns=self.switch)
        # A short name: interface names are 15 characters, the lab tag first.
        router = self.add_host(f"gw{number}", str(SUBNET.network_address
                                                      + ROUTERS_FROM - number))
        gateway = str(network.network_address + 1)
        subnet = Subnet(number, network, bridge, router, gateway)
        self._plug(router, "eth1", router.mac[:-2] + "fe", bridge)
        _ip("addr", "add", f"{gateway}/{network.prefixlen}", "dev", "eth1", netns=router.netns)
        router.run(["sysctl", "-qw", "net.ipv4.ip_forward=1"])
        self.subnets.append(subnet)
        for host in self.hosts.values():
            if host.address and host.subnet is None and host is not router:
                _ip("route", "add", str(network), "via", router.address, netns=host.netns)
        if not relay_to:  # a subnet with a DHCP server of its own
            return subnet
        log_dir.mkdir(parents=True, exist_ok=True)
        subnet.relay_log = log_dir / f"relay{number}.log"
        with subnet.relay_log.open("wb") as log:
            relay = router.popen(
                ["dnsmasq", "--keep-in-foreground", "--conf-file=/dev/null", "--port=0",
                 "--no-resolv", "--no-hosts", "--pid-file=", "--log-facility=-",
                 *(f"--dhcp-relay={gateway},{server}" for server in relay_to)],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log)
        deadline = time.monotonic() + 10
        while "started, version" not in subnet.relay_log.read_text(errors="replace"):
            if relay.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the DHCP relay did not start:\n"
                                   f"{subnet.relay_log.read_text(errors='replace')}")
            time.sleep(0.05)
        return subnet

    def _add_routes(self, host: Host) -> None:
        """A new host's routes to the other subnets, through their routers."""
        if host.subnet:
            _ip("route", "add", "default", "via", host.subnet.gateway, netns=host.netns)
            return
        for subnet in self.subnets:
            _ip("route", "add", str(subnet.network), "via", subnet.upstream, netns=host.netns)

    def _add_neighbours(self, new: Host) -> None:
        """Static ARP entries between new and every host with a fixed address.

        The kernel keeps one ARP table for all namespaces, of 1024 entries
        (net.ipv4.neigh.default.gc_thresh3, settable only in the host's own
        namespace): 33 hosts that each talk to all others overflow it
        ("neighbor table overflow" in dmesg), and their connections then
        wait seconds for addresses that never resolve. Each real machine
        has its own table; permanent entries stand for that, and the
        kernel does not count them against the limit.
        """
        others = [h for h in self.hosts.values() if h.address and h.subnet is new.subnet]
        if others:
            _write_neighbours(new, others)
        for host in others:
            _write_neighbours(host, [new])

    def add_neighbours(self, hosts: list[Host]) -> None:
        """Static ARP entries between all of hosts (whose addresses were set
        after add_host), one command per host: for hundreds of hosts, which
        adding them one by one would make a quadratic number of commands."""
        for host in hosts:
            _write_neighbours(host, [h for h in hosts if h is not host])

    def add_server(self) -> Host:
        return self.add_host("server", SERVER_ADDRESS)

    def add_tap(self, name: str, subnet: Subnet | None = None) -> str:
        """A tap device on the bridge (of subnet, default the first), for a
        QEMU VM started with switch_command()."""
        ifname = f"t{self.tag}{name}"[:15]
        _ip("tuntap", "add", "dev", ifname, "mode", "tap", netns=self.switch)
        _ip("link", "set", ifname, "master", subnet.bridge if subnet else BRIDGE, "up",
            netns=self.switch)
        return ifname

    def switch_command(self, argv: list[str]) -> list[str]:
        return ["ip", "netns", "exec", self.switch] + argv

    def popen(self, argv: list[str], **kwargs) -> subprocess.Popen:
        """Start a process in its own process group, killed when the lab closes."""
        kwargs.setdefault("start_new_session", True)
        process = subprocess.Popen(argv, **kwargs)
        self.processes.append(process)
        return process

    def stop(self, process: subprocess.Popen, timeout: float = 5.0) -> None:
        """Stop one process (and its group) started by this lab."""
        if process.poll() is None:
            _signal_group(process, signal.SIGTERM)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                _signal_group(process, signal.SIGKILL)
                process.wait()

    def close(self) -> None:
        for process in reversed(self.processes):
            self.stop(process)
        for netns in reversed(self._namespaces):
            _kill_namespace_processes(netns)
            subprocess.run(["ip", "netns", "delete", netns], capture_output=True)
        self._namespaces.clear()


def _write_neighbours(host: Host, others: list[Host]) -> None:
    lines = "".join(f"neigh replace {h.address} lladdr {h.mac} dev eth0 nud permanent\n"
                    for h in others)
    subprocess.run(["ip", "-n", host.netns, "-batch", "-"], input=lines, check=True,
                   capture_output=True, text=True)


def _signal_group(process: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(process.pid, sig)
    except ProcessLookupError:
        pass


def _kill_namespace_processes(netns: str) -> None:
    """Kill whatever still runs in a namespace we made (a daemon that forked)."""
    result = subprocess.run(["ip", "netns", "pids", netns], capture_output=True, text=True)
    pids = [int(p) for p in result.stdout.split()]
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + 5
    while pids and time.monotonic() < deadline:
        pids = [p for p in pids if Path(f"/proc/{p}").exists()]
        time.sleep(0.05)


def describe(argv: list[str]) -> str:
    return shlex.join(argv)
