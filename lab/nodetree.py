"""A cluster node's root file system for the lab: Debian bookworm, minbase
with systemd, Debian's kernel, initramfs-tools and live-boot, made with
mmdebstrap as an admin would make one for `boottorrent-add-image NAME
--rootfs DIR`.

Documentation, manual pages, translations and the kernel's GPU, wireless,
media, sound, InfiniBand and staging drivers are left out (dpkg
path-exclude), which a VM does not need: the tree is about 470 MB and its
squashfs about 100 MB. A unit of its own prints GREETING to the serial
console once multi-user.target is reached, with the hostname, the target's
state, the root file system's type, the RAM (total and available), and what
makes the machine itself: /etc/hostname, its /etc/hosts line, its machine
ID, whether sshd runs and its ed25519 host key's fingerprint, and /etc/motd's
first line.

Built once into ``.cache/node-tree-<key>/`` (``<key>`` hashes the recipe and
the apt sources), under a lock, in a temporary folder renamed into place
when complete. Tests register it as it is and never change it.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shlex
import tempfile
from pathlib import Path

from lab.container import SUITE, _remove_tree, debian_sources, mmdebstrap
from lab.kernel import CACHE

PACKAGES = ["systemd-sysv", "linux-image-amd64", "initramfs-tools", "live-boot",
            "openssh-server"]
EXCLUDED = ["/usr/share/doc/*", "/usr/share/man/*", "/usr/share/locale/*",
            *(f"/lib/modules/*/kernel/{folder}/*"
              for folder in ("drivers/gpu", "drivers/net/wireless", "drivers/media", "sound",
                             "drivers/infiniband", "drivers/staging"))]
GREETING = "BOOTTORRENT-NODE-GREETING"
GREETING_SCRIPT = f"""#!/bin/sh
meminfo() {{ awk -v key="$1:" '$1 == key {{ print $2 }}' /proc/meminfo; }}
echo "{GREETING} hostname=$(hostname)" \\
    "multi-user=$(systemctl is-active multi-user.target)" \\
    "root=$(findmnt -no FSTYPE /)" \\
    "mem_total_kib=$(meminfo MemTotal) mem_available_kib=$(meminfo MemAvailable)" \\
    "etc_hostname=$(cat /etc/hostname)" \\
    "hosts=$(awk -v name="$(hostname)" '$2 == name {{ print $1 }}' /etc/hosts)" \\
    "machine_id=$(cat /etc/machine-id)" \\
    "ssh=$(systemctl is-active ssh.service)" \\
    "ssh_key=$(ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub | cut -d' ' -f2)" \\
    "motd=[$(head -n 1 /etc/motd)]" > /dev/ttyS0
"""
GREETING_UNIT = """[Unit]
Description=Say on the serial console which machine reached multi-user.target
After=multi-user.target

[Service]
Type=oneshot
ExecStart=/usr/local/sbin/node-greeting

[Install]
WantedBy=multi-user.target
"""
CUSTOMIZE_HOOKS = [
    f"printf %s {shlex.quote(GREETING_SCRIPT)} > \"$1/usr/local/sbin/node-greeting\"",
    'chmod 755 "$1/usr/local/sbin/node-greeting"',
    f"printf %s {shlex.quote(GREETING_UNIT)} > \"$1/etc/systemd/system/node-greeting.service\"",
    'ln -s /etc/systemd/system/node-greeting.service '
    '"$1/etc/systemd/system/multi-user.target.wants/node-greeting.service"',
    'echo node > "$1/etc/hostname"',
]
RECIPE_VERSION = 3


def node_tree(cache: Path = CACHE) -> Path:
    """The cached tree, built on first use."""
    cache.mkdir(parents=True, exist_ok=True)
    sources = debian_sources()
    recipe = repr((RECIPE_VERSION, SUITE, PACKAGES, EXCLUDED, CUSTOMIZE_HOOKS, sources))
    tree = cache / f"node-tree-{hashlib.sha256(recipe.encode()).hexdigest()[:12]}"
    if tree.is_dir():
        return tree
    with open(cache / "node-tree.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if tree.is_dir():
            return tree
        workdir = Path(tempfile.mkdtemp(prefix=".node-tree-build-", dir=cache))
        try:
            (workdir / "debian.sources").write_text(sources)
            mmdebstrap(workdir / "debian.sources", workdir / "tree", PACKAGES, CUSTOMIZE_HOOKS,
                       tuple(f"--dpkgopt=path-exclude={pattern}" for pattern in EXCLUDED))
            os.rename(workdir / "tree", tree)
            for old in cache.glob("node-tree-*"):
                if old != tree and old.is_dir():
                    _remove_tree(old)
        finally:
            _remove_tree(workdir)
    return tree
