"""Rendering the files derived from configuration and registry.

Everything here writes into a new snapshot folder (see registry.py); nothing
is written in place. Templates live in boottorrent/templates/.
"""

from __future__ import annotations

import base64
import shutil
from pathlib import Path

from jinja2 import Environment, PackageLoader, StrictUndefined

from boottorrent import secureboot, signature, torrents
from boottorrent.config import Config, default_image, registry_problems
from boottorrent.configfile import ConfigError
from boottorrent.image import ImageRecord
from boottorrent.pivotal import paths
from boottorrent.pivotal.wire import TOKEN_HEADER, PivotalConfig
from boottorrent.registry import State

IPXE_DIR = Path("/usr/lib/ipxe")
IPXE_BINARIES = ("undionly.kpxe", "snponly.efi", "ipxe.efi")

environment = Environment(loader=PackageLoader("boottorrent"), undefined=StrictUndefined,
                          keep_trailing_newline=True, trim_blocks=True, lstrip_blocks=True)


def render(template: str, **context) -> str:
    return environment.get_template(template).render(**context)


def uses_qemu(records: dict[str, ImageRecord]) -> bool:
    return any(r.method == "qemu" for r in records.values())


def pivotal_shared(records: dict[str, ImageRecord]) -> list[str]:
    """The parts /stage fetches, checked, and every pivotal serves to the
    machines that boot after it: the base, and QEMU's part while an image's
    method is qemu."""
    return [paths.BASE] + ([paths.QEMU] if uses_qemu(records) else [])


def check_registry(config: Config, records: dict[str, ImageRecord]) -> None:
    """The first of the problems `boottorrent check` reports for this registry."""
    for problem in registry_problems(config, list(records)):
        raise problem


def ipxe_pivotal(cmdline: str) -> dict:
    """What the iPXE script loads of the pivotal, and how it starts it."""
    return {"kernel": paths.KERNEL, "stage": paths.STAGE, "cmdline": cmdline,
            "initrds": [{"path": path, "query": paths.QUERIES.get(path, "")}
                        for path in paths.INITRDS]}


def boot_context(config: Config, records: dict[str, ImageRecord], state: State,
                 default: str | None) -> dict:
    """What the dnsmasq configuration and the iPXE script are rendered from."""
    return {
        "interface": config.interface,
        "server_address": config.address,
        "dhcp_mode": config.dhcp_mode,
        "dhcp_range_start": config.range_start,
        "dhcp_range_end": config.range_end,
        "netmask": config.netmask,
        "network_address": config.network_address,
        "lease_time": f"{config.lease_time}s",
        "router": config.router,
        "dns_servers": list(config.dns_servers),
        "relayed": list(config.relayed),  # subnets.RelayedSubnet
        "tftp_root": str(state.current / "boot"),
        "lease_file": str(state.root / "dnsmasq" / "leases"),
        "http_url": config.http_url,
        "ipxe_script": "boot.ipxe",
        "pivotal": ipxe_pivotal(config.pivotal_cmdline),
        "images": [{"name": r.name, "description": r.description or r.name}
                   for r in sorted(records.values(), key=lambda r: r.name)],
        "default_image": default or "",
        "menu_timeout": config.menu_timeout,
        "mac_images": dict(sorted(config.mac_images.items())),
        "secure_boot": config.secure_boot,
        "shim": secureboot.SHIM_NAME,
        "ram_disk": secureboot.RAM_DISK,
    }


def web_seed(config: Config, record: ImageRecord) -> str:
    """The image's URL on the seeder's HTTP side (BEP 19): the folder, to
    which clients add NAME/FILE, or for a one-file image the file itself."""
    folder = f"{config.http_url}/images/{record.infohash}/"
    return folder if len(record.files) > 1 else f"{folder}{record.name}/{record.files[0].name}"


def full_torrent(config: Config, state: State, record: ImageRecord) -> bytes:
    path = state.torrent_path(record.infohash)
    try:
        info = torrents.read_checked(path, record.infohash)
    except ValueError as error:
        raise ConfigError(path, f"corrupt torrent of image {record.name!r} ({error}); "
                          f"`boottorrent-add-image {record.name}` stores it again") from None
    return torrents.with_urls(info, config.tracker_url, web_seed(config, record))


def kernel_signers(state: State, records: dict[str, ImageRecord]) -> dict[str, str | None]:
    """Whose signature each kexec image's kernel carries, by image ("":
    none; None: no EFI stub, so no place for one)."""
    signers: dict[str, str | None] = {}
    for record in records.values():
        if record.method == "kexec":
            try:
                signers[record.name] = signature.kernel_signer(
                    state.content_dir(record.infohash) / record.name / record.kernel.name)
            except ValueError:
                signers[record.name] = None
    return signers


def pivotal_config(config: Config, records: dict[str, ImageRecord],
                   torrents_by_name: dict[str, bytes], pivotal_torrent: bytes,
                   signers: dict[str, str | None]) -> PivotalConfig:
    """What the pivotal needs to know; shipped as etc/boottorrent/pivotal.json."""
    return PivotalConfig(
        server=config.address,
        seeder_port=config.seeder_port,
        report_url=f"{config.http_url}{paths.REPORT}",
        swarm=config.swarm,
        default_image=default_image(config, list(records)),
        mac_images=dict(sorted(config.mac_images.items())),
        mac_cmdline=dict(sorted(config.mac_cmdline.items())),
        images={r.name: r.spec(torrents_by_name[r.name], signers.get(r.name) or "")
                for r in sorted(records.values(), key=lambda r: r.name)},
        pivotal_torrent=base64.b64encode(pivotal_torrent).decode(),
        http_port=config.http_port)


def write_snapshot(config: Config, records: dict[str, ImageRecord], state: State,
                   snapshot: Path) -> dict[str, bytes]:
    """Write every derived file except the pivotal parts into snapshot.

    Returns each image's torrent, by name, for the pivotal's configuration.
    """
    check_registry(config, records)
    boot = snapshot / "boot"
    boot.mkdir(mode=0o755)
    default = default_image(config, list(records))
    context = boot_context(config, records, state, default)
    (snapshot / "dnsmasq.conf").write_text(render("dnsmasq.conf.j2", **context))
    (boot / "boot.ipxe").write_text(render("boot.ipxe.j2", **context))
    for binary in IPXE_BINARIES:
        shutil.copyfile(IPXE_DIR / binary, boot / binary)
    if config.secure_boot:
        secureboot.place(boot, render("grub.cfg.j2", **context))

    tracker = snapshot / "tracker"
    tracker.mkdir(mode=0o755)
    (tracker / "whitelist").write_text("".join(f"{r.infohash}\n" for r in records.values()))
    (tracker / "opentracker.conf").write_text(render(
        "opentracker.conf.j2", address=config.address, port=config.tracker_port,
        whitelist=str(state.current / "tracker" / "whitelist")))

    torrent_dir = snapshot / "torrents"
    torrent_dir.mkdir(mode=0o755)
    torrents_by_name = {r.name: full_torrent(config, state, r) for r in records.values()}
    for name, torrent in torrents_by_name.items():
        (torrent_dir / f"{name}.torrent").write_bytes(torrent)
    return torrents_by_name


def stage_config(config: Config, sha256: dict[str, str]) -> str:
    """What /stage fetches (pivotal/stage sources it): the server's boot
    URL, each shared part's path and SHA-256, and where its token is and
    how it goes to the server."""
    parts = " ".join(f"{path}={digest}" for path, digest in sha256.items())
    return ("# Written by BootTorrent: what the pivotal's /stage fetches and checks.\n"
            f"BOOT_URL={config.http_url}{paths.BOOT}\nPARTS=\"{parts}\"\n"
            f"TOKEN_FILE={paths.TOKEN_FILE}\nTOKEN_HEADER={TOKEN_HEADER}\nTRY={paths.TRY}\n"
            f"CONFIG_PART={paths.CONFIG_PART}\n")


def write_pivotal_torrent(config: Config, snapshot: Path, shared: list[str]) -> bytes:
    """The torrent of the pivotal's shared files (pivotal_shared(), already
    in snapshot/boot), into boot/pivotal.torrent, its infohash into the
    tracker's whitelist; returns the torrent."""
    boot = snapshot / "boot"
    files = [(Path(p).name, (boot / p).stat().st_size) for p in shared]
    torrent = torrents.with_urls(torrents.create(boot, "pivotal", files),
                                 config.tracker_url, f"{config.http_url}/boot/")
    (boot / paths.TORRENT).write_bytes(torrent)
    with (snapshot / "tracker" / "whitelist").open("a") as whitelist:
        whitelist.write(f"{torrents.info_hash(torrent)}\n")
    return torrent
