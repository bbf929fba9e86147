"""The Debian package: built with dpkg-buildpackage from a copy of the tree,
lintian-clean, installed with apt under a real systemd (lab/container.py),
serving a lab LAN once configured, and purged without leftovers.

Slow (a package build, two container boots): run with -m package.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
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

from boottorrent.pivotal import paths  # noqa: E402
from lab.cluster import add_image_args, random_image, stamp_bzimage_header  # noqa: E402
from lab.container import SystemdContainer  # noqa: E402
from lab.kernel import kernel_deb  # noqa: E402
from lab.netns import SERVER_ADDRESS, Lab  # noqa: E402
from lab.server import Server  # noqa: E402
from lab.token import newc_files  # noqa: E402
from test_rootfs import make_tree  # noqa: E402

CACHE = REPO / ".cache"
PACKAGE = "boottorrent"
UNITS = ("boottorrent.service", "boottorrent-dnsmasq.service",
         "boottorrent-tracker.service", "boottorrent-seeder.service")
# Runs on a follower only ([follow] primary): skipped on every server here.
FOLLOW_UNIT = "boottorrent-follow.service"
ALL_UNITS = UNITS + (FOLLOW_UNIT,)
# Watches images.d while the server runs; it triggers boottorrent-images.service.
IMAGES_PATH = "boottorrent-images.path"
# A clean build environment: Debian's tools and interpreter only (this
# machine's PATH may start with another python3).
BUILD_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}
# Files and folders of ours that must be gone after a purge.
OURS = ("/etc/boottorrent", "/var/lib/boottorrent", "/var/lib/private/boottorrent",
        "/var/cache/boottorrent", "/etc/kernel/postinst.d/zz-boottorrent",
        "/etc/kernel/postrm.d/zz-boottorrent",
        "/usr/lib/boottorrent",
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
    for path in ("/usr/sbin/boottorrent", "/usr/sbin/boottorrent-add-image",
                 "/usr/share/boottorrent/pivotal/init",
                 "/etc/kernel/postinst.d/zz-boottorrent", "/etc/kernel/postrm.d/zz-boottorrent",
                 "/etc/boottorrent/boottorrent.conf", "/etc/boottorrent/images.d/",
                 "/etc/boottorrent/node-files/",
                 "/lib/systemd/system-preset/50-boottorrent.preset",
                 "/usr/share/doc/boottorrent/examples/example.conf.example",
                 "/usr/share/man/man8/boottorrent.8.gz",
                 "/usr/share/man/man8/boottorrent-add-image.8.gz",
                 "/usr/share/man/man5/boottorrent.conf.5.gz",
                 *(f"/lib/systemd/system/{unit}" for unit in ALL_UNITS)):
        assert path in paths, path
    conffiles = subprocess.run(["dpkg-deb", "--info", built["deb"], "conffiles"], check=True,
                               capture_output=True, text=True).stdout.split()
    assert conffiles == ["/etc/boottorrent/boottorrent.conf",
                         "/etc/kernel/postinst.d/zz-boottorrent"], conffiles
    # The pivotal is built on the server from its own packages: the package
    # ships no other package's binaries.
    assert not [path for path in paths if path.startswith("/usr/lib/boottorrent")], paths
    triggers = subprocess.run(["dpkg-deb", "--info", built["deb"], "triggers"], check=True,
                              capture_output=True, text=True).stdout
    for path in ("/bin/busybox", "/sbin/kexec", "/usr/lib/python3.11",
                 "/usr/lib/python3/dist-packages/libtorrent.cpython-311-x86_64-linux-gnu.so"):
        assert f"interest-noawait {path}\n" in triggers, triggers


def test_man_pages_render(built, tmp_path):
    """As `man` shows them: no groff warning, and each command of
    boottorrent(8) a paragraph of its own with its summary (help2man reads
    argparse's help, which breaks the line after a long command name)."""
    subprocess.run(["dpkg-deb", "-x", built["deb"], tmp_path], check=True)
    pages = {}
    for page in ("man8/boottorrent.8.gz", "man8/boottorrent-add-image.8.gz",
                 "man5/boottorrent.conf.5.gz"):
        shown = subprocess.run(["man", "--warnings", "-l", tmp_path / "usr/share/man" / page],
                               env={**BUILD_ENV, "LANG": "C", "MANWIDTH": "80"},
                               capture_output=True, text=True)
        assert shown.returncode == 0 and shown.stderr == "", (page, shown.stderr)
        pages[page] = shown.stdout
    commands = pages["man8/boottorrent.8.gz"]
    for name, summary in (("add-image", "register an image"),
                          ("remove-image", "unregister an image"),
                          ("sync-images", "register and unregister"),
                          ("build-pivotal", "build the pivotal"), ("status", "show images")):
        assert re.search(rf"^ {{7}}{name}(\n {{14}}| +){summary}", commands, re.M), commands
    conf = pages["man5/boottorrent.conf.5.gz"]
    for key in ("interface", "mode", "announce_interval", "seed_time_max", "default_image"):
        assert re.search(rf"^ {{7}}{key} = ", conf, re.M), conf


# ------------------------------------------------------------------ installing

def unit_states(ct: SystemdContainer, properties: str = "LoadState,ActiveState,UnitFileState",
                units: tuple[str, ...] = UNITS) -> dict[str, dict[str, str]]:
    states = {}
    for unit in units:
        out = ct.run(["systemctl", "show", "-p", properties, unit]).stdout
        states[unit] = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
    return states


def assert_nothing_of_ours_runs(ct: SystemdContainer) -> None:
    for unit, state in unit_states(ct, units=ALL_UNITS).items():
        assert state["ActiveState"] in ("inactive", "failed"), (unit, state)
    # dnsmasq-base has no service of its own: any dnsmasq would be ours.
    assert ct.run(["pgrep", "-x", "dnsmasq"], check=False).returncode == 1
    assert ct.run(["pgrep", "-f", "boottorrent seeder"], check=False).returncode == 1
    # No tracker either, ours or Debian's opentracker.service (which our
    # preset keeps disabled).
    assert ct.run(["pgrep", "-x", "opentracker"], check=False).returncode == 1
    # Nothing listens: no DHCP, proxy-DHCP, TFTP, tracker, seeder or HTTP socket.
    sockets = ct.run(["ss", "-Htulpn"]).stdout
    for port in (":67 ", ":69 ", ":4011 ", ":6969 ", ":6980 ", ":6881 "):
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

    states = unit_states(ct, units=ALL_UNITS)
    assert all(s["LoadState"] == "loaded" for s in states.values()), states
    # Enabled, so that a configured server comes back after a reboot, but
    # not started; the helpers are only ever pulled in by it.
    assert states["boottorrent.service"]["UnitFileState"] == "enabled", states
    for unit in ALL_UNITS[1:]:
        assert states[unit]["UnitFileState"] == "static", states
    # Installed with boottorrent, Debian's public tracker is not enabled.
    debian_tracker = ct.run(["systemctl", "show", "-p", "UnitFileState,ActiveState",
                             "opentracker.service"]).stdout.split()
    debian_tracker.sort()
    assert debian_tracker == ["ActiveState=inactive", "UnitFileState=disabled"], debian_tracker
    assert_nothing_of_ours_runs(ct)


def assert_unconfigured_start_is_skipped(ct: SystemdContainer) -> None:
    """As at every boot of an installed, unconfigured server: the units are
    skipped (condition failed), none failed, and the journal says why."""
    start = ct.run(["systemctl", "start", "boottorrent.service"], check=False)
    assert start.returncode == 0, start.stderr
    # The helpers' own jobs (their ExecCondition) may still be running.
    wait_for(lambda: no_jobs(ct), "the helpers' jobs done", ct)
    for unit, state in unit_states(ct, "ActiveState,Result", ALL_UNITS).items():
        assert state == {"ActiveState": "inactive", "Result": "exec-condition"}, (unit, state)
    assert unit_states(ct, "ActiveState", (IMAGES_PATH,))[IMAGES_PATH] == {"ActiveState": "inactive"}
    failed = ct.run(["systemctl", "list-units", "--failed", "--no-legend", "--plain"]).stdout
    assert "boottorrent" not in failed, failed
    assert "[server] interface: not set" in ct.journal("boottorrent.service", 20)
    assert_nothing_of_ours_runs(ct)


def exposure(ct: SystemdContainer) -> dict[str, float]:
    """systemd-analyze security's overall exposure of each unit."""
    scores = {}
    for unit in ALL_UNITS + ("boottorrent-images.service",):
        out = ct.run(["systemd-analyze", "security", "--no-pager", unit]).stdout
        found = re.search(r"Overall exposure level for \S+: ([0-9.]+)", out)
        assert found, out
        scores[unit] = float(found[1])
    return scores


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

        # The autopkgtests, under a real systemd. (serve's linux-image-amd64
        # is played by the lab's cached kernel package, as [pivotal] kernel.)
        ct.copy_in(REPO / "debian/tests/installed", "/root/autopkgtest-installed")
        result = ct.run(["sh", "/root/autopkgtest-installed"], check=False)
        assert result.returncode == 0, result.stdout + result.stderr
        kernel = ct.copy_in(kernel_deb(), "/srv/")
        ct.copy_in(REPO / "debian/tests/serve", "/root/autopkgtest-serve")
        result = ct.run(["sh", "/root/autopkgtest-serve"], check=False,
                        env={"PIVOTAL_KERNEL": kernel})
        assert result.returncode == 0, result.stdout + result.stderr
        assert result.stdout.endswith("ok\n"), result.stdout

        # An upgrade (here: a reinstallation) starts nothing either.
        ct.install_debs(extra=["--reinstall"])
        assert_nothing_of_ours_runs(ct)

        # Unconfigured, even an explicit start serves nothing, and fails nothing.
        assert_unconfigured_start_is_skipped(ct)

        scores = exposure(ct)
        print("systemd-analyze security: " + ", ".join(f"{u} {v}" for u, v in scores.items()))
        assert all(score <= 2.0 for score in scores.values()), scores

        purge_and_check(ct)
    print(f"boot {booted - started:.0f} s, install {installed - booted:.0f} s, "
          f"total {time.monotonic() - started:.0f} s")


# ------------------------------------------------------------------ serving

def lab_primary(lab: Lab, config_dir: Path, state_dir: Path, log_dir: Path) -> Server:
    """A primary for the installed server to follow: this checkout's
    tracker and seeder in a lab namespace, with one image, "mirrored"."""
    host = lab.add_host("primary")
    conf = config_dir / "boottorrent.conf"
    conf.write_text(conf.read_text().replace(f"address = {SERVER_ADDRESS}",
                                             f"address = {host.address}"))
    primary = Server(host, config_dir, state_dir, log_dir)
    files = random_image(log_dir.parent / "src", "mirrored", {"kernel": 3 << 20})
    primary.boottorrent(*add_image_args("mirrored", files))
    return primary.start(("tracker", "seeder"))


def test_configured_server_serves_the_lan(built, tmp_path, config_dir, state_dir):
    """After installation, what an admin does (README.Debian), then a client.

    1. configure the interface (the admin edits the conffile),
    2. register an image with boottorrent-add-image,
    3. systemctl start boottorrent,
    4. a client namespace gets a PXE answer from the container's dnsmasq,
    5. a client downloads the image through the tracker and the seeder,
    6. a --rootfs tree is registered, and the client, listed in
       [machines], gets its own files,
    then a security update, an upgrade, and a purge of the used
    installation. Installed without recommends throughout.

    The client of step 5 is the installed pivotal's own client (its
    python, libtorrent and busybox, in a chroot of the unpacked base plus
    the configuration part the server hands out over HTTP) with --dry-run,
    in a lab namespace: all of the pivotal but its kernel and the kexec,
    which the QEMU tests boot.
    """
    lt = pytest.importorskip("libtorrent")
    from lab import dhcp
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

        # 2. Start the server, with no image yet.
        start = ct.run(["systemctl", "start", "boottorrent.service"], check=False)
        assert start.returncode == 0, ct.journal(lines=60)
        wait_active(ct, UNITS + (IMAGES_PATH,))
        # A primary: the follower's unit is skipped, not failed.
        wait_for(lambda: no_jobs(ct), "the follower unit's condition", ct)
        assert unit_states(ct, "ActiveState,Result", (FOLLOW_UNIT,))[FOLLOW_UNIT] == {
            "ActiveState": "inactive", "Result": "exec-condition"}
        client = lab.add_host("client")

        def served() -> list[str]:
            status = json.loads(fetch(client, f"http://{SERVER_ADDRESS}:6980/status"))
            return [image["name"] for image in status["images"]]

        # 3. Drop an image's description into images.d (random bytes: this
        # test does not boot it): registered and served with no command run.
        image = ct.path("/srv/boottorrent/image")
        image.mkdir(parents=True)
        (image / "vmlinuz").write_bytes(os.urandom(3_000_000))
        stamp_bzimage_header(image / "vmlinuz")
        (image / "initrd.img").write_bytes(os.urandom(2_000_000))
        ct.path("/etc/boottorrent/images.d/test.conf").write_text(
            "kernel = /srv/boottorrent/image/vmlinuz\n"
            "initrd = /srv/boottorrent/image/initrd.img,\ncmdline = quiet\n")
        wait_for(lambda: served() == ["test"], "image test served", ct)
        assert "test: registered from /etc/boottorrent/images.d/test.conf" \
            in ct.journal("boottorrent.service", 40)

        # A bad drop-in is named in the journal and by `boottorrent status`,
        # and every other image goes on serving.
        ct.path("/etc/boottorrent/images.d/bad.conf").write_text("kernel = /nonexistent\n")
        problem = "bad.conf: kernel: /nonexistent: no such file"
        wait_for(lambda: problem in ct.journal("boottorrent.service", 40), "bad.conf named", ct)
        status = ct.run(["boottorrent", "status"]).stdout
        assert problem in status, status
        # The status page, its files as the package installed them.
        assert f"live in a browser: http://{SERVER_ADDRESS}:6980/" in status, status
        page = ct.run(["python3", "-c", "import sys, urllib.request\nfor path in sys.argv[1:]: "
                       "print(urllib.request.urlopen(path, timeout=10).read().decode())",
                       f"http://{SERVER_ADDRESS}:6980/", f"http://{SERVER_ADDRESS}:6980/page.js"]
                      ).stdout
        assert '<script src="page.js" defer></script>' in page and "function poll()" in page
        wait_for(lambda: no_jobs(ct), "the reload done", ct)
        assert served() == ["test"]
        assert ct.run(["systemctl", "is-active", "boottorrent.service"]).stdout.strip() == "active"

        # 4. A PXE client (BIOS ROM, then iPXE) gets its answer.
        pxe = lab.add_host("pxe", address=None)
        offers = dhcp.probe(pxe, arch=0, timeout=5)
        assert any(o.server_id == SERVER_ADDRESS and o.file == "undionly.kpxe"
                   for o in offers), offers
        offers = dhcp.probe(pxe, arch=0, ipxe=True, user_class="iPXE", timeout=5)
        assert any(o.file.startswith(f"http://{SERVER_ADDRESS}") for o in offers), offers

        # 5. A client downloads the image through the tracker and the seeder,
        # running the installed pivotal: its base and the config part the
        # server hands out, unpacked as the kernel would, in a chroot. The
        # config part, asked for with the machine's MAC as iPXE asks, begins
        # with its token (a cpio of its own: cpio(1) stops after it), then
        # the config part itself.
        def run_pivotal(name: str) -> Path:
            root = tmp_path / name
            root.mkdir()
            for part in ("base.cpio.zst", f"config.cpio?mac={client.mac}&image=test",
                         "config.cpio"):
                data = fetch(client, f"http://{SERVER_ADDRESS}:6980/boot/pivotal/{part}")
                unpack = "zstd -dc | cpio -id --quiet" if ".zst" in part \
                    else "cpio -id --quiet"
                subprocess.run(unpack, shell=True, input=data, cwd=root, check=True)
            # The mounts are private to this command (ip netns exec's own mount
            # namespace); its /sys shows the client namespace's interface.
            script = (f"mount -t proc proc {root}/proc && mount --rbind /sys {root}/sys && "
                      f"mount --rbind /dev {root}/dev && mount -t tmpfs tmpfs {root}/run && "
                      f"chroot {root} /usr/bin/python3 -S -m boottorrent.pivotal "
                      "--image test --dry-run; ")
            script += f"status=$?; cp -a {root}/run/boottorrent {root}.run; exit $status"
            result = client.run(["sh", "-c", script], check=False, timeout=180,
                                env={"PATH": "/usr/sbin:/usr/bin", "LANG": "C.UTF-8",
                                     "PYTHONPATH": "/usr/lib/python3/dist-packages",
                                     "PYTHONDONTWRITEBYTECODE": "1"})
            assert result.returncode == 0, result.stdout + result.stderr + ct.journal(lines=40)
            assert "dry run: kexec" in result.stdout, result.stdout
            summary = json.loads(Path(f"{root}.run/summary.json").read_text())
            assert summary["progress"] == 1.0 and summary["from_server"] > 0, summary
            return root

        root = run_pivotal("pivotal")
        pivotal_json = root / "etc/boottorrent/pivotal.json"

        # The tracker counted the client's completed download.
        spec = json.loads(pivotal_json.read_text())["images"]["test"]
        info = lt.torrent_info(lt.bdecode(base64.b64decode(spec["torrent"])))
        infohash = bytes.fromhex(str(info.info_hash()))
        scrape = lt.bdecode(fetch(client, f"http://{SERVER_ADDRESS}:6969/scrape?info_hash="
                                  + urllib.parse.quote_from_bytes(infohash)))
        counts = scrape[b"files"][infohash]
        assert counts[b"downloaded"] >= 1, counts
        # ... and the seeder heard the client's reports: it booted it (its token).
        status = json.loads(fetch(client, f"http://{SERVER_ADDRESS}:6980/status"))
        assert any(c.get("mac") == client.mac and c["phase"] != "pxe"
                   for c in status["clients"]), status

        # 6. README's flow for a root file system tree (mksquashfs, which a
        # server installed without recommends has too), and a machine
        # [machines] lists: boottorrent.service (root) makes its identity,
        # readable by the seeder's group only, and the seeder (its own
        # user) sends it, with the admin's template rendered, to that
        # machine alone.
        make_tree(ct.path("/srv/trees/node"))
        added = ct.run(["boottorrent-add-image", "node", "--rootfs", "/srv/trees/node"],
                       check=False)
        assert added.returncode == 0 and "node: registered" in added.stdout, \
            added.stdout + added.stderr
        conf = ct.path("/etc/boottorrent/boottorrent.conf")
        plain = conf.read_text()
        conf.write_text(plain + f"[machines]\n[[rack]]\nimage = test\nmacs = {client.mac}\n"
                        "hostname = rack-{index:02}\n")
        ct.path("/etc/boottorrent/node-files/etc").mkdir()
        ct.path("/etc/boottorrent/node-files/etc/motd").write_text("{{ name }} runs {{ image }}\n")
        ct.run(["systemctl", "reload", "boottorrent.service"])
        wait_for(lambda: no_jobs(ct), "the reload done", ct)
        identity = f"/var/lib/boottorrent/nodes/{client.mac.replace(':', '')}"
        assert ct.run(["stat", "-c", "%U:%G %a", f"{identity}/ssh_host_ed25519_key"]
                      ).stdout.strip() == "root:boottorrent 640"
        own: dict = {}

        def own_files() -> bool:
            # `systemctl reload` returns once the seeder has its SIGHUP; it
            # takes the new snapshot in its next round, up to a second later.
            own.update(newc_files(fetch(client, f"http://{SERVER_ADDRESS}:6980/boot/pivotal/"
                                               f"config.cpio?mac={client.mac}&image=test")))
            return f"{paths.NODE}/etc/hostname" in own

        wait_for(own_files, "the seeder to send rack-01 its own files", ct)
        assert own[f"{paths.NODE}/etc/hostname"][1] == b"rack-01\n", list(own)
        assert own[f"{paths.NODE}/etc/motd"][1] == b"rack-01 runs test\n"
        assert own[f"{paths.NODE}/etc/ssh/ssh_host_ed25519_key"][1] == \
            ct.path(f"{identity}/ssh_host_ed25519_key").read_bytes()
        ct.run(["boottorrent", "remove-image", "node"])
        conf.write_text(plain)
        ct.run(["systemctl", "reload", "boottorrent.service"])
        wait_for(lambda: no_jobs(ct), "the reload done", ct)

        # 7. A security update of a package the pivotal is built from: the
        # package's dpkg trigger rebuilds the base, and the next client runs
        # the updated busybox.
        def busybox(root: Path) -> str:
            return hashlib.sha256(root.joinpath("usr/bin/busybox").read_bytes()).hexdigest()

        old_base = fetch(client, f"http://{SERVER_ADDRESS}:6980/boot/pivotal/base.cpio.zst")
        update = ct.run(["sh", "-c", SECURITY_UPDATE], check=False)
        assert update.returncode == 0, update.stdout + update.stderr
        updated = hashlib.sha256(ct.path("/bin/busybox").read_bytes()).hexdigest()
        assert updated != busybox(root)
        wait_for(lambda: fetch(client, f"http://{SERVER_ADDRESS}:6980/boot/pivotal/"
                                       "base.cpio.zst") != old_base,
                 "the pivotal's base rebuilt after the update", ct)
        assert busybox(run_pivotal("pivotal-updated")) == updated

        # An upgrade (here: a reinstallation) restarts a running server.
        before = main_pids(ct)
        ct.install_debs(extra=["--reinstall"])
        wait_active(ct, UNITS)
        after = main_pids(ct)
        assert all(after[unit] != before[unit] for unit in UNITS[1:]), (before, after)

        # Removing the description unregisters the image.
        ct.path("/etc/boottorrent/images.d/test.conf").unlink()
        wait_for(lambda: served() == [], "image test no longer served", ct)

        # 8. It becomes a follower of a primary (a lab server from this
        # checkout beside it on the LAN, its tracker and seeder):
        # boottorrent-follow.service, under systemd and its sandbox, fetches
        # the primary's image, registers it and has the seeder serve it.
        primary = lab_primary(lab, config_dir, state_dir, tmp_path / "primary")
        conf.write_text(plain + f"[follow]\nprimary = http://{primary.host.address}:6980\n")
        ct.run(["systemctl", "restart", "boottorrent.service"])

        def mirrored() -> bool:
            try:
                return served() == ["mirrored"]
            except subprocess.CalledProcessError:  # the seeder, restarted, not up yet
                return False
        wait_for(mirrored, "the primary's image served here", ct)
        assert "image mirrored: fetched and checked" in ct.journal(
            "boottorrent-follow.service", 40)
        refused = ct.run(["boottorrent", "remove-image", "mirrored"], check=False)
        assert refused.returncode == 2 and "register or remove them there" in refused.stderr

        # Purge a used installation: state, snapshots and all.
        ct.run(["systemctl", "stop", "boottorrent.service"])
        purge_and_check(ct)


# A security update of busybox-static, simulated: Debian's package (as apt
# fetched it for the installation: the container is offline) with a new
# version and a changed, still working /bin/busybox, installed by dpkg.
SECURITY_UPDATE = r"""
set -e
cd /root
dpkg-deb -R /var/cache/apt/archives/busybox-static_*.deb update
printf 'a security update\0' >>update/bin/busybox
sed -i 's/^Version: .*/&+security1/' update/DEBIAN/control
(cd update && find . -type f ! -path './DEBIAN/*' -printf '%P\0' | xargs -0 md5sum) \
	>update/DEBIAN/md5sums
dpkg-deb -b update busybox-static-updated.deb
dpkg -i busybox-static-updated.deb
"""


def main_pids(ct: SystemdContainer) -> dict[str, str]:
    return {unit: ct.run(["systemctl", "show", "-p", "MainPID", "--value", unit]).stdout.strip()
            for unit in UNITS}


def no_jobs(ct: SystemdContainer) -> bool:
    return ct.run(["systemctl", "list-jobs", "--no-legend"]).stdout.strip() == ""


def wait_for(condition, what: str, ct: SystemdContainer, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for: {what}\n{ct.journal(lines=60)}")
        time.sleep(0.5)


def wait_active(ct: SystemdContainer, units, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        states = {u: s["ActiveState"] for u, s in unit_states(ct, units=units).items()}
        if all(state == "active" for state in states.values()):
            return
        if time.monotonic() > deadline or "failed" in states.values():
            logs = "\n".join(ct.journal(unit, 40) for unit in units)
            raise AssertionError(f"{states}\n{logs}")
        time.sleep(0.5)
