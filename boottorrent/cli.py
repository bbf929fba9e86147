"""The `boottorrent` and `boottorrent-add-image` commands."""

from __future__ import annotations

import argparse
import errno
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

from boottorrent import __version__, render
from boottorrent.config import (Config, all_problems, default_image, load_config,
                                unconfigured)
from boottorrent.configfile import ConfigError
from boottorrent.imageconf import check_image_name
from boottorrent.generate import regenerate
from boottorrent.initramfs import kernel
from boottorrent.pivotal.console import human_bytes
from boottorrent.registration import NewImage, add_image, remove_image, sync_images
from boottorrent.registry import State, StateError

EXIT_FAILURE = 1  # the work failed (disk full, a service error)
EXIT_BAD_INPUT = 2  # the configuration or the command line is wrong

FILES_AND_ENVIRONMENT = """\
files:
  /etc/boottorrent/boottorrent.conf
                           server configuration, see boottorrent.conf(5)
  /etc/boottorrent/images.d/NAME.conf
                           one file per image
  /var/lib/boottorrent/    registered images, torrents, generated files
  /var/cache/boottorrent/  the pivotal's parts, built from this server's packages

environment:
  BOOTTORRENT_CONFIG_DIR   default for --config-dir
  BOOTTORRENT_STATE_DIR    default for --state-dir

exit status:
  0 success, 1 the work failed (nothing was changed), 2 bad input or
  configuration (one line names the file, section and key; nothing was changed)
"""


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """argparse measures the command names at their parent's indent, two
    columns short of where it prints them: a long name's summary then goes
    on a line of its own, which help2man misreads. Count the two columns."""

    def add_argument(self, action: argparse.Action) -> None:
        super().add_argument(action)
        if isinstance(action, argparse._SubParsersAction):
            self._action_max_length += 2


class BadInput(Exception):
    """A mistake on the command line, reported like a configuration error."""


def _common_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config-dir", type=Path, metavar="DIR",
        default=Path(os.environ.get("BOOTTORRENT_CONFIG_DIR", "/etc/boottorrent")),
        help="configuration folder (default: %(default)s)")
    parser.add_argument(
        "--state-dir", type=Path, metavar="DIR",
        default=Path(os.environ.get("BOOTTORRENT_STATE_DIR", "/var/lib/boottorrent")),
        help="state folder (default: %(default)s)")


def _add_image_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", metavar="NAME",
                        help="image name: ASCII letters, digits, '.', '_', '-'")
    parser.add_argument("--kernel", type=Path, metavar="FILE",
                        help="the image's kernel; writes images.d/NAME.conf from these options")
    parser.add_argument("--initrd", type=Path, metavar="FILE", action="append", default=[],
                        help="an initramfs; repeat for several, loaded in this order")
    parser.add_argument("--rootfs", type=Path, metavar="DIR",
                        help="build the image from a root file system tree (a chroot with a "
                        "kernel, initramfs-tools and live-boot) instead of --kernel and "
                        "--initrd; writes images.d/NAME.conf")
    parser.add_argument("--cmdline", default="", metavar="TEXT",
                        help="the image's kernel command line")
    parser.add_argument("--description", default="", metavar="TEXT",
                        help="one line shown in the boot menu")
    _common_options(parser)


ADD_IMAGE_DESCRIPTION = """\
Register an image: copy its kernel and initramfs files into the state folder,
record their sizes and SHA-256, create its BitTorrent torrent, then regenerate
everything derived from the registry (tracker whitelist, dnsmasq and iPXE
configuration, the pivotal's configuration) and reload running services.

Without --kernel or --rootfs, the image is read from
/etc/boottorrent/images.d/NAME.conf. With either, that file is written from
the options and the image registered; it must not exist yet.

With --rootfs DIR (images.d: rootfs = DIR) the image is built from a root
file system tree, e.g. made with mmdebstrap or debootstrap, that has a
kernel (linux-image-amd64), initramfs-tools and live-boot installed: the
tree's newest kernel, the tree packed as a squashfs (mksquashfs, zstd) in an
initrd of its own, and the tree's initramfs. The machine runs the tree from
RAM: live-boot mounts the squashfs under a tmpfs overlay (--cmdline adds to
"boot=live live-media=/boottorrent"). /proc, /sys, /dev, /run, /tmp and
/boot's kernels and initramfs files are left out, and so are other file
systems mounted in the tree. The build is kept under the tree's
fingerprint (every entry's path, type, mode, owner, size, mtime and link
target): registering an unchanged tree again only walks it, and a changed
one gets a new build and a new torrent.

An image's method says how machines boot it: kexec (a kernel, initramfs
files and a command line: the pivotal kexecs into it; the only method the
options above describe), qemu (a raw or qcow2 disk that the pivotal runs as
a virtual machine on the node, with the server's QEMU) or exec (a program
and its files that the pivotal runs; its exit status and the end of its
output show in `boottorrent status`). Describe qemu and exec images in
images.d/NAME.conf (the example file shows every key). With qemu and exec
the machine keeps seeding the image while it runs.

Registering an unchanged image again does nothing. If a file changed (same
path, new content), the image gets a new torrent. On any error, nothing is
changed."""

ADD_IMAGE_EPILOG = """\
examples:
  boottorrent-add-image compute --kernel /boot/vmlinuz-6.1.0-27-amd64 \\
      --initrd /boot/initrd.img-6.1.0-27-amd64 --cmdline "root=/dev/ram0 quiet"
  boottorrent-add-image compute        # again, after editing images.d/compute.conf
  mmdebstrap --include=linux-image-amd64,live-boot,systemd-sysv bookworm /srv/trees/node
  boottorrent-add-image node --rootfs /srv/trees/node --cmdline "quiet"
  boottorrent-add-image burn-in        # images.d/burn-in.conf: method = exec, program = ...

""" + FILES_AND_ENVIRONMENT


def _wrap(text: str) -> str:
    """Fill each paragraph to the terminal width argparse would use."""
    return "\n\n".join(textwrap.fill(" ".join(p.split()), 78) for p in text.split("\n\n"))


def _command(commands, name: str, run, summary: str, description: str,
             epilog: str = FILES_AND_ENVIRONMENT) -> argparse.ArgumentParser:
    command = commands.add_parser(name, help=summary, description=_wrap(description),
                                  epilog=epilog,
                                  formatter_class=HelpFormatter)
    command.set_defaults(run=run)
    return command


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="boottorrent", formatter_class=HelpFormatter,
        description=_wrap("""Network boot of a cluster over BitTorrent.

            A BootTorrent server answers PXE clients (dnsmasq), runs a tracker
            (opentracker) and seeds every registered image (the seeder). Clients
            load the pivotal, a small Linux that downloads the image from the
            server and from each other, then kexecs into it (or runs it as a VM
            or a program, seeding it meanwhile)."""),
        epilog=FILES_AND_ENVIRONMENT)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    add = _command(commands, "add-image", cmd_add_image,
                   "register an image (same as boottorrent-add-image)",
                   ADD_IMAGE_DESCRIPTION, ADD_IMAGE_EPILOG)
    _add_image_arguments(add)

    remove = _command(commands, "remove-image", cmd_remove_image,
                      "unregister an image, delete the file add-image wrote",
                      """Unregister an image, delete the images.d/NAME.conf that add-image
                      wrote and regenerate. The image's files are deleted once no service
                      uses them. A NAME.conf you wrote yourself is yours to delete:
                      remove-image refuses until it is gone.""")
    remove.add_argument("name", metavar="NAME")

    _command(commands, "sync-images", cmd_sync_images,
             "register and unregister images as images.d/ says",
             """Make the registry follow /etc/boottorrent/images.d/: register each
             NAME.conf that is new or changed since its image was registered (as
             add-image NAME would) and unregister each image whose file is gone. A
             file with a problem
             is named, one line, and skipped: its image, if registered, keeps serving
             as it was, and the other files are synced (exit status 2).
             boottorrent.service runs this at each start and reload, and
             boottorrent-images.path reloads it whenever images.d/ changes: by hand,
             `systemctl reload boottorrent` does the same and reloads the services.""")

    _command(commands, "list", cmd_list, "list registered images",
             "List registered images: name, size, infohash, registration time.")

    _command(commands, "generate", cmd_generate,
             "regenerate the files made from configuration and registry",
             """Regenerate the dnsmasq and tracker configuration, the iPXE script,
             the torrents' tracker URLs and the pivotal from the configuration and
             the registry, atomically. boottorrent.service runs this at start and
             reload.""")

    _command(commands, "check", cmd_check, "validate the whole configuration",
             """Validate boottorrent.conf and every images.d file; print every
             problem, one line each; exit 2 if there is any.""")

    _command(commands, "configured", cmd_configured,
             "exit 1 if the server is not configured (ExecCondition=)",
             """Exit 1, with one line saying so, if [server] interface is not set (the
             server as installed, which is meant to serve nothing); else exit 0, also
             for a configuration with mistakes, which generate and check name. The
             units' ExecCondition= runs this, so that an unconfigured server is a
             skipped unit ("condition failed") rather than a failed one.""")

    _command(commands, "build-pivotal", cmd_build_pivotal,
             "build the pivotal and show its size",
             """Build the pivotal's parts from this server's own packages (the base:
             busybox, kexec, python, libtorrent and the pivotal program; the kernel
             part from [pivotal] kernel; QEMU's while an image uses it; the
             configuration part), regenerate, and print the network drivers that went
             in, a warning for each driver whose firmware this server lacks, and the
             size of each part. add-image and generate do this too, reusing every part
             whose inputs did not change.""")

    _command(commands, "seeder", cmd_seeder,
             "run the seeder daemon (boottorrent-seeder.service)",
             """Seed every registered image with libtorrent and serve the boot files,
             the images (web seed) and the status endpoint over HTTP. SIGHUP re-reads
             the registry. Meant to run under systemd (Type=notify).""")

    status = _command(commands, "status", cmd_status, "show images, swarm and clients",
                      """Per image: seeds, leechers, peers and bytes sent by the server.
                      Per client that reported: MAC, address, image, phase, progress,
                      peers, and bytes from the server and from peers; for a qemu or
                      exec image that runs or ran on a machine, its exit status and the
                      end of a program's output. Asks the running seeder.""")
    status.add_argument("--json", action="store_true", help="print the raw JSON")

    for command in commands.choices.values():
        if command is not add:
            _common_options(command)
    return parser


def add_image_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="boottorrent-add-image", description=_wrap(ADD_IMAGE_DESCRIPTION),
        epilog=ADD_IMAGE_EPILOG, formatter_class=HelpFormatter)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    _add_image_arguments(parser)
    parser.set_defaults(run=cmd_add_image)
    return parser


# ---------------------------------------------------------------- commands

def cmd_add_image(args: argparse.Namespace) -> int:
    config = load_config(args.config_dir)
    try:
        name = check_image_name(args.name)
    except ValueError as error:
        raise BadInput(str(error)) from None
    new = None
    if args.rootfs and (args.kernel or args.initrd):
        raise BadInput("--rootfs builds the kernel and initramfs from the tree: "
                       "give it without --kernel and --initrd")
    if args.kernel or args.rootfs:
        new = NewImage(args.kernel and args.kernel.absolute(),
                       [p.absolute() for p in args.initrd], args.cmdline, args.description,
                       args.rootfs and args.rootfs.absolute())
    elif args.initrd or args.cmdline or args.description:
        raise BadInput("--initrd, --cmdline and --description go with --kernel or --rootfs")
    result = add_image(config, args.config_dir, State(args.state_dir), name, new, sys.stderr)
    record = result.record
    if result.action == "unchanged":
        print(f"{name}: unchanged, infohash {record.infohash}")
    else:
        print(f"{name}: {result.action}, {human_bytes(record.size)} in {len(record.files)} "
              f"files, piece size {human_bytes(record.piece_size)}, infohash {record.infohash}")
        reload_services()
    print(_default_line(config, result.default_image))
    return 0


def _default_line(config: Config, image: str | None) -> str:
    if image is None:
        return "default image: none (no image is registered)"
    if config.default_image:
        return f"default image: {image} ([boot] default_image)"
    return (f"default image: {image} (the first registered; set [boot] default_image in "
            f"{config.path} to choose another)")


def cmd_remove_image(args: argparse.Namespace) -> int:
    config = load_config(args.config_dir)
    state = State(args.state_dir)
    remove_image(config, args.config_dir, state, args.name)
    print(f"{args.name}: removed")
    print(_default_line(config, default_image(config, list(state.registry()))))
    reload_services()
    return 0


def cmd_sync_images(args: argparse.Namespace) -> int:
    config = load_config(args.config_dir)
    synced = sync_images(config, args.config_dir, State(args.state_dir), sys.stderr)
    for line in synced.changes:
        print(line)
    for problem in synced.problems:
        print(f"boottorrent: {problem}; skipped", file=sys.stderr)
    if not synced.changes and not synced.problems:
        print("images.d and the registry agree")
    return EXIT_BAD_INPUT if synced.problems else 0


def cmd_list(args: argparse.Namespace) -> int:
    records = State(args.state_dir).registry()
    if not records:
        print("no images registered")
        return 0
    rows = [("NAME", "SIZE", "INFOHASH", "REGISTERED")] + [
        (r.name, human_bytes(r.size), r.infohash, r.registered)
        for r in sorted(records.values(), key=lambda r: r.name)]
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    config = load_config(args.config_dir)
    state = State(args.state_dir)
    with state.transaction():
        snapshot = regenerate(config, state, state.registry())
    print(f"generated {snapshot}")
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    registered = list(State(args.state_dir).registry())
    config, problems, described = all_problems(args.config_dir, registered)
    for problem in problems:
        print(f"boottorrent: {problem}", file=sys.stderr)
    if problems:
        return EXIT_BAD_INPUT
    assert config
    print(f"configuration OK: {len(described)} images described, {len(registered)} registered")
    print(_default_line(config, default_image(config, registered)))
    return 0


def cmd_configured(args: argparse.Namespace) -> int:
    reason = unconfigured(args.config_dir)
    if reason is None:
        return 0
    print(f"boottorrent: {reason}", file=sys.stderr)
    return EXIT_FAILURE


def cmd_build_pivotal(args: argparse.Namespace) -> int:
    config = load_config(args.config_dir)
    state = State(args.state_dir)
    with state.transaction():
        snapshot = regenerate(config, state, state.registry())
    kernel_part = kernel.build_kernel_part(config.pivotal_kernel, state.cache,  # cached
                                           kvm=render.uses_qemu(state.registry()))
    print(f"kernel {kernel_part.version}, {len(kernel_part.drivers)} network drivers: "
          + " ".join(kernel_part.drivers))
    for warning in kernel_part.warnings():
        print(warning)
    boot = snapshot / "boot"
    shared = render.pivotal_shared(state.registry())
    size = {Path(path).name: (boot / path).stat().st_size
            for path in (render.PIVOTAL_KERNEL, *render.PIVOTAL_INITRDS, *shared)}
    nic_parts = sorted(p.stat().st_size for p in (boot / render.PIVOTAL_NICS).glob("*.cpio.zst"))
    for name, bytes_ in sorted(size.items(), key=lambda item: item[0] != "vmlinuz"):
        print(f"{name:<18} {human_bytes(bytes_):>10}")
    if nic_parts:
        print(f"{render.PIVOTAL_NICS.split('/')[-1] + '/':<18} {len(nic_parts)} parts, one "
              f"NIC's drivers each: {human_bytes(nic_parts[0])} to {human_bytes(nic_parts[-1])}")
    # What every machine loads from the server itself, and what from the machines.
    modules = Path(render.PIVOTAL_INITRDS[1]).name
    own = sum(size[Path(p).name] for p in (render.PIVOTAL_KERNEL, *render.PIVOTAL_INITRDS)
              if Path(p).name != modules)
    smallest = own + (nic_parts[0] if nic_parts else size[modules])
    print(f"per machine from the server: {human_bytes(smallest)} to "
          f"{human_bytes(own + size[modules])}, by its NIC")
    print("per machine from the machines or the server, checked: "
          + human_bytes(sum(size[Path(p).name] for p in shared)))
    return 0


def cmd_seeder(args: argparse.Namespace) -> int:
    from boottorrent import seeder

    config = load_config(args.config_dir)
    state = State(args.state_dir)
    if not state.current.is_symlink():
        raise BadInput(f"{state.current}: nothing generated yet; run `boottorrent generate`")
    state.registry()  # StateError if it names a snapshot that is not there
    return seeder.run(config, state)


def cmd_status(args: argparse.Namespace) -> int:
    from boottorrent import status

    config = load_config(args.config_dir)
    try:
        current = status.fetch(config.http_url)
    except OSError as error:
        print(f"boottorrent: the seeder at {config.http_url} does not answer "
              f"({getattr(error, 'reason', error)}); is boottorrent-seeder running?",
              file=sys.stderr)
        return EXIT_FAILURE
    try:
        current = status.with_tracker_counts(current, config.tracker_url)
    except OSError as error:
        print(f"boottorrent: the tracker at {config.tracker_url} does not answer "
              f"({getattr(error, 'reason', error)}); counts are the seeder's",
              file=sys.stderr)
    # What the server does not serve as written: a bad images.d file, for
    # one, which sync-images skipped.
    _, problems, _ = all_problems(args.config_dir, list(State(args.state_dir).registry()))
    current["problems"] = [str(problem) for problem in problems]
    print(json.dumps(current, indent=1) if args.json else status.format_status(current))
    return 0


def reload_services() -> None:
    """Make running services pick up a new snapshot; nothing if none runs."""
    if not Path("/run/systemd/system").is_dir():
        return
    subprocess.run(["systemctl", "--no-block", "try-reload-or-restart",
                    "boottorrent-seeder.service", "boottorrent-tracker.service"],
                   capture_output=True)


# ---------------------------------------------------------------- entry points

def run(parser: argparse.ArgumentParser, argv: list[str] | None) -> int:
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except (ConfigError, BadInput, StateError) as error:
        print(f"{parser.prog}: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except OSError as error:
        # A copy that failed to write names its source first, its target
        # second (shutil): name the file that could not be written.
        full = error.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS)
        path = error.filename2 if full and error.filename2 else error.filename
        where = f"{path}: " if path else ""
        print(f"{parser.prog}: {where}{error.strerror or error}; nothing was changed",
              file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        print(f"{parser.prog}: interrupted; nothing was changed", file=sys.stderr)
        return 130


def main(argv: list[str] | None = None) -> int:
    return run(build_parser(), argv)


def add_image_main(argv: list[str] | None = None) -> int:
    return run(add_image_parser(), argv)
