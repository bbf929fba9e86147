"""The pivotal's Python: Debian's interpreter with just the modules the
pivotal program imports, as .pyc, and the program's own package."""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from boottorrent.initramfs import PivotalError
from boottorrent.initramfs.staging import Tree
from boottorrent.pivotal.command import run

# The interpreter the pivotal runs: Debian's, the one python3-libtorrent is
# built for (not necessarily the one running this builder).
TARGET_PYTHON = Path("/usr/bin/python3")
DIST_PACKAGES = PurePosixPath("/usr/lib/python3/dist-packages")

# The module the pivotal runs and modules it may import lazily at run time,
# which importing the program alone would not load.
PROGRAM_MODULE = "boottorrent.pivotal.__main__"
LAZY_MODULES = ("encodings.ascii", "encodings.latin_1", "encodings.idna",
                "encodings.utf_8_sig")

# Run by the target python with -S: import the program as `python3 -S -m
# PROGRAM_MODULE` would, then list every loaded module and its file.
_RESOLVER = r"""
import sys
sys.path[:0] = [sys.argv[1], sys.argv[2]]
import runpy  # what `python3 -m` runs the program with
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
class PythonModules:
    cache_tag: str
    stdlib: Path
    sources: list[Path]     # .py files outside our package
    extensions: list[Path]  # .so extension modules
    package: list[Path]     # .py files of boottorrent.pivotal (and boottorrent/__init__)


def package_root() -> Path:
    """The directory that holds the boottorrent package this builder is in."""
    return Path(__file__).resolve().parents[2]


def resolve_modules() -> PythonModules:
    """The files of every module the pivotal program loads, by asking the
    target interpreter to import it."""
    if not TARGET_PYTHON.exists():
        raise PivotalError(f"{TARGET_PYTHON} is missing (package python3)")
    root = package_root()
    result = run([TARGET_PYTHON, "-S", "-E", "-c", _RESOLVER, root, DIST_PACKAGES,
                  PROGRAM_MODULE, *LAZY_MODULES],
                 cwd="/", env={"PATH": "/usr/bin:/bin", "LANG": "C"})
    header = dict(line[1:].split(" ", 1) for line in result.stdout.splitlines()
                  if line.startswith("#"))
    package_dir = root / "boottorrent"
    found = PythonModules(header["cache_tag"], Path(header["stdlib"]), [], [], [])
    for line in result.stdout.splitlines():
        if line.startswith("#"):
            continue
        _, origin = line.split("\t")
        if not origin.startswith("/"):
            continue  # built-in or frozen into the interpreter
        path = Path(origin)
        if path.is_relative_to(package_dir):
            if not (path.is_relative_to(package_dir / "pivotal")
                    or path == package_dir / "__init__.py"):
                raise PivotalError(f"the pivotal program imports {path}, which is not part of "
                                   f"its package {package_dir / 'pivotal'}")
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


def _compile(jobs: list[tuple[str, str, str, int]]) -> None:
    run([TARGET_PYTHON, "-S", "-E", "-c", _COMPILER], input=json.dumps(jobs))


def add_python(tree: Tree, modules: PythonModules) -> list[Path]:
    """Python, its modules as .pyc and our package; return the host's ELF
    files added (the interpreter and extension modules)."""
    interpreter = Path(os.path.realpath(TARGET_PYTHON))
    tree.add_host_file(interpreter)
    tree.add_symlink("usr/bin/python3", interpreter.name)
    # The interpreter checks lib-dynload exists (its "platform library").
    tree.mkdir(tree.canonical(modules.stdlib / "lib-dynload"))
    jobs = []
    # The standard library (and any other module the program loads) ships as
    # sourceless .pyc beside where the .py was: smaller and no compile at boot.
    # Optimized (-OO): no docstrings or asserts in Python's own code.
    for source in sorted(set(modules.sources)):
        where = tree.canonical(source)
        jobs.append((str(source), str(tree.dest(where.with_suffix(".pyc"))), str(where), 2))
        tree.sources.add(source)
    # Our package ships its source too (readable tracebacks) with a pyc that
    # Python uses without checking the source's mtime; asserts kept.
    root = package_root()
    for source in sorted(set(modules.package)):
        rel = source.relative_to(root)
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
