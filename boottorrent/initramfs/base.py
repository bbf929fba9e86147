"""The pivotal's base part: busybox, kexec, python with the pivotal program,
their shared libraries and /init; built once and cached by its inputs."""

from __future__ import annotations

import hashlib
import tempfile
from pathlib import Path, PurePosixPath

from boottorrent.fsutil import write_atomic
from boottorrent.initramfs import PivotalError, Progress, archive, python, say
from boottorrent.initramfs.staging import Tree, shared_libraries, which
from boottorrent.pivotal.command import run

BUSYBOX = Path("/bin/busybox")  # busybox-static: no shared libraries needed

_ETC_FILES = {
    "etc/passwd": b"root:x:0:0:root:/root:/bin/sh\n",
    "etc/group": b"root:x:0:\n",
    "etc/hosts": b"127.0.0.1\tlocalhost\n::1\tlocalhost\n",
    "etc/nsswitch.conf": b"hosts: files dns\n",
}


# The shell functions /init and /stage share, where both look for them.
DRIVERS = "usr/lib/boottorrent/drivers"


def script(name: str) -> Path:
    """One of the pivotal's shell scripts (pivotal/ in the source tree)."""
    candidates = [python.package_root() / "pivotal" / name,
                  Path("/usr/share/boottorrent/pivotal") / name]
    for path in candidates:
        if path.is_file():
            return path
    raise PivotalError(f"the pivotal's {name} script is missing; looked at "
                       + ", ".join(map(str, candidates)))


def add_script(tree: Tree, name: str, where: str, mode: int = 0o755) -> None:
    tree.add_bytes(where, script(name).read_bytes(), mode=mode)
    tree.sources.add(script(name))


def add_busybox(tree: Tree) -> None:
    """busybox and a symlink for each of its applets."""
    if not BUSYBOX.exists():
        raise PivotalError(f"{BUSYBOX} is missing: install the busybox-static package")
    where = tree.add_host_file(BUSYBOX)
    applets = run([BUSYBOX, "--list-full"]).stdout.split()
    for applet in applets:
        parts = PurePosixPath(applet).parts
        if len(parts) < 2:
            continue  # /linuxrc: our /init is the init
        top = Tree.MERGED.get(parts[0], parts[0])
        tree.add_symlink(str(PurePosixPath(top, *parts[1:])), str(where))


def _stage(tree: Tree, modules: python.PythonModules, progress: Progress) -> None:
    say(progress, f"staging busybox, kexec, python and {len(modules.sources)} modules")
    for name in ("proc", "sys", "dev", "run", "tmp", "root", "etc", "usr/lib/modules"):
        tree.mkdir(name)
    add_busybox(tree)
    kexec = which("kexec", "kexec-tools")
    tree.add_host_file(kexec)
    libraries = shared_libraries([kexec, *python.add_python(tree, modules)])
    say(progress, f"adding {len(libraries)} shared libraries")
    for library in libraries:
        tree.add_host_file(library)
    for name, data in _ETC_FILES.items():
        tree.add_bytes(name, data)
    add_script(tree, "init", "init")
    add_script(tree, "drivers", DRIVERS, mode=0o644)
    archive.fix_dir_modes(tree.root)
    (tree.root / "tmp").chmod(0o1777)
    (tree.root / "root").chmod(0o700)


def _build(output: Path, modules: python.PythonModules, progress: Progress) -> list[Path]:
    """Build the base part into output; return the host files it was made from."""
    with tempfile.TemporaryDirectory(prefix="pivotal-base.") as tmp:
        tree = Tree(Path(tmp))
        _stage(tree, modules, progress)
        say(progress, f"compressing {output.name}")
        archive.archive(tree.root, output, archive.COMPRESS)
        return sorted(tree.sources)


def build_base(output: Path, progress: Progress = None) -> Path:
    """Build the pivotal's base initramfs part (zstd-compressed newc cpio).

    It holds busybox, kexec, Debian's python3 with the standard-library
    modules that the pivotal program imports (compiled), python3-libtorrent,
    the shared libraries they all need, the program's package and /init.
    progress, if given, is called with a line of text at each step.
    """
    say(progress, "resolving the pivotal program's python modules")
    _build(output, python.resolve_modules(), progress)
    return output


# -- the cached base ---------------------------------------------------------

def _builder_files() -> list[Path]:
    """This package's own code, which decides what goes into the base."""
    here = Path(__file__).parent
    return [here / name for name in ("__init__.py", "archive.py", "staging.py",
                                     "python.py", "base.py")]


def _key(modules: python.PythonModules) -> str:
    """A hash of our own inputs to the base: this builder, /init and the
    package modules the program loads (not the server's: editing those does
    not make the pivotal stale). Host files are checked by the manifest."""
    digest = hashlib.sha256()
    root = python.package_root()
    for path in [*_builder_files(), script("init"), script("drivers"),
                 *sorted(set(modules.package))]:
        digest.update(f"{path.relative_to(root) if path.is_relative_to(root) else path}\n".encode())
        digest.update(path.read_bytes())
    for path in sorted(set(modules.sources + modules.extensions)):
        digest.update(f"{path}\n".encode())
    return digest.hexdigest()[:16]


def fingerprint(path: Path) -> str:
    stat = path.stat()
    return f"{path} {stat.st_size} {stat.st_mtime_ns}"


def cached_base(cache_dir: Path, progress: Progress = None) -> Path:
    """The base part built from this server's own packages, once, into
    cache_dir.

    The file is named by a hash of the program's code, /init and this
    builder, and rebuilt when any host file it was made from (python's modules,
    libtorrent, the shared libraries, busybox, kexec) has changed since,
    e.g. after a security update: the package's dpkg triggers reload a
    running server for that (debian/boottorrent.triggers).
    """
    modules = python.resolve_modules()  # a fraction of a second
    key = _key(modules)
    output = cache_dir / f"pivotal-base-{key}.cpio.zst"
    manifest = cache_dir / f"pivotal-base-{key}.sources"
    if output.exists() and manifest.exists() and manifest_current(manifest):
        return output
    sources = _build(output, modules, progress)
    write_atomic(manifest, "".join(fingerprint(p) + "\n" for p in sources))
    for old in cache_dir.glob("pivotal-base-*"):  # builds for older program code
        if old not in (output, manifest):
            old.unlink(missing_ok=True)
    return output


def manifest_current(manifest: Path) -> bool:
    for line in manifest.read_text().splitlines():
        path = Path(line.rsplit(" ", 2)[0])
        try:
            if fingerprint(path) != line:
                return False
        except OSError:
            return False
    return True

