"""Images that run on the machine instead of replacing its system: a qemu
image's disk runs under QEMU, an exec image's program runs. The machine
stays in the swarm meanwhile and seeds the image (Swarm.seed_while), which
is what these methods are for: later machines get the image from it."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import threading
from collections import deque
from pathlib import Path

from boottorrent.pivotal import ClientError
from boottorrent.pivotal.console import say
from boottorrent.pivotal.wire import OUTPUT_TAIL, ImageSpec, Report

# Where the pivotal finds QEMU and OVMF: where Debian's packages put them on
# the server, which the QEMU part copies them from (initramfs/qemu.py).
QEMU = "qemu-system-x86_64"
OVMF_CODE = Path("/usr/share/OVMF/OVMF_CODE.fd")
OVMF_VARS = Path("/usr/share/OVMF/OVMF_VARS.fd")
# RAM the pivotal keeps for itself besides the image it holds, when the VM takes its share.
PIVOTAL_RESERVE_MIB = 128
_PRINTABLE = re.compile(r"[^\n\t\x20-\x7e]")


class CannotRun(ClientError):
    """The image cannot run on this machine; trying again would not help."""


def meminfo_mib() -> tuple[int, int]:
    """This machine's RAM: (total, available) in MiB."""
    values = {}
    for line in Path("/proc/meminfo").read_text().splitlines():
        key, _, rest = line.partition(":")
        values[key] = int(rest.split()[0]) // 1024
    return values["MemTotal"], values["MemAvailable"]


def vm_memory_mib(setting: str, total: int, available: int) -> int:
    """The VM's RAM from the image's memory setting (a share of the node's
    RAM, or a size); CannotRun if this machine cannot give it."""
    if setting.endswith("%"):
        wanted = total * int(setting[:-1]) // 100
    else:
        wanted = int(setting[:-1]) * (1024 if setting.endswith("G") else 1)
    free = available - PIVOTAL_RESERVE_MIB
    if wanted > free:
        raise CannotRun(f"the VM needs {wanted} MiB of RAM (memory = {setting}) and this "
                        f"machine has {max(free, 0)} MiB to give it ({total} MiB in all, the "
                        "image and the pivotal hold the rest)")
    return wanted


def check_room(image: ImageSpec, work: Path) -> None:
    """Before the download: CannotRun if the image cannot fit in this
    machine's RAM. The download is held in RAM (work is a tmpfs); while
    kexec_file_load loads a kexec image, the kernel holds two more copies
    (the file as it read it, and the segment it copies that into: a 777
    MiB image on a 2 GiB machine had kexec killed for want of memory,
    bench/RAM.md), and a qemu image's VM needs its memory besides."""
    total, available = meminfo_mib()
    size = -(-image.size // (1 << 20))
    copies = 3 if image.method == "kexec" else 1
    needed = copies * size + PIVOTAL_RESERVE_MIB
    held = f"{size} MiB, held in RAM{' three times while kexec loads it' if copies == 3 else ''}"
    if needed > available:
        raise CannotRun(f"the image needs {needed} MiB of RAM here ({held}, and "
                        f"{PIVOTAL_RESERVE_MIB} MiB for the pivotal) and this machine has "
                        f"{available} MiB available ({total} MiB in all)")
    room = os.statvfs(work)
    if size > room.f_bavail * room.f_frsize >> 20:
        raise CannotRun(f"the image ({size} MiB) is larger than {work}, a tmpfs of "
                        f"{room.f_blocks * room.f_frsize >> 20} MiB")
    if image.method == "qemu":
        vm_memory_mib(image.vm["memory"], total, available - size)


def vm_command(image: ImageSpec, folder: Path, work: Path, memory_mib: int, cpus: int,
               kvm: bool) -> list[str]:
    """QEMU's command line for a qemu image: its disk behind a copy-on-write
    layer (the downloaded file is what this machine seeds: it must not
    change), user-mode networking, the serial port on this console."""
    vm = image.vm
    command = [QEMU, "-name", image.name, "-nodefaults", "-no-user-config", "-display", "none",
               "-accel", "kvm" if kvm else "tcg", *(["-cpu", "host"] if kvm else []),
               "-m", str(memory_mib), "-smp", str(vm["cpus"] or cpus),
               "-drive", f"file={folder / 'disk'},format={vm['format']},if=ide,snapshot=on",
               # The node's own NIC stays the pivotal's, which seeds on it; the VM
               # reaches the network through QEMU's NAT. No option ROM: the VM
               # boots from its disk, not over the network.
               "-netdev", "user,id=net0", "-device", "e1000,netdev=net0,romfile=",
               "-chardev", "stdio,id=console,signal=off", "-serial", "chardev:console"]
    if vm["firmware"] == "uefi":
        variables = work / "OVMF_VARS.fd"
        shutil.copyfile(OVMF_VARS, variables)
        command += ["-drive", f"if=pflash,format=raw,readonly=on,file={OVMF_CODE}",
                    "-drive", f"if=pflash,format=raw,file={variables}"]
    for arg in vm["qemu_args"]:  # checked against imageconf.QEMU_ARGS at registration
        command += shlex.split(arg)
    return command


class Running:
    """A VM or program running here, its exit status once it ended, and
    (for a program) the end of what it printed, which the reports carry."""

    def __init__(self, command: list[str], cwd: Path, env: dict[str, str], report: Report,
                 capture: bool):
        self.report = report
        self.tail: deque[str] = deque()
        self.tail_length = 0
        try:
            self.process = subprocess.Popen(
                command, cwd=cwd, env=env,
                stdout=subprocess.PIPE if capture else None,
                stderr=subprocess.STDOUT if capture else None)
        except OSError as error:  # e.g. a #! interpreter the pivotal lacks
            raise CannotRun(f"cannot start {Path(command[0]).name}: {error.strerror}") from None
        self.reader = None
        if capture:
            self.reader = threading.Thread(target=self._read, daemon=True)
            self.reader.start()

    def _read(self) -> None:
        assert self.process.stdout
        for raw in iter(self.process.stdout.readline, b""):
            sys.stdout.buffer.write(raw)
            sys.stdout.flush()
            line = _PRINTABLE.sub("?", raw.decode(errors="replace"))
            self.tail.append(line)
            self.tail_length += len(line)
            while self.tail_length > OUTPUT_TAIL and len(self.tail) > 1:
                self.tail_length -= len(self.tail.popleft())
            self.report.output = "".join(self.tail)[-OUTPUT_TAIL:]

    def running(self) -> bool:
        return self.process.poll() is None

    def wait(self) -> int:
        status = self.process.wait()
        if self.reader:
            self.reader.join(5)
        return status


def start(image: ImageSpec, folder: Path, work: Path, report: Report, server: str,
          kvm_allowed: bool = True) -> Running:
    """Start a qemu or exec image that was downloaded into folder."""
    env = {**os.environ, "BOOTTORRENT_IMAGE": image.name, "BOOTTORRENT_SERVER": server,
           "BOOTTORRENT_MAC": report.mac, "TMPDIR": str(work)}
    if image.method == "exec":
        program = folder / "program"
        program.chmod(0o755)  # the torrent's files are written without modes
        say(f"{image.name}: running its program")
        return Running([str(program)], folder, env, report, capture=True)
    if not shutil.which(QEMU):
        raise CannotRun(f"{QEMU} is missing: this pivotal was built without its QEMU part")
    total, available = meminfo_mib()
    memory = vm_memory_mib(image.vm["memory"], total, available)
    kvm = kvm_allowed and os.access("/dev/kvm", os.R_OK | os.W_OK)
    if not kvm:
        say("warning: no KVM on this machine (no VT-x or AMD-V, or it is off in the "
            "firmware): the VM runs in software emulation, many times slower")
    command = vm_command(image, folder, work, memory, os.cpu_count() or 1, kvm)
    say(f"{image.name}: starting its VM ({memory} MiB, {'KVM' if kvm else 'TCG'}); "
        "its serial console follows")
    return Running(command, folder, env, report, capture=False)
