"""What each `boottorrent` command does (cli.py parses the command line
and turns the errors these raise into one line and an exit status)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from boottorrent import render, secureboot
from boottorrent.config import Config, all_problems, default_image, load_config, unconfigured
from boottorrent.configfile import ConfigError
from boottorrent.generate import regenerate
from boottorrent.imageconf import check_image_name
from boottorrent.initramfs import kernel
from boottorrent.pivotal import command, paths
from boottorrent.pivotal.console import human_bytes
from boottorrent.registration import (NewImage, add_image, remove_image, sync_images,
                                      sync_mirror)
from boottorrent.registry import State

EXIT_FAILURE = 1  # the work failed (disk full, a service error)
EXIT_BAD_INPUT = 2  # the configuration or the command line is wrong


class BadInput(Exception):
    """A mistake on the command line, reported like a configuration error."""


def _not_a_follower(config: Config) -> None:
    """Refuse to register or remove an image on a follower (mirror.py)."""
    if config.primary:
        raise ConfigError(config.path, f"this server follows {config.primary}: its images are "
                          "the primary's; register or remove them there", ("follow",), "primary")


def cmd_add_image(args: argparse.Namespace) -> int:
    config = load_config(args.config_dir)
    _not_a_follower(config)
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
    _not_a_follower(config)
    state = State(args.state_dir)
    remove_image(config, args.config_dir, state, args.name)
    print(f"{args.name}: removed")
    print(_default_line(config, default_image(config, list(state.registry()))))
    reload_services()
    return 0


def cmd_sync_images(args: argparse.Namespace) -> int:
    config = load_config(args.config_dir)
    if config.primary:
        print(f"this server follows {config.primary}: its images come from there "
              "(boottorrent-follow.service); images.d/ is not read")
        for line in sync_mirror(config, State(args.state_dir)):
            print(line)
        return 0
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
    state = State(args.state_dir)
    records = state.registry()
    registered = list(records)
    config, problems, described = all_problems(args.config_dir, registered)
    for problem in problems:
        print(f"boottorrent: {problem}", file=sys.stderr)
    if problems:
        return EXIT_BAD_INPUT
    assert config
    print(f"configuration OK: {len(described)} images described, {len(registered)} registered")
    print(_default_line(config, default_image(config, registered)))
    for line in secureboot.check_lines(config.secure_boot, config.pivotal_kernel, records,
                                       render.kernel_signers(state, records)):
        print(line)
    return 0


def cmd_configured(args: argparse.Namespace) -> int:
    reason = unconfigured(args.config_dir, args.follower)
    if reason is None:
        return 0
    print(f"boottorrent: {reason}", file=sys.stderr)
    return EXIT_FAILURE


def cmd_follow(args: argparse.Namespace) -> int:
    from boottorrent import mirror, seeder

    config = load_config(args.config_dir)
    if not config.primary:
        raise ConfigError(config.path, "not set: name the server to follow, "
                          "http://ADDRESS:PORT", ("follow",), "primary")
    seeder.setup_logging("boottorrent-follow")
    return mirror.run(config, State(args.state_dir))


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
            for path in (paths.KERNEL, *paths.INITRDS, *shared)}
    nic_parts = sorted(p.stat().st_size for p in (boot / paths.NICS).glob("*.cpio.zst"))
    for name, bytes_ in sorted(size.items(), key=lambda item: item[0] != "vmlinuz"):
        print(f"{name:<18} {human_bytes(bytes_):>10}")
    if nic_parts:
        print(f"{paths.NICS.split('/')[-1] + '/':<18} {len(nic_parts)} parts, one "
              f"NIC's drivers each: {human_bytes(nic_parts[0])} to {human_bytes(nic_parts[-1])}")
    # What every machine loads from the server itself, and what from the machines.
    modules = Path(paths.MODULES_PART).name
    own = sum(size[Path(p).name] for p in (paths.KERNEL, *paths.INITRDS)
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
    if args.json:
        print(json.dumps(current, indent=1))
    else:
        print(status.format_status(current))
        if config.page_url:
            print(f"\nlive in a browser: {config.page_url}")
    return 0


def reload_services() -> None:
    """Make running services pick up a new snapshot; nothing if none runs."""
    if not Path("/run/systemd/system").is_dir():
        return
    command.run(["systemctl", "--no-block", "try-reload-or-restart",
                 "boottorrent-seeder.service", "boottorrent-tracker.service"], check=False)
