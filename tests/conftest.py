"""Shared fixtures: a configuration and state folder per test, real files,
and the real command line run as a subprocess on Debian's interpreter."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from lab import kernel  # noqa: E402
from lab.cluster import MIB, Cluster  # noqa: E402,F401
from lab.cluster import pivotal_cache as cluster_pivotal_cache  # noqa: E402
from lab.cluster import random_image, stamp_bzimage_header, wait_for  # noqa: E402,F401
from lab.server import lab_config  # noqa: E402

PYTHON = "/usr/bin/python3"


@pytest.fixture(scope="session")
def pivotal_kernel() -> Path:
    """Debian's kernel package, which the pivotal is built from."""
    return kernel.kernel_deb()


@pytest.fixture(scope="session")
def pivotal_cache() -> Path:
    """The pivotal's base and kernel parts, built once for the whole session
    (tests then hardlink them into each state folder's cache)."""
    return cluster_pivotal_cache()


@pytest.fixture
def config_dir(tmp_path: Path, pivotal_kernel: Path) -> Path:
    path = tmp_path / "etc"
    (path / "images.d").mkdir(parents=True)
    (path / "boottorrent.conf").write_text(lab_config(pivotal_kernel))
    return path


@pytest.fixture
def state_dir(pivotal_cache: Path):
    """A state folder the services can reach after dropping privileges (dnsmasq
    runs as nobody), as they reach /var/lib/boottorrent. Not under pytest's
    tmp_path: pytest keeps its root folder 0700."""
    path = Path(tempfile.mkdtemp(prefix="boottorrent-state-"))
    path.chmod(0o755)
    subprocess.run(["cp", "-al", str(pivotal_cache), str(path / "cache")], check=True)
    yield path
    shutil.rmtree(path)


@pytest.fixture
def image_files(tmp_path: Path) -> dict[str, Path]:
    """A small image: a 'kernel' and two 'initrds' of random bytes."""
    folder = tmp_path / "src"
    folder.mkdir()
    files = {}
    for name, size in (("vmlinuz", 3_000_000), ("initrd-a.img", 2_500_000),
                       ("initrd-b.img", 700_000)):
        files[name] = folder / name
        files[name].write_bytes(os.urandom(size))
    stamp_bzimage_header(files["vmlinuz"])
    return files


def interruptible() -> None:
    """preexec_fn for a command a test sends SIGINT (Ctrl-C) to: a shell
    that started this test run in the background ignores SIGINT, its
    children inherit that, and Python then never raises KeyboardInterrupt."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def cli(*args: str | Path, config_dir: Path, state_dir: Path,
        command: str = "boottorrent", **kwargs) -> subprocess.CompletedProcess:
    """Run the real command line, as an admin would."""
    module = "boottorrent" if command == "boottorrent" else None
    argv = [PYTHON, "-m", module] if module else [PYTHON, "-c",
                                                  "from boottorrent.cli import add_image_main; "
                                                  "raise SystemExit(add_image_main())"]
    env = {**os.environ, "PYTHONPATH": str(REPO),
           "BOOTTORRENT_CONFIG_DIR": str(config_dir), "BOOTTORRENT_STATE_DIR": str(state_dir)}
    return subprocess.run(argv + [str(a) for a in args], capture_output=True, text=True,
                          env=env, cwd=kwargs.pop("cwd", REPO), **kwargs)


def tree(path: Path) -> dict[str, str]:
    """Every entry under path with its content digest, to compare before/after."""
    result = {}
    if not path.exists():
        return result
    for entry in sorted(path.rglob("*")):
        relative = str(entry.relative_to(path))
        if entry.is_symlink():
            result[relative] = "-> " + os.readlink(entry)
        elif entry.is_dir():
            result[relative] = "dir"
        else:
            result[relative] = hashlib.sha256(entry.read_bytes()).hexdigest()
    return result


def copy_tree(source: Path, target: Path) -> None:
    shutil.copytree(source, target, symlinks=True)


# ---------------------------------------------------------------- a server in a lab

@pytest.fixture
def make_cluster(tmp_path: Path, pivotal_cache: Path):
    """make_cluster(rate_mbit=None, conf={section: {key: value}}): a lab
    cluster (lab/cluster.py: the real services in a server namespace, the
    real pivotal program in client namespaces), closed after the test."""
    clusters: list[Cluster] = []

    def make(rate_mbit: int | None = None, conf: dict | None = None) -> Cluster:
        cluster = Cluster(tmp_path / f"lab{len(clusters)}", rate_mbit=rate_mbit,
                          conf=conf or {}, cache=pivotal_cache)
        clusters.append(cluster)
        return cluster

    yield make
    for cluster in clusters:
        cluster.close()


# Clients leave 2 s after the swarm is done; no HTTP fallback within a test.
CLIENTS = {"seed_idle_time": 2, "fallback_after": 120}


@pytest.fixture
def cluster(make_cluster) -> Cluster:
    """A cluster whose links are not shaped and whose services are not started."""
    return make_cluster(conf={"clients": CLIENTS})
