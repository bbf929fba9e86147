"""The pivotal's program, run as python3 -m boottorrent.pivotal by
pivotal/init: network, image, swarm, then kexec into the image (or run it
here, seeding it meanwhile: methods qemu and exec), retried ATTEMPTS times."""

from __future__ import annotations

import argparse
import faulthandler
import json
import socket
import sys
import time
from dataclasses import asdict
from pathlib import Path, PurePosixPath

from boottorrent.pivotal import ClientError, node, paths
from boottorrent.pivotal.command import CommandError
from boottorrent.pivotal.console import human_bytes, say
from boottorrent.pivotal.kexec import kexec, kexec_commands, secure_boot_refusal, verify
from boottorrent.pivotal.network import bring_up_network, kernel_parameters
from boottorrent.pivotal.report import Reporter, send_report
from boottorrent.pivotal.run import CannotRun, check_room, start
from boottorrent.pivotal.swarm import Swarm, choose_image
from boottorrent.pivotal.wire import ImageSpec, PivotalConfig, Report

CONFIG = Path("/etc/boottorrent/pivotal.json")
WORK_DIR = Path("/run/boottorrent")
ATTEMPTS = 3


def run_here(args: argparse.Namespace, config: PivotalConfig, image: ImageSpec, folder: Path,
             swarm: Swarm, report: Report) -> None:
    """Run a qemu or exec image, seeding it while it runs and then while
    others still need it."""
    running = start(image, folder, args.work_dir, report, config.server,
                    kvm_allowed=not args.no_kvm)
    swarm.seed_while(running.running)
    report.exit_status = running.wait()
    what = "its VM" if image.method == "qemu" else "its program"
    report.message = f"{what} exited with status {report.exit_status}"
    say(f"{image.name}: {report.message}")
    swarm.seed(phase="exited")
    swarm.leave()


def boot(args: argparse.Namespace, config: PivotalConfig,
         report: Report) -> list[list[str]] | None:
    """The kexec commands of the image, or None once it ran here."""
    params = kernel_parameters(Path("/proc/cmdline").read_text())
    if args.image:
        params["boottorrent.image"] = args.image
    args.work_dir.mkdir(parents=True, exist_ok=True)
    bring_up_network(params.get("BOOTIF"), report, args.work_dir)
    image = choose_image(config, params, report.mac)
    report.image = image.name
    if reason := secure_boot_refusal(image):
        raise CannotRun(reason)
    check_room(image, args.work_dir)
    reporter = Reporter(config.report_url, report, config.token)
    try:
        say(f"booting image {image.name} ({human_bytes(image.size)}) from {config.server}")
        save_path = args.work_dir / "images"
        swarm = Swarm(config, image, save_path, f"{report.address}:{args.port}", report,
                      reporter, args.work_dir / "share")
        swarm.download()
        folder = save_path / image.name
        verify(image, folder, swarm.digests)
        report.verified_at = time.time()
        if image.method != "kexec":
            run_here(args, config, image, folder, swarm, report)
            return None
        swarm.seed()
        swarm.leave()
        report.phase = "kexec"
        own = node.image_part(image, args.config.parent / PurePosixPath(paths.NODE).name)
        commands = kexec_commands(image, folder, report.mac,
                                  config.mac_cmdline.get(report.mac, ""), own)
        (args.work_dir / "summary.json").write_text(json.dumps(asdict(report), indent=1))
    finally:
        reporter.stop()
    return commands


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="boottorrent.pivotal",
        description="The pivotal's client: get an address, download the image over "
        "BitTorrent from the server and the other machines, seed it while others "
        "still need it, then kexec into it (method kexec), or run it here while "
        "seeding it: its disk under QEMU (qemu) or its program (exec). Exits with "
        "the status of a program or VM that ran.")
    parser.add_argument("--config", type=Path, default=CONFIG,
                        help="the pivotal configuration (default: %(default)s)")
    parser.add_argument("--work-dir", type=Path, default=WORK_DIR,
                        help="where the image is downloaded, in RAM (default: %(default)s)")
    parser.add_argument("--image", help="boot this image (default: from the kernel command "
                        "line, the MAC mapping, or the server's default)")
    parser.add_argument("--port", type=int, default=6881, help="BitTorrent port")
    parser.add_argument("--dry-run", action="store_true",
                        help="do everything but the kexec: print its commands instead")
    parser.add_argument("--no-kvm", action="store_true",
                        help="run a qemu image in software emulation (TCG) even where "
                        "/dev/kvm exists")
    args = parser.parse_args(argv)
    # libtorrent is C++: should it crash, the console shows where.
    faulthandler.enable()

    try:
        config = PivotalConfig.load(args.config)
    except (OSError, ValueError) as error:
        say(f"{args.config}: {error}")
        return 1
    report = Report(hostname=socket.gethostname(), started=time.time())
    for attempt in range(1, ATTEMPTS + 1):
        try:
            commands = boot(args, config, report)
            break
        except CannotRun as error:
            report.phase, report.message = "failed", str(error)
            say(f"cannot run image {report.image}: {error}")
            send_report(config.report_url, report, config.token)
            return 1
        except (ClientError, OSError, RuntimeError, CommandError) as error:
            report.phase, report.message = "failed", str(error)
            say(f"attempt {attempt} of {ATTEMPTS} failed: {error}")
            if attempt == ATTEMPTS:
                say(f"giving up after {ATTEMPTS} attempts: {error}")
                return 1
            time.sleep(5)
    if commands is None:  # the image ran here: its status (128 + N for signal N)
        status = report.exit_status or 0
        return status if status >= 0 else 128 - status
    if args.dry_run:
        for command in commands:
            print("dry run: " + " ".join(command), flush=True)
        return 0
    try:
        kexec(commands)
    except (ClientError, OSError, ValueError, CommandError) as error:
        report.phase, report.message = "failed", f"kexec failed: {error}"
        say(f"{report.message}; the image downloaded, but this machine cannot boot it")
        send_report(config.report_url, report, config.token)
    return 1


if __name__ == "__main__":
    sys.exit(main())
