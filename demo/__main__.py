"""`make demo`: boot a small cluster of QEMU machines from a BootTorrent
server, all on this machine, and watch them share the image.

The real server services (dnsmasq, opentracker, the seeder) run in a lab
network namespace; the machines PXE-boot through iPXE into the pivotal,
which downloads the demo image from the server and from each other, then
kexecs into it. Everything is removed at the end, also on Ctrl-C.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from boottorrent.fleet.state import BOOTED
from boottorrent.pivotal.console import human_bytes
from boottorrent.pivotal.wire import HTTP_PORT, Report
from boottorrent.status import bar, table
from demo.image import GREETING, build_demo_image
from lab.browser import Browser
from lab.cluster import wait_for
from lab.forward import forward
from lab.kernel import kernel_deb
from lab.netns import Lab
from lab.qemu import VM
from lab.server import Server, lab_config

REPO = Path(__file__).resolve().parent.parent
CACHE = REPO / ".cache"
IMAGE = "demo"

def say(message: str) -> None:
    print(f"demo: {message}", flush=True)


class Machine:
    """One QEMU machine and what the demo knows of it."""

    def __init__(self, vm: VM):
        self.vm = vm
        self.greeting: str | None = None
        self.booted_after: float | None = None

    def update(self) -> None:
        if self.greeting is None:
            for line in self.vm.console().splitlines():
                if line.startswith(GREETING):
                    self.greeting = line[len(GREETING):].strip()
                    self.booted_after = time.monotonic() - self.vm.started_at

    @property
    def done(self) -> bool:
        return self.greeting is not None or self.vm.poll() is not None


def rows(machines: list[Machine], reports: dict[str, dict]) -> list[tuple[str, ...]]:
    header = [("MACHINE", "MAC", "ADDRESS", "PHASE", "PROGRESS", "", "PEERS", "FROM SERVER",
               "FROM PEERS")]
    body = []
    for machine in machines:
        reported = machine.vm.mac in reports
        report = Report.from_dict(reports[machine.vm.mac]) if reported else Report(address="-")
        if machine.greeting is not None:
            phase = "booted"
        elif machine.vm.poll() is not None:
            phase = "failed"
        else:
            phase = report.phase if reported else "pxe"
        body.append((machine.vm.name, machine.vm.mac, report.address, phase,
                     bar(report.progress), f"{report.progress:4.0%}", str(report.peers),
                     human_bytes(report.from_server), human_bytes(report.from_peers)))
    return header + body


def draw(lines: list[str], elapsed: float, tty: bool) -> None:
    text = "\n".join([f"BootTorrent demo, {elapsed:5.0f} s (Ctrl-C stops and cleans up)", ""]
                     + lines)
    if tty:
        sys.stdout.write("\x1b[H\x1b[J" + text + "\n")
    else:
        sys.stdout.write(text + "\n\n")
    sys.stdout.flush()


def run(args: argparse.Namespace, work: Path) -> int:
    config_dir, state_dir = work / "etc", work / "state"
    (config_dir / "images.d").mkdir(parents=True)
    state_dir.mkdir(mode=0o755)
    kernel = kernel_deb()
    (config_dir / "boottorrent.conf").write_text(lab_config(
        kernel, clients={"seed_idle_time": 3}))
    shared_cache = CACHE / "state-cache"
    if shared_cache.is_dir():  # the pivotal parts the tests already built
        shutil.copytree(shared_cache, state_dir / "cache", copy_function=os.link)

    say(f"building the demo image: Debian's kernel and a {args.image_mib} MiB initramfs")
    image = build_demo_image(CACHE / "demo", args.image_mib)

    with Lab() as lab:
        server = Server(lab.add_server(), config_dir, state_dir, work / "logs")
        say("registering it (the first run also builds the pivotal, about a minute)")
        added = server.boottorrent("add-image", IMAGE, "--kernel", str(image["kernel"]),
                                   "--initrd", str(image["initrd"]),
                                   "--description", "BootTorrent demo",
                                   "--cmdline", f"console=ttyS0 demo.image={IMAGE}")
        say(added.stdout.strip())
        server.host.shape(args.server_mbit)
        say(f"starting dnsmasq, opentracker and the seeder (server link {args.server_mbit} "
            "Mbit/s)")
        server.start()
        # The page is the seeder's, in the lab; a port of this host's
        # loopback leads there.
        page = f"http://127.0.0.1:{forward(server.host, server.host.address, HTTP_PORT)}/"
        say(f"the status page: {page} (open it in a browser on this machine)")

        machines = []
        for index in range(1, args.vms + 1):
            vm = VM(lab, f"vm{index}", work, mac=f"52:54:00:de:00:{index:02x}",
                    memory_mib=768)
            say(f"powering on {vm.name} ({vm.mac}): PXE boot")
            machines.append(Machine(vm.start()))

        started, tty = time.monotonic(), sys.stdout.isatty()
        last_drawn = 0.0
        reports: dict[str, dict] = {}
        status: dict = {}
        while not all(m.done for m in machines):
            if time.monotonic() - started > args.timeout:
                say(f"timed out after {args.timeout} s; logs are in {work}")
                return 1
            for machine in machines:
                machine.update()
            status = server.status()
            reports = {r.get("mac"): r for r in status.get("clients", [])}
            if args.screenshot and any(r.get("phase") in BOOTED for r in reports.values()):
                screenshot(page, args.screenshot)
                args.screenshot = None
            if tty or time.monotonic() - last_drawn >= 10:
                draw(table(rows(machines, reports)), time.monotonic() - started, tty)
                last_drawn = time.monotonic()
            time.sleep(1)
        for machine in machines:
            machine.update()
        draw(table(rows(machines, reports)), time.monotonic() - started, tty)
        return summary(machines, reports, status)


def screenshot(page: str, path: Path) -> None:
    """The status page as headless Chromium shows it, once it drew /status."""
    with Browser(width=1280, height=1100) as browser:
        browser.open(page)
        wait_for(lambda: not browser.run("return document.getElementById('summary')"
                                         ".textContent").startswith("Waiting"),
                 30, "the status page to draw /status")
        browser.screenshot(path)
    say(f"screenshot of the status page: {path}")


def summary(machines: list[Machine], reports: dict[str, dict], status: dict) -> int:
    image = next(i for i in status["images"] if i["name"] == IMAGE)
    size = image["size"]
    print(f"\nSummary: image {IMAGE!r}, {human_bytes(size)}, {len(machines)} machines")
    for machine in machines:
        report = reports.get(machine.vm.mac, {})
        when = (f"booted in {machine.booted_after:.0f} s" if machine.booted_after
                else "did NOT boot")
        again = (f" (powered on {machine.vm.power_ons} times: its firmware's PXE gave up)"
                 if machine.vm.power_ons > 1 else "")
        print(f"  {machine.vm.name} {machine.vm.mac}  {when:<16} "
              f"from the server {human_bytes(report.get('from_server', 0)):>10}, "
              f"from peers {human_bytes(report.get('from_peers', 0)):>10}{again}")
    delivered = size * len(machines)
    sent = image["uploaded"] + image["http_sent"]
    print(f"  The server sent {human_bytes(sent)} of image data for {len(machines)} x "
          f"{human_bytes(size)} = {human_bytes(delivered)} delivered "
          f"({sent / delivered:.0%}); the machines gave each other the rest.")
    times = [m.booted_after for m in machines if m.booted_after]
    if times:
        print(f"  Power-on to greeting: median {statistics.median(times):.0f} s, "
              f"last {max(times):.0f} s (QEMU without KVM: slow CPUs)")
    print("\nGreetings from the machines' serial consoles:")
    for machine in machines:
        print(f"  {machine.vm.name}: {machine.greeting or '(none)'}")
    return 0 if all(m.greeting for m in machines) else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python3 -m demo",
        description="Boot a few QEMU machines from a BootTorrent server on this machine "
        "and show, live, how they share the image. Needs root (network namespaces).")
    parser.add_argument("--vms", type=int, default=3, help="machines to boot (default 3)")
    parser.add_argument("--image-mib", type=int, default=64,
                        help="size of the demo image's padding in MiB (default 64)")
    parser.add_argument("--server-mbit", type=int, default=100,
                        help="the server's link speed in Mbit/s (default 100)")
    parser.add_argument("--timeout", type=int, default=900, help="give up after (s)")
    parser.add_argument("--screenshot", type=Path, metavar="PNG",
                        help="when the first machine has booted, save the status page as "
                        "headless Chromium shows it (README's picture)")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        parser.error("run as root: the demo creates network namespaces")

    work = Path(tempfile.mkdtemp(prefix="boottorrent-demo-"))
    work.chmod(0o755)  # dnsmasq reads the boot files as user nobody
    result = 1
    try:
        result = run(args, work)
        return result
    except KeyboardInterrupt:
        say("interrupted; everything it started is stopped and removed")
        return 130
    finally:
        if result == 0:
            shutil.rmtree(work, ignore_errors=True)
        else:
            say(f"logs kept in {work}")


if __name__ == "__main__":
    sys.exit(main())
