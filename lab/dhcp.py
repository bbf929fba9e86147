"""A DHCP test client: probe the DHCP servers of a lab LAN the way a PXE ROM
or iPXE would, and report every answer.

Plain UDP sockets, no scapy. A socket cannot change network namespace, so
probe() runs this module as a program inside the host's namespace
(``ip netns exec NS /usr/bin/python3 -m lab.dhcp ...``) and parses the JSON
it prints.

What one probe does, as a PXE ROM would:

1. Broadcast a DHCPDISCOVER from 0.0.0.0:68 on eth0 with the options of a
   PXE ROM (60 "PXEClient:Arch:xxxxx:UNDI:yyyzzz", 93 client architecture,
   94 network interface id, 97 machine UUID) and, for iPXE, 77 "iPXE" and
   175 (iPXE's encapsulated feature options).
2. Collect every DHCPOFFER for the whole timeout: with a proxy-DHCP server
   there are two, one from the DHCP server with the address and one from
   the proxy (yiaddr 0.0.0.0, option 60 "PXEClient") with the boot
   information.
3. If a proxy offer carries no boot file name, do what the ROM does next
   to get one: take the address (DHCPREQUEST/DHCPACK with the DHCP
   server), put it on the interface, and send a DHCPREQUEST to the proxy's
   port 4011, with a PXE boot item (option 43, sub-option 71) when the
   proxy offered a boot menu (option 43, sub-option 9). The proxy's
   DHCPACK is reported as one more answer, with port 4011.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import random
import select
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

DISCOVER, OFFER, REQUEST, DECLINE, ACK, NAK, RELEASE, INFORM = range(1, 9)
MESSAGE_TYPES = {1: "DISCOVER", 2: "OFFER", 3: "REQUEST", 4: "DECLINE", 5: "ACK",
                 6: "NAK", 7: "RELEASE", 8: "INFORM"}
MAGIC = b"\x63\x82\x53\x63"
SO_BINDTODEVICE = getattr(socket, "SO_BINDTODEVICE", 25)

# Options whose value is one or more IPv4 addresses, decoded as dotted quads.
ADDRESS_OPTIONS = {1, 3, 6, 28, 50, 54}
# Options whose value is text.
TEXT_OPTIONS = {12, 15, 17, 56, 60, 66, 67, 77}


@dataclass
class Offer:
    """One answer from a DHCP or proxy-DHCP server.

    server_id is option 54 (the address of the server that answered);
    file is the BOOTP file field, or option 67 when the field is empty;
    options maps option numbers to decoded values (addresses and text as
    str, 51/58/59 and 93 as int, anything else as a hex string; 43 and 175
    are decoded into dicts of sub-options, hex values).
    """

    server_id: str | None
    yiaddr: str
    siaddr: str
    file: str
    options: dict[int, object]
    message_type: str = "OFFER"
    port: int = 67  # the server port that answered: 67, or 4011 for PXE boot service
    source: str = ""  # source address of the packet
    sname: str = ""

    @property
    def is_proxy(self) -> bool:
        """A proxy-DHCP answer: boot information, no address."""
        return self.yiaddr == "0.0.0.0" or self.port == 4011

    @classmethod
    def from_dict(cls, data: dict) -> "Offer":
        data = dict(data)
        data["options"] = {int(k): ({int(sk): sv for sk, sv in v.items()}
                                    if isinstance(v, dict) else v)
                           for k, v in data["options"].items()}
        return cls(**data)


# --- packets -----------------------------------------------------------------

def _mac_bytes(mac: str) -> bytes:
    raw = bytes.fromhex(mac.replace(":", "").replace("-", ""))
    if len(raw) != 6:
        raise ValueError(f"bad MAC {mac!r}")
    return raw


def _option(code: int, value: bytes) -> bytes:
    if len(value) > 255:
        raise ValueError(f"option {code} too long")
    return bytes([code, len(value)]) + value


def _ipxe_encap() -> bytes:
    """Option 175 as iPXE sends it: one byte per feature it was built with."""
    features = {
        0x13: b"\x01",  # HTTP
        0x15: b"\x01",  # TFTP
        0x17: b"\x01",  # DNS
        0x18: b"\x01",  # bzImage
        0x21: b"\x01",  # PXE
        0x22: b"\x01",  # ELF
        0x27: b"\x01",  # menu
    }
    return b"".join(_option(code, value) for code, value in features.items())


def build_packet(message_type: int, *, xid: int, mac: str, arch: int | None,
                 user_class: str | None, ipxe: bool, pxe: bool,
                 ciaddr: str = "0.0.0.0", requested: str | None = None,
                 server_id: str | None = None, boot_item: bytes | None = None) -> bytes:
    chaddr = _mac_bytes(mac)
    header = struct.pack(
        "!BBBBIHH4s4s4s4s16s64s128s",
        1, 1, 6, 0, xid, 0,
        0x8000 if ciaddr == "0.0.0.0" else 0,  # ask for broadcast replies: no address yet
        socket.inet_aton(ciaddr), b"\0" * 4, b"\0" * 4, b"\0" * 4,
        chaddr + b"\0" * 10, b"", b"")
    options = [_option(53, bytes([message_type]))]
    options.append(_option(57, struct.pack("!H", 1472 if ipxe else 1260)))
    if requested:
        options.append(_option(50, socket.inet_aton(requested)))
    if server_id:
        options.append(_option(54, socket.inet_aton(server_id)))
    # Parameter request list of a typical PXE ROM (RFC 2132 basics, 43 vendor
    # options, 60, 66/67 boot server and file, 97 UUID, 128-135 PXE).
    options.append(_option(55, bytes([1, 2, 3, 4, 5, 6, 12, 13, 15, 17, 26, 28, 40, 41, 42,
                                      43, 54, 60, 66, 67, 97, 119, 128, 129, 130, 131, 132,
                                      133, 134, 135] + ([175, 203] if ipxe else []))))
    if pxe:
        undi = "002001" if not arch else "003016"
        vendor = f"PXEClient:Arch:{(arch or 0):05d}:UNDI:{undi}"
        options.append(_option(60, vendor.encode()))
    if arch is not None:
        options.append(_option(93, struct.pack("!H", arch)))
        # 94: client network interface identifier: UNDI, version 2.1 (BIOS) or 3.16 (UEFI)
        options.append(_option(94, bytes([1, 2, 1] if arch == 0 else [1, 3, 16])))
    if pxe or ipxe:
        # 97: machine UUID, type 0 then 16 bytes; derived from the MAC so it is stable.
        options.append(_option(97, b"\0" + chaddr * 2 + b"\xbe\xef\xca\xfe"))
    if user_class is None and ipxe:
        user_class = "iPXE"
    if user_class:
        # iPXE sends the user class as a plain string, not RFC 3004 tuples.
        options.append(_option(77, user_class.encode()))
    if ipxe:
        options.append(_option(175, _ipxe_encap()))
    if boot_item is not None:
        options.append(_option(43, _option(71, boot_item)))
    body = header + MAGIC + b"".join(options) + b"\xff"
    return body + b"\0" * max(0, 300 - len(body))  # BOOTP minimum size


def _tlvs(data: bytes) -> Iterator[tuple[int, bytes]]:
    """(code, value) of each option in data: type-length-value, with the
    pad (0) and end (255) codes of RFC 2132."""
    i = 0
    while i < len(data):
        code = data[i]
        if code == 255:
            break
        if code == 0:
            i += 1
            continue
        if i + 1 >= len(data):
            break
        length = data[i + 1]
        yield code, data[i + 2:i + 2 + length]
        i += 2 + length


def _parse_suboptions(value: bytes) -> dict[int, str]:
    return {code: sub.hex() for code, sub in _tlvs(value)}


def _parse_options(data: bytes, options: dict[int, bytes]) -> None:
    for code, value in _tlvs(data):
        # A repeated option is concatenated (RFC 3396).
        options[code] = options.get(code, b"") + value


def _decode_option(code: int, value: bytes) -> object:
    if code in ADDRESS_OPTIONS and len(value) % 4 == 0 and value:
        addresses = [socket.inet_ntoa(value[i:i + 4]) for i in range(0, len(value), 4)]
        return addresses[0] if code in (1, 28, 50, 54) else addresses
    if code in TEXT_OPTIONS:
        return value.rstrip(b"\0").decode(errors="replace")
    if code in (51, 58, 59) and len(value) == 4:
        return struct.unpack("!I", value)[0]
    if code == 53 and len(value) == 1:
        return value[0]
    if code == 93 and len(value) == 2:
        return struct.unpack("!H", value)[0]
    if code in (43, 175):
        return _parse_suboptions(value)
    return value.hex()


def parse_packet(data: bytes) -> dict | None:
    """A BOOTREPLY as a dict of fields and raw options, or None if not one."""
    if len(data) < 240 or data[0] != 2 or data[236:240] != MAGIC:
        return None
    (_op, _htype, _hlen, _hops, xid, _secs, _flags, ciaddr, yiaddr, siaddr, giaddr,
     chaddr, sname, file) = struct.unpack("!BBBBIHH4s4s4s4s16s64s128s", data[:236])
    options: dict[int, bytes] = {}
    _parse_options(data[240:], options)
    overload = options.get(52, b"\0")[0]
    if overload & 1:
        _parse_options(file, options)
        file = b""
    if overload & 2:
        _parse_options(sname, options)
        sname = b""
    return {"xid": xid, "ciaddr": socket.inet_ntoa(ciaddr), "yiaddr": socket.inet_ntoa(yiaddr),
            "siaddr": socket.inet_ntoa(siaddr), "chaddr": chaddr[:6].hex(":"),
            "sname": sname.split(b"\0")[0].decode(errors="replace"),
            "file": file.split(b"\0")[0].decode(errors="replace"), "options": options}


def _to_offer(packet: dict, port: int, source: str) -> Offer:
    raw = packet["options"]
    options = {code: _decode_option(code, value) for code, value in sorted(raw.items())}
    file = packet["file"] or str(options.get(67, ""))
    message_type = MESSAGE_TYPES.get(raw.get(53, b"\0")[0], "?")
    server_id = options.get(54)
    return Offer(server_id=server_id if isinstance(server_id, str) else None,
                 yiaddr=packet["yiaddr"], siaddr=packet["siaddr"], file=file,
                 options=options, message_type=message_type, port=port, source=source,
                 sname=packet["sname"])


# --- the client, run inside the namespace -------------------------------------

def _socket(ifname: str, port: int = 68) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_UDP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
    sock.setsockopt(socket.SOL_SOCKET, SO_BINDTODEVICE, ifname.encode() + b"\0")
    sock.bind(("0.0.0.0", port))
    return sock


def _receive(sock: socket.socket, xid: int, deadline: float, *, want: set[int],
             port: int, first_only: bool = False) -> list[Offer]:
    answers = []
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        ready, _, _ = select.select([sock], [], [], remaining)
        if not ready:
            break
        data, (source, _sport) = sock.recvfrom(4096)
        packet = parse_packet(data)
        if not packet or packet["xid"] != xid:
            continue
        message_type = packet["options"].get(53, b"\0")[0]
        if message_type not in want:
            continue
        answers.append(_to_offer(packet, port, source))
        if first_only:
            break
    return answers


def run_probe(ifname: str, *, arch: int | None, user_class: str | None, ipxe: bool,
              pxe: bool, mac: str, timeout: float, follow_proxy: bool = True) -> list[Offer]:
    xid = random.getrandbits(32)
    common = dict(xid=xid, mac=mac, arch=arch, user_class=user_class, ipxe=ipxe, pxe=pxe)
    sock = _socket(ifname)
    try:
        sock.sendto(build_packet(DISCOVER, **common), ("255.255.255.255", 67))
        offers = _receive(sock, xid, time.monotonic() + timeout, want={OFFER}, port=67)
        if not follow_proxy:
            return offers
        proxy = next((o for o in offers if o.is_proxy
                      and str(o.options.get(60, "")).startswith("PXEClient")), None)
        lease = next((o for o in offers if o.yiaddr != "0.0.0.0"), None)
        if proxy is None or proxy.file or lease is None:
            return offers
        # The ROM's next steps in proxy-DHCP: take the address, then ask the
        # proxy's boot service on port 4011 for the boot file.
        sock.sendto(build_packet(REQUEST, **common, requested=lease.yiaddr,
                                 server_id=lease.server_id), ("255.255.255.255", 67))
        acks = _receive(sock, xid, time.monotonic() + timeout, want={ACK, NAK}, port=67,
                        first_only=True)
        offers += acks
        if not acks or acks[0].message_type != "ACK":
            return offers
        netmask = str(lease.options.get(1, "255.255.255.0"))
        prefix = ipaddress.ip_network(f"0.0.0.0/{netmask}").prefixlen
        address = f"{lease.yiaddr}/{prefix}"
        subprocess.run(["ip", "addr", "add", address, "dev", ifname], check=True)
        # Behind a DHCP relay the proxy is on another subnet: the ROM goes
        # there through the lease's router.
        if routers := lease.options.get(3):
            subprocess.run(["ip", "route", "add", "default", "via", routers[0], "dev", ifname],
                           check=True)
        try:
            boot_item = None
            vendor = proxy.options.get(43)
            if isinstance(vendor, dict) and 9 in vendor:
                # Boot menu: type (2 bytes), description length, description;
                # ask for the first item, layer 0, as a ROM does without a prompt.
                boot_item = bytes.fromhex(vendor[9])[:2] + b"\0\0"
            target = proxy.server_id or proxy.siaddr
            if proxy.siaddr != "0.0.0.0" and boot_item is None:
                target = proxy.siaddr
            pxe_sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_UDP)
            try:
                pxe_sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                pxe_sock.setsockopt(socket.SOL_SOCKET, SO_BINDTODEVICE, ifname.encode() + b"\0")
                # Sent from the client's port 68 and its new address, like a ROM.
                sock.close()
                pxe_sock.bind((lease.yiaddr, 68))
                pxe_sock.sendto(build_packet(REQUEST, **common, ciaddr=lease.yiaddr,
                                             boot_item=boot_item), (target, 4011))
                offers += _receive(pxe_sock, xid, time.monotonic() + timeout, want={ACK},
                                   port=4011, first_only=True)
            finally:
                pxe_sock.close()
        finally:
            subprocess.run(["ip", "addr", "del", address, "dev", ifname], check=False,
                           capture_output=True)
        return offers
    finally:
        sock.close()


# --- the API for tests --------------------------------------------------------

def probe(host, *, arch: int | None, user_class: str | None = None, ipxe: bool = False,
          pxe: bool = True, mac: str | None = None, timeout: float = 5,
          follow_proxy: bool = True) -> list[Offer]:
    """Probe the DHCP servers reachable from host (a lab.netns.Host).

    Returns every OFFER received within timeout, plus, when a proxy-DHCP
    offer had no boot file, the DHCPACK from the DHCP server and the
    proxy's DHCPACK from port 4011 (see the module docstring).
    """
    argv = ["/usr/bin/python3", "-m", "lab.dhcp", "--ifname", host.ifname,
            "--mac", mac or host.mac, "--timeout", str(timeout)]
    if arch is not None:
        argv += ["--arch", str(arch)]
    if user_class is not None:
        argv += ["--user-class", user_class]
    if ipxe:
        argv.append("--ipxe")
    if not pxe:
        argv.append("--no-pxe")
    if not follow_proxy:
        argv.append("--no-follow-proxy")
    env = dict(os.environ, PYTHONPATH=str(REPO), PYTHONDONTWRITEBYTECODE="1")
    result = host.run(argv, cwd=REPO, env=env, timeout=3 * timeout + 30)
    return [Offer.from_dict(item) for item in json.loads(result.stdout)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ifname", default="eth0")
    parser.add_argument("--mac", help="client hardware address (default: the interface's)")
    parser.add_argument("--arch", type=int, help="option 93: 0 BIOS, 7/9 x86-64 UEFI")
    parser.add_argument("--user-class")
    parser.add_argument("--ipxe", action="store_true", help="send 77 iPXE and 175 as iPXE does")
    parser.add_argument("--no-pxe", dest="pxe", action="store_false",
                        help="do not send the PXEClient vendor class")
    parser.add_argument("--no-follow-proxy", dest="follow_proxy", action="store_false")
    parser.add_argument("--timeout", type=float, default=5)
    args = parser.parse_args(argv)
    mac = args.mac or Path(f"/sys/class/net/{args.ifname}/address").read_text().strip()
    offers = run_probe(args.ifname, arch=args.arch, user_class=args.user_class, ipxe=args.ipxe,
                       pxe=args.pxe, mac=mac, timeout=args.timeout,
                       follow_proxy=args.follow_proxy)
    json.dump([asdict(o) for o in offers], sys.stdout, indent=1)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
