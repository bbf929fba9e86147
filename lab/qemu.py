"""QEMU virtual machines for the lab: PXE boot from the lab's bridge, or a
direct -kernel/-initrd boot. Software emulation only (-accel tcg): KVM is
present on these machines but hangs.

The serial console is written to a log file that tests read for markers.
A PXE machine whose firmware gives up is powered on again (twice at most,
written to its qemu.log), as a BMC would: see VM.poll().
"""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from lab.netns import Lab, Subnet

FIRMWARE_RETRIES = 2


OVMF = Path("/usr/share/OVMF")


def secure_boot_firmware(variables: Path) -> list[str]:
    """QEMU's arguments for OVMF with Secure Boot on: its SMM build on a
    q35 machine, the variable store with Microsoft's keys copied for this
    machine (written once, so that it keeps its boot entries)."""
    if not variables.exists():
        shutil.copyfile(OVMF / "OVMF_VARS_4M.ms.fd", variables)
    return ["-machine", "q35,smm=on", "-global", "driver=cfi.pflash01,property=secure,value=on",
            "-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={OVMF}/OVMF_CODE_4M.secboot.fd",
            "-drive", f"if=pflash,format=raw,unit=1,file={variables}"]


@dataclass
class VM:
    lab: Lab
    name: str
    log_dir: Path
    mac: str
    memory_mib: int = 1024
    kernel: Path | None = None
    initrds: list[Path] = field(default_factory=list)
    append: str = "console=ttyS0"
    network: bool = True
    # "bios", "uefi" (OVMF, package ovmf) or "secure-boot": OVMF with
    # Secure Boot on and Microsoft's keys enrolled, as servers ship.
    firmware: str = "bios"
    http_boot: bool = False  # UEFI: boot over HTTP only, never PXE and TFTP
    # NIC option ROM: None keeps QEMU's own (iPXE); "" gives the NIC none, so
    # OVMF boots with its own virtio-net driver and PXE client, as real UEFI
    # machines do.
    romfile: str | None = None
    nic: str = "virtio-net-pci"  # QEMU's device model of the NIC
    subnet: Subnet | None = None  # its bridge (Lab.add_subnet); None: the server's
    process: subprocess.Popen | None = None
    started_at: float = 0.0
    tap: str | None = None
    power_ons: int = 0

    @property
    def console_log(self) -> Path:
        return self.log_dir / f"{self.name}.console.log"

    def command(self) -> list[str]:
        argv = ["qemu-system-x86_64", "-accel", "tcg", "-m", str(self.memory_mib),
                "-display", "none", "-no-reboot", "-serial", f"file:{self.console_log}",
                "-monitor", "none", "-nodefaults"]
        if self.firmware == "uefi":
            argv += ["-bios", "/usr/share/ovmf/OVMF.fd"]
        elif self.firmware == "secure-boot":
            argv += secure_boot_firmware(self.log_dir / f"{self.name}.vars.fd")
        if self.http_boot:
            # No PXE (TFTP) boot option: the firmware's HTTP boot is its
            # only way to the network.
            argv += ["-fw_cfg", "name=opt/org.tianocore/IPv4PXESupport,string=n"]
        if self.network:
            self.tap = self.tap or self.lab.add_tap(self.name, self.subnet)
            argv += ["-netdev", f"tap,id=net0,ifname={self.tap},script=no,downscript=no",
                     "-device", f"{self.nic},netdev=net0,mac={self.mac}"
                     + (f",romfile={self.romfile}" if self.romfile is not None else "")]
        else:
            argv += ["-nic", "none"]
        if self.kernel:
            argv += ["-kernel", str(self.kernel), "-append", self.append]
            if self.initrds:
                argv += ["-initrd", str(self.initrd())]
        else:
            # When PXE fails, the BIOS resets after 1 s, which -no-reboot
            # turns into QEMU's exit (see poll()) instead of a machine that
            # sits at "No bootable device" for ever.
            argv += ["-boot", "order=n,reboot-timeout=1000"]
        return argv

    def initrd(self) -> Path:
        """The initrds as one file, as a boot loader would load them.

        QEMU 7.2 takes a single -initrd for a Linux boot (the comma list is
        multiboot only), so several are concatenated here, each padded to 4
        bytes as iPXE and GRUB do: the kernel looks for the next cpio header
        at a 4-byte boundary after a compressed one.
        """
        if len(self.initrds) == 1:
            return self.initrds[0]
        combined = self.log_dir / f"{self.name}.initrd"
        self.log_dir.mkdir(parents=True, exist_ok=True)
        with open(combined, "wb") as out:
            for path in self.initrds:
                data = Path(path).read_bytes()
                out.write(data + b"\0" * (-len(data) % 4))
        return combined

    @property
    def qemu_log(self) -> Path:
        return self.log_dir / f"{self.name}.qemu.log"

    def start(self) -> "VM":
        """Power on (again: see poll()); started_at is the first power-on."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.console_log.write_bytes(b"")
        if not self.power_ons:
            self.started_at = time.monotonic()
            self.qemu_log.write_bytes(b"")
        self.power_ons += 1
        with open(self.qemu_log, "ab") as log:
            self.process = self.lab.popen(self.lab.switch_command(self.command()),
                                          stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                          stderr=log)
        return self

    def console(self) -> str:
        return self.console_log.read_text(errors="replace")

    def wait_for(self, pattern: str, timeout: float) -> float:
        """Wait until the console matches the regex; return seconds since start."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if regex.search(self.console()):
                return time.monotonic() - self.started_at
            if self.poll() is not None:
                break
            time.sleep(0.5)
        raise TimeoutError(f"{self.name}: no {pattern!r} on the console after "
                           f"{time.monotonic() - self.started_at:.0f} s; last lines:\n"
                           + "\n".join(self.console().splitlines()[-40:]))

    def firmware_gave_up(self) -> bool:
        """QEMU exited before any kernel wrote to the console: the firmware's
        network boot failed (no DHCP answer it took, no boot file)."""
        return (self.kernel is None and self.process is not None
                and self.process.poll() is not None and not self.console_log.read_bytes())

    def poll(self) -> int | None:
        """QEMU's exit status, None while it runs.

        A machine whose firmware gave up is powered on again, up to
        FIRMWARE_RETRIES times, as a BMC or an admin would: QEMU's iPXE
        ROM has been seen to ignore every DHCP offer dnsmasq sent it (the
        offers reached its tap) while another machine booted beside it.
        """
        if self.process is None:
            return None
        if self.firmware_gave_up() and self.power_ons <= FIRMWARE_RETRIES:
            with open(self.qemu_log, "a") as log:
                log.write(f"lab: {self.name}'s firmware gave up before any kernel output; "
                          "powering it on again\n")
            self.start()
            return None
        return self.process.poll()

    def wait_exit(self, timeout: float) -> int:
        assert self.process
        return self.process.wait(timeout)

    def stop(self) -> None:
        if self.process:
            self.lab.stop(self.process)
