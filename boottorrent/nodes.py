"""Each machine's own files: its identity and the admin's templates,
rendered for it, sent to it alone.

A machine listed in [machines] has an identity the server makes once and
keeps in the state folder (NODES/MAC/, made by `boottorrent generate`, root's
and the seeder's group's only, since the seeder sends it): SSH host keys of
each type Debian's openssh-server makes, and a machine ID. Machines that
are no longer listed keep theirs (an admin who lists one again gets the
same keys back); nothing here deletes one.

The admin's templates are the files under /etc/boottorrent/TEMPLATES/, each
rendered with jinja2 for each machine to the path it has in that folder
(node-files/etc/motd becomes /etc/motd), with the file's permission bits.
Their variables are the machine's [machines] settings: name (its hostname,
"" when its group sets none), mac, index (its place in its group's macs,
from 1), group ("" for a `MAC = image` line), image (the image [machines]
maps it to), and address (the address it booted with). Reading the
configuration checks them, rendering each for every listed machine;
`generate` writes them into the snapshot with the machines
(SNAPSHOT_FILE), and the seeder renders them again for each boot, with
its address.

What a machine gets (NodeFiles.part): /etc/hostname and /etc/hosts for its
name, its machine ID and host keys, then the templates (which may replace
any of those). The seeder sends them with the machine's config part
(web.py), after its token, under paths.NODE, to the machine whose MAC it
is alone (trust.neighbour_mac); the pivotal lays them into the image
(pivotal/node.py).
"""

from __future__ import annotations

import grp
import json
import os
import secrets
import stat
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path, PurePosixPath

import jinja2

from boottorrent.configfile import ConfigError
from boottorrent.fsutil import remove_tree, write_atomic
from boottorrent.pivotal import newc, paths
from boottorrent.pivotal.command import run
from boottorrent.progress import Progress
from boottorrent.trust import SEEDER_GROUP

NODES = "nodes"  # in the state folder: one folder of each machine's identity, by MAC
TEMPLATES = "node-files"  # in /etc/boottorrent
SNAPSHOT_FILE = "nodes.json"  # in a snapshot: the listed machines and the templates
KEY_TYPES = ("rsa", "ecdsa", "ed25519")  # as openssh-server's postinst makes them
MACHINE_ID = "machine-id"
# Rendered for every listed machine when generate checks the templates:
# the address it will boot with is known only then (RFC 5737's).
CHECK_ADDRESS = "192.0.2.1"
TEMPLATE_MAX = 1 << 20  # bytes of one template


@dataclass(frozen=True)
class Node:
    """A machine [machines] lists: what its templates are rendered with."""

    mac: str
    image: str
    name: str = ""  # its hostname ([machines] hostname), "" for none
    group: str = ""  # its [[group]], "" for a `MAC = image` line
    index: int = 1  # its place in its group's macs, from 1

    def variables(self, address: str) -> dict[str, str | int]:
        return {**asdict(self), "address": address}


def identity_folder(state_root: Path, mac: str) -> Path:
    return state_root / NODES / mac.replace(":", "")


def make_identities(state_root: Path, nodes: list[Node], stream) -> int:
    """Make the identity of every machine that has none (ssh-keygen, a
    machine ID), each written beside and renamed into place; how many. On
    every core at once: an RSA key takes ssh-keygen about a second."""
    missing = [node for node in nodes if not identity_folder(state_root, node.mac).is_dir()]
    if not missing:
        return 0
    top = state_root / NODES
    top.mkdir(mode=0o750, exist_ok=True)
    _seeder_may_read(top, 0o750)
    progress = Progress("SSH host keys (ssh-keygen)", len(missing), stream, unit="machines")
    with ThreadPoolExecutor(os.cpu_count()) as pool:
        for done, _ in enumerate(pool.map(lambda node: _make_identity(top, node), missing), 1):
            progress.update(done)
    progress.close()
    return len(missing)


def _make_identity(top: Path, node: Node) -> None:
    final = identity_folder(top.parent, node.mac)
    work = top / f".new-{final.name}"
    remove_tree(work)  # a killed generate's
    work.mkdir(mode=0o750)
    try:
        for kind in KEY_TYPES:
            run(["ssh-keygen", "-q", "-t", kind, "-N", "", "-C", f"root@{node.mac}",
                 "-f", str(work / f"ssh_host_{kind}_key")])
        (work / MACHINE_ID).write_text(secrets.token_hex(16) + "\n")
        for path in work.iterdir():
            _seeder_may_read(path, 0o640)
        _seeder_may_read(work, 0o750)
        os.rename(work, final)
    except BaseException:
        remove_tree(work)
        raise


def _seeder_may_read(path: Path, mode: int) -> None:
    path.chmod(mode)
    try:
        os.chown(path, 0, grp.getgrnam(SEEDER_GROUP).gr_gid)
    except (KeyError, PermissionError):
        pass  # no such group, or not root: a seeder run as its owner (the lab)


def identity_files(folder: Path) -> dict[str, tuple[bytes, int]]:
    """A machine's identity as files of its root (path: bytes, mode)."""
    files = {f"etc/{MACHINE_ID}": ((folder / MACHINE_ID).read_bytes(), 0o444)}
    for kind in KEY_TYPES:
        key = f"ssh_host_{kind}_key"
        files[f"etc/ssh/{key}"] = ((folder / key).read_bytes(), 0o600)
        files[f"etc/ssh/{key}.pub"] = ((folder / f"{key}.pub").read_bytes(), 0o644)
    return files


def name_files(name: str) -> dict[str, tuple[bytes, int]]:
    """/etc/hostname and /etc/hosts for a machine named name, as Debian's
    installer writes them for a machine whose address DHCP gives."""
    hosts = (f"127.0.0.1\tlocalhost\n127.0.1.1\t{name}\n\n"
             "::1\tlocalhost ip6-localhost ip6-loopback\nff02::1\tip6-allnodes\n"
             "ff02::2\tip6-allrouters\n")
    return {"etc/hostname": (f"{name}\n".encode(), 0o644), "etc/hosts": (hosts.encode(), 0o644)}


class Templates:
    """The admin's templates: by target path, the source and its mode."""

    def __init__(self, folder: Path, files: dict[str, tuple[str, int]]):
        self.folder = folder
        self.files = files
        self._environment = jinja2.Environment(undefined=jinja2.StrictUndefined,
                                               keep_trailing_newline=True, autoescape=False)
        self._compiled = {}
        for target, (source, _) in files.items():
            try:
                self._compiled[target] = self._environment.from_string(source)
            except jinja2.TemplateSyntaxError as error:
                raise ConfigError(folder / target, f"line {error.lineno}: {error.message}") \
                    from None

    @classmethod
    def load(cls, folder: Path) -> Templates:
        """The templates under folder (none when it is not there);
        ConfigError naming a file that cannot be one."""
        files: dict[str, tuple[str, int]] = {}
        if not folder.is_dir():
            return cls(folder, files)
        for top, dirs, names in os.walk(folder):
            dirs.sort()
            inside = PurePosixPath(Path(top).relative_to(folder))
            for name in sorted(dirs + names):
                path = Path(top) / name
                info = path.lstat()
                if stat.S_ISDIR(info.st_mode):
                    continue
                if not stat.S_ISREG(info.st_mode):
                    raise ConfigError(path, "not a regular file or folder (a template is a "
                                      "file, rendered to its path below this folder)")
                elif info.st_size > TEMPLATE_MAX:
                    raise ConfigError(path, f"larger than {TEMPLATE_MAX >> 20} MiB")
                else:
                    try:
                        source = path.read_text()
                    except (OSError, UnicodeDecodeError) as error:
                        raise ConfigError(path, f"cannot read it as text: {error}") from None
                    files[str(inside / name)] = (source, info.st_mode & 0o7777)
        return cls(folder, files)

    def render(self, node: Node, address: str) -> dict[str, tuple[bytes, int]]:
        """Every template for node at address; ConfigError naming the
        template that fails."""
        rendered = {}
        for target, template in self._compiled.items():
            try:
                text = template.render(node.variables(address))
            except jinja2.TemplateError as error:
                raise ConfigError(self.folder / target, f"for {node.mac}: {error}") from None
            rendered[target] = (text.encode(), self.files[target][1])
        return rendered

    def check(self, nodes: list[Node]) -> None:
        """Render every template for every machine; ConfigError on the first that fails."""
        for node in nodes:
            self.render(node, CHECK_ADDRESS)


def write_snapshot_file(machines: list[Node], templates: Templates | None, path: Path) -> None:
    """The listed machines and the templates, for the seeder (SNAPSHOT_FILE:
    a template may hold what only root and the seeder may read)."""
    files = templates.files if templates else {}
    data = {"machines": {node.mac: asdict(node) for node in machines},
            "files": {target: {"source": source, "mode": mode}
                      for target, (source, mode) in files.items()}}
    write_atomic(path, json.dumps(data, indent=1, sort_keys=True) + "\n", mode=0o640)
    _seeder_may_read(path, 0o640)


class NodeFiles:
    """What the seeder sends each listed machine: from a snapshot (its
    machines and templates) and the state folder (their identities)."""

    def __init__(self, snapshot: Path, state_root: Path):
        self.state_root = state_root
        try:
            data = json.loads((snapshot / SNAPSHOT_FILE).read_text())
        except FileNotFoundError:
            data = {"machines": {}, "files": {}}  # a snapshot from before it
        self.nodes = {mac: Node(**fields) for mac, fields in data["machines"].items()}
        self.templates = Templates(snapshot / SNAPSHOT_FILE, {
            target: (file["source"], file["mode"]) for target, file in data["files"].items()})

    def part(self, mac: str, address: str) -> bytes:
        """The node part of the machine with this MAC at address (b"" for a
        machine not listed); OSError or ConfigError when it cannot be made."""
        node = self.nodes.get(mac)
        if node is None:
            return b""
        files = identity_files(identity_folder(self.state_root, mac))
        if node.name:
            files.update(name_files(node.name))
        files.update(self.templates.render(node, address))
        return newc.archive({f"{paths.NODE}/{path}": file for path, file in files.items()},
                            {paths.NODE: 0o700})
