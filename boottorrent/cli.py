"""The `boottorrent` and `boottorrent-add-image` commands."""

from __future__ import annotations

import argparse
import errno
import os
import sys
import textwrap
from pathlib import Path

from boottorrent import __version__
from boottorrent.commands import (EXIT_BAD_INPUT, EXIT_FAILURE, BadInput, cmd_add_image,
                                  cmd_build_pivotal, cmd_check, cmd_configured, cmd_follow,
                                  cmd_generate, cmd_list, cmd_remove_image, cmd_seeder,
                                  cmd_status, cmd_sync_images)
from boottorrent.configfile import ConfigError
from boottorrent.pivotal.command import CommandError
from boottorrent.registry import StateError


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
systems mounted in the tree and the tree's SSH host keys and machine ID:
each machine gets its own (boottorrent.conf(5), [machines]). The build is kept under the tree's
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
             `systemctl reload boottorrent` does the same and reloads the services.
             On a follower ([follow] primary) images.d/ is not read: this registers
             instead, in one new snapshot, the primary's images that `boottorrent
             follow` fetched and checked (and unregisters those the primary removed),
             as its /var/lib/boottorrent/mirror/registry.json lists them.""")

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

    configured = _command(
        commands, "configured", cmd_configured,
        "exit 1 if the server is not configured (ExecCondition=)",
        """Exit 1, with one line saying so, if [server] interface is not set (the
        server as installed, which is meant to serve nothing); else exit 0, also
        for a configuration with mistakes, which generate and check name. The
        units' ExecCondition= runs this, so that an unconfigured server is a
        skipped unit ("condition failed") rather than a failed one.""")
    configured.add_argument("--follower", action="store_true",
                            help="exit 1 also unless [follow] primary is set "
                                 "(boottorrent-follow.service)")

    _command(commands, "follow", cmd_follow,
             "mirror the primary's images (boottorrent-follow.service)",
             """On a follower ([follow] primary = URL): every 2 seconds, ask the primary
             for its registry; fetch each new image through the primary's swarm (from
             the other followers first, from the primary what none of them has), check
             every file against the registry's SHA-256, and write the registry this
             server should have to /var/lib/boottorrent/mirror/registry.json, which
             boottorrent-images.path sees: the server reloads, and `sync-images`
             registers it. While the primary cannot be reached, nothing changes: this
             server keeps booting its machines with what it holds. Meant to run under
             systemd (Type=notify), as the seeder's user.""")


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

    for parser_of in commands.choices.values():
        if parser_of is not add:
            _common_options(parser_of)
    return parser


def add_image_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="boottorrent-add-image", description=_wrap(ADD_IMAGE_DESCRIPTION),
        epilog=ADD_IMAGE_EPILOG, formatter_class=HelpFormatter)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    _add_image_arguments(parser)
    parser.set_defaults(run=cmd_add_image)
    return parser


# ---------------------------------------------------------------- entry points

def run(parser: argparse.ArgumentParser, argv: list[str] | None) -> int:
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except (ConfigError, BadInput, StateError) as error:
        print(f"{parser.prog}: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except CommandError as error:
        print(f"{parser.prog}: {error}; nothing was changed", file=sys.stderr)
        return EXIT_FAILURE
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
