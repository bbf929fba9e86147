"""Build the pivotal: the small Linux that BootTorrent clients boot first.

The pivotal is a kernel plus three initramfs parts that the boot loader
concatenates, each built by its own module:

* base.py, the **base**: busybox, kexec, Debian's python3 with just the
  standard-library modules the client imports (python.py finds them),
  python3-libtorrent with its shared libraries, the pivotal program and /init;
* kernel.py, the **modules** part: the network drivers of one kernel, as
  initramfs-tools' ``auto_add_modules net`` chooses them, with their
  dependencies (resolved by kmod) and the firmware the server has;
* archive.py, the **config** part: a few small files the server writes for
  its clients, and the deterministic cpio writer all three parts use.

Everything is taken from the running Debian system (the same packages the
server runs): the same inputs give the same bytes. Every output is written
beside its final name and renamed into place.
"""

from __future__ import annotations

from collections.abc import Callable

Progress = Callable[[str], None] | None


class PivotalError(Exception):
    """The pivotal cannot be built from what was given (the message says why)."""


def say(progress: Progress, message: str) -> None:
    if progress:
        progress(message)
