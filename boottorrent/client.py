"""The pivotal's BootTorrent client: python3 -m boottorrent.client.

Runs as the pivotal's main program (pivotal/init starts it):

 1. brings up the interface that booted (BOOTIF=, else the first with a
    link) and gets an address with busybox udhcpc, unless it has one;
 2. picks the image: boottorrent.image= on the kernel command line (set by
    the iPXE script from the MAC mapping or the menu), else the MAC
    mapping, else the default;
 3. downloads the image's files into RAM with libtorrent, from the server
    (a known peer) and from every other client the tracker names; falls
    back to the server's HTTP web seed if the swarm makes no progress;
 4. keeps seeding until the tracker has reported no incomplete peer for
    seed_idle_time seconds (or seed_time_max), so later machines are
    served by it;
 5. kexecs into the image (kexec_file_load first: it survives Secure Boot
    lockdown).

It reports its phase and progress to the server's /report every second,
which `boottorrent status` shows. With --dry-run it does everything but the
kexec, and prints the kexec commands instead.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path

import libtorrent as lt

from boottorrent import lan
from boottorrent.progress import human_bytes

CONFIG = Path("/etc/boottorrent/pivotal.json")
WORK_DIR = Path("/run/boottorrent")
ATTEMPTS = 3
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


class ClientError(Exception):
    """A failure the console message explains; the client retries it."""


@dataclass
class Report:
    """What the client tells the server (POST /report) and prints."""

    mac: str = ""
    address: str = ""
    hostname: str = field(default_factory=socket.gethostname)
    image: str = ""
    phase: str = "pivotal"  # pivotal, dhcp, downloading, seeding, kexec, failed
    progress: float = 0.0
    size: int = 0
    peers: int = 0
    from_server: int = 0
    from_peers: int = 0
    uploaded: int = 0
    download_rate: int = 0
    upload_rate: int = 0
    message: str = ""
    started: float = field(default_factory=time.time)
    downloaded_at: float | None = None
    verified_at: float | None = None  # when the SHA-256 check of the files passed
    hashfails: int = 0  # pieces that failed their hash check (a bad peer or link)


STARTED = time.monotonic()


def say(message: str) -> None:
    print(f"boottorrent [{time.monotonic() - STARTED:6.1f}]: {message}", flush=True)


def kernel_parameters(cmdline: str) -> dict[str, str]:
    params = {}
    for word in cmdline.split():
        key, _, value = word.partition("=")
        params[key] = value
    return params


# ---------------------------------------------------------------- network

def interfaces() -> dict[str, str]:
    """Ethernet interfaces by name, with their MAC addresses."""
    found = {}
    for path in sorted(Path("/sys/class/net").iterdir()):
        if (path / "type").read_text().strip() == "1":  # ARPHRD_ETHER
            found[path.name] = (path / "address").read_text().strip()
    return found


def ipv4_address(interface: str) -> str | None:
    out = subprocess.run(["ip", "-4", "-o", "addr", "show", "dev", interface],
                         capture_output=True, text=True).stdout.split()
    return out[out.index("inet") + 1].split("/")[0] if "inet" in out else None


def bring_up_network(bootif: str | None, report: Report, work: Path) -> str:
    """Configure the boot interface; returns its name."""
    found = interfaces()
    if not found:
        raise ClientError("no Ethernet interface: is the NIC's driver in the pivotal?")
    wanted = bootif[3:].replace("-", ":").lower() if bootif else None  # BOOTIF=01-aa-bb-..
    names = [n for n, mac in found.items() if mac == wanted] or list(found)
    for name in names:
        subprocess.run(["ip", "link", "set", name, "up"], check=True)
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
        result = subprocess.run(
            ["busybox", "udhcpc", "-i", name, "-f", "-q", "-n", "-t", "10", "-T", "2", "-s", str(script)],
            env={**os.environ, "LEASE_FILE": str(work / f"lease.{name}")},
            capture_output=True, text=True)
        if result.returncode == 0 and (address := ipv4_address(name)):
            report.address = address
            say(f"{name}: address {address}")
            return name
    raise ClientError(f"no DHCP answer on {', '.join(names)}")


# ---------------------------------------------------------------- reporting

def send_report(url: str, report: Report) -> None:
    body = json.dumps(asdict(report)).encode()
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    try:
        urllib.request.urlopen(request, timeout=2).close()
    except OSError:
        pass  # the server may be busy; the next report will do


class Reporter:
    """Sends the latest report to the server once a second, off the main loop."""

    def __init__(self, url: str, report: Report):
        self.url = url
        self.report = report
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        while not self.stopped.wait(1.0):
            self.send()

    def send(self) -> None:
        send_report(self.url, self.report)

    def stop(self) -> None:
        self.stopped.set()
        self.send()


# ---------------------------------------------------------------- swarm

@dataclass
class Image:
    name: str
    spec: dict

    def torrent(self) -> tuple[lt.torrent_info, list[str]]:
        """The torrent without its web seeds, and the web seeds.

        The web seed is the fallback only: from the start it would make
        every client pull from the server's HTTP side.
        """
        entry = lt.bdecode(base64.b64decode(self.spec["torrent"]))
        seeds = entry.pop(b"url-list", [])
        seeds = [seeds] if isinstance(seeds, bytes) else seeds
        return lt.torrent_info(entry), [url.decode() for url in seeds]


def choose_image(config: dict, params: dict[str, str], mac: str) -> Image:
    name = params.get("boottorrent.image") or config["mac_images"].get(mac) \
        or config["default_image"]
    if not name:
        raise ClientError("no image registered on the server")
    if name not in config["images"]:
        raise ClientError(f"image {name!r} is not in this pivotal's configuration")
    return Image(name, config["images"][name])


class Swarm:
    """One torrent download, then seeding, with accounting of who sent what."""

    def __init__(self, config: dict, image: Image, save_path: Path, listen: str,
                 report: Report):
        self.config = config
        self.image = image
        self.report = report
        self.session = lan.session(listen, config["upload_slots"], seed=False)
        # Keep the connection to the server when both are seeds, so that the
        # last bytes it sent are still counted.
        self.session.apply_settings({"close_redundant_connections": False})
        self.server_connections: dict[tuple, int] = {}
        self.server_finished = 0
        self.last_error = ""
        params = lt.add_torrent_params()
        params.ti, self.web_seeds = image.torrent()
        params.save_path = str(save_path)
        # The server is always a peer, also before the tracker answers.
        params.peers = [(config["server"], config["seeder_port"])]
        params.flags &= ~(lt.torrent_flags.auto_managed | lt.torrent_flags.paused)
        self.handle = self.session.add_torrent(params)
        self.last_announce = time.monotonic()
        report.size = params.ti.total_size()

    def _count_sources(self) -> None:
        """Account the payload received from the server; the rest came from peers.

        A peer's counter restarts when it reconnects, so each connection's
        last value is added up when a smaller one appears.
        """
        server = self.config["server"]
        for peer in self.handle.get_peer_info():
            if peer.ip[0] != server:
                continue
            key = (peer.ip, peer.local_endpoint)
            last = self.server_connections.get(key, 0)
            if peer.total_download < last:
                self.server_finished += last
            self.server_connections[key] = peer.total_download
        received = self.handle.status().total_payload_download
        self.report.from_server = min(self.server_finished
                                      + sum(self.server_connections.values()), received)
        self.report.from_peers = received - self.report.from_server
        for alert in self.session.pop_alerts():
            if isinstance(alert, (lt.tracker_error_alert, lt.file_error_alert,
                                  lt.url_seed_alert)):
                if alert.message() != self.last_error:
                    self.last_error = alert.message()
                    say(self.last_error)
            elif isinstance(alert, lt.hash_failed_alert):
                self.report.hashfails += 1

    def _announce_when_due(self) -> None:
        # opentracker's interval is 30 minutes; a boot swarm needs seconds.
        if time.monotonic() - self.last_announce >= self.config["announce_interval"]:
            self.handle.force_reannounce(0, -1, lt.reannounce_flags_t.ignore_min_interval)
            self.last_announce = time.monotonic()

    def _update_report(self) -> lt.torrent_status:
        status = self.handle.status()
        self.report.progress = status.progress
        self.report.peers = status.num_peers
        self.report.download_rate = status.download_payload_rate
        self.report.upload_rate = status.upload_payload_rate
        self.report.uploaded = status.all_time_upload
        return status

    def download(self) -> None:
        self.report.phase = "downloading"
        last_progress, stalled_since = -1, time.monotonic()
        last_said = 0.0
        while True:
            self.session.wait_for_alert(500)
            self._count_sources()
            status = self._update_report()
            if status.is_seeding:
                break
            if status.state == lt.torrent_status.downloading and status.errc.value():
                raise ClientError(f"download failed: {status.errc.message()}")
            if status.total_wanted_done != last_progress:
                last_progress, stalled_since = status.total_wanted_done, time.monotonic()
            elif (self.web_seeds and time.monotonic() - stalled_since
                  > self.config["fallback_after"]):
                say(f"no progress for {self.config['fallback_after']} s: "
                    "falling back to HTTP from the server")
                for url in self.web_seeds:
                    self.handle.add_url_seed(url)
                self.web_seeds = []
            elif time.monotonic() - stalled_since > 2 * self.config["fallback_after"]:
                # Neither the swarm nor the server's HTTP side gave a byte
                # for as long again: this attempt is over.
                raise ClientError(self._stalled(status, 2 * self.config["fallback_after"]))
            self._announce_when_due()
            if time.monotonic() - last_said >= 2:
                last_said = time.monotonic()
                say(f"{self.image.name}: {status.progress:.0%} from {status.num_peers} peers "
                    f"({human_bytes(self.report.from_server)} from the server, "
                    f"{human_bytes(self.report.from_peers)} from peers; tracker: "
                    f"{max(status.num_complete, 0)} seeds, "
                    f"{max(status.num_incomplete, 0)} downloading)")
        self.report.downloaded_at = time.time()
        say(f"{self.image.name}: downloaded, {human_bytes(self.report.from_server)} from the "
            f"server, {human_bytes(self.report.from_peers)} from peers")

    def _stalled(self, status: lt.torrent_status, seconds: int) -> str:
        last = f" (last error: {self.last_error})" if self.last_error else ""
        if status.num_peers == 0:
            return (f"no progress for {seconds} s and no peer: the server "
                    f"{self.config['server']} does not answer{last}; is it running, and is "
                    "this machine on its network?")
        return (f"no progress for {seconds} s from {status.num_peers} peers nor from the "
                f"server's HTTP side{last}")

    def seed(self) -> None:
        """Seed until no peer is incomplete for seed_idle_time, or seed_time_max.

        Incomplete peers that the tracker still lists but that never connect
        (a machine that died mid-download stays listed for the tracker's
        peer timeout, half an hour) hold us for two more announce intervals
        only: they would otherwise keep every client from booting until
        seed_time_max.
        """
        self.report.phase = "seeding"
        started = time.monotonic()
        idle_since: float | None = None
        self.handle.force_reannounce(0, -1, lt.reannounce_flags_t.ignore_min_interval)
        self.last_announce = time.monotonic()
        while time.monotonic() - started < self.config["seed_time_max"]:
            self.session.wait_for_alert(500)
            self._count_sources()
            status = self._update_report()
            # num_incomplete is what the tracker said at the last announce,
            # -1 while it does not answer: then no new peer can find us
            # either, and only the peers already connected count.
            # (peer_info.seed is the flag's value, always true: test the flags.)
            if all(p.flags & lt.peer_info.seed for p in self.handle.get_peer_info()):
                idle_since = idle_since or time.monotonic()
                wait = self.config["seed_idle_time"]
                if status.num_incomplete > 0:
                    wait += 2 * self.config["announce_interval"]
                if time.monotonic() - idle_since >= wait:
                    break
            else:
                idle_since = None
            self._announce_when_due()
        say(f"{self.image.name}: seeded {human_bytes(self.report.uploaded)} to peers")

    def leave(self) -> None:
        """Tell the tracker we are gone before the kernel is replaced."""
        self.handle.pause()
        self.session.wait_for_alert(2000)
        self.session.pause()


# ---------------------------------------------------------------- kexec

def verify(image: Image, folder: Path) -> None:
    for name, expected in image.spec["sha256"].items():
        digest = hashlib.sha256()
        with (folder / name).open("rb") as file:
            while chunk := file.read(1 << 20):
                digest.update(chunk)
        if digest.hexdigest() != expected:
            raise ClientError(f"{name}: SHA-256 does not match the registry")


def image_cmdline(image: Image, mac: str) -> str:
    """The image's command line, plus BOOTIF= (the pxelinux convention that
    Debian's live-boot, dracut and others read) naming the NIC that booted,
    unless the image sets it itself."""
    cmdline = image.spec["cmdline"]
    if mac and "BOOTIF=" not in cmdline:
        cmdline = f"{cmdline} BOOTIF=01-{mac.replace(':', '-')}".strip()
    return cmdline


def kexec_commands(image: Image, folder: Path, work: Path, mac: str) -> list[list[str]]:
    """The kexec command lines that boot the image, and write the initrd."""
    kernel = folder / image.spec["kernel"]
    load = ["kexec", "-s", "-l", str(kernel), f"--command-line={image_cmdline(image, mac)}"]
    initrds = [folder / name for name in image.spec["initrds"]]
    if initrds:
        # kexec takes one initrd; the kernel unpacks concatenated archives.
        combined = work / "initrd"
        with combined.open("wb") as out:
            for path in initrds:
                with path.open("rb") as part:
                    while chunk := part.read(1 << 20):
                        out.write(chunk)
        load.insert(4, f"--initrd={combined}")
    return [load, ["kexec", "-e"]]


def kexec(commands: list[list[str]]) -> None:
    load, execute = commands
    result = subprocess.run(load, capture_output=True, text=True)
    if result.returncode != 0:
        # No kexec_file_load (or the kernel is not signed for it): kexec_load.
        say(f"kexec_file_load failed ({result.stderr.strip()}); trying kexec_load")
        subprocess.run([arg for arg in load if arg != "-s"], check=True)
    subprocess.run(["sync"])
    subprocess.run(execute, check=True)
    raise ClientError("kexec -e returned")


# ---------------------------------------------------------------- main

def boot(args: argparse.Namespace, config: dict, report: Report) -> list[list[str]]:
    params = kernel_parameters(Path("/proc/cmdline").read_text())
    if args.image:
        params["boottorrent.image"] = args.image
    args.work_dir.mkdir(parents=True, exist_ok=True)
    bring_up_network(params.get("BOOTIF"), report, args.work_dir)
    image = choose_image(config, params, report.mac)
    report.image = image.name
    reporter = Reporter(config["report_url"], report)
    try:
        say(f"booting image {image.name} ({human_bytes(image.spec['size'])}) from "
            f"{config['server']}")
        save_path = args.work_dir / "images"
        swarm = Swarm(config, image, save_path, f"{report.address}:{args.port}", report)
        swarm.download()
        folder = save_path / image.name
        verify(image, folder)
        report.verified_at = time.time()
        swarm.seed()
        swarm.leave()
        report.phase = "kexec"
        commands = kexec_commands(image, folder, args.work_dir, report.mac)
        (args.work_dir / "summary.json").write_text(json.dumps(asdict(report), indent=1))
    finally:
        reporter.stop()
    return commands


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="boottorrent.client",
        description="The pivotal's client: get an address, download the image over "
        "BitTorrent from the server and the other machines, seed it while others "
        "still need it, then kexec into it.")
    parser.add_argument("--config", type=Path, default=CONFIG,
                        help="the pivotal configuration (default: %(default)s)")
    parser.add_argument("--work-dir", type=Path, default=WORK_DIR,
                        help="where the image is downloaded, in RAM (default: %(default)s)")
    parser.add_argument("--image", help="boot this image (default: from the kernel command "
                        "line, the MAC mapping, or the server's default)")
    parser.add_argument("--port", type=int, default=6881, help="BitTorrent port")
    parser.add_argument("--dry-run", action="store_true",
                        help="do everything but the kexec: print its commands instead")
    args = parser.parse_args(argv)

    config = json.loads(args.config.read_text())
    report = Report()
    for attempt in range(1, ATTEMPTS + 1):
        try:
            commands = boot(args, config, report)
            break
        except (ClientError, OSError, RuntimeError, subprocess.CalledProcessError) as error:
            report.phase, report.message = "failed", str(error)
            say(f"attempt {attempt} of {ATTEMPTS} failed: {error}")
            if attempt == ATTEMPTS:
                say(f"giving up after {ATTEMPTS} attempts: {error}")
                return 1
            time.sleep(5)
    if args.dry_run:
        for command in commands:
            print("dry run: " + " ".join(command), flush=True)
        return 0
    try:
        kexec(commands)
    except (ClientError, OSError, ValueError, subprocess.CalledProcessError) as error:
        report.phase, report.message = "failed", f"kexec failed: {error}"
        say(f"{report.message}; the image downloaded, but this machine cannot boot it")
        send_report(config["report_url"], report)
    return 1


if __name__ == "__main__":
    sys.exit(main())
