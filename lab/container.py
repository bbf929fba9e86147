"""A Debian bookworm system with real systemd as PID 1, for package tests.

systemd-nspawn needs a host systemd; the lab machines have none. This module
does by hand what nspawn does, with util-linux tools only:

* ``bookworm_rootfs(cache_dir)`` builds a minimal bookworm (minbase plus
  systemd, dbus, apt, iproute2, procps, ca-certificates) once with
  mmdebstrap, from the sources this machine's apt uses (as apt itself reads
  them: ``apt-get indextargets``), and caches it as
  ``bookworm-rootfs-<key>.tar.zst`` in ``cache_dir`` (the repository's
  ``.cache/``). ``<key>`` hashes the recipe and the sources, so a changed
  recipe builds a new cache. mmdebstrap writes the tarball under a temporary
  name, renamed into place only when complete, under a lock: an interrupted
  build is never taken for the cache. It runs in a private mount namespace,
  so whatever it mounts vanishes with it even if it is killed.

* ``SystemdContainer`` extracts a fresh copy of that tarball into a temporary
  directory (a test never dirties the cache) and boots it: ``ip netns exec``
  puts it in a network namespace, ``unshare`` adds new pid, mount, uts, ipc
  and cgroup namespaces (the process is first moved into a cgroup of its own
  on the cgroup2 hierarchy, which becomes the container's cgroup root), a
  small shell script mounts /proc, a read-only /sys, cgroup2, tmpfs on /run,
  /tmp and /dev (device nodes made with mknod, a private devpts), and execs
  ``chroot ROOT /lib/systemd/systemd`` as PID 1 with ``container=`` set, so
  systemd runs its container personality (no udev, no gettys: there is no
  /dev/console). ``run()`` enters all those namespaces with nsenter and
  chroots to PID 1's root. ``stop()`` runs ``systemctl poweroff`` and waits
  for PID 1 to exit; on timeout it kills PID 1 by PID, which makes the kernel
  kill everything else in the pid namespace.

  The network namespace is never the host's. Given a ``lab.netns.Lab`` the
  container is a lab host: a namespace whose ``eth0`` is a veth on the lab's
  bridge (address optional). Without a lab it gets a namespace of its own
  with only ``lo``.

How apt installs a local .deb and its dependencies without any network:
``stage_debs()`` copies the .debs into the root file system and runs, in a
plain chroot that uses the host's network (in a private mount and pid
namespace), ``apt-get update`` and
``apt-get install --download-only ./x.deb`` (both with
``--no-install-recommends``, as a lean server installs: what the package
needs is in its Depends). This resolves the dependencies
against the container's own dpkg database, so exactly the archives the
container lacks land in its ``/var/cache/apt/archives``. Inside the booted
container ``install_debs()`` then runs ``apt-get install ./x.deb``, which
finds every archive in place and needs no network: the real apt and dpkg,
with real maintainer scripts, under real systemd, offline (the container
has no route out; apt timers are masked so that nothing else takes apt's
lock). Downloaded archives are also hard-linked into
``cache_dir/apt-archives`` and offered to later runs, so a dependency is
fetched from the mirror once. The mirror is the one this machine's apt uses
(``/etc/apt/sources.list`` and ``sources.list.d``).

Everything this module starts is cleaned up by PID (the container's init,
its unshare parent), its cgroup is removed and its network namespace deleted,
also after a failure: use ``SystemdContainer`` as a context manager. If the
test process itself is killed, the parent-death signal and unshare's
--kill-child still take the container down (its temporary folder and a
lab's namespaces are then left behind).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import itertools
import os
import shlex
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

from debian.deb822 import Deb822

SUITE = "bookworm"
PACKAGES = ["systemd", "systemd-sysv", "dbus", "apt", "iproute2", "procps", "ca-certificates"]
# Bump when the way the cached root file system is made changes.
RECIPE_VERSION = 3

# Installs take only what a package depends on, as a lean server does.
NO_RECOMMENDS = ["--no-install-recommends"]
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
CONTAINER_ENV = {
    "PATH": PATH,
    "HOME": "/root",
    "LANG": "C.UTF-8",
    "TERM": "dumb",
    "DEBIAN_FRONTEND": "noninteractive",
}

_counter = itertools.count()


class ContainerError(RuntimeError):
    pass


class ContainerCommandError(subprocess.CalledProcessError):
    """A command inside the container failed; str() shows its output."""

    def __str__(self) -> str:
        text = super().__str__()
        for name, data in (("stdout", self.stdout), ("stderr", self.stderr)):
            if data:
                text += f"\n--- {name} ---\n{data.rstrip()}"
        return text


# --------------------------------------------------------------------------
# Mirror: whatever this machine's apt uses.


def debian_sources(suite: str = SUITE) -> str:
    """A deb822 sources file of this machine's apt sources for suite and its
    -updates and -security companions, main only.

    What apt itself read from /etc/apt/sources.list(.d), one-line or deb822
    (`apt-get indextargets`, whose answer is deb822 too): no parser of ours.
    """
    wanted = (suite, f"{suite}-updates", f"{suite}-security")
    targets = _run(["apt-get", "indextargets", "Created-By: Packages"]).stdout
    suites: dict[str, set[str]] = {}  # repository URI -> suites
    for target in Deb822.iter_paragraphs(targets.splitlines()):
        if (target.get("Target-Of") == "deb" and target.get("Component") == "main"
                and target.get("Release") in wanted):
            suites.setdefault(target["Repo-URI"], set()).add(target["Release"])
    if not any(suite in found for found in suites.values()):
        raise ContainerError(f"apt knows no source of {suite} main on this machine: see "
                             "/etc/apt/sources.list(.d), then run apt-get update")
    return "\n".join(
        Deb822({"Types": "deb", "URIs": uri, "Components": "main",
                "Suites": " ".join(s for s in wanted if s in found)}).dump()
        for uri, found in sorted(suites.items()))


# --------------------------------------------------------------------------
# The cached root file system.


def _run(argv: list[str], **kwargs) -> subprocess.CompletedProcess:
    kwargs.setdefault("check", True)
    kwargs.setdefault("capture_output", True)
    kwargs.setdefault("text", True)
    try:
        return subprocess.run(argv, **kwargs)
    except subprocess.CalledProcessError as error:
        raise ContainerCommandError(error.returncode, error.cmd, error.stdout,
                                    error.stderr) from None


def _chroot_command(root: Path, argv: list[str]) -> list[str]:
    """argv in a chroot with a private mount and pid namespace and /proc.

    The network stays the host's (this is how packages get downloaded); the
    mounts disappear with the namespace, whatever happens.
    """
    script = ('set -e; root="$1"; shift; '
              'mount -t proc proc "$root/proc"; '
              'exec chroot "$root" /usr/bin/env -i ' + " ".join(
                  shlex.quote(f"{k}={v}") for k, v in CONTAINER_ENV.items()) + ' "$@"')
    return ["unshare", "--mount", "--pid", "--fork", "--kill-child", "--propagation", "private",
            "sh", "-c", script, "sh", str(root)] + argv


def _remove_tree(path: Path) -> None:
    """rm -rf that never crosses into a mount (there should be none)."""
    if path.exists() or path.is_symlink():
        subprocess.run(["rm", "-rf", "--one-file-system", "--", str(path)], check=False)


# What makes the cached system a container's, run by mmdebstrap on the
# finished tree ($1). machine-id: mmdebstrap leaves it empty, so each boot
# makes its own and systemd does not take it for a first boot ("uninitialized"
# would apply presets to every unit). Nothing may take apt's lock behind a
# test's back (there is no network inside anyway).
CUSTOMIZE_HOOKS = [
    'echo bookworm > "$1/etc/hostname"',
    ': > "$1/etc/resolv.conf"',
    'chmod 644 "$1/etc/hostname" "$1/etc/resolv.conf"',
    *(f'ln -sf /dev/null "$1/etc/systemd/system/{unit}"'
      for unit in ("apt-daily.timer", "apt-daily-upgrade.timer", "apt-daily.service",
                   "apt-daily-upgrade.service")),
]


def mmdebstrap(sources: Path, target: Path, packages: list[str], hooks: list[str],
               options: tuple[str, ...] = (), attempts: int = 3) -> None:
    """mmdebstrap a minbase system with packages into target (a tarball or
    a folder, which must not exist), retried: a mirror that fails one
    request (seen in CI: "Failed getting release file") should not fail
    the suite. Its mounts live in a private mount namespace, gone with it
    even if killed."""
    argv = ["unshare", "--mount", "--propagation", "private",
            "mmdebstrap", "--mode=root", "--variant=minbase", "--include=" + ",".join(packages),
            *(f"--customize-hook={hook}" for hook in hooks), *options,
            SUITE, str(target), str(sources)]
    for attempt in range(1, attempts + 1):
        try:
            _run(argv, timeout=1800)
            return
        except ContainerCommandError:
            _remove_tree(target)
            if attempt == attempts:
                raise
            time.sleep(30 * attempt)


def bookworm_rootfs(cache_dir: Path) -> Path:
    """The cached bookworm root file system tarball, built on first use.

    Returns the path of a zstd-compressed tar of a minimal bookworm with
    systemd (see PACKAGES), named by a hash of its recipe and sources. Safe
    against concurrent callers and against a build that is interrupted:
    only a finished tarball is renamed into place.
    """
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    sources = debian_sources()
    recipe = repr((RECIPE_VERSION, SUITE, sorted(PACKAGES), CUSTOMIZE_HOOKS, sources))
    tarball = cache_dir / f"{SUITE}-rootfs-{hashlib.sha256(recipe.encode()).hexdigest()[:12]}.tar.zst"
    if tarball.exists():
        return tarball
    with open(cache_dir / f"{SUITE}-rootfs.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if tarball.exists():
            return tarball
        workdir = Path(tempfile.mkdtemp(prefix=f".{SUITE}-build-", dir=cache_dir))
        try:
            (workdir / "debian.sources").write_text(sources)
            partial = workdir / "rootfs.tar.zst"
            mmdebstrap(workdir / "debian.sources", partial, PACKAGES, CUSTOMIZE_HOOKS)
            with open(partial, "rb") as handle:
                os.fsync(handle.fileno())
            os.rename(partial, tarball)
            # Old recipes' tarballs are dead weight.
            for old in cache_dir.glob(f"{SUITE}-rootfs-*.tar.zst"):
                if old != tarball:
                    old.unlink(missing_ok=True)
        finally:
            _remove_tree(workdir)
    return tarball


def extract_rootfs(tarball: Path, dest: Path) -> Path:
    """Unpack a cached root file system into dest (which must not exist)."""
    dest.mkdir(parents=True)
    _run(["tar", "--extract", "--zstd", "--numeric-owner", "--xattrs", "--xattrs-include=*",
          "--acls", "-p", "-C", str(dest), "-f", str(tarball)], timeout=600)
    return dest


# --------------------------------------------------------------------------
# cgroups


def _cgroup2_mount() -> Path:
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        pre, _, post = line.partition(" - ")
        if post.split()[0] == "cgroup2":
            return Path(pre.split()[4])
    raise ContainerError("no cgroup2 hierarchy mounted; systemd needs one")


def _own_cgroup2_path() -> str:
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        if line.startswith("0::"):
            return line[3:].strip()
    return "/"


def _remove_cgroup(path: Path) -> None:
    if not path.exists():
        return
    kill = path / "cgroup.kill"
    if kill.exists() and (path / "cgroup.procs").read_text().strip():
        with contextlib.suppress(OSError):
            kill.write_text("1")
    deadline = time.monotonic() + 10
    while True:
        dirs = sorted((p for p in path.rglob("*") if p.is_dir()),
                      key=lambda p: len(p.parts), reverse=True) + [path]
        try:
            for directory in dirs:
                directory.rmdir()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


# --------------------------------------------------------------------------
# The container


_BOOT_SCRIPT = r"""
set -eu
R="$1"; LOG="$2"
mount --bind "$R" "$R"
mount -t proc -o nosuid,nodev,noexec proc "$R/proc"
mount -t sysfs -o ro,nosuid,nodev,noexec sysfs "$R/sys"
mount -t cgroup2 -o nosuid,nodev,noexec cgroup2 "$R/sys/fs/cgroup"
mount -t tmpfs -o mode=755,nosuid,nodev,size=20% tmpfs "$R/run"
mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs "$R/tmp"
mount -t tmpfs -o mode=755,nosuid,size=4m tmpfs "$R/dev"
mknod -m 666 "$R/dev/null" c 1 3
mknod -m 666 "$R/dev/zero" c 1 5
mknod -m 666 "$R/dev/full" c 1 7
mknod -m 666 "$R/dev/random" c 1 8
mknod -m 666 "$R/dev/urandom" c 1 9
mknod -m 666 "$R/dev/tty" c 5 0
mkdir -m 755 "$R/dev/pts"
mount -t devpts -o newinstance,ptmxmode=0666,mode=620,gid=5,nosuid,noexec devpts "$R/dev/pts"
ln -s pts/ptmx "$R/dev/ptmx"
mkdir -m 1777 "$R/dev/shm"
mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs "$R/dev/shm"
mkdir -m 755 "$R/dev/mqueue"
mount -t mqueue -o nosuid,nodev,noexec mqueue "$R/dev/mqueue" || true
ln -s /proc/self/fd "$R/dev/fd"
ln -s /proc/self/fd/0 "$R/dev/stdin"
ln -s /proc/self/fd/1 "$R/dev/stdout"
ln -s /proc/self/fd/2 "$R/dev/stderr"
ln -s /proc/kcore "$R/dev/core"
exec chroot "$R" /usr/bin/env -i container=boottorrent-lab PATH=@PATH@ LANG=C.UTF-8 \
    /lib/systemd/systemd --log-target=journal-or-kmsg
""".replace("@PATH@", PATH)


class SystemdContainer:
    """A bookworm system booted with systemd as PID 1; a context manager.

    with Lab() as lab, SystemdContainer(cache_dir, lab=lab, name="server",
                                        address="198.18.0.1") as ct:
        ct.run(["systemctl", "is-system-running"])

    cache_dir: where bookworm_rootfs() keeps its tarball (the repo's .cache/).
    lab: a lab.netns.Lab; the container becomes host `name` on its bridge,
    with interface `ifname` (eth0) and `address` (None: unconfigured). With
    no lab the container gets a network namespace with only lo.
    debs: .deb files to stage (see stage_debs()) before booting; their
    paths inside are in `staged_debs`, for install_debs().
    """

    def __init__(self, cache_dir: Path, *, lab=None, name: str = "ct",
                 address: str | None = None, hostname: str | None = None,
                 debs: list[str | os.PathLike] = (), boot_timeout: float = 120.0,
                 workdir: Path | None = None) -> None:
        self.cache_dir = Path(cache_dir)
        self.lab = lab
        self.name = name
        self.address = address
        self.hostname = hostname or name
        self.boot_timeout = boot_timeout
        self._own_workdir = workdir is None
        self.workdir = Path(workdir) if workdir else None
        self.rootfs: Path | None = None
        self.netns: str | None = None
        self.ifname: str | None = None
        self.host = None
        self._own_netns = False
        self.cgroup: Path | None = None
        self.process: subprocess.Popen | None = None
        self.pid: int | None = None  # PID 1 of the container, as the host sees it
        self.state: str | None = None
        self.failed_units: list[str] = []
        self._console = None
        self._prepared = False
        self.debs = list(debs)
        self.staged_debs: list[str] = []

    # -- lifecycle ---------------------------------------------------------

    def __enter__(self) -> "SystemdContainer":
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def prepare(self) -> Path:
        """Extract a fresh root file system (done by start() if needed)."""
        if self._prepared:
            return self.rootfs
        tarball = bookworm_rootfs(self.cache_dir)
        if self.workdir is None:
            self.workdir = Path(tempfile.mkdtemp(prefix=f"bt-ct-{self.name}-"))
        self.rootfs = extract_rootfs(tarball, self.workdir / "root")
        (self.rootfs / "etc/machine-id").write_text(uuid.uuid4().hex + "\n")
        (self.rootfs / "etc/hostname").write_text(self.hostname + "\n")
        hosts = f"127.0.0.1\tlocalhost\n127.0.1.1\t{self.hostname}\n::1\tlocalhost ip6-localhost\n"
        (self.rootfs / "etc/hosts").write_text(hosts)
        self._prepared = True
        return self.rootfs

    def _setup_network(self) -> None:
        if self.lab is not None:
            self.host = self.lab.add_host(self.name, self.address)
            self.netns = self.host.netns
            self.ifname = self.host.ifname
            self.address = self.host.address
        else:
            self.netns = f"btct{os.getpid() % 100000}{next(_counter)}"
            _run(["ip", "netns", "add", self.netns])
            self._own_netns = True
            _run(["ip", "-n", self.netns, "link", "set", "lo", "up"])

    def _setup_cgroup(self) -> None:
        base = _cgroup2_mount() / _own_cgroup2_path().lstrip("/")
        self.cgroup = base / f"boottorrent-lab-{os.getpid()}-{next(_counter)}"
        self.cgroup.mkdir()

    def start(self) -> None:
        """Boot; returns once systemd reports running or degraded."""
        if self.process is not None:
            raise ContainerError("already started")
        self.prepare()
        if self.debs and not self.staged_debs:
            self.staged_debs = self.stage_debs(self.debs)
        self._setup_network()
        self._setup_cgroup()
        self._console = open(self.workdir / "console.log", "wb")
        launcher = (f"echo $$ > {shlex.quote(str(self.cgroup / 'cgroup.procs'))} && "
                    f'exec "$@"')
        # Join the cgroup first: `ip netns exec` mounts a fresh /sys without
        # the cgroup hierarchies.
        argv = ["sh", "-c", launcher, "sh",
                "ip", "netns", "exec", self.netns,
                "unshare", "--pid", "--fork", "--kill-child", "--mount", "--uts", "--ipc",
                "--cgroup", "--propagation", "private",
                "sh", "-c", _BOOT_SCRIPT, "sh", str(self.rootfs), "/dev/null"]
        self.process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=self._console,
                                        stderr=subprocess.STDOUT, start_new_session=True,
                                        preexec_fn=_die_with_parent)
        self.pid = self._find_init()
        _run(["nsenter", "-t", str(self.pid), "-u", "hostname", self.hostname])
        self._wait_running()

    def _find_init(self) -> int:
        """The host PID of the container's PID 1 (unshare's only child)."""
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ContainerError(f"container exited at once:\n{self.console_log()}")
            children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
            with contextlib.suppress(OSError):
                pids = children.read_text().split()
                if pids:
                    pid = int(pids[0])
                    # Wait until the boot script has exec'ed systemd.
                    with contextlib.suppress(OSError):
                        if os.readlink(f"/proc/{pid}/exe").endswith("/systemd"):
                            return pid
            time.sleep(0.05)
        raise ContainerError(f"systemd did not start:\n{self.console_log()}")

    def _wait_running(self) -> None:
        deadline = time.monotonic() + self.boot_timeout
        state = "unknown"
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ContainerError(f"systemd exited during boot:\n{self.console_log()}")
            result = self.run(["systemctl", "is-system-running"], check=False)
            state = result.stdout.strip() or result.stderr.strip()
            if state in ("running", "degraded"):
                break
            time.sleep(0.2)
        else:
            jobs = self.run(["systemctl", "list-jobs", "--no-pager"], check=False).stdout
            raise ContainerError(f"boot did not finish in {self.boot_timeout}s "
                                 f"(state {state!r}); jobs:\n{jobs}")
        self.state = state
        if state == "degraded":
            failed = self.run(["systemctl", "list-units", "--failed", "--plain", "--no-legend",
                               "--no-pager"], check=False).stdout
            self.failed_units = [line.split()[0] for line in failed.splitlines() if line.strip()]

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, timeout: float = 60.0) -> int | None:
        """systemctl poweroff, wait for PID 1 to exit; kill it by PID on timeout.

        Returns PID 1's exit status as unshare reports it (None if it had
        to be killed or never started).
        """
        if self.process is None:
            return None
        status = None
        if self.process.poll() is None:
            with contextlib.suppress(Exception):
                self.run(["systemctl", "poweroff", "--no-block"], check=False, timeout=30)
            try:
                status = self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self._kill()
        else:
            status = self.process.returncode
        return status

    def _kill(self) -> None:
        # Killing PID 1 of a pid namespace kills all of it; unshare
        # --kill-child covers the case where only unshare is left.
        for pid in (self.pid, self.process.pid if self.process else None):
            if pid:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        if self.process:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(10)

    def close(self) -> None:
        """Stop if running and remove everything: safe to call repeatedly."""
        try:
            if self.process is not None:
                if self.process.poll() is None:
                    self.stop()
                if self.process.poll() is None:
                    self._kill()
        finally:
            if self.cgroup is not None:
                with contextlib.suppress(OSError):
                    _remove_cgroup(self.cgroup)
                self.cgroup = None
            if self._own_netns and self.netns:
                subprocess.run(["ip", "netns", "delete", self.netns], capture_output=True)
                self._own_netns = False
            # A lab host's namespace is the lab's to delete (Lab.close()).
            if self._console:
                self._console.close()
                self._console = None
            if self._own_workdir and self.workdir is not None:
                _remove_tree(self.workdir)
                self.workdir = None
            self.rootfs = None
            self._prepared = False

    # -- using it ----------------------------------------------------------

    def command(self, argv: list[str], env: dict[str, str] | None = None) -> list[str]:
        """argv as a host command that runs inside the container."""
        if not self.running:
            raise ContainerError("container is not running")
        environment = {**CONTAINER_ENV, **(env or {})}
        return (["nsenter", "-t", str(self.pid), "-m", "-u", "-i", "-n", "-p", "-C", "-r", "-w",
                 "/usr/bin/env", "-i"] + [f"{k}={v}" for k, v in environment.items()] + list(argv))

    def run(self, argv: list[str], check: bool = True, env: dict[str, str] | None = None,
            **kwargs) -> subprocess.CompletedProcess:
        """Run argv inside the container (all its namespaces, its root, clean env)."""
        kwargs.setdefault("capture_output", True)
        kwargs.setdefault("text", True)
        kwargs.setdefault("timeout", 600)
        if "input" not in kwargs:
            kwargs.setdefault("stdin", subprocess.DEVNULL)
        result = subprocess.run(self.command(argv, env), **kwargs)
        if check and result.returncode != 0:
            raise ContainerCommandError(result.returncode, argv, result.stdout, result.stderr)
        return result

    def path(self, inside: str | os.PathLike) -> Path:
        """Host path of a path inside the container (through its mounts when running)."""
        relative = str(inside).lstrip("/")
        if self.running:
            return Path(f"/proc/{self.pid}/root") / relative
        if self.rootfs is None:
            raise ContainerError("no root file system yet: call prepare() or start()")
        return self.rootfs / relative

    def copy_in(self, src: str | os.PathLike, dest: str | os.PathLike) -> str:
        """Copy a host file or tree to dest inside the container; returns dest."""
        src = Path(src)
        target = self.path(dest)
        if str(dest).endswith("/") or target.is_dir():
            target = target / src.name
            dest = str(Path(dest) / src.name)
        target.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, target, symlinks=True, dirs_exist_ok=True)
        else:
            shutil.copy2(src, target)
        return str(dest)

    def copy_out(self, src: str | os.PathLike, dest: str | os.PathLike) -> Path:
        source = self.path(src)
        dest = Path(dest)
        if source.is_dir():
            shutil.copytree(source, dest, symlinks=True, dirs_exist_ok=True)
        else:
            shutil.copy2(source, dest)
        return dest

    def console_log(self) -> str:
        if self.workdir and (self.workdir / "console.log").exists():
            return (self.workdir / "console.log").read_text(errors="replace")[-4000:]
        return ""

    def journal(self, unit: str | None = None, lines: int = 200) -> str:
        argv = ["journalctl", "--no-pager", "-n", str(lines)] + (["-u", unit] if unit else [])
        return self.run(argv, check=False).stdout

    # -- packages ----------------------------------------------------------

    def stage_debs(self, debs: list[str | os.PathLike], directory: str = "/root/debs") -> list[str]:
        """Put .debs in the container and download their dependencies.

        Call before start(). Runs apt-get in a plain chroot with the host's
        network; the booted container itself stays offline. Returns the
        .debs' paths inside the container, for install_debs().
        """
        if self.process is not None:
            raise ContainerError("stage_debs() must run before start()")
        root = self.prepare()
        inside = []
        for deb in debs:
            inside.append(self.copy_in(deb, directory.rstrip("/") + "/"))
        shared = self.cache_dir / "apt-archives"
        shared.mkdir(parents=True, exist_ok=True)
        archives = root / "var/cache/apt/archives"
        _link_debs(shared, archives)
        resolv = root / "etc/resolv.conf"
        saved = resolv.read_bytes() if resolv.exists() else b""
        resolv.unlink(missing_ok=True)
        shutil.copyfile("/etc/resolv.conf", resolv)
        try:
            _run(_chroot_command(root, ["apt-get", "update", "-q"]), timeout=600)
            _run(_chroot_command(root, ["apt-get", "install", "-q", "-y", "--download-only",
                                        *NO_RECOMMENDS] + inside), timeout=1200)
        finally:
            resolv.unlink(missing_ok=True)
            resolv.write_bytes(saved)
        _link_debs(archives, shared)
        return inside

    def install_debs(self, debs: list[str] | None = None,
                     extra: list[str] = ()) -> subprocess.CompletedProcess:
        """apt-get install staged .debs (default: all) inside the booted container, offline."""
        debs = self.staged_debs if debs is None else debs
        # Not --no-download: with it apt (2.6) leaves a local .deb's path
        # relative and fails ("Pathname to install is not absolute"). The
        # archives are all in place, and the container has no route out.
        return self.run(["apt-get", "install", "-q", "-y", *NO_RECOMMENDS, *extra, *debs])


def _die_with_parent() -> None:
    """In the child before exec: SIGKILL when the test process dies.

    The launcher execs ip, which execs unshare (--kill-child): if the test
    is killed outright, unshare dies, then the container's PID 1, then
    everything in its pid namespace.
    """
    import ctypes
    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def _link_debs(src: Path, dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    for deb in src.glob("*.deb"):
        target = dest / deb.name
        if target.exists():
            continue
        try:
            os.link(deb, target)
        except OSError:
            shutil.copy2(deb, target)
