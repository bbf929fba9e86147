"""The systemd container harness (lab/container.py) boots and cleans up."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from lab.container import SystemdContainer, bookworm_rootfs  # noqa: E402
from lab.netns import Lab  # noqa: E402

CACHE = REPO / ".cache"

pytestmark = [
    pytest.mark.package,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (namespaces, chroot)"),
    pytest.mark.skipif(shutil.which("mmdebstrap") is None, reason="needs mmdebstrap"),
]


def _netns_names() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


def _processes_rooted_in(root: Path) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.readlink(entry / "root") == str(root):
                    pids.append(int(entry.name))
            except OSError:
                pass
    return pids


def test_boot_run_poweroff():
    bookworm_rootfs(CACHE)  # build the cache outside the timed part
    started = time.monotonic()
    with Lab() as lab:
        lab.add_server()
        with SystemdContainer(CACHE, lab=lab, name="ct", address="198.18.0.2") as ct:
            boot_seconds = time.monotonic() - started
            init_pid, launcher, rootfs, cgroup = ct.pid, ct.process, ct.rootfs, ct.cgroup
            ours = {lab.switch, ct.netns, lab.hosts["server"].netns}
            assert ours <= _netns_names()
            state = ct.run(["systemctl", "is-system-running"], check=False).stdout.strip()
            assert state in ("running", "degraded"), (state, ct.failed_units)
            assert ct.run(["cat", "/proc/1/comm"]).stdout.strip() == "systemd"
            assert ct.run(["hostname"]).stdout.strip() == "ct"

            # A transient service under the container's systemd.
            ct.run(["systemd-run", "--unit=bt-probe", "--property=Type=simple",
                    "/bin/sleep", "300"])
            deadline = time.monotonic() + 20
            while ct.run(["systemctl", "is-active", "bt-probe.service"],
                         check=False).stdout.strip() != "active":
                assert time.monotonic() < deadline, ct.journal("bt-probe.service")
                time.sleep(0.1)

            # The container is a host on the lab's bridge, not on the host network.
            assert ct.ifname == "eth0"
            addresses = ct.run(["ip", "-o", "-4", "addr", "show", "dev", "eth0"]).stdout
            assert "198.18.0.2/24" in addresses
            link = ct.run(["ip", "-o", "link", "show", "dev", "eth0"]).stdout
            assert "LOWER_UP" in link, link
            assert "default" not in ct.run(["ip", "route"]).stdout

            # copy_in lands in the running system (through its /tmp tmpfs).
            probe = Path(ct.workdir) / "probe.txt"
            probe.write_text("hello\n")
            ct.copy_in(probe, "/tmp/probe.txt")
            assert ct.run(["cat", "/tmp/probe.txt"]).stdout == "hello\n"

            status = ct.stop()
            # A pid namespace's init that calls reboot(POWER_OFF) dies of SIGINT.
            assert status in (0, -2), status
            assert not ct.running
        # After close: no process of ours, no namespace, no cgroup, no tree.
        assert launcher.poll() is not None
        assert not Path(f"/proc/{init_pid}").exists()
        assert _processes_rooted_in(rootfs) == []
        assert not cgroup.exists()
        assert not rootfs.exists()
    # (Other tests may run labs at the same time: look at our names only.)
    assert not ours & _netns_names()
    print(f"boot {boot_seconds:.1f}s, total {time.monotonic() - started:.1f}s")


def test_cleanup_after_exception():
    bookworm_rootfs(CACHE)
    with pytest.raises(RuntimeError, match="boom"):
        with SystemdContainer(CACHE, name="boom") as ct:
            init_pid, rootfs, netns = ct.pid, ct.rootfs, ct.netns
            assert netns in _netns_names()
            raise RuntimeError("boom")
    assert not Path(f"/proc/{init_pid}").exists()
    assert not rootfs.exists()
    assert netns not in _netns_names()
