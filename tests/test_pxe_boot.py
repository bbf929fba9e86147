"""PXE boot: BootTorrent's dnsmasq and iPXE templates against real dnsmasq,
a real DHCP client (lab.dhcp), TFTP, and QEMU machines booting over the
lab's network.

Everything runs in lab namespaces (lab.netns) on 198.18.0.0/24: the server
is 198.18.0.1; in proxy mode a stand-in for the site's own DHCP server is
198.18.0.2.
"""

from __future__ import annotations

import concurrent.futures
import gzip
import ipaddress
import os
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
from boottorrent.render import environment, ipxe_pivotal
from boottorrent.pivotal import paths
from boottorrent.subnets import RelayedSubnet

from lab import dhcp
from lab.cluster import wait_for
from lab.netns import SERVER_ADDRESS, Lab
from lab.qemu import VM
from lab.testimage import (CMDLINE_PREFIX, EXTRA_PREFIX, MARKER_PREFIX, build_extra_initrd,
                           build_test_image)
from lab.token import VIRTIO_BUSID

IPXE_DIR = Path("/usr/lib/ipxe")
IPXE_BINARIES = ("undionly.kpxe", "snponly.efi", "ipxe.efi")
HTTP_PORT = 6980
HTTP_URL = f"http://{SERVER_ADDRESS}:{HTTP_PORT}"
RANGE = ("198.18.0.100", "198.18.0.199")
STANDIN_ADDRESS = "198.18.0.2"
STANDIN_RANGE = ("198.18.0.200", "198.18.0.250")
# The lab's second subnet (Lab.add_subnet), behind a DHCP relay.
RELAYED = RelayedSubnet("rack-b", ipaddress.IPv4Network("198.18.2.0/24"), "198.18.2.1",
                        "198.18.2.100", "198.18.2.199")
STANDIN_RELAYED_RANGE = ("198.18.2.200", "198.18.2.250")
OVMF = Path("/usr/share/ovmf/OVMF.fd")

ENV = environment

PIVOTAL = ipxe_pivotal("console=tty0 console=ttyS0,115200 quiet")
IMAGES = [{"name": "debian", "description": "Debian 12 compute node"},
          {"name": "rocky", "description": "Rocky Linux 9"}]


def make_context(root: Path, mode: str, **overrides) -> dict:
    context = {
        "interface": "eth0",
        "server_address": SERVER_ADDRESS,
        "dhcp_mode": mode,
        "dhcp_range_start": RANGE[0],
        "dhcp_range_end": RANGE[1],
        "netmask": "255.255.255.0",
        "network_address": "198.18.0.0",
        "lease_time": "1h",
        "router": None,
        "dns_servers": [],
        "relayed": [],
        "tftp_root": str(root / "tftp"),
        "lease_file": str(root / "dnsmasq.leases"),
        "http_url": HTTP_URL,
        "ipxe_script": "boot.ipxe",
        "pivotal": PIVOTAL,
        "images": IMAGES,
        "default_image": "debian",
        "menu_timeout": 5,
        "mac_images": {},
        "secure_boot": False,
        "shim": "shimx64.efi",
        "ram_disk": "secureboot.iso",
    }
    context.update(overrides)
    return context


def render(template: str, context: dict) -> str:
    return ENV.get_template(template).render(context)


def in_range(address: str, first: str, last: str) -> bool:
    ip = ipaddress.ip_address(address)
    return ipaddress.ip_address(first) <= ip <= ipaddress.ip_address(last)


@pytest.fixture
def root():
    """A scratch directory dnsmasq can read after it drops root for user
    dnsmasq (pytest's tmp_path sits under a 0700 directory)."""
    path = Path(tempfile.mkdtemp(prefix="boottorrent-pxe-"))
    path.chmod(0o755)
    tftp = path / "tftp"
    tftp.mkdir(mode=0o755)
    for name in IPXE_BINARIES:
        # Symlinks, as the package installs them: dnsmasq must follow them.
        (tftp / name).symlink_to(IPXE_DIR / name)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def write_config(root: Path, context: dict, name: str = "dnsmasq.conf") -> Path:
    conf = root / name
    conf.write_text(render("dnsmasq.conf.j2", context))
    return conf


def start_dnsmasq(host, conf: Path, log: Path, timeout: float = 10) -> subprocess.Popen:
    """dnsmasq in the foreground in host's namespace, logging to log."""
    process = host.popen(["dnsmasq", "--keep-in-foreground", "--log-facility=-",
                          f"--conf-file={conf}"],
                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                         stderr=open(log, "wb"))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"dnsmasq exited {process.returncode}:\n{log.read_text()}")
        if "started, version" in log.read_text(errors="replace"):
            return process
        time.sleep(0.1)
    raise TimeoutError(f"dnsmasq did not start:\n{log.read_text()}")


def start_standin_dhcp(lab: Lab, root: Path) -> tuple:
    """A stand-in for the site's own DHCP server (proxy mode): plain dnsmasq
    in full mode, in its own namespace, with no boot options at all."""
    host = lab.add_host("sitedhcp", STANDIN_ADDRESS)
    conf = root / "standin.conf"
    conf.write_text("\n".join([
        "port=0", "no-resolv", "no-hosts", "pid-file=",
        "interface=eth0", "bind-interfaces",
        f"dhcp-range={STANDIN_RANGE[0]},{STANDIN_RANGE[1]},255.255.255.0,1h",
        "dhcp-option=option:router",
        # Machines behind the lab's DHCP relay (Lab.add_subnet), with their gateway.
        f"dhcp-range=set:relayed,{STANDIN_RELAYED_RANGE[0]},{STANDIN_RELAYED_RANGE[1]},"
        "255.255.255.0,1h",
        f"dhcp-option=tag:relayed,option:router,{RELAYED.router}",
        # dnsmasq's ping check is synchronous (3 s per new client, nothing
        # else served meanwhile); the tests probe many clients at once.
        "no-ping",
        f"dhcp-leasefile={root / 'standin.leases'}", "log-dhcp", ""]))
    return host, start_dnsmasq(host, conf, root / "standin.log")


def probe_all(lab: Lab, cases: dict[str, dict], timeout: float = 3) -> dict[str, list[dhcp.Offer]]:
    """Probe from one new client namespace per case, all at once."""
    hosts = {name: lab.add_host(f"c{i}", None) for i, name in enumerate(cases)}
    with concurrent.futures.ThreadPoolExecutor(len(cases)) as pool:
        futures = {name: pool.submit(dhcp.probe, hosts[name], timeout=timeout, **kwargs)
                   for name, kwargs in cases.items()}
        return {name: future.result() for name, future in futures.items()}


PROBES = {
    "bios": dict(arch=0),
    "uefi7": dict(arch=7),
    "uefi9": dict(arch=9),
    "ipxe-bios": dict(arch=0, ipxe=True),
    "ipxe-uefi": dict(arch=7, ipxe=True),
    "ipxe-userclass-only": dict(arch=0, user_class="iPXE"),
    "not-pxe": dict(arch=None, pxe=False),
}
EXPECTED_FILE = {
    "bios": "undionly.kpxe",
    "uefi7": "snponly.efi",
    "uefi9": "snponly.efi",
    "ipxe-bios": f"{HTTP_URL}/boot/boot.ipxe",
    "ipxe-uefi": f"{HTTP_URL}/boot/boot.ipxe",
    "ipxe-userclass-only": f"{HTTP_URL}/boot/boot.ipxe",
    "not-pxe": "",
}


# --- (a) the templates render, and dnsmasq accepts them ------------------------

@pytest.mark.parametrize("mode", ["full", "proxy"])
@pytest.mark.parametrize("router,dns,secure_boot,relayed", [
    (None, [], False, []), ("198.18.0.254", ["198.18.0.253", "198.18.0.252"], True, [RELAYED])])
def test_dnsmasq_config_passes_dnsmasq_test(root, mode, router, dns, secure_boot, relayed):
    conf = write_config(root, make_context(root, mode, router=router, dns_servers=dns,
                                           secure_boot=secure_boot, relayed=relayed))
    text = conf.read_text()
    result = subprocess.run(["dnsmasq", "--test", f"--conf-file={conf}"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr + text
    assert "syntax check OK" in result.stderr
    assert "{{" not in text and "{%" not in text
    lines = [line for line in text.splitlines() if line and not line.startswith("#")]
    assert "port=0" in lines
    assert "interface=eth0" in lines
    assert f"tftp-root={root / 'tftp'}" in lines
    assert f"dhcp-leasefile={root / 'dnsmasq.leases'}" in lines
    assert "dhcp-authoritative" not in lines
    assert f"dhcp-boot=tag:ipxe,{HTTP_URL}/boot/boot.ipxe,,{SERVER_ADDRESS}" in lines
    # UEFI machines get shim with [boot] secure_boot, iPXE without; BIOS iPXE.
    uefi = "shimx64.efi" if secure_boot else "snponly.efi"
    if mode == "proxy":
        assert f'pxe-service=tag:!ipxe,X86-64_EFI,"BootTorrent (UEFI)",{uefi}' in lines
        assert 'pxe-service=tag:!ipxe,x86PC,"BootTorrent (BIOS)",undionly.kpxe' in lines
    else:
        assert f"dhcp-boot=tag:!ipxe,tag:efi64,{uefi}" in lines
        # UEFI HTTP boot (client architecture 16) with secure_boot: the RAM disk's URL.
        assert (f"dhcp-boot=tag:efi64http,{HTTP_URL}/boot/secureboot.iso" in lines) \
            == secure_boot
        assert "dhcp-boot=tag:!ipxe,tag:bios,undionly.kpxe" in lines
    ranges = [line for line in lines if line.startswith("dhcp-range=")]
    if mode == "proxy":
        assert ranges == ["dhcp-range=198.18.0.0,proxy,255.255.255.0"] + (
            ["dhcp-range=198.18.2.0,proxy,255.255.255.0"] if relayed else [])
        assert any(line.startswith("pxe-service=") for line in lines)
        assert not any("router" in line or "dns-server" in line for line in lines)
    else:
        assert ranges == [f"dhcp-range={RANGE[0]},{RANGE[1]},255.255.255.0,1h"] + (
            ["dhcp-range=set:relayed-198.18.2.0,198.18.2.100,198.18.2.199,255.255.255.0,1h"]
            if relayed else [])
        assert not any(line.startswith("pxe-service=") for line in lines)
        if router:
            assert "dhcp-option=option:router,198.18.0.254" in lines
            assert "dhcp-option=option:dns-server,198.18.0.253,198.18.0.252" in lines
        else:
            assert "dhcp-option=option:router" in lines
            assert "dhcp-option=option:dns-server" in lines
        assert ("dhcp-option=tag:relayed-198.18.2.0,option:router,198.18.2.1" in lines) \
            == bool(relayed)


def test_grub_config_boots_the_pivotal_by_mac_or_menu(root):
    """What Debian's GRUB runs ([boot] secure_boot): the same choices as
    the iPXE script, the pivotal's files from the server GRUB came from."""
    text = render("grub.cfg.j2", make_context(root, "full", secure_boot=True, mac_images={
        "52:54:00:AA:BB:01": "debian"}))
    assert "{{" not in text and "{%" not in text
    lines = [line.strip() for line in text.splitlines() if line and not line.startswith("#")]
    assert 'if [ "$net_default_mac" = "52:54:00:aa:bb:01" ]; then boottorrent debian; fi' in lines
    linux = next(line for line in lines if line.startswith("linux "))
    assert linux.startswith(f"linux /{PIVOTAL['kernel']} ")
    assert "boottorrent.image=$1 BOOTIF=01-$bt_1-$bt_2-$bt_3-$bt_4-$bt_5-$bt_6" in linux
    assert "boottorrent.netmask=255.255.255.0" in linux
    initrd = next(line for line in lines if line.startswith("initrd "))
    assert initrd.split()[1:] == [f"/{i['path']}" for i in PIVOTAL["initrds"]]
    # More than one image: a menu, the default after the timeout.
    assert "set default=debian" in lines and "set timeout=5" in lines
    assert sum(line.startswith("menuentry ") for line in lines) == len(IMAGES)


def ipxe_lines(context: dict) -> list[str]:
    text = render("boot.ipxe.j2", context)
    assert text.startswith("#!ipxe\n")
    assert "{{" not in text and "{%" not in text
    return [line for line in text.splitlines() if line and not line.startswith("#")]


def test_ipxe_script_mac_table_menu_and_kernel(root):
    lines = ipxe_lines(make_context(root, "full", mac_images={
        "52:54:00:AA:BB:01": "rocky", "52:54:00:aa:bb:02": "debian"}))
    # MAC keys are matched in iPXE's own format: lowercase, colons.
    assert "iseq ${netX/mac} 52:54:00:aa:bb:01 && set boottorrent-image rocky ||" in lines
    assert "iseq ${netX/mac} 52:54:00:aa:bb:02 && set boottorrent-image debian ||" in lines
    assert "isset ${boottorrent-image} && goto load ||" in lines
    # The menu, with the default preselected and the timeout in milliseconds.
    assert "item debian Debian 12 compute node" in lines
    assert "item rocky Rocky Linux 9" in lines
    assert ("choose --timeout 5000 --default debian boottorrent-image"
            " || set boottorrent-image debian") in lines
    kernel = next(line for line in lines if line.startswith("kernel "))
    assert kernel.startswith(
        f"kernel --name vmlinuz {HTTP_URL}/boot/pivotal/vmlinuz initrd=")
    # Everything iPXE loads comes from the server; /stage fetches the rest.
    assert ("initrd=config.cpio initrd=modules.cpio.zst initrd=stage.cpio.zst "
            "console=tty0 console=ttyS0,115200 quiet rdinit=/stage ") in kernel
    assert "boottorrent.ip=${netX/ip} boottorrent.netmask=${netX/netmask}" in kernel
    assert "boottorrent.image=${boottorrent-image}" in kernel
    assert "BOOTIF=01-${netX/mac:hexhyp}" in kernel
    assert kernel.endswith("|| goto failed")
    initrds = [line for line in lines if line.startswith("initrd ")]
    # The config part names the machine's MAC (the server adds its token,
    # trust.py) and the image it is coming for.
    assert initrds == [
        f"initrd --name {name} {HTTP_URL}/boot/pivotal/{name}{query} || goto failed"
        for name, query in (("config.cpio", "?mac=${netX/mac}&image=${boottorrent-image}"),
                            ("modules.cpio.zst", "?nic=${netX/busid:hexraw}"),
                            ("stage.cpio.zst", ""))]
    assert "boot || goto failed" in lines
    # Failure is never a hang: retry after a pause, then reboot.
    failed = lines[lines.index(":failed"):]
    assert "goto load" in failed and "sleep ${boottorrent-wait}" in failed
    assert "reboot || exit 1" in failed


@pytest.mark.parametrize("overrides,image", [
    ({"menu_timeout": 0}, "debian"),
    ({"menu_timeout": 0, "default_image": "rocky"}, "rocky"),
    ({"images": [{"name": "solo", "description": "The only one"}], "default_image": "solo"},
     "solo"),
])
def test_ipxe_script_without_menu(root, overrides, image):
    lines = ipxe_lines(make_context(root, "full", **overrides))
    assert not any(line.startswith(("menu", "item", "choose")) for line in lines)
    assert f"set boottorrent-image {image}" in lines
    assert not any(line.startswith("iseq ${netX/mac}") for line in lines)


# --- (b) real dnsmasq, probed by a real DHCP client ------------------------------

def test_full_mode_offers(root):
    # All clients at once, each waiting 3 s: passes only because the config
    # has no-ping (dnsmasq's ping check serves one new client per 3 s).
    context = make_context(root, "full", router="198.18.0.254", dns_servers=["198.18.0.253"])
    conf = write_config(root, context)
    with Lab() as lab:
        server = lab.add_server()
        start_dnsmasq(server, conf, root / "dnsmasq.log")
        results = probe_all(lab, PROBES)
    log = (root / "dnsmasq.log").read_text()
    for name, offers in results.items():
        assert len(offers) == 1, (name, offers, log)
        (offer,) = offers
        assert offer.message_type == "OFFER"
        assert offer.server_id == SERVER_ADDRESS
        assert in_range(offer.yiaddr, *RANGE), (name, offer)
        assert offer.options[1] == "255.255.255.0"
        assert offer.options[3] == ["198.18.0.254"]
        assert offer.options[6] == ["198.18.0.253"]
        assert offer.options[51] == 3600
        assert offer.file == EXPECTED_FILE[name], (name, offer, log)
        if offer.file:
            # dhcp-no-override: in the BOOTP file field, where every PXE ROM
            # looks, not moved to option 67; TFTP from the server itself.
            assert 67 not in offer.options
            assert offer.siaddr == SERVER_ADDRESS
    assert len({offers[0].yiaddr for offers in results.values()}) == len(results)


def test_full_mode_sends_no_router_or_dns_unless_configured(root):
    conf = write_config(root, make_context(root, "full"))
    with Lab() as lab:
        server = lab.add_server()
        start_dnsmasq(server, conf, root / "dnsmasq.log")
        (offer,) = probe_all(lab, {"bios": dict(arch=0)})["bios"]
    assert 3 not in offer.options and 6 not in offer.options
    assert offer.file == "undionly.kpxe"


def test_proxy_mode_with_site_dhcp_server(root):
    conf = write_config(root, make_context(root, "proxy"))
    with Lab() as lab:
        server = lab.add_server()
        start_dnsmasq(server, conf, root / "dnsmasq.log")
        start_standin_dhcp(lab, root)
        results = probe_all(lab, PROBES)
    log = (root / "dnsmasq.log").read_text()
    for name, answers in results.items():
        # The address comes from the site's server, and only from it...
        leases = [a for a in answers if a.yiaddr != "0.0.0.0" and a.port == 67
                  and a.message_type == "OFFER"]
        assert len(leases) == 1, (name, answers)
        assert leases[0].server_id == STANDIN_ADDRESS
        assert in_range(leases[0].yiaddr, *STANDIN_RANGE)
        assert all(not a.file for a in answers if a.server_id == STANDIN_ADDRESS)
        # ...the boot file from ours, and only from it.
        ours = [a for a in answers if a.server_id == SERVER_ADDRESS]
        if name == "not-pxe":
            assert ours == [], answers  # proxy DHCP answers PXE clients only
            continue
        proxy_offers = [a for a in ours if a.port == 67]
        assert len(proxy_offers) == 1 and proxy_offers[0].yiaddr == "0.0.0.0", (name, answers)
        assert proxy_offers[0].options[60] == "PXEClient"
        files = {a.file for a in ours if a.file}
        assert files == {EXPECTED_FILE[name]}, (name, answers, log)
        if name.startswith("ipxe"):
            # iPXE gets the script URL right in the proxy's offer, with a
            # next-server: Debian 12's iPXE ignores a ProxyDHCP answer that has
            # a file name but no next-server ("Nothing to boot").
            assert proxy_offers[0].file == EXPECTED_FILE[name]
            assert proxy_offers[0].siaddr == SERVER_ADDRESS
        else:
            # A PXE ROM gets it from the proxy's boot service, port 4011.
            (pxe_ack,) = [a for a in ours if a.port == 4011]
            assert pxe_ack.message_type == "ACK" and pxe_ack.siaddr == SERVER_ADDRESS


@pytest.mark.parametrize("mode", ["full", "proxy"])
def test_machines_behind_a_dhcp_relay_get_their_subnets_answers(root, mode):
    """[dhcp] [[rack-b]]: PXE clients on another subnet, whose router relays
    DHCP to the server (dnsmasq --dhcp-relay in the lab's router namespace),
    get the same boot files as the server's own subnet, with an address of
    their subnet and its gateway in full mode; in proxy mode the relay
    forwards to the site's server too, which hands out both, and the ROM
    asks the proxy's boot service across the router."""
    conf = write_config(root, make_context(root, mode, router="198.18.0.254",
                                           relayed=[RELAYED]))
    with Lab() as lab:
        server = lab.add_server()
        start_dnsmasq(server, conf, root / "dnsmasq.log")
        relay_to = (SERVER_ADDRESS,)
        if mode == "proxy":
            site, _ = start_standin_dhcp(lab, root)
            relay_to += (STANDIN_ADDRESS,)
        subnet = lab.add_subnet(root, relay_to)
        assert subnet.network == RELAYED.network and subnet.gateway == RELAYED.router
        cases = {"bios": dict(arch=0), "uefi7": dict(arch=7), "ipxe-bios": dict(arch=0, ipxe=True)}
        hosts = {name: lab.add_host(f"r{i}", None, subnet=subnet) for i, name in enumerate(cases)}
        with concurrent.futures.ThreadPoolExecutor(len(cases)) as pool:
            futures = {name: pool.submit(dhcp.probe, hosts[name], timeout=3, **kwargs)
                       for name, kwargs in cases.items()}
            results = {name: future.result() for name, future in futures.items()}
        # The server's own subnet keeps its own answers.
        local = probe_all(lab, {"bios": dict(arch=0)})["bios"]
    log = (root / "dnsmasq.log").read_text()
    relay_log = subnet.relay_log.read_text()
    for name, answers in results.items():
        ours = [a for a in answers if a.server_id == SERVER_ADDRESS]
        assert ours and {a.file for a in ours if a.file} == {EXPECTED_FILE[name]}, \
            (name, answers, log, relay_log)
        assert all(a.siaddr == SERVER_ADDRESS for a in ours if a.file)
        if mode == "full":
            (offer,) = answers
            assert in_range(offer.yiaddr, RELAYED.range_start, RELAYED.range_end), (name, offer)
            assert offer.options[3] == [RELAYED.router], offer
            assert offer.options[1] == "255.255.255.0"
        else:
            leases = [a for a in answers if a.yiaddr != "0.0.0.0" and a.port == 67]
            assert leases and all(a.server_id == STANDIN_ADDRESS
                                  and in_range(a.yiaddr, *STANDIN_RELAYED_RANGE)
                                  for a in leases), (name, answers)
            if not name.startswith("ipxe"):  # the boot service, port 4011, across the router
                assert [a.file for a in ours if a.port == 4011] == [EXPECTED_FILE[name]]
    if mode == "full":
        (offer,) = local
        assert in_range(offer.yiaddr, *RANGE) and offer.options[3] == ["198.18.0.254"]
    else:
        assert {a.file for a in local if a.server_id == SERVER_ADDRESS and a.file} \
            == {"undionly.kpxe"}
    assert f"DHCP relay from {RELAYED.router} to {SERVER_ADDRESS}" in relay_log


def test_interface_appearing_late(root):
    """bind-dynamic: dnsmasq starts before its interface exists (with
    bind-interfaces it exits: "unknown interface") and serves DHCP and TFTP
    once the interface appears with its address."""
    conf = write_config(root, make_context(root, "full", interface="late0"))
    with Lab() as lab:
        server = lab.add_host("server", None)
        process = start_dnsmasq(server, conf, root / "dnsmasq.log")
        # Now the interface: a second veth from the server to the bridge.
        peer = f"v{lab.tag}late"[:15]
        subprocess.run(lab.switch_command(["ip", "link", "add", peer, "type", "veth", "peer",
                                           "name", "late0", "netns", server.netns]), check=True)
        subprocess.run(lab.switch_command(["ip", "link", "set", peer, "master", "br0", "up"]),
                       check=True)
        server.run(["ip", "link", "set", "late0", "up"])
        server.run(["ip", "addr", "add", f"{SERVER_ADDRESS}/24", "dev", "late0"])
        # dnsmasq (still running: with bind-interfaces it would have exited)
        # binds to the new address once it sees it; probe until it answers.
        prober = lab.add_host("prober", None)
        (offer,) = wait_for(lambda: dhcp.probe(prober, arch=0, timeout=2), 60,
                            "dnsmasq to answer on the late interface")
        assert process.poll() is None
        client = lab.add_host("client")
        client.run(["busybox", "tftp", "-g", "-r", "undionly.kpxe", "-l",
                    str(root / "fetched"), SERVER_ADDRESS], timeout=60)
    assert offer.server_id == SERVER_ADDRESS and offer.file == "undionly.kpxe"
    assert (root / "fetched").read_bytes() == (IPXE_DIR / "undionly.kpxe").read_bytes()


# --- (c) TFTP ------------------------------------------------------------------

def test_tftp_serves_ipxe_binaries(root):
    conf = write_config(root, make_context(root, "full"))
    with Lab() as lab:
        server = lab.add_server()
        start_dnsmasq(server, conf, root / "dnsmasq.log")
        client = lab.add_host("client")
        fetched = root / "fetched"
        fetched.mkdir()
        for name in IPXE_BINARIES:
            # With blocksize negotiation (as iPXE and most ROMs ask) and without.
            for blocksize in ("1468", None):
                target = fetched / f"{name}.{blocksize}"
                argv = ["busybox", "tftp", "-g", "-r", name, "-l", str(target)]
                if blocksize:
                    argv += ["-b", blocksize]
                client.run(argv + [SERVER_ADDRESS], timeout=60)
                assert target.read_bytes() == (IPXE_DIR / name).read_bytes(), name
        # Nothing outside the TFTP root.
        result = client.run(["busybox", "tftp", "-g", "-r", "../dnsmasq.conf", "-l",
                             str(fetched / "escape"), SERVER_ADDRESS], check=False, timeout=30)
        assert result.returncode != 0


# --- the test image (lab/testimage.py) ------------------------------------------

def test_test_image_is_deterministic_and_aligned(tmp_path):
    first = build_test_image(tmp_path / "a", "MARKER-X", pad_mib=1)
    second = build_test_image(tmp_path / "b", "MARKER-X", pad_mib=1)
    other = build_test_image(tmp_path / "b", "MARKER-Y", pad_mib=1)
    data = first["initrd"].read_bytes()
    assert data == second["initrd"].read_bytes()
    assert data != other["initrd"].read_bytes()
    assert build_test_image(tmp_path / "a", "MARKER-X", pad_mib=1) == first  # cached
    assert first["kernel"].name.startswith("vmlinuz-")
    # Padded for the UEFI EFI stub, which concatenates initrds unaligned.
    assert len(data) % 4 == 0
    archive = gzip.decompress(data)
    names = re.findall(rb"070701[0-9A-F]{104}([^\0]+)\0", archive)
    assert {b"init", b"dev/console", b"bin/busybox", b"etc/testimage-marker",
            b"pad.bin"} <= set(names)
    assert b"MARKER-X\n" in archive
    # The padding is incompressible: a gzip of 1 MiB of it stays about 1 MiB.
    unpadded = build_test_image(tmp_path / "c", "MARKER-X")["initrd"].stat().st_size
    assert len(data) > (1 << 20) + unpadded - 4096


# --- (d) QEMU machines boot over the network --------------------------------------

def serve_http(lab: Lab, server, root: Path) -> None:
    """STAND-IN for BootTorrent's own HTTP server (written elsewhere):
    python3 -m http.server, rooted so that HTTP_URL/boot/ is the TFTP root."""
    web = root / "web"
    web.mkdir()
    (web / "boot").symlink_to(root / "tftp")
    server.popen(["/usr/bin/python3", "-m", "http.server", str(HTTP_PORT), "--bind",
                  SERVER_ADDRESS, "--directory", str(web)],
                 stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                 stderr=open(root / "http.log", "wb"))
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        check = server.run(["busybox", "wget", "-q", "-O", "/dev/null",
                            f"{HTTP_URL}/boot/boot.ipxe"], check=False)
        if check.returncode == 0:
            return
        time.sleep(0.2)
    raise TimeoutError("stand-in HTTP server did not come up")


def install_test_pivotal(root: Path, marker: str) -> dict:
    """Put the lab's test image where the pivotal goes; return the pivotal
    context. Two initrds, to check that a machine receives both."""
    cache = Path(os.environ.get("BOOTTORRENT_LAB_CACHE",
                                Path(__file__).resolve().parent.parent / ".cache"))
    image = build_test_image(cache / "testimage", marker)
    extra = build_extra_initrd(cache / "testimage", {"second-initrd": "arrived"})
    pivotal = root / "tftp" / "pivotal"
    pivotal.mkdir(mode=0o755)
    shutil.copyfile(image["kernel"], pivotal / "vmlinuz")
    shutil.copyfile(image["initrd"], pivotal / "test.cpio.gz")
    shutil.copyfile(extra, pivotal / "extra.cpio")
    for path in pivotal.iterdir():
        path.chmod(0o644)
    # extra.cpio is asked for as the pivotal's modules part is: with the
    # NIC's busid in its query.
    return {"kernel": "pivotal/vmlinuz",
            "initrds": [{"path": "pivotal/test.cpio.gz", "query": ""},
                        {"path": "pivotal/extra.cpio",
                         "query": paths.QUERIES[paths.MODULES_PART]}],
            "stage": "/init", "cmdline": "console=ttyS0 quiet"}


def pxe_boot(root: Path, mode: str, firmware: str, request, romfile: str | None = None,
             during=None) -> dict:
    """Boot one QEMU machine over the network, the test image as its pivotal."""
    marker = f"PXE-BOOT-OK-{mode}-{firmware}"
    vm_mac = "02:b7:00:00:00:01"  # locally administered: never a lab host's MAC
    context = make_context(
        root, mode, pivotal=install_test_pivotal(root, marker),
        images=[{"name": "default-image", "description": "Not this one"},
                {"name": "mapped-image", "description": "Chosen by MAC"}],
        default_image="default-image", menu_timeout=2,
        mac_images={vm_mac.upper(): "mapped-image", "52:54:00:00:00:99": "default-image"})
    (root / "tftp" / "boot.ipxe").write_text(render("boot.ipxe.j2", context))
    (root / "tftp" / "boot.ipxe").chmod(0o644)
    conf = write_config(root, context)
    logs = Path(os.environ.get("BOOTTORRENT_TEST_LOGS", root / "logs")) / request.node.name
    logs.mkdir(parents=True, exist_ok=True)
    with Lab() as lab:
        server = lab.add_server()
        start_dnsmasq(server, conf, root / "dnsmasq.log")
        if mode == "proxy":
            start_standin_dhcp(lab, root)
        serve_http(lab, server, root)
        vm = VM(lab, f"pxe-{mode}-{firmware}", logs, mac=vm_mac, firmware=firmware,
                romfile=romfile).start()
        try:
            if during:
                during(vm)
            seconds = vm.wait_for(re.escape(MARKER_PREFIX + marker), timeout=600)
            vm.wait_for("TESTIMAGE-POWEROFF", timeout=60)
        finally:
            vm.stop()
            for name in ("dnsmasq.log", "standin.log", "http.log"):
                if (root / name).exists():
                    shutil.copyfile(root / name, logs / name)
    console = vm.console()
    cmdline = next(line for line in console.splitlines() if line.startswith(CMDLINE_PREFIX))
    read = lambda name: (logs / name).read_text() if (logs / name).exists() else ""
    return {"seconds": seconds, "console": console, "cmdline": cmdline.split(), "mac": vm_mac,
            "mode": mode, "dnsmasq_log": read("dnsmasq.log"), "standin_log": read("standin.log"),
            "http_log": read("http.log")}


def check_boot(result: dict) -> None:
    # The image chosen by the MAC table, the booted NIC, both initrds.
    assert "boottorrent.image=mapped-image" in result["cmdline"], result["cmdline"]
    assert f"BOOTIF=01-{result['mac'].replace(':', '-')}" in result["cmdline"]
    assert "console=ttyS0" in result["cmdline"]
    assert f"{EXTRA_PREFIX}second-initrd: arrived" in result["console"]
    # The address from the right server: ours in full mode, the site's in proxy mode.
    lease = re.compile(r"DHCPACK\(eth0\) (\S+) " + re.escape(result["mac"]))
    if result["mode"] == "full":
        addresses = lease.findall(result["dnsmasq_log"])
        first, last = RANGE
    else:
        assert not lease.search(result["dnsmasq_log"])
        assert "proxy" in result["dnsmasq_log"]
        addresses = lease.findall(result["standin_log"])
        first, last = STANDIN_RANGE
    assert addresses and all(in_range(a, first, last) for a in addresses), addresses
    # The kernel and initrds over HTTP, by the machine itself.
    for path in ("boot.ipxe", "pivotal/vmlinuz", "pivotal/test.cpio.gz", "pivotal/extra.cpio"):
        get = rf"^{re.escape(addresses[-1])} .*GET /boot/{re.escape(path)}(\?\S*)? HTTP/1.[01]\" 200"
        assert re.search(get, result["http_log"], re.M), path
    # iPXE names the NIC as the server's NIC parts expect (nics.py): PCI,
    # virtio's vendor and device, on BIOS (QEMU's iPXE ROM) and on UEFI
    # (snponly.efi over the firmware's own driver).
    assert f"GET /boot/pivotal/extra.cpio?nic={VIRTIO_BUSID} HTTP" in result["http_log"]
    print(f"\nPXE boot ({result['mode']}) to marker: {result['seconds']:.1f} s")


@pytest.mark.qemu
@pytest.mark.parametrize("mode", ["full", "proxy"])
def test_qemu_bios_pxe_boot(root, mode, request):
    """SeaBIOS with QEMU's own iPXE ROM: the ROM is iPXE already, so DHCP
    hands it the script URL at once (undionly.kpxe is for real PXE ROMs)."""
    check_boot(pxe_boot(root, mode, "bios", request))


@pytest.mark.qemu
@pytest.mark.skipif(not OVMF.exists(), reason="no OVMF (apt-get install ovmf)")
@pytest.mark.parametrize("mode", ["full", "proxy"])
def test_qemu_uefi_pxe_boot(root, mode, request):
    """OVMF with no NIC option ROM, so its own PXE client boots: snponly.efi
    over TFTP, then iPXE gets the script, as on real UEFI machines."""
    result = pxe_boot(root, mode, "uefi", request, romfile="")
    check_boot(result)
    assert re.search(r"sent \S+/snponly\.efi to ", result["dnsmasq_log"])


@pytest.mark.qemu
@pytest.mark.skipif(not OVMF.exists(), reason="no OVMF (apt-get install ovmf)")
def test_qemu_script_retries_after_a_failed_download(root, request):
    """The script's failure path: an initrd missing at first (the kernel
    loads, the initrd fails), a clear message, a pause, a clean retry that
    boots once the file is there. UEFI, because iPXE's own messages reach
    the serial console there."""
    initrd = root / "tftp" / "pivotal" / "test.cpio.gz"
    hidden = root / "hidden.cpio.gz"

    def hide_then_restore(vm):
        initrd.rename(hidden)
        vm.wait_for("BootTorrent: retrying in 2 seconds", timeout=600)
        hidden.rename(initrd)

    # The pivotal files are installed inside pxe_boot; hide the initrd as
    # soon as the machine starts, before its firmware is anywhere near HTTP.
    result = pxe_boot(root, "full", "uefi", request, romfile="", during=hide_then_restore)
    check_boot(result)
    console = result["console"]
    assert "BootTorrent: could not load the pivotal system from " + HTTP_URL + "/boot" in console
    assert console.index("retrying in 2 seconds") < console.index(MARKER_PREFIX)
    fetches = re.findall(r"GET /boot/pivotal/([^?\s]+)\S* HTTP/1.[01]\" (\d+)", result["http_log"])
    assert fetches[:3] == [("vmlinuz", "200"), ("test.cpio.gz", "404"), ("vmlinuz", "200")], fetches
