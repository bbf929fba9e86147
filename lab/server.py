"""A BootTorrent server in a lab namespace: the real dnsmasq, opentracker and
seeder, started with the same command lines as the systemd units (read from
systemd/*.service), from a configuration and state folder of the test's."""

from __future__ import annotations

import configparser
import json
import os
import shlex
import signal
import subprocess
import threading
import time
from pathlib import Path

from boottorrent.pivotal import paths
from boottorrent.pivotal.wire import HTTP_PORT
from lab.netns import Host

REPO = Path(__file__).resolve().parent.parent
PYTHON = "/usr/bin/python3"
STATE_IN_UNITS = "/var/lib/boottorrent"


# boottorrent.conf of a lab server: full DHCP on the lab's subnet (the
# namespaces have no other DHCP server), announces every 2 s, no boot menu.
LAB_CONFIG = """\
[server]
interface = eth0
address = 198.18.0.1
[dhcp]
mode = full
range_start = 198.18.0.100
range_end = 198.18.0.199
netmask = 255.255.255.0
[tracker]
announce_interval = 2
[pivotal]
kernel = {kernel}
[boot]
menu_timeout = 0
"""


def lab_config(kernel: Path | str, **sections: dict) -> str:
    """LAB_CONFIG for this pivotal kernel, plus the given sections."""
    text = LAB_CONFIG.format(kernel=kernel)
    for section, values in sections.items():
        text += f"[{section}]\n" + "".join(f"{key} = {value}\n" for key, value in values.items())
    return text


def unit_command(unit: str, state_dir: Path) -> list[str]:
    """ExecStart= of one of our units, pointed at the lab's state folder."""
    parser = configparser.ConfigParser(interpolation=None, strict=False)
    parser.read(REPO / "systemd" / f"{unit}.service")
    argv = shlex.split(parser["Service"]["ExecStart"].replace(STATE_IN_UNITS, str(state_dir)))
    if argv[0] == "/usr/sbin/boottorrent":
        argv = [PYTHON, "-m", "boottorrent"] + argv[1:]
    return argv


def environment(config_dir: Path, state_dir: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "BOOTTORRENT_CONFIG_DIR": str(config_dir),
            "BOOTTORRENT_STATE_DIR": str(state_dir)}


class Server:
    """The three services of boottorrent.service, in host's namespace."""

    def __init__(self, host: Host, config_dir: Path, state_dir: Path, log_dir: Path):
        self.host = host
        self.config_dir = config_dir
        self.state_dir = state_dir
        self.log_dir = log_dir
        self.processes: dict[str, subprocess.Popen] = {}

    def boottorrent(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        """Run a boottorrent command in the server's namespace."""
        return self.host.run([PYTHON, "-m", "boottorrent", *args], check=check, cwd=REPO,
                             env=environment(self.config_dir, self.state_dir))

    def start(self, services: tuple[str, ...] = ("dnsmasq", "tracker", "seeder")) -> "Server":
        self.boottorrent("generate")
        (self.state_dir / "dnsmasq").mkdir(exist_ok=True)
        for service in services:
            self.start_service(service)
        if "seeder" in services:
            self.wait_for_seeder()
        return self

    def start_service(self, service: str, **env: str) -> subprocess.Popen:
        argv = unit_command(f"boottorrent-{service}", self.state_dir)
        if service == "tracker":
            # The unit runs it as a dynamic user; as root opentracker would
            # chroot into its working folder.
            argv = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"] + argv
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.log_dir / f"{service}.log", "ab")
        process = self.host.popen(argv, cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                                  env={**environment(self.config_dir, self.state_dir), **env})
        self.processes[service] = process
        if service == "follow":
            self.register_mirrored()
        return process

    def register_mirrored(self) -> None:
        """What boottorrent-images.path and a reload of boottorrent.service do
        on a follower whenever its mirror (boottorrent follow) writes the
        registry it should have: `boottorrent sync-images`, then SIGHUP to
        the seeder and the tracker. The lab has no systemd to do it."""
        written = self.state_dir / "mirror" / "registry.json"

        def seen() -> bytes:
            return written.read_bytes() if written.exists() else b""

        def watch() -> None:
            last = b""
            while "follow" in self.processes:
                if (now := seen()) != last:
                    last = now
                    self.boottorrent("sync-images", check=False)
                    for service in ("seeder", "tracker"):
                        if (process := self.processes.get(service)) is not None:
                            process.send_signal(signal.SIGHUP)
                time.sleep(0.2)

        threading.Thread(target=watch, name="register-mirrored", daemon=True).start()

    def stop_service(self, service: str) -> None:
        self.host.lab.stop(self.processes.pop(service))

    def reload(self, service: str) -> None:
        """What `systemctl reload` does: SIGHUP to the main process."""
        self.processes[service].send_signal(1)

    def status(self) -> dict:
        """The seeder's /status, fetched from inside the server's namespace."""
        url = f"http://{self.host.address}:{HTTP_PORT}{paths.STATUS}"
        out = self.host.run([PYTHON, "-c", f"import urllib.request,sys; sys.stdout.write("
                             f"urllib.request.urlopen({url!r}, timeout=3).read().decode())"])
        return json.loads(out.stdout)

    def wait_for_seeder(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.processes["seeder"].poll() is not None:
                raise RuntimeError("the seeder exited:\n" + self.log("seeder"))
            try:
                self.status()
                return
            except (subprocess.CalledProcessError, json.JSONDecodeError):
                time.sleep(0.3)
        raise TimeoutError("the seeder did not answer:\n" + self.log("seeder"))

    def log(self, service: str) -> str:
        path = self.log_dir / f"{service}.log"
        return path.read_text(errors="replace") if path.exists() else ""


def fetch(host: Host, url: str) -> bytes:
    """GET a URL from inside a host's namespace."""
    return host.run([PYTHON, "-c", f"import urllib.request,sys; sys.stdout.buffer.write("
                     f"urllib.request.urlopen({url!r}, timeout=10).read())"],
                    text=False).stdout


