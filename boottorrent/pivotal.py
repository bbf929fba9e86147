"""Build the pivotal: the small Linux that BootTorrent clients boot first.

The pivotal is a kernel plus three initramfs parts that the boot loader
concatenates:

* the **base** (build_base): busybox, kexec, Debian's python3 with just the
  standard-library modules the client imports, python3-libtorrent with its
  shared libraries, the boottorrent client package and /init;
* the **modules** part (build_kernel_part): the network drivers of one
  kernel with their dependencies, for busybox modprobe;
* the **config** part (build_config_part): a few small files the server
  writes for its clients.

Everything is taken from the running Debian system (the same packages the
server runs) and archived deterministically: the same inputs give the same
bytes. Every output is written beside its final name and renamed into place.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import struct
import subprocess
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from boottorrent import bzimage
from boottorrent.fsutil import write_atomic

# The interpreter the pivotal runs: Debian's, the one python3-libtorrent is
# built for (not necessarily the one running this builder).
TARGET_PYTHON = Path("/usr/bin/python3")
BUSYBOX = Path("/bin/busybox")  # busybox-static: no shared libraries needed
DIST_PACKAGES = PurePosixPath("/usr/lib/python3/dist-packages")
INSTALLED_BASE = Path("/usr/lib/boottorrent/pivotal-base.cpio.zst")

# The client module the pivotal runs and modules it may import lazily at
# run time, which importing the client alone would not load.
CLIENT_MODULE = "boottorrent.client"
LAZY_MODULES = ("encodings.ascii", "encodings.latin_1", "encodings.idna",
                "encodings.utf_8_sig")

# Network drivers for common server NICs (their dependencies come from the
# modules' own metadata). virtio_pci is the transport virtio_net sits on:
# not a symbol dependency, but needed for any virtio NIC.
NIC_MODULES = ("virtio_net", "virtio_pci", "e1000", "e1000e", "igb", "ixgbe", "i40e",
               "ice", "bnxt_en", "tg3", "r8169", "mlx4_en", "mlx5_core")

# zstd, not xz: xz makes the base 13% smaller but takes the kernel ~5 s
# longer to unpack under QEMU TCG (1.4 s for zstd). A 32 MiB window (--long=25)
# spans the whole base; the kernel allocates the window while it unpacks.
# -T0 output is the same for any thread count (unlike --single-thread).
COMPRESS = ["zstd", "-q", "-19", "--long=25", "-T0", "-c"]

# Files in the archives get this mtime (SOURCE_DATE_EPOCH, as Debian's
# reproducible builds use, else 0).
MTIME = int(os.environ.get("SOURCE_DATE_EPOCH", "0"))

Progress = Callable[[str], None] | None


class PivotalError(Exception):
    """The pivotal cannot be built from what was given (the message says why)."""


@dataclass(frozen=True)
class KernelPart:
    """A kernel for the pivotal: its bzImage and its modules initramfs part."""

    vmlinuz: Path
    modules: Path  # zstd-compressed newc cpio, usr/lib/modules/<version>/...
    version: str


# -- archives ----------------------------------------------------------------

def _archive(tree: Path, output: Path, compress: list[str] | None) -> Path:
    """Pack tree as a newc cpio (sorted, fixed owner and mtime) into output.

    Written to a temporary file beside output and renamed into place.
    """
    names = sorted(_tree_names(tree))
    for name in names:
        os.utime(tree / name, (MTIME, MTIME), follow_symlinks=False)
    output.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{output.name}.", dir=output.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            cpio = subprocess.Popen(
                ["cpio", "--quiet", "-o", "-H", "newc", "--reproducible", "--null",
                 "--owner=0:0"],
                cwd=tree, stdin=subprocess.PIPE,
                stdout=subprocess.PIPE if compress else out, stderr=subprocess.PIPE)
            packer = None
            if compress:
                packer = subprocess.Popen(compress, stdin=cpio.stdout, stdout=out,
                                          stderr=subprocess.PIPE)
                cpio.stdout.close()  # the compressor owns the pipe now
            _, cpio_err = cpio.communicate(b"\0".join(n.encode() for n in names) + b"\0")
            packer_err = packer.communicate()[1] if packer else b""
        if cpio.returncode or (packer and packer.returncode):
            raise PivotalError(f"packing {output} failed: "
                               f"{(cpio_err + packer_err).decode(errors='replace')}")
        os.chmod(tmp, 0o644)
        os.replace(tmp, output)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return output


def _tree_names(tree: Path) -> Iterator[str]:
    for top, dirs, files in os.walk(tree):
        rel = os.path.relpath(top, tree)
        for name in dirs + files:
            yield name if rel == "." else f"{rel}/{name}"


# -- the config part ---------------------------------------------------------

def build_config_part(files: dict[str, bytes], output: Path) -> Path:
    """Write files (relative paths such as "etc/boottorrent/pivotal.json")
    as a small uncompressed newc cpio, with their parent directories.
    """
    with tempfile.TemporaryDirectory(prefix="pivotal-config.") as tmp:
        tree = Path(tmp)
        for name, data in files.items():
            rel = PurePosixPath(name)
            if rel.is_absolute() or ".." in rel.parts or not rel.parts:
                raise PivotalError(f"config file name {name!r} is not a relative path")
            path = tree / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
            path.chmod(0o644)
        _fix_dir_modes(tree)
        return _archive(tree, output, compress=None)


def _fix_dir_modes(tree: Path) -> None:
    """Directories get 0755 whatever the umask of the builder was."""
    for top, dirs, _ in os.walk(tree):
        for name in dirs:
            path = Path(top, name)
            if not path.is_symlink():
                path.chmod(0o755)


# -- the base part -----------------------------------------------------------

# Run by the target python with -S: import the client as `python3 -S -m
# boottorrent.client` would, then list every loaded module and its file.
_RESOLVER = r"""
import sys
sys.path[:0] = [sys.argv[1], sys.argv[2]]
import runpy
import importlib
importlib.import_module(sys.argv[3])
for name in sys.argv[4:]:
    try:
        importlib.import_module(name)
    except ImportError:
        pass
modules = dict(sys.modules)
print("#cache_tag", sys.implementation.cache_tag)
print("#stdlib", __import__("os").path.dirname(__import__("os").__file__))
for name, module in sorted(modules.items()):
    spec = getattr(module, "__spec__", None)
    origin = getattr(spec, "origin", None) or ""
    print(name, origin, sep="\t")
"""

# Run by the target python: compile (source, pyc, name shown in tracebacks,
# optimization) tuples read as JSON from stdin.
_COMPILER = r"""
import json, py_compile, sys
for source, pyc, shown, optimize in json.load(sys.stdin):
    py_compile.compile(source, cfile=pyc, dfile=shown, doraise=True, optimize=optimize,
                       invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH)
"""


@dataclass
class _PythonModules:
    cache_tag: str
    stdlib: Path
    sources: list[Path]     # .py files outside our package
    extensions: list[Path]  # .so extension modules
    package: list[Path]     # .py files of the boottorrent package


def _package_root() -> Path:
    """The directory that holds the boottorrent package this builder is in."""
    return Path(__file__).resolve().parent.parent


def _init_script() -> Path:
    candidates = [_package_root() / "pivotal" / "init",
                  Path("/usr/share/boottorrent/pivotal/init")]
    for path in candidates:
        if path.is_file():
            return path
    raise PivotalError("the pivotal's init script is missing; looked at "
                       + ", ".join(map(str, candidates)))


def _resolve_python_modules() -> _PythonModules:
    if not TARGET_PYTHON.exists():
        raise PivotalError(f"{TARGET_PYTHON} is missing (package python3)")
    root = _package_root()
    result = subprocess.run(
        [str(TARGET_PYTHON), "-S", "-E", "-c", _RESOLVER, str(root), str(DIST_PACKAGES),
         CLIENT_MODULE, *LAZY_MODULES],
        capture_output=True, text=True, cwd="/", env={"PATH": "/usr/bin:/bin", "LANG": "C"})
    if result.returncode:
        raise PivotalError(f"{TARGET_PYTHON} cannot import {CLIENT_MODULE} from {root}:\n"
                           f"{result.stderr}")
    header = dict(line[1:].split(" ", 1) for line in result.stdout.splitlines()
                  if line.startswith("#"))
    package_dir = root / "boottorrent"
    found = _PythonModules(header["cache_tag"], Path(header["stdlib"]), [], [], [])
    for line in result.stdout.splitlines():
        if line.startswith("#"):
            continue
        _, origin = line.split("\t")
        if not origin.startswith("/"):
            continue  # built-in or frozen into the interpreter
        path = Path(origin)
        if path.is_relative_to(package_dir):
            found.package.append(path)
        elif path.suffix == ".py":
            found.sources.append(path)
        elif path.suffix == ".so":
            found.extensions.append(path)
        else:
            raise PivotalError(f"do not know how to ship module file {path}")
    # The interpreter finds its prefix by this landmark; os itself is frozen.
    found.sources.append(found.stdlib / "os.py")
    return found


class _Tree:
    """The staging directory of an initramfs, laid out like a merged-/usr system."""

    MERGED = {"bin": "usr/bin", "sbin": "usr/sbin", "lib": "usr/lib", "lib64": "usr/lib64"}

    def __init__(self, root: Path) -> None:
        self.root = root
        self.sources: set[Path] = set()  # host files copied in, for cache checks
        for name, target in self.MERGED.items():
            (root / target).mkdir(parents=True, exist_ok=True)
            (root / name).symlink_to(target)

    @classmethod
    def canonical(cls, path: Path) -> PurePosixPath:
        """Where a host file lives in the tree: its directory resolved, mapped
        under /usr as on a merged-/usr system, its own name kept."""
        directory = PurePosixPath(os.path.realpath(path.parent))
        top = directory.parts[1] if len(directory.parts) > 1 else ""
        if top in cls.MERGED:
            directory = PurePosixPath("/", cls.MERGED[top], *directory.parts[2:])
        return directory / path.name

    def dest(self, path: PurePosixPath | str) -> Path:
        dest = self.root / str(path).lstrip("/")
        dest.parent.mkdir(parents=True, exist_ok=True)
        return dest

    def add_host_file(self, path: Path) -> PurePosixPath:
        """Copy a host file (following and recreating symlinks) to its place."""
        where = self.canonical(path)
        dest = self.dest(where)
        if dest.exists() or dest.is_symlink():
            return where
        source = Path(os.path.realpath(path.parent)) / path.name
        if source.is_symlink():
            target = os.readlink(source)
            dest.symlink_to(target)
            self.add_host_file(source.parent / target)
        else:
            shutil.copyfile(source, dest)
            dest.chmod(source.stat().st_mode & 0o755)
            self.sources.add(source)
        return where

    def mkdir(self, path: PurePosixPath | str) -> None:
        (self.root / str(path).lstrip("/")).mkdir(parents=True, exist_ok=True)

    def add_bytes(self, path: str, data: bytes, mode: int = 0o644) -> None:
        dest = self.dest(path)
        dest.write_bytes(data)
        dest.chmod(mode)

    def add_symlink(self, path: str, target: str) -> None:
        dest = self.dest(path)
        if not (dest.exists() or dest.is_symlink()):
            dest.symlink_to(target)


def _shared_libraries(binaries: Iterable[Path]) -> list[Path]:
    """Every shared library (and the dynamic loader) the binaries need, by ldd."""
    result = subprocess.run(["ldd", *map(str, binaries)], capture_output=True, text=True)
    if result.returncode:
        raise PivotalError(f"ldd failed:\n{result.stdout}{result.stderr}")
    libraries = set()
    for line in result.stdout.splitlines():
        line = line.strip()
        if "not found" in line:
            raise PivotalError(f"a shared library is missing on this system: {line}")
        match = re.match(r"(?:\S+ => )?(/\S+) \(0x", line)
        if match:
            libraries.add(Path(match.group(1)))
    return sorted(libraries)


def _which(name: str, package: str) -> Path:
    found = shutil.which(name, path="/usr/sbin:/usr/bin:/sbin:/bin")
    if not found:
        raise PivotalError(f"{name} is missing: install the {package} package")
    return Path(found)


def _add_busybox(tree: _Tree) -> None:
    if not BUSYBOX.exists():
        raise PivotalError(f"{BUSYBOX} is missing: install the busybox-static package")
    where = tree.add_host_file(BUSYBOX)
    applets = subprocess.run([str(BUSYBOX), "--list-full"], check=True,
                             capture_output=True, text=True).stdout.split()
    for applet in applets:
        parts = PurePosixPath(applet).parts
        if len(parts) < 2:
            continue  # /linuxrc: our /init is the init
        top = _Tree.MERGED.get(parts[0], parts[0])
        tree.add_symlink(str(PurePosixPath(top, *parts[1:])), str(where))


def _compile(jobs: list[tuple[str, str, str, int]]) -> None:
    result = subprocess.run([str(TARGET_PYTHON), "-S", "-E", "-c", _COMPILER],
                            input=json.dumps(jobs), capture_output=True, text=True)
    if result.returncode:
        raise PivotalError(f"compiling the pivotal's python modules failed:\n{result.stderr}")


def _add_python(tree: _Tree, modules: _PythonModules) -> list[Path]:
    """Python, its modules as .pyc and our package; return the host's ELF
    files added (the interpreter and extension modules)."""
    interpreter = Path(os.path.realpath(TARGET_PYTHON))
    tree.add_host_file(interpreter)
    tree.add_symlink("usr/bin/python3", interpreter.name)
    # The interpreter checks lib-dynload exists (its "platform library").
    tree.mkdir(tree.canonical(modules.stdlib / "lib-dynload"))
    jobs = []
    # The standard library (and any other module the client loads) ships as
    # sourceless .pyc beside where the .py was: smaller and no compile at boot.
    # Optimized (-OO): no docstrings or asserts in Python's own code.
    for source in sorted(set(modules.sources)):
        where = tree.canonical(source)
        jobs.append((str(source), str(tree.dest(where.with_suffix(".pyc"))), str(where), 2))
        tree.sources.add(source)
    # Our package ships its source too (readable tracebacks) with a pyc that
    # Python uses without checking the source's mtime; asserts kept.
    package_root = _package_root()
    for source in sorted(set(modules.package)):
        rel = source.relative_to(package_root)
        dest = tree.dest(DIST_PACKAGES / rel)
        shutil.copyfile(source, dest)
        dest.chmod(0o644)
        pyc = dest.parent / "__pycache__" / f"{source.stem}.{modules.cache_tag}.pyc"
        pyc.parent.mkdir(exist_ok=True)
        jobs.append((str(source), str(pyc), str(DIST_PACKAGES / rel), 0))
    _compile(jobs)
    for pyc in tree.root.rglob("*.pyc"):
        pyc.chmod(0o644)
    for extension in modules.extensions:
        tree.add_host_file(extension)
    return [interpreter, *modules.extensions]


_ETC_FILES = {
    "etc/passwd": b"root:x:0:0:root:/root:/bin/sh\n",
    "etc/group": b"root:x:0:\n",
    "etc/hosts": b"127.0.0.1\tlocalhost\n::1\tlocalhost\n",
    "etc/nsswitch.conf": b"hosts: files dns\n",
}


def _stage_base(tree: _Tree, modules: _PythonModules, progress: Progress) -> None:
    _say(progress, f"staging busybox, kexec, python and {len(modules.sources)} modules")
    for name in ("proc", "sys", "dev", "run", "tmp", "root", "etc", "usr/lib/modules"):
        tree.mkdir(name)
    _add_busybox(tree)
    kexec = _which("kexec", "kexec-tools")
    tree.add_host_file(kexec)
    libraries = _shared_libraries([kexec, *_add_python(tree, modules)])
    _say(progress, f"adding {len(libraries)} shared libraries")
    for library in libraries:
        tree.add_host_file(library)
    for name, data in _ETC_FILES.items():
        tree.add_bytes(name, data)
    tree.add_bytes("init", _init_script().read_bytes(), mode=0o755)
    tree.sources.add(_init_script())
    _fix_dir_modes(tree.root)
    (tree.root / "tmp").chmod(0o1777)
    (tree.root / "root").chmod(0o700)


def _build_base(output: Path, modules: _PythonModules, progress: Progress) -> list[Path]:
    """Build the base part into output; return the host files it was made from."""
    with tempfile.TemporaryDirectory(prefix="pivotal-base.") as tmp:
        tree = _Tree(Path(tmp))
        _stage_base(tree, modules, progress)
        _say(progress, f"compressing {output.name}")
        _archive(tree.root, output, COMPRESS)
        return sorted(tree.sources)


def build_base(output: Path, progress: Callable[[str], None] | None = None) -> Path:
    """Build the pivotal's base initramfs part (zstd-compressed newc cpio).

    It holds busybox, kexec, Debian's python3 with the standard-library
    modules that boottorrent.client imports (compiled), python3-libtorrent,
    the shared libraries they all need, the client package and /init.
    progress, if given, is called with a line of text at each step.
    """
    _say(progress, "resolving the client's python modules")
    _build_base(output, _resolve_python_modules(), progress)
    return output


def _say(progress: Progress, message: str) -> None:
    if progress:
        progress(message)


# -- the cached base ---------------------------------------------------------

def _base_key(modules: _PythonModules) -> str:
    """A hash of our own inputs to the base: this builder, /init and the
    package modules the client loads (not the server's: editing those does
    not make the pivotal stale). Host files are checked by the manifest."""
    digest = hashlib.sha256()
    root = _package_root()
    for path in [Path(__file__), _init_script(), *sorted(set(modules.package))]:
        digest.update(f"{path.relative_to(root) if path.is_relative_to(root) else path}\n".encode())
        digest.update(path.read_bytes())
    for path in sorted(set(modules.sources + modules.extensions)):
        digest.update(f"{path}\n".encode())
    return digest.hexdigest()[:16]


def _fingerprint(path: Path) -> str:
    stat = path.stat()
    return f"{path} {stat.st_size} {stat.st_mtime_ns}"


def ensure_base(cache_dir: Path, progress: Callable[[str], None] | None = None) -> Path:
    """The base part: the installed one (package boottorrent), else
    cached_base(cache_dir), e.g. when running from a git checkout."""
    if INSTALLED_BASE.exists():
        return INSTALLED_BASE
    return cached_base(cache_dir, progress)


def cached_base(cache_dir: Path, progress: Callable[[str], None] | None = None) -> Path:
    """The base part built from this source tree, once, into cache_dir.

    The file is named by a hash of the client's code, /init and this
    builder, and rebuilt when any host file it was made from (python's modules,
    libtorrent, the shared libraries, busybox, kexec) has changed since,
    e.g. after a package upgrade.
    """
    modules = _resolve_python_modules()  # a fraction of a second
    key = _base_key(modules)
    output = cache_dir / f"pivotal-base-{key}.cpio.zst"
    manifest = cache_dir / f"pivotal-base-{key}.sources"
    if output.exists() and manifest.exists() and _manifest_current(manifest):
        return output
    sources = _build_base(output, modules, progress)
    write_atomic(manifest, "".join(_fingerprint(p) + "\n" for p in sources))
    for old in cache_dir.glob("pivotal-base-*"):  # builds for older client code
        if old not in (output, manifest):
            old.unlink(missing_ok=True)
    return output


def _manifest_current(manifest: Path) -> bool:
    for line in manifest.read_text().splitlines():
        path = Path(line.rsplit(" ", 2)[0])
        try:
            if _fingerprint(path) != line:
                return False
        except OSError:
            return False
    return True


def default_cache_dir() -> Path:
    """~/.cache/boottorrent (or under $XDG_CACHE_HOME)."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "boottorrent"


def default_base_path() -> Path:
    """The base part to serve: the installed /usr/lib/boottorrent one if the
    package is installed, else one built and cached under default_cache_dir()
    (so that running from a git checkout works)."""
    if INSTALLED_BASE.exists():
        return INSTALLED_BASE
    return ensure_base(default_cache_dir())


# -- the kernel part ---------------------------------------------------------

@dataclass
class _Module:
    name: str          # as modprobe knows it: "virtio_net"
    path: str          # relative to lib/modules/<version>, no compression suffix
    source: str        # tar member or host file it comes from
    depends: list[str]
    softdeps: list[str]
    firmware: list[str]


_COMPRESSED_SUFFIXES = (".ko.xz", ".ko.zst", ".ko.gz")


def _module_name(filename: str) -> str:
    base = filename
    for suffix in _COMPRESSED_SUFFIXES + (".ko",):
        base = base.removesuffix(suffix)
    return base.replace("-", "_")


def _decompress_module(filename: str, data: bytes) -> bytes:
    if filename.endswith(".ko.xz"):
        import lzma
        return lzma.decompress(data)
    if filename.endswith(".ko.gz"):
        import gzip
        return gzip.decompress(data)
    if filename.endswith(".ko.zst"):
        return subprocess.run(["zstd", "-q", "-d", "-c"], input=data, check=True,
                              capture_output=True).stdout
    return data


def _modinfo(elf: bytes) -> dict[str, list[str]]:
    """The key=value strings of a kernel module's .modinfo section."""
    if elf[:4] != b"\x7fELF" or elf[4] != 2:
        raise ValueError("not a 64-bit ELF file")
    shoff, = struct.unpack_from("<Q", elf, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", elf, 0x3A)

    def section(index: int) -> tuple[int, int, int]:
        name, _, _, _, offset, size = struct.unpack_from("<IIQQQQ", elf, shoff + index * shentsize)
        return name, offset, size

    _, names_offset, _ = section(shstrndx)
    for index in range(shnum):
        name, offset, size = section(index)
        if elf[names_offset + name:].startswith(b".modinfo\0"):
            info: dict[str, list[str]] = {}
            for entry in elf[offset:offset + size].split(b"\0"):
                key, sep, value = entry.decode(errors="replace").partition("=")
                if sep:
                    info.setdefault(key, []).append(value)
            return info
    return {}


def _make_module(relpath: str, source: str, data: bytes) -> _Module:
    filename = PurePosixPath(relpath).name
    try:
        info = _modinfo(_decompress_module(filename, data))
    except (ValueError, struct.error, OSError, subprocess.CalledProcessError) as error:
        raise PivotalError(f"{source}: not a readable kernel module ({error})") from error
    depends = [d.replace("-", "_") for v in info.get("depends", []) for d in v.split(",") if d]
    softdeps = [w.replace("-", "_") for v in info.get("softdep", []) for w in v.split()
                if not w.endswith(":")]
    path = relpath
    for suffix in _COMPRESSED_SUFFIXES:
        if path.endswith(suffix):
            path = path.removesuffix(suffix) + ".ko"
    return _Module(_module_name(filename), path, source, depends, softdeps,
                   info.get("firmware", []))


def _closure(modules: dict[str, _Module], roots: Iterable[str]) -> list[_Module]:
    """The root modules and everything they depend on (softdeps too, if present)."""
    wanted: dict[str, _Module] = {}
    todo = list(roots)
    while todo:
        name = todo.pop()
        if name in wanted:
            continue
        module = modules.get(name)
        if module is None:
            continue  # built into the kernel, or a softdep this kernel lacks
        wanted[name] = module
        todo += module.depends + module.softdeps
    return sorted(wanted.values(), key=lambda m: m.path)


class _KernelSource:
    """A kernel's image and modules, from a .deb or from a vmlinuz on disk."""

    version: str
    modules: dict[str, _Module]
    extra_files: dict[str, bytes]  # modules.builtin etc.

    def vmlinuz(self) -> bytes:
        raise NotImplementedError

    def module_data(self, wanted: list[_Module]) -> Iterator[tuple[_Module, bytes]]:
        raise NotImplementedError


_MODULES_DIR = re.compile(r"^(?:\./)?(?:usr/)?lib/modules/([^/]+)/(.*)$")
_EXTRA_FILES = ("modules.builtin",)


class _DebKernel(_KernelSource):
    """A linux-image-*.deb, read with python3-debian; the data tarball is
    streamed twice (metadata of every module, then the modules needed)."""

    def __init__(self, deb: Path) -> None:
        from debian.arfile import ArError
        from debian.debfile import DebError, DebFile
        self.deb = deb
        try:
            package = DebFile(str(deb)).debcontrol().get("Package", "")
        except (ArError, DebError, OSError, KeyError, ValueError) as error:
            raise PivotalError(f"{deb} is not a Debian package: {error}") from error
        if not package.startswith("linux-image-"):
            raise PivotalError(f"{deb} is {package!r}, not a linux-image-* kernel package")
        self._vmlinuz: bytes | None = None
        self.modules = {}
        self.extra_files = {}
        versions = set()
        for member, data in self._members(lambda name: True):
            if re.match(r"^(?:\./)?boot/vmlinuz-", member):
                self._vmlinuz = data()
                versions.add(member.split("vmlinuz-", 1)[1])
            elif match := _MODULES_DIR.match(member):
                versions.add(match.group(1))
                rel = match.group(2)
                if rel.endswith((".ko",) + _COMPRESSED_SUFFIXES):
                    module = _make_module(rel, member, data())
                    self.modules[module.name] = module
                elif rel in _EXTRA_FILES:
                    self.extra_files[rel] = data()
        if self._vmlinuz is None:
            raise PivotalError(f"{deb} ({package}) contains no boot/vmlinuz-*: "
                               "give the versioned kernel package, not a metapackage")
        if len(versions) != 1:
            raise PivotalError(f"{deb} holds several kernel versions: {sorted(versions)}")
        self.version = versions.pop()

    def _members(self, want: Callable[[str], bool]) -> Iterator[tuple[str, Callable[[], bytes]]]:
        from debian.debfile import DebFile
        tar = DebFile(str(self.deb)).data.tgz()
        for member in tar:
            if member.isfile() and want(member.name):
                yield member.name, lambda m=member: tar.extractfile(m).read()

    def vmlinuz(self) -> bytes:
        assert self._vmlinuz is not None
        return self._vmlinuz

    def module_data(self, wanted: list[_Module]) -> Iterator[tuple[_Module, bytes]]:
        by_member = {m.source: m for m in wanted}
        for member, data in self._members(lambda name: name in by_member):
            yield by_member[member], data()


class _InstalledKernel(_KernelSource):
    """A bare vmlinuz whose modules are on disk: beside it (<root>/boot/vmlinuz-*
    with <root>/lib/modules/<version>, as an unpacked package) or installed
    in /lib/modules/<version>."""

    def __init__(self, kernel: Path) -> None:
        self.kernel = kernel
        try:
            self.version = bzimage.version(kernel.read_bytes())
        except ValueError as error:
            raise PivotalError(f"{kernel} is neither a linux-image-*.deb nor a vmlinuz "
                               f"({error})") from error
        candidates = [kernel.resolve().parent.parent / sub / self.version
                      for sub in ("lib/modules", "usr/lib/modules")]
        candidates.append(Path("/lib/modules") / self.version)
        directory = next((c for c in candidates if (c / "kernel").is_dir()), None)
        if directory is None:
            raise PivotalError(f"no modules for {kernel} (kernel {self.version}): looked in "
                               + ", ".join(map(str, candidates)))
        self.directory = directory
        self.extra_files = {name: (directory / name).read_bytes()
                            for name in _EXTRA_FILES if (directory / name).exists()}
        files = {}
        for path in directory.rglob("*.ko*"):
            if path.name.endswith((".ko",) + _COMPRESSED_SUFFIXES):
                files[_module_name(path.name)] = path
        # Read the metadata of just the modules needed, following dependencies.
        self.modules = {}
        todo = list(NIC_MODULES)
        while todo:
            name = todo.pop()
            if name in self.modules or name not in files:
                continue
            path = files[name]
            module = _make_module(str(path.relative_to(directory)), str(path), path.read_bytes())
            self.modules[name] = module
            todo += module.depends + module.softdeps

    def vmlinuz(self) -> bytes:
        return self.kernel.read_bytes()

    def module_data(self, wanted: list[_Module]) -> Iterator[tuple[_Module, bytes]]:
        for module in wanted:
            yield module, Path(module.source).read_bytes()


def _open_kernel(kernel: Path) -> _KernelSource:
    if not kernel.is_file():
        raise PivotalError(f"kernel {kernel} does not exist")
    with open(kernel, "rb") as f:
        magic = f.read(8)
    if magic == b"!<arch>\n":
        return _DebKernel(kernel)
    return _InstalledKernel(kernel)


def _firmware_files(names: Iterable[str]) -> dict[str, Path]:
    """The host's firmware files for these names (as the kernel would find
    them, also compressed), keyed by their path under lib/firmware."""
    found = {}
    for name in sorted(set(names)):
        for suffix in ("", ".xz", ".zst"):
            path = Path("/usr/lib/firmware") / (name + suffix)
            if path.is_file():
                found[name + suffix] = path
                break
    return found


def _firmware_key(firmware: dict[str, Path]) -> list[list[str]]:
    return [[name, hashlib.sha256(path.read_bytes()).hexdigest()]
            for name, path in sorted(firmware.items())]


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def build_kernel_part(kernel: Path, cache_dir: Path) -> KernelPart:
    """The pivotal's kernel and its network-driver modules part.

    kernel is a linux-image-*.deb (read without installing it) or a vmlinuz
    whose modules are on disk. The result is cached in cache_dir by the
    kernel file's sha256, so a second call is quick. Raises PivotalError
    with the file's name when the kernel is unusable.
    """
    kernel = Path(kernel)
    if not kernel.is_file():
        raise PivotalError(f"kernel {kernel} does not exist")
    # Keyed by the kernel and by this builder's code, which decides the part's content.
    kernel_key = _file_sha256(kernel)[:16]
    entry = Path(cache_dir) / f"kernel-{kernel_key}-{_file_sha256(Path(__file__))[:8]}"
    cached = _cached_kernel_part(entry)
    if cached:
        return cached
    source = _open_kernel(kernel)
    wanted = _closure(source.modules, NIC_MODULES)
    if not wanted:
        raise PivotalError(f"{kernel} has none of the network drivers {NIC_MODULES}")
    firmware = _firmware_files(f for m in wanted for f in m.firmware)
    entry.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".kernel-", dir=entry.parent) as tmp:
        work = Path(tmp)
        vmlinuz = work / f"vmlinuz-{source.version}"
        vmlinuz.write_bytes(source.vmlinuz())
        vmlinuz.chmod(0o644)
        modules = work / f"modules-{source.version}.cpio.zst"
        _build_modules_part(source, wanted, firmware, modules, work / "tree")
        meta = {"version": source.version, "vmlinuz": vmlinuz.name, "modules": modules.name,
                "shipped": [m.name for m in wanted],
                "firmware_names": sorted({f for m in wanted for f in m.firmware}),
                "firmware": _firmware_key(firmware)}
        (work / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
        shutil.rmtree(work / "tree")
        if entry.exists():  # a stale entry (firmware changed) or a concurrent build
            shutil.rmtree(entry, ignore_errors=True)
        try:
            os.rename(work, entry)
        except OSError:  # another build won the race: keep its result
            if not _cached_kernel_part(entry):
                raise
        else:
            os.chmod(entry, 0o755)
            os.mkdir(work)  # for TemporaryDirectory's cleanup
    for old in entry.parent.glob(f"kernel-{kernel_key}-*"):  # by an older builder
        if old != entry:
            shutil.rmtree(old, ignore_errors=True)
    part = _cached_kernel_part(entry)
    assert part
    return part


def _cached_kernel_part(entry: Path) -> KernelPart | None:
    try:
        meta = json.loads((entry / "meta.json").read_text())
    except (OSError, ValueError):
        return None
    # Firmware comes from the host's firmware packages, which may have changed.
    if _firmware_key(_firmware_files(meta["firmware_names"])) != meta["firmware"]:
        return None
    return KernelPart(entry / meta["vmlinuz"], entry / meta["modules"], meta["version"])


def _build_modules_part(source: _KernelSource, wanted: list[_Module],
                        firmware: dict[str, Path], output: Path, root: Path) -> None:
    moddir = root / "usr/lib/modules" / source.version
    moddir.mkdir(parents=True)
    for module, data in source.module_data(wanted):
        path = moddir / module.path
        path.parent.mkdir(parents=True, exist_ok=True)
        # Plain .ko: busybox modprobe needs no decompressor, and the part is
        # compressed as a whole anyway.
        path.write_bytes(_decompress_module(module.source, data))
        path.chmod(0o644)
    for name, data in source.extra_files.items():
        (moddir / name).write_bytes(data)
    (moddir / "boottorrent-nics").write_text(
        "".join(f"{n}\n" for n in NIC_MODULES if n in {m.name for m in wanted}))
    # busybox's depmod writes the modules.dep/alias/symbols that its modprobe reads.
    subprocess.run([str(BUSYBOX), "depmod", "-b", str(root / "usr"), source.version],
                   check=True, capture_output=True)
    for name in ("modules.dep", "modules.alias", "modules.symbols"):
        path = moddir / name
        if path.exists():  # line order follows readdir: sort for reproducibility
            path.write_text("".join(sorted(path.read_text().splitlines(keepends=True))))
    for name, path in firmware.items():
        dest = root / "usr/lib/firmware" / name
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, dest)
        dest.chmod(0o644)
    _fix_dir_modes(root)
    _archive(root, output, COMPRESS)
