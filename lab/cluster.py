"""A whole BootTorrent cluster in the lab, for the fault tests, the benchmark
and the demo: a server namespace running the real tracker and seeder (and
dnsmasq if asked), images registered with the real CLI, and clients running
the real pivotal client (`python3 -m boottorrent.pivotal --dry-run`), each in
its own namespace, every link shaped to the same rate.

    with Cluster(tmp, rate_mbit=20) as cluster:
        files = cluster.add_image("compute", {"kernel": 4 * MIB, "initrd.0": 12 * MIB})
        cluster.start()
        clients = [cluster.start_client(f"c{i}", "compute") for i in range(8)]
        for client in clients:
            client.wait(120)
            assert client.has_image(files)

Also a command-line helper run inside a namespace: `python3 -m lab.cluster
seed ...` seeds a torrent from a folder with a bare libtorrent session that
announces to the tracker like any peer; --trust makes it flag every piece as
verified without reading it, so a corrupted copy is served as if it were
good (the "bad peer" of the fault tests).
"""

from __future__ import annotations

import argparse
import hashlib
import ipaddress
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from boottorrent.pivotal import paths
from boottorrent.pivotal.wire import HTTP_PORT, TOKEN_FILE, TOKEN_HEADER
from lab.netns import SERVER_ADDRESS, Host, Lab, Subnet
from lab.token import config_url, token_in
from lab.server import PYTHON, REPO, Server, environment, lab_config

MIB = 1 << 20
# Addresses beyond the lab's /24, for hosts that play many machines (the
# server caps the connections of each address): Cluster.extra_network.
EXTRA_NETWORK = ipaddress.ip_network("198.18.64.0/18")  # 16382: a flood of 10 000
HTTP_URL = f"http://{SERVER_ADDRESS}:{HTTP_PORT}"  # the seeder's HTTP side
BOOT_URL = f"{HTTP_URL}{paths.BOOT}"
# The pivotal has no CA bundle (its rootfs has no ca-certificates); on the
# lab's host, libtorrent's session would read the host's, 50 ms of CPU per
# client (OpenSSL reads SSL_CERT_FILE instead, here a file that is not there).
PIVOTAL_ENVIRONMENT = {"SSL_CERT_FILE": "/nonexistent/ca-certificates.crt",
                       "SSL_CERT_DIR": "/nonexistent"}

# The pivotal's kernel and base parts, built once for the tests, the demo and
# the benchmark.
PIVOTAL_CACHE = REPO / ".cache" / "state-cache"


def pivotal_cache(cache: Path = PIVOTAL_CACHE) -> Path:
    """The pivotal's kernel, base and stage parts, built once for the tests,
    the demo and the benchmark: `boottorrent generate` puts them into every
    snapshot."""
    from boottorrent.initramfs import base, kernel, qemu, stage
    from lab.kernel import kernel_deb
    cache.mkdir(parents=True, exist_ok=True)
    kernel.build_kernel_part(kernel_deb(), cache)
    base.cached_base(cache)
    stage.cached_stage(cache)
    # For images of method qemu: the modules part with KVM, and QEMU's part.
    kernel.build_kernel_part(kernel_deb(), cache, kvm=True)
    qemu.cached_qemu_part(cache)
    return cache


def random_image(folder: Path, name: str, sizes: dict[str, int]) -> dict[str, Path]:
    """Deterministic incompressible files NAME-FILE of the given sizes."""
    folder.mkdir(parents=True, exist_ok=True)
    files = {}
    for file_name, size in sizes.items():
        path = folder / f"{name}-{file_name}"
        with path.open("wb") as out:
            counter = 0
            while counter * MIB < size:
                block = hashlib.shake_256(f"{name}/{file_name}/{counter}".encode()).digest(MIB)
                out.write(block[:size - counter * MIB])
                counter += 1
        files[file_name] = path
        if file_name == "kernel":
            stamp_bzimage_header(path)
    return files


def add_image_args(name: str, files: dict[str, Path]) -> list[str]:
    """`boottorrent add-image` of files (kernel, initrd.0, ...), with the
    command line marker=NAME that booted machines print."""
    args = ["add-image", name, "--kernel", str(files["kernel"]), "--cmdline", f"marker={name}"]
    for key in sorted(k for k in files if k.startswith("initrd")):
        args += ["--initrd", str(files[key])]
    return args


def stamp_bzimage_header(path: Path) -> None:
    """Give random bytes the boot protocol's header, which registration
    checks for, so that they pass for an x86 kernel. Only for clients that
    never boot it (--dry-run); machines that boot get a real kernel."""
    from boottorrent import bzimage
    with path.open("r+b") as file:
        for offset, magic in (bzimage.BOOT_FLAG, bzimage.MAGIC):
            file.seek(offset)
            file.write(magic)


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while chunk := file.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def follower_conf(subnet: Subnet, primary: str) -> dict[str, dict[str, object]]:
    """boottorrent.conf settings of a follower of primary (a URL) on subnet
    (Lab.add_subnet, made without a DHCP relay): its server is the
    subnet's first host (.10), its machines get .100 to .199 and the
    subnet's router as their gateway."""
    network = subnet.network.network_address
    return {"server": {"address": str(network + subnet.next_address)},
            "dhcp": {"range_start": str(network + 100), "range_end": str(network + 199),
                     "router": subnet.gateway},
            "follow": {"primary": primary}}


def wait_for(condition: Callable[[], object], timeout: float, what: str,
             interval: float = 0.2) -> object:
    """Poll condition() until it returns something true; its value."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


@dataclass
class Client:
    """One pivotal client process in its namespace."""

    cluster: "Cluster"
    name: str
    host: Host
    image: str
    work: Path
    log_path: Path
    config: Path | None = None  # a pivotal.json of its own (default: the server's)
    process: subprocess.Popen | None = None
    launched: float = 0.0  # time.time() just before the process was started
    exited: float | None = None
    ready: bool = False  # prepared: its process waits for start()

    def start(self) -> "Client":
        """Start the pivotal's program, or, once prepared, let it begin."""
        if self.ready:
            self.ready = False
            self.launched = time.time()
            self.process.send_signal(signal.SIGUSR1)
        else:
            self._launch(["-m", "boottorrent.pivotal"])
        return self

    def prepare(self) -> "Client":
        """Start the pivotal's program's process, its imports done, to
        begin at start() (lab/ready.py): as a computer of its own would,
        not after the lab's other clients' start-up on its two cores."""
        self._launch(["-m", "lab.ready", "--rusage", str(self.work / "rusage.json"),
                      "boottorrent.pivotal"])
        wait_for(lambda: self.log().startswith("ready\n") or self.process.poll() is not None,
                 60, f"{self.name} to be ready", interval=0.05)
        if self.process.poll() is not None:
            raise RuntimeError(f"{self.name} exited before it began:\n{self.log()}")
        self.ready = True
        return self

    def _launch(self, module: list[str]) -> None:
        """module: what runs the pivotal's program (["-m", NAME, ...])."""
        self.work.mkdir(parents=True, exist_ok=True)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "wb")
        self.launched = time.time()
        # Its configuration as its config part gives it: pivotal.json and,
        # beside it, the token the server hands this machine.
        etc = self.work / "etc"
        etc.mkdir(exist_ok=True)
        (etc / "pivotal.json").write_bytes((self.config or self.cluster.pivotal_json()).read_bytes())
        (etc / Path(TOKEN_FILE).name).write_text(self.cluster.token(self.host, self.image) + "\n")
        self.process = self.host.popen(
            # KVM on the lab's host is no machine's own (and may hang): TCG.
            [PYTHON, *module, "--dry-run", "--no-kvm", "--image", self.image,
             "--config", str(etc / "pivotal.json"), "--work-dir", str(self.work)],
            cwd=REPO, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            env=environment(self.cluster.config_dir,
                            self.cluster.state_dir) | PIVOTAL_ENVIRONMENT)
        log.close()

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def wait(self, timeout: float) -> int:
        """Wait for the client to exit; its status (AssertionError with its log on timeout)."""
        try:
            code = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"{self.name} still running after {timeout} s:\n"
                                 + self.log()[-4000:]) from None
        self.exited = self.exited or time.time()
        return code

    def kill(self) -> None:
        """Pull the plug: SIGKILL, no goodbye to the tracker."""
        if self.running():
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def summary(self) -> dict:
        return json.loads((self.work / "summary.json").read_text())

    def cpu_seconds(self) -> float:
        """User and system CPU seconds of a prepared client's run (lab.ready)."""
        used = json.loads((self.work / "rusage.json").read_text())
        return used["user"] + used["system"]

    def folder(self) -> Path:
        return self.work / "images" / self.image

    def has_image(self, files: dict[str, Path]) -> bool:
        """Whether the client's copy is byte for byte the registered files."""
        for name, source in files.items():
            copy = self.folder() / name
            if not copy.is_file() or copy.stat().st_size != source.stat().st_size \
                    or sha256(copy) != sha256(source):
                return False
        return True

    def report(self, reports: dict[str, dict] | None = None) -> dict:
        """The client's last report to the server ({} before its first)."""
        reports = self.cluster.reports() if reports is None else reports
        return reports.get(self.host.address, {})

    def progress(self, reports: dict[str, dict] | None = None) -> float:
        return float(self.report(reports).get("progress") or 0.0)


@dataclass
class Cluster:
    """A lab with a BootTorrent server; see the module's docstring."""

    tmp: Path
    rate_mbit: int | None = None  # every link (server and clients), both ways
    # boottorrent.conf settings over the lab's (None: the product's default)
    conf: dict[str, dict[str, object]] = field(default_factory=dict)
    cache: Path | None = None
    # A follower's: on this subnet of another cluster's lab (follower_conf).
    subnet: Subnet | None = None
    lab: Lab | None = None

    def __post_init__(self) -> None:
        self.tmp.mkdir(parents=True, exist_ok=True)
        self.config_dir = self.tmp / "etc"
        (self.config_dir / "images.d").mkdir(parents=True, exist_ok=True)
        self.write_config()
        # World-readable, as /var/lib/boottorrent: dnsmasq drops privileges.
        self.state_dir = Path(tempfile.mkdtemp(prefix="boottorrent-state-"))
        self.state_dir.chmod(0o755)
        # What the machines download goes to RAM, as the pivotal's does
        # (/run): the lab's disk would charge them its filesystem's work.
        self.ram = Path(tempfile.mkdtemp(prefix="boottorrent-lab-", dir="/dev/shm"))
        subprocess.run(["cp", "-al", str(self.cache or pivotal_cache()),
                        str(self.state_dir / "cache")], check=True)
        self.owns_lab = self.lab is None
        if self.lab is None:
            self.lab = Lab()
            self.server_host = self.lab.add_server()
        else:
            self.server_host = self.lab.add_host(f"server{self.subnet.number}", subnet=self.subnet)
        self.address = self.server_host.address
        self.http_url = f"http://{self.address}:{HTTP_PORT}"
        self.boot_url = f"{self.http_url}{paths.BOOT}"
        if self.rate_mbit:
            self.server_host.shape(self.rate_mbit)
        self.server = Server(self.server_host, self.config_dir, self.state_dir,
                             self.tmp / "logs")
        self.clients: dict[str, Client] = {}
        self._pivotal_json: Path | None = None
        self._tokens: dict[str, str] = {}  # by host name (Cluster.token)
        self._extra_taken = 0  # addresses of EXTRA_NETWORK given out

    def __enter__(self) -> "Cluster":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self.owns_lab:
            self.lab.close()
        else:  # the lab's owner closes it; this server's services stop now
            for service in list(self.server.processes):
                self.server.stop_service(service)
        shutil.rmtree(self.state_dir, ignore_errors=True)
        shutil.rmtree(self.ram, ignore_errors=True)

    # ------------------------------------------------------------ server side

    def write_config(self) -> None:
        """The lab's server configuration (lab.server.lab_config: full DHCP
        mode, announces every 2 s) with self.conf's settings over it."""
        from configobj import ConfigObj

        from lab import kernel
        config = ConfigObj(lab_config(kernel.kernel_deb()).splitlines())
        for section, values in self.conf.items():
            for key, value in values.items():
                if value is None:  # back to the product's default
                    config.get(section, {}).pop(key, None)
                else:
                    # A dict is a subsection (a [machines] group), a list a list.
                    config.setdefault(section, {})[key] = (
                        value if isinstance(value, (dict, list)) else str(value))
        (self.config_dir / "boottorrent.conf").write_text("\n".join(config.write()) + "\n")

    def add_image(self, name: str, sizes: dict[str, int],
                  piece_size: int | None = None) -> dict[str, Path]:
        """Make a random image (kernel, initrd.0, ...) and register it."""
        files = random_image(self.tmp / "src", name, sizes)
        self.register(name, files, piece_size)
        return files

    def register(self, name: str, files: dict[str, Path], piece_size: int | None = None) -> None:
        """`boottorrent add-image`; piece_size overrides the piece size policy
        of boottorrent/torrents.py (for the benchmark's experiments)."""
        args = add_image_args(name, files)
        if piece_size is None:
            self.server.boottorrent(*args)
        else:
            code = ("import sys; from boottorrent import torrents, cli; "
                    f"torrents.piece_size_for = lambda total: {int(piece_size)}; "
                    "sys.exit(cli.main(sys.argv[1:]))")
            self.server_host.run([PYTHON, "-c", code, *args], cwd=REPO,
                                 env=environment(self.config_dir, self.state_dir))
        self._pivotal_json = None

    def piece_size(self, image: str) -> int:
        return self.registry()[image]["piece_size"]

    def registry(self) -> dict:
        return json.loads((self.state_dir / "current" / "registry.json").read_text())["images"]

    def infohash(self, image: str) -> str:
        return self.registry()[image]["infohash"]

    def torrent(self, image: str) -> Path:
        """The full torrent (tracker and web seed URLs) the server publishes."""
        return self.state_dir / "current" / "torrents" / f"{image}.torrent"

    def url(self, image: str, file: str) -> str:
        return f"{self.http_url}{paths.IMAGES}/{self.infohash(image)}/{image}/{file}"

    def start(self, services: tuple[str, ...] = ("tracker", "seeder")) -> "Cluster":
        self.server.start(services)
        if "tracker" in services:
            self.wait_for_port(6969)
        return self

    def wait_for_port(self, port: int, timeout: float = 15) -> None:
        probe = (f"import socket; socket.create_connection(({self.address!r}, {port}), 1)"
                 ".close()")
        wait_for(lambda: self.server_host.run([PYTHON, "-c", probe], check=False).returncode == 0,
                 timeout, f"port {port} on the server")

    def restart_seeder(self) -> None:
        self.server.stop_service("seeder")
        self.server.start_service("seeder")
        self.server.wait_for_seeder()

    def pivotal_json(self) -> Path:
        """The pivotal's configuration as the config part carries it."""
        if self._pivotal_json is None:
            cpio = self.state_dir / "current" / "boot" / "pivotal" / "config.cpio"
            data = subprocess.run(["cpio", "-i", "--quiet", "--to-stdout",
                                   "etc/boottorrent/pivotal.json"], input=cpio.read_bytes(),
                                  capture_output=True, check=True).stdout
            path = self.tmp / f"pivotal-{time.monotonic_ns()}.json"
            path.write_bytes(data)
            self._pivotal_json = path
        return self._pivotal_json

    def fetch_boot_script(self, host: Host, image: str = "") -> None:
        """What a machine's iPXE does first: fetch boot.ipxe, then the config
        part with its MAC (the server then counts the machine on its way to
        the swarm, coming for image, or for any when "")."""
        host.run(["curl", "-sf", "-o", "/dev/null", f"{self.boot_url}/boot.ipxe"])
        self.token(host, image, again=True)

    def token(self, host: Host, image: str = "", again: bool = False) -> str:
        """The token the server handed host (its config part, as iPXE asks
        for it), fetched the first time (or again); "" when the server does
        not answer. A host with no address first gets one by DHCP, as iPXE
        does (the pivotal asks again: the same lease)."""
        if again or host.name not in self._tokens:
            if host.address is None:
                script = self.tmp / "udhcpc-bound"
                script.write_text('#!/bin/sh\n[ "$1" = bound ] && '
                                  'ip addr add "$ip/${mask:-24}" dev "$interface"\nexit 0\n')
                script.chmod(0o755)
                host.run(["busybox", "udhcpc", "-i", "eth0", "-n", "-q", "-f", "-t", "5",
                          "-s", str(script)], check=False)
            try:
                answer = host.run(["curl", "-sf", "--max-time", "30",
                                   config_url(self.boot_url, host.mac, image)], text=False,
                                  check=False)
            finally:
                if host.address is None:
                    host.run(["ip", "addr", "flush", "dev", "eth0"])
            if answer.returncode:
                return ""
            self._tokens[host.name] = token_in(answer.stdout)
        return self._tokens[host.name]

    def ask_for_pivotal_base(self, host: Host, image: str) -> int:
        """A machine of image boots: iPXE loads the pivotal's kernel, and its
        /stage asks for the base, once, on its first try (without asking
        again after a 503): the HTTP status of that answer."""
        self.fetch_boot_script(host, image)
        out = host.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}",
                        "-H", f"{TOKEN_HEADER}: {self.token(host)}",
                        f"{self.boot_url}/{paths.BASE}?{paths.try_query(1)}"])
        return int(out.stdout)

    def send_report(self, host: Host, forged: bool = False, **fields: object) -> dict | None:
        """A report from host, as its pivotal sends it, with the token the
        server handed it (forged: with none); the server's answer (None:
        refused)."""
        code = ("import json, sys; from boottorrent.pivotal.report import send_report; "
                "from boottorrent.pivotal.wire import Report; "
                f"answer = send_report('{self.http_url}{paths.REPORT}', "
                "Report.from_dict(json.loads(sys.argv[1])), sys.argv[2]); "
                "print(answer.to_json().decode() if answer else 'null')")
        token = "" if forged else self.token(host, str(fields.get("image", "")))
        return json.loads(host.run([PYTHON, "-c", code, json.dumps(fields), token],
                                   cwd=REPO).stdout)

    def reports(self) -> dict[str, dict]:
        """The clients' last reports to the seeder, by address."""
        return {r.get("address"): r for r in self.server.status()["clients"]}

    def wire_bytes(self, host: Host) -> tuple[int, int]:
        """(bytes the host sent, bytes it received) on the wire (Ethernet
        frames), counted on the switch's end of its link."""
        out = subprocess.run(["ip", "-n", self.lab.switch, "-j", "-s", "link", "show", "dev",
                              host.peer_ifname], check=True, capture_output=True, text=True)
        stats = json.loads(out.stdout)[0]["stats64"]
        return stats["rx"]["bytes"], stats["tx"]["bytes"]

    # ------------------------------------------------------------ clients

    def add_host(self, name: str, address: str | None = "auto", mac: str | None = None) -> Host:
        """A host on this cluster's server's subnet."""
        host = self.lab.add_host(name, address=address, mac=mac, subnet=self.subnet)
        if self.rate_mbit:
            host.shape(self.rate_mbit)
        return host

    def extra_network(self, count: int) -> ipaddress.IPv4Network:
        """A network of EXTRA_NETWORK with room for count hosts, not given
        out before, that the server reaches on its link."""
        if not self._extra_taken:
            self.server_host.run(["ip", "route", "add", str(EXTRA_NETWORK), "dev", "eth0"])
        prefix = 32 - max(count + 1, 3).bit_length()
        size = 1 << (32 - prefix)
        start = -(-self._extra_taken // size) * size  # aligned to its size
        self._extra_taken = start + size
        return ipaddress.ip_network(f"{EXTRA_NETWORK[start]}/{prefix}")

    def crowd(self, name: str, count: int) -> tuple[Host, str]:
        """A host that holds every address of a network of at least count
        (lab.storm --from), as that many machines would; the network."""
        host = self.add_host(name)
        network = self.extra_network(count)
        script = "".join(f"addr add {address}/{EXTRA_NETWORK.prefixlen} dev eth0\n"
                         for address in network.hosts())
        host.run(["ip", "-batch", "-"], input=script)
        # The server's neighbours, as the lab's own hosts are (netns.py:
        # past 1024 the kernel's ARP table overflows).
        script = "".join(f"neigh replace {address} lladdr {host.mac} dev eth0 nud permanent\n"
                         for address in network.hosts())
        self.server_host.run(["ip", "-batch", "-"], input=script)
        return host, str(network)

    def client(self, name: str, image: str, host: Host | None = None,
               config: Path | None = None) -> Client:
        """A client (not started yet) on host, or on a new shaped host."""
        client = Client(self, name, host or self.add_host(name), image,
                        self.ram / "clients" / name, self.tmp / "logs" / f"{name}.log", config)
        self.clients[name] = client
        return client

    def start_client(self, name: str, image: str, host: Host | None = None,
                     config: Path | None = None) -> Client:
        return self.client(name, image, host, config).start()

    def wait_all(self, clients: list[Client], timeout: float) -> None:
        """Wait for every client to exit with status 0."""
        deadline = time.monotonic() + timeout
        for client in clients:
            code = client.wait(max(1.0, deadline - time.monotonic()))
            if code != 0:
                raise AssertionError(f"{client.name} exited with {code}:\n"
                                     + client.log()[-4000:])


# ---------------------------------------------------------------- a bare peer

def corrupt_copy(files: dict[str, Path], image: str, target: Path,
                 every: int = 1 << 16) -> Path:
    """A copy of an image's files, laid out as a torrent's save path, with
    one byte flipped every `every` bytes (so every piece is wrong)."""
    folder = target / image
    folder.mkdir(parents=True, exist_ok=True)
    for name, source in files.items():
        data = bytearray(source.read_bytes())
        for offset in range(every // 2, len(data), every):
            data[offset] ^= 0xFF
        (folder / name).write_bytes(bytes(data))
    return target


def seed_main(argv: list[str]) -> int:
    """Seed a torrent from a save path; write the torrent's counters as JSON
    to --status-file every half second."""
    import libtorrent as lt

    from boottorrent.pivotal import lan

    parser = argparse.ArgumentParser(prog="python3 -m lab.cluster seed")
    parser.add_argument("--torrent", type=Path, required=True)
    parser.add_argument("--save-path", type=Path, required=True)
    parser.add_argument("--listen", required=True, help="ADDRESS:PORT")
    parser.add_argument("--status-file", type=Path, required=True)
    parser.add_argument("--upload-slots", type=int, default=8)
    parser.add_argument("--trust", action="store_true",
                        help="flag every piece as verified without reading it")
    args = parser.parse_args(argv)

    stop = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.append(True))
    session = lan.session(args.listen, args.upload_slots, seed=True)
    params = lan.add_params(args.torrent.read_bytes(), args.save_path)
    params.flags |= lt.torrent_flags.seed_mode
    if args.trust:
        params.verified_pieces = [True] * params.ti.num_pieces()
    handle = session.add_torrent(params)
    last_announce, announced = 0.0, False
    while not stop:
        for alert in lan.alerts_after(session, 0.5):
            announced = announced or isinstance(alert, lt.tracker_reply_alert)
        if time.monotonic() - last_announce > 2:  # opentracker's own interval is 30 min
            handle.force_reannounce(0, -1, lt.reannounce_flags_t.ignore_min_interval)
            last_announce = time.monotonic()
        status = handle.status()
        tmp = args.status_file.with_suffix(".tmp")
        tmp.write_text(json.dumps({
            "uploaded": status.all_time_upload, "peers": status.num_peers,
            "announced": announced,
            "seeding": status.is_seeding, "state": str(status.state),
            "peer_addresses": [p.ip[0] for p in handle.get_peer_info()]}))
        tmp.replace(args.status_file)
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["seed"]:
        return seed_main(argv[1:])
    print("usage: python3 -m lab.cluster seed --torrent T --save-path P --listen A:P "
          "--status-file F [--trust]", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
