"""The Debian package: built with dpkg-buildpackage from a copy of the tree,
lintian-clean, installed with apt under a real systemd (lab/container.py),
serving a lab LAN once configured, and purged without leftovers.

Slow (a package build, two container boots): run with -m package.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.parse
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from lab.cluster import stamp_bzimage_header  # noqa: E402
from lab.container import SystemdContainer  # noqa: E402
from lab.netns import SERVER_ADDRESS, Lab  # noqa: E402

CACHE = REPO / ".cache"
PACKAGE = "boottorrent"
UNITS = ("boottorrent.service", "boottorrent-dnsmasq.service",
         "boottorrent-tracker.service", "boottorrent-seeder.service")
# A clean build environment: Debian's tools and interpreter only (this
# machine's PATH may start with another python3).
BUILD_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}
# Files and folders of ours that must be gone after a purge.
OURS = ("/etc/boottorrent", "/var/lib/boottorrent", "/usr/lib/boottorrent",
        "/usr/lib/python3/dist-packages/boottorrent", "/usr/share/doc/boottorrent",
        "/etc/systemd/system/multi-user.target.wants/boottorrent.service",
        "/var/lib/systemd/deb-systemd-helper-enabled/boottorrent.service.dsh-also")

pytestmark = [
    pytest.mark.package,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (namespaces, chroot)"),
    pytest.mark.skipif(not all(shutil.which(t) for t in ("dpkg-buildpackage", "lintian",
                                                         "mmdebstrap", "help2man")),
                       reason="needs dpkg-dev, debhelper, lintian, mmdebstrap, help2man"),
]


# ------------------------------------------------------------------ building

def source_files() -> list[str]:
    """What the package is built from: tracked and new files, not ignored ones."""
    out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                         cwd=REPO, check=True, capture_output=True).stdout
    return [f for f in out.decode().split("\0") if f and os.path.lexists(REPO / f)]


def copy_tree(target: Path) -> None:
    for name in source_files():
        dest = target / name
        dest.parent.mkdir(parents=True, exist_ok=True)
        source = REPO / name
        if source.is_symlink():
            os.symlink(os.readlink(source), dest)
        else:
            shutil.copy2(source, dest)


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict[str, Path]:
    """Build the .deb from a copy of the tree in a temporary folder, so that
    dpkg-buildpackage's output (it writes to ..) never lands in /work."""
    top = tmp_path_factory.mktemp("deb")
    source = top / "boottorrent"
    copy_tree(source)
    started = time.monotonic()
    result = subprocess.run(["dpkg-buildpackage", "-us", "-uc", "-b"], cwd=source,
                            env={**BUILD_ENV, "HOME": str(top)}, capture_output=True,
                            text=True, timeout=1800)
    (top / "build.log").write_text(result.stdout + result.stderr)
    assert result.returncode == 0, (result.stdout + result.stderr)[-6000:]
    print(f"dpkg-buildpackage: {time.monotonic() - started:.0f} s")
    (deb,) = top.glob(f"{PACKAGE}_*_amd64.deb")
    (changes,) = top.glob(f"{PACKAGE}_*_amd64.changes")
    return {"deb": deb, "changes": changes, "top": top}


def test_lintian_clean(built):
    result = subprocess.run(["lintian", "--pedantic", "--display-info", built["changes"]],
                            env={**BUILD_ENV, "HOME": str(built["top"])},
                            capture_output=True, text=True, timeout=900)
    print(result.stdout)
    tags = result.stdout.splitlines()
    bad = [line for line in tags if line.startswith(("E:", "W:"))]
    assert not bad, "\n".join(bad)
    assert result.returncode == 0, result.stdout + result.stderr


def test_package_contents(built):
    listing = subprocess.run(["dpkg-deb", "--contents", built["deb"]], check=True,
                             capture_output=True, text=True).stdout
    paths = {line.split()[5].lstrip(".") for line in listing.splitlines()}
    for path in ("/usr/bin/boottorrent", "/usr/bin/boottorrent-add-image",
                 "/usr/lib/boottorrent/pivotal-base.cpio.zst",
                 "/etc/boottorrent/boottorrent.conf", "/etc/boottorrent/images.d/",
                 "/usr/share/man/man1/boottorrent.1.gz",
                 "/usr/share/man/man1/boottorrent-add-image.1.gz",
                 *(f"/lib/systemd/system/{unit}" for unit in UNITS)):
        assert path in paths, path
    conffiles = subprocess.run(["dpkg-deb", "--info", built["deb"], "conffiles"], check=True,
                               capture_output=True, text=True).stdout.split()
    assert "/etc/boottorrent/boottorrent.conf" in conffiles


# ------------------------------------------------------------------ installing

def unit_states(ct: SystemdContainer) -> dict[str, dict[str, str]]:
    states = {}
    for unit in UNITS:
        out = ct.run(["systemctl", "show", "-p", "LoadState,ActiveState,UnitFileState",
                      unit]).stdout
        states[unit] = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
    return states


def assert_nothing_of_ours_runs(ct: SystemdContainer) -> None:
    for unit, state in unit_states(ct).items():
        assert state["ActiveState"] in ("inactive", "failed"), (unit, state)
    # dnsmasq-base has no service of its own: any dnsmasq would be ours.
    assert ct.run(["pgrep", "-x", "dnsmasq"], check=False).returncode == 1
    assert ct.run(["pgrep", "-f", "boottorrent seeder"], check=False).returncode == 1
    # The opentracker package starts its own opentracker.service (Debian's
    # open tracker on port 6969, see debian/boottorrent.README.Debian): any
    # other opentracker process would be ours.
    debian_tracker = ct.run(["systemctl", "show", "-p", "MainPID", "--value",
                             "opentracker.service"], check=False).stdout.strip()
    trackers = ct.run(["pgrep", "-x", "opentracker"], check=False).stdout.split()
    assert set(trackers) <= {debian_tracker}, (trackers, debian_tracker)
    # No DHCP, proxy-DHCP or TFTP socket.
    sockets = ct.run(["ss", "-Hulpn"]).stdout
    for port in (":67 ", ":69 ", ":4011 "):
        assert port not in sockets, sockets


def install(ct: SystemdContainer) -> None:
    result = ct.install_debs()
    assert "boottorrent" in result.stdout
    status = ct.run(["dpkg-query", "-W", "-f=${Status}", PACKAGE]).stdout
    assert status == "install ok installed"


def assert_installed_state(ct: SystemdContainer) -> None:
    passwd = ct.run(["getent", "passwd", "boottorrent"]).stdout.strip().split(":")
    assert passwd[5] == "/var/lib/boottorrent" and passwd[6] == "/usr/sbin/nologin", passwd
    assert int(passwd[2]) < 1000, "not a system user"
    ct.run(["getent", "group", "boottorrent"])
    assert ct.run(["stat", "-c", "%U:%G %a", "/var/lib/boottorrent"]).stdout.strip() \
        == "boottorrent:boottorrent 755"

    conffiles = ct.run(["dpkg-query", "-W", "-f=${Conffiles}", PACKAGE]).stdout
    assert "/etc/boottorrent/boottorrent.conf " in conffiles, conffiles

    states = unit_states(ct)
    assert all(s["LoadState"] == "loaded" for s in states.values()), states
    # Enabled, so that a configured server comes back after a reboot, but
    # not started; the helpers are only ever pulled in by it.
    assert states["boottorrent.service"]["UnitFileState"] == "enabled", states
    for unit in UNITS[1:]:
        assert states[unit]["UnitFileState"] == "static", states
    assert_nothing_of_ours_runs(ct)


def purge_and_check(ct: SystemdContainer) -> None:
    files = ct.run(["dpkg-query", "-L", PACKAGE]).stdout.split()
    ct.run(["apt-get", "purge", "-q", "-y", PACKAGE])
    status = ct.run(["dpkg-query", "-W", "-f=${Status}", PACKAGE], check=False)
    assert status.returncode != 0 or "not-installed" in status.stdout, status.stdout
    left = []
    for path in files:
        # Shared folders (/usr/bin, /etc, ...) stay; anything that was a
        # file of ours, or one of our own folders, must be gone.
        if ct.path(path).is_dir():  # also /lib, a symlink on merged-/usr
            continue
        if os.path.lexists(ct.path(path)):
            left.append(path)
    left += [path for path in OURS if os.path.lexists(ct.path(path))]
    assert not left, left
    units = ct.run(["systemctl", "list-unit-files", "--no-legend", "boottorrent*"],
                   check=False).stdout  # exit status 1: no such unit file
    assert units.strip() == "", units
    assert_nothing_of_ours_runs(ct)
    for database in ("passwd", "group"):
        found = ct.run(["getent", database, "boottorrent"], check=False)
        assert found.returncode == 2, found.stdout


def test_install_and_purge(built):
    started = time.monotonic()
    with Lab() as lab, SystemdContainer(CACHE, lab=lab, name="server", address=SERVER_ADDRESS,
                                        debs=[built["deb"]]) as ct:
        booted = time.monotonic()
        install(ct)
        installed = time.monotonic()
        assert_installed_state(ct)

        # The autopkgtest, under a real systemd.
        ct.copy_in(REPO / "debian/tests/installed", "/root/autopkgtest-installed")
        result = ct.run(["sh", "/root/autopkgtest-installed"], check=False)
        assert result.returncode == 0, result.stdout + result.stderr

        # An upgrade (here: a reinstallation) starts nothing either.
        ct.install_debs(extra=["--reinstall"])
        assert_nothing_of_ours_runs(ct)

        # Unconfigured, even an explicit start serves nothing.
        start = ct.run(["systemctl", "start", "boottorrent.service"], check=False)
        assert start.returncode != 0, "boottorrent.service started without an interface"
        assert_nothing_of_ours_runs(ct)
        ct.run(["systemctl", "reset-failed"])

        purge_and_check(ct)
        state = ct.run(["systemctl", "is-system-running"], check=False).stdout.strip()
        assert state in ("running", "degraded"), state
    print(f"boot {booted - started:.0f} s, install {installed - booted:.0f} s, "
          f"total {time.monotonic() - started:.0f} s")


# ------------------------------------------------------------------ serving

def test_configured_server_serves_the_lan(built, tmp_path):
    """After installation, what an admin does (README.Debian), then a client.

    1. configure the interface (the admin edits the conffile),
    2. register an image with boottorrent-add-image,
    3. systemctl start boottorrent,
    4. a client namespace gets a PXE answer from the container's dnsmasq,
    5. a client downloads the image through the tracker and the seeder,
    then purge the used installation.

    The client of step 5 is the installed pivotal's own client (its
    python, libtorrent and busybox, in a chroot of the unpacked base plus
    the configuration part the server hands out over HTTP) with --dry-run,
    in a lab namespace: all of the pivotal but its kernel and the kexec,
    which the QEMU tests boot.
    """
    lt = pytest.importorskip("libtorrent")
    from lab import dhcp
    from lab.kernel import kernel_deb
    from lab.server import fetch, lab_config

    kernel = kernel_deb()
    with Lab() as lab, SystemdContainer(CACHE, lab=lab, name="server", address=SERVER_ADDRESS,
                                        debs=[built["deb"]]) as ct:
        install(ct)

        # 1. Configure, as an admin would. (ProtectHome= in the units:
        # nothing the server reads may live under /root.)
        ct.copy_in(kernel, "/srv/boottorrent/")
        ct.path("/etc/boottorrent/boottorrent.conf").write_text(lab_config(
            f"/srv/boottorrent/{kernel.name}", clients={"seed_time_max": 30, "seed_idle_time": 2}))
        ct.run(["boottorrent", "check"])
        # Debian's own opentracker.service holds port 6969 (README.Debian).
        ct.run(["systemctl", "disable", "--now", "opentracker.service"])

        # 2. Register an image (random bytes: this test does not boot it).
        image = ct.path("/srv/boottorrent/image")
        image.mkdir(parents=True)
        (image / "vmlinuz").write_bytes(os.urandom(3_000_000))
        stamp_bzimage_header(image / "vmlinuz")
        (image / "initrd.img").write_bytes(os.urandom(2_000_000))
        ct.run(["boottorrent-add-image", "test", "--kernel", "/srv/boottorrent/image/vmlinuz",
                "--initrd", "/srv/boottorrent/image/initrd.img", "--cmdline", "quiet"])

        # 3. Start the server.
        start = ct.run(["systemctl", "start", "boottorrent.service"], check=False)
        assert start.returncode == 0, ct.journal(lines=60)
        wait_active(ct, UNITS)

        # 4. A PXE client (BIOS ROM, then iPXE) gets its answer.
        pxe = lab.add_host("pxe", address=None)
        offers = dhcp.probe(pxe, arch=0, timeout=5)
        assert any(o.server_id == SERVER_ADDRESS and o.file == "undionly.kpxe"
                   for o in offers), offers
        offers = dhcp.probe(pxe, arch=0, ipxe=True, user_class="iPXE", timeout=5)
        assert any(o.file.startswith(f"http://{SERVER_ADDRESS}") for o in offers), offers

        # 5. A client downloads the image through the tracker and the seeder,
        # running the installed pivotal: its base and the config part the
        # server hands out, unpacked as the kernel would, in a chroot.
        client = lab.add_host("client")
        root = tmp_path / "pivotal"
        root.mkdir()
        base = ct.path("/usr/lib/boottorrent/pivotal-base.cpio.zst")
        subprocess.run(f"zstd -dc {base} | cpio -id --quiet", shell=True, cwd=root, check=True)
        config_cpio = fetch(client, f"http://{SERVER_ADDRESS}:6980/boot/pivotal/config.cpio")
        subprocess.run(["cpio", "-id", "--quiet"], input=config_cpio, cwd=root, check=True)
        pivotal_json = root / "etc/boottorrent/pivotal.json"
        # The mounts are private to this command (ip netns exec's own mount
        # namespace); its /sys shows the client namespace's interface.
        script = (f"mount -t proc proc {root}/proc && mount --rbind /sys {root}/sys && "
                  f"mount --rbind /dev {root}/dev && mount -t tmpfs tmpfs {root}/run && "
                  f"chroot {root} /usr/bin/python3 -S -m boottorrent.pivotal "
                  "--image test --dry-run; ")
        script += f"status=$?; cp -a {root}/run/boottorrent {tmp_path}/client; exit $status"
        result = client.run(["sh", "-c", script], check=False, timeout=180,
                            env={"PATH": "/usr/sbin:/usr/bin", "LANG": "C.UTF-8",
                                 "PYTHONPATH": "/usr/lib/python3/dist-packages",
                                 "PYTHONDONTWRITEBYTECODE": "1"})
        assert result.returncode == 0, result.stdout + result.stderr + ct.journal(lines=40)
        assert "dry run: kexec" in result.stdout, result.stdout
        summary = json.loads((tmp_path / "client" / "summary.json").read_text())
        assert summary["progress"] == 1.0 and summary["from_server"] > 0, summary

        # The tracker counted the client's completed download.
        spec = json.loads(pivotal_json.read_text())["images"]["test"]
        info = lt.torrent_info(lt.bdecode(base64.b64decode(spec["torrent"])))
        infohash = bytes.fromhex(str(info.info_hash()))
        scrape = lt.bdecode(fetch(client, f"http://{SERVER_ADDRESS}:6969/scrape?info_hash="
                                  + urllib.parse.quote_from_bytes(infohash)))
        counts = scrape[b"files"][infohash]
        assert counts[b"downloaded"] >= 1, counts
        # ... and the seeder heard the client's reports.
        status = json.loads(fetch(client, f"http://{SERVER_ADDRESS}:6980/status"))
        assert any(c.get("mac") == client.mac for c in status["clients"]), status

        # An upgrade (here: a reinstallation) restarts a running server.
        before = main_pids(ct)
        ct.install_debs(extra=["--reinstall"])
        wait_active(ct, UNITS)
        after = main_pids(ct)
        assert all(after[unit] != before[unit] for unit in UNITS[1:]), (before, after)

        # Purge a used installation: state, snapshots and all.
        ct.run(["systemctl", "stop", "boottorrent.service"])
        purge_and_check(ct)


def main_pids(ct: SystemdContainer) -> dict[str, str]:
    return {unit: ct.run(["systemctl", "show", "-p", "MainPID", "--value", unit]).stdout.strip()
            for unit in UNITS}


def wait_active(ct: SystemdContainer, units, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        states = {u: s["ActiveState"] for u, s in unit_states(ct).items() if u in units}
        if all(state == "active" for state in states.values()):
            return
        if time.monotonic() > deadline or "failed" in states.values():
            logs = "\n".join(ct.journal(unit, 40) for unit in units)
            raise AssertionError(f"{states}\n{logs}")
        time.sleep(0.5)
