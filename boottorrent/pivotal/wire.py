"""What the server and the pivotal tell each other, in one place.

* PivotalConfig: etc/boottorrent/pivotal.json in the pivotal's config part,
  written by the server (render.py) and read by the pivotal;
* Report: what a pivotal POSTs to the seeder's /report, which the seeder
  keeps and `boottorrent status`, the demo and the lab show, and
  ReportAnswer, the seeder's answer;
* ChainAnswer: whom a machine streams an image from (GET /chain/...).

Where things are (URL paths, the files of the config part) is paths.py's.

Standard library only: this module ships in the pivotal. VERSION changes
when a field changes meaning; each side refuses the other's data of another
version with a message saying so.
"""

from __future__ import annotations

import json
from dataclasses import MISSING, asdict, dataclass, field, fields, replace
from pathlib import Path, PurePosixPath
from typing import Any

from boottorrent.pivotal.paths import TOKEN_FILE

VERSION = 5
# "pxe" is the server's own: a machine that fetched the boot files and has
# not reported yet. "running": a qemu or exec image runs on the machine, which
# seeds it meanwhile; "exited": it ended (Report.exit_status).
PHASES = ("pxe", "pivotal", "dhcp", "downloading", "seeding", "kexec", "running", "exited",
          "failed")
OUTPUT_TAIL = 1000  # characters of an exec image's output that its reports carry
# Each machine's own token (the server's trust.py): the server puts it into
# the config part it hands that machine, beside pivotal.json; the pivotal
# (and its /stage) sends it in TOKEN_HEADER with every request to the
# server's HTTP side, never to another machine.
TOKEN_HEADER = "BootTorrent-Token"


def setting(section: str, check: str, default: int) -> Any:
    """A boottorrent.conf key that the pivotal acts on: its section, its
    configobj check and its default, declared here once (configfile.py
    builds the configspec from them)."""
    return field(default=default, metadata={"section": section, "check": check})


class Settings:
    """Base of the dataclasses whose fields made with setting() are
    boottorrent.conf keys; their other fields are not."""

    @classmethod
    def configspec(cls) -> dict[str, list[str]]:
        """The configspec lines of these settings, by section."""
        lines: dict[str, list[str]] = {}
        for f in fields(cls):  # type: ignore[arg-type]
            if "check" in f.metadata:
                lines.setdefault(f.metadata["section"], []).append(
                    f"{f.name} = {f.metadata['check'][:-1]}, default={f.default})")
        return lines

    @classmethod
    def from_sections(cls, sections: dict[str, dict[str, Any]]):
        """The settings from a validated boottorrent.conf, by section."""
        return cls(**{f.name: sections[f.metadata["section"]][f.name]
                      for f in fields(cls) if "check" in f.metadata})  # type: ignore


@dataclass(frozen=True)
class SwarmSettings(Settings):
    """The settings of the swarm, which the seeder and every pivotal share."""

    # opentracker's own interval is 30 minutes; a boot swarm re-announces
    # every few seconds, which opentracker answers at once.
    announce_interval: int = setting("tracker", "integer(min=1, max=1800)", 5)
    upload_slots: int = setting("seeder", "integer(min=2, max=10000)", 4)
    seed_time_max: int = setting("clients", "integer(min=0, max=86400)", 300)
    seed_idle_time: int = setting("clients", "integer(min=0, max=3600)", 5)
    fallback_after: int = setting("clients", "integer(min=5, max=3600)", 60)


@dataclass(frozen=True)
class Ports(Settings):
    """The port of the server's HTTP side, where iPXE, /stage and the
    pivotal ask (and, on each machine, where its pivotal serves the
    pivotal's shared parts to others, as the server redirects them)."""

    http_port: int = setting("seeder", "integer(min=1, max=65535)", 6980)


HTTP_PORT: int = Ports.http_port  # the default, for lab and bench


@dataclass(frozen=True)
class ImageSpec:
    """One image as the pivotal boots it (image.ImageRecord.spec())."""

    name: str
    torrent: str  # base64 of the torrent, with the tracker and the web seed in it
    kernel: str   # file names inside the torrent (method kexec; else "" and [])
    initrds: list[str]
    cmdline: str
    size: int
    sha256: dict[str, str]  # file name -> digest, checked before the image is booted
    method: str = "kexec"  # or qemu (its file "disk"), or exec (its file "program")
    vm: dict = field(default_factory=dict)  # qemu: format, memory, cpus, firmware, qemu_args
    # Whose signature the kernel carries ("": none), which a machine with
    # UEFI Secure Boot needs: its locked-down kernel kexecs signed kernels only.
    kernel_signer: str = ""


@dataclass(frozen=True)
class PivotalConfig:
    server: str  # the seeder's address (a BitTorrent peer only when gate.ServerGate says)
    seeder_port: int
    report_url: str
    swarm: SwarmSettings
    default_image: str | None
    mac_images: dict[str, str]
    images: dict[str, ImageSpec]
    # Words added to a machine's image command line, by MAC: its hostname
    # (systemd.hostname=) and its [machines] group's cmdline.
    mac_cmdline: dict[str, str] = field(default_factory=dict)
    # The pivotal's own files (its kernel and the base and modules parts:
    # everything but this configuration's part) as a torrent, base64, that
    # every pivotal fetches from the swarm and serves over HTTP on
    # http_port, where the server sends later machines' iPXE ("": none).
    pivotal_torrent: str = ""
    http_port: int = HTTP_PORT
    version: int = VERSION
    # This machine's own token (TOKEN_FILE), not pivotal.json's: load() reads it.
    token: str = ""

    @property
    def http_url(self) -> str:
        """The server's HTTP side (http://ADDRESS:PORT), where reports go."""
        return self.report_url.rsplit("/", 1)[0]

    def to_json(self) -> bytes:
        data = {name: value for name, value in asdict(self).items() if name != "token"}
        return (json.dumps(data, indent=1, sort_keys=True) + "\n").encode()

    @classmethod
    def load(cls, path: Path) -> PivotalConfig:
        """pivotal.json at path, with the token beside it (none: "");
        OSError or ValueError, saying what is wrong."""
        config = cls.from_json(path.read_bytes())
        try:
            token = (path.parent / PurePosixPath(TOKEN_FILE).name).read_text().strip()
        except FileNotFoundError:
            return config
        return replace(config, token=token)

    @classmethod
    def from_json(cls, text: str | bytes) -> PivotalConfig:
        """Raises ValueError, saying what is wrong, for anything else."""
        data = json.loads(text)
        if not isinstance(data, dict) or data.get("version") != VERSION:
            found = data.get("version") if isinstance(data, dict) else None
            raise ValueError(f"pivotal configuration of version {found}; this pivotal "
                             f"reads version {VERSION}: rebuild it with `boottorrent generate`")
        try:
            config = cls(**{**data, "swarm": SwarmSettings(**data["swarm"]),
                            "images": {name: ImageSpec(**spec)
                                       for name, spec in data["images"].items()}})
        except (KeyError, TypeError, AttributeError) as error:
            raise ValueError(f"pivotal configuration is incomplete: {error}") from None
        if any(name != spec.name for name, spec in config.images.items()):
            raise ValueError("pivotal configuration names an image by another's name")
        return config


@dataclass
class Report:
    """What a pivotal tells the server, once a second, and prints at the end."""

    mac: str = ""
    address: str = ""
    hostname: str = ""
    image: str = ""
    phase: str = "pivotal"  # one of PHASES
    progress: float = 0.0
    size: int = 0
    peers: int = 0
    from_server: int = 0
    from_peers: int = 0
    uploaded: int = 0
    download_rate: int = 0
    upload_rate: int = 0
    message: str = ""
    started: float = 0.0  # when the pivotal's program started (its clock)
    downloaded_at: float | None = None
    verified_at: float | None = None  # when the SHA-256 check of the files passed
    hashfails: int = 0  # pieces that failed their hash check (a bad peer or link)
    serving: str = ""  # infohash of the pivotal files this machine serves over HTTP
    exit_status: int | None = None  # of a qemu or exec image that ran here
    output: str = ""  # the end of an exec image's output, OUTPUT_TAIL characters at most
    version: int = VERSION

    def to_json(self) -> bytes:
        return json.dumps(asdict(self)).encode()

    @classmethod
    def from_dict(cls, data: dict) -> Report:
        """A report from its JSON object; unknown keys are ignored, a missing
        key takes its default, a value of the wrong type or out of its
        range (_RANGES) is a ValueError."""
        if data.get("version", VERSION) != VERSION:
            raise ValueError(f"report of version {data.get('version')}; this server reads "
                             f"version {VERSION}")
        values = {}
        for f in fields(cls):
            if f.name not in data:
                continue
            value = data[f.name]
            if not isinstance(value, _TYPES[f.type]) or isinstance(value, bool):
                raise ValueError(f"report field {f.name!r} must be {f.type}")
            if isinstance(value, (int, float)):
                low, high = _RANGES.get(f.name, (0, COUNT_MAX))
                if not low <= value <= high:  # also False for NaN
                    raise ValueError(f"report field {f.name!r} must be from {low} to {high}")
            values[f.name] = value
        if values.get("phase", "pivotal") not in PHASES:
            raise ValueError(f"report phase {values['phase']!r} is none of {', '.join(PHASES)}")
        return cls(**values)


@dataclass(frozen=True)
class ReportAnswer:
    """The server's answer to a report: when to report next (seconds), and
    how many machines are on their way to the swarm (Swarm.seed waits for
    them) and wait for the pivotal's shared parts (Swarm shares them);
    None where an answer does not say."""

    interval: float | None
    coming: int | None = None
    waiting: int | None = None

    def to_json(self) -> bytes:
        return json.dumps(asdict(self)).encode()

    @classmethod
    def from_json(cls, text: bytes) -> ReportAnswer:
        """ValueError for anything but a JSON object; a value of the wrong
        type reads as None."""
        data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError("a report's answer is a JSON object")
        interval = data.get("interval")
        return cls(interval=float(interval) if _number(interval, (int, float)) else None,
                   **{key: data[key] if _number(data.get(key), int) else None
                      for key in ("coming", "waiting")})


# The chain's answer's source for the server itself.
CHAIN_SERVER = ""


@dataclass(frozen=True)
class ChainAnswer:
    """Whom a machine streams a torrent's bytes from: "ADDRESS:PORT" of
    another machine's relay, or CHAIN_SERVER."""

    source: str

    def to_json(self) -> bytes:
        return json.dumps(asdict(self)).encode()

    @classmethod
    def from_json(cls, text: bytes) -> ChainAnswer:
        data = json.loads(text)
        if not isinstance(data, dict) or not isinstance(data.get("source"), str):
            raise ValueError("a chain's answer is a JSON object with a source")
        return cls(data["source"])


def _number(value: Any, kinds: type | tuple[type, ...]) -> bool:
    return isinstance(value, kinds) and not isinstance(value, bool)


# The numbers a report may carry: byte counts, rates and peers from 0 to
# what a 64-bit counter holds (a 400-digit integer broke `boottorrent
# status`, a negative one showed as -931322.6 GiB, and NaN or Infinity made
# /status JSON that strict parsers refuse); the others here.
COUNT_MAX = (1 << 63) - 1
TIME_MAX = 1e11  # seconds since 1970, for the times a pivotal's clock gives
_RANGES = {"progress": (0.0, 1.0), "exit_status": (-255, 255), "started": (0.0, TIME_MAX),
           "downloaded_at": (0.0, TIME_MAX), "verified_at": (0.0, TIME_MAX)}
_TYPES = {"str": (str,), "int": (int,), "float": (int, float),
          "float | None": (int, float, type(None)), "int | None": (int, type(None))}
assert all(f.type in _TYPES for f in fields(Report))
assert all(f.default is not MISSING for f in fields(SwarmSettings))
