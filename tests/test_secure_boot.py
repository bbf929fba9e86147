"""UEFI Secure Boot: machines whose firmware runs signed code only (OVMF
with Microsoft's keys enrolled) boot shim, Debian's GRUB and the pivotal,
over PXE and over UEFI HTTP boot (no TFTP at all), and kexec a signed
image; an image whose kernel is not signed is refused there before a byte
of it is fetched."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from lab.kernel import unsigned_vmlinuz
from lab.netns import Lab
from lab.qemu import VM
from lab.server import Server
from lab.testimage import MARKER_PREFIX, build_test_image

REPO = Path(__file__).resolve().parent.parent
MARKER = "booted-with-secure-boot"
SIGNED, HTTP, UNSIGNED = "52:54:00:5b:00:01", "52:54:00:5b:00:02", "52:54:00:5b:00:03"
SECURE_BOOT_ON = "EFI stub: UEFI Secure Boot is enabled."  # the pivotal's kernel says so


@pytest.mark.qemu
def test_secure_boot_machines_boot_signed_images_and_refuse_unsigned_ones(
        tmp_path, config_dir, state_dir):
    image = build_test_image(REPO / ".cache" / "testimage", MARKER)
    conf = config_dir / "boottorrent.conf"
    conf.write_text(conf.read_text() + "secure_boot = yes\n")
    with Lab() as lab:
        server = Server(lab.add_server(), config_dir, state_dir, tmp_path / "logs")
        for name, kernel in (("signed", image["kernel"]), ("unsigned", unsigned_vmlinuz())):
            server.boottorrent("add-image", name, "--kernel", str(kernel),
                               "--initrd", str(image["initrd"]),
                               "--cmdline", "console=ttyS0 panic=-1")
        conf.write_text(conf.read_text() + f"[machines]\n{SIGNED} = signed\n{HTTP} = signed\n"
                        f"{UNSIGNED} = unsigned\n")
        server.boottorrent("generate")
        check = server.boottorrent("check").stdout
        assert "image signed: a machine with Secure Boot on boots it if it trusts the " \
               "kernel's signer, Debian Secure Boot Signer 2022 - linux" in check, check
        assert "image unsigned: a machine with Secure Boot on refuses it: its kernel is " \
               "not signed" in check, check
        server.start()
        machines = {mac: VM(lab, name, tmp_path, mac=mac, memory_mib=1024,
                            firmware="secure-boot", romfile="", http_boot=mac == HTTP).start()
                    for name, mac in (("signed", SIGNED), ("http", HTTP), ("unsigned", UNSIGNED))}

        refused = machines[UNSIGNED]
        refused.wait_for("cannot run image unsigned: its kernel is not signed, and this machine "
                         "boots with UEFI Secure Boot", timeout=900)
        for mac in (SIGNED, HTTP):
            machines[mac].wait_for(MARKER_PREFIX + MARKER, timeout=900)
        reports = {r["mac"]: r for r in server.status()["clients"]}
        status = server.boottorrent("status").stdout
        dnsmasq = server.log("dnsmasq")

    for vm in machines.values():
        console = vm.console()
        assert SECURE_BOOT_ON in console, console[-3000:]
        assert "Kernel is locked down from EFI Secure Boot" in console
        assert "through GRUB" in console, console[-3000:]  # shim loaded GRUB, GRUB the pivotal
    # shim came over TFTP, then GRUB; the image's kernel through kexec_file_load.
    signed = machines[SIGNED].console()
    assert "kexec_file_load failed" not in signed
    assert signed.index("Fetching Netboot Image grubx64.efi") < signed.index("through GRUB")
    address = reports[SIGNED]["address"]
    assert re.search(rf"sent \S+/shimx64\.efi to {re.escape(address)}", dnsmasq), dnsmasq
    assert re.search(r"BootTorrent: booting signed on 52:54:00:5b:00:01 \(198\.18\.0\.\d+\) "
                     "through GRUB", signed), signed[-3000:]
    # Over UEFI HTTP boot: the RAM disk over HTTP, and no TFTP at all.
    http = machines[HTTP].console()
    assert "UEFI HTTPv4" in http and "from the RAM disk through GRUB" in http, http[-3000:]
    http_addresses = set(re.findall(rf"DHCPACK\(\S+\) (\S+) {HTTP}", dnsmasq))
    assert http_addresses, dnsmasq
    tftp_addresses = set(re.findall(r"^dnsmasq-tftp.* (\S+)$", dnsmasq, re.M))
    assert tftp_addresses and not tftp_addresses & http_addresses, dnsmasq
    # Each machine fetched its token itself (the stage), so the server
    # believed its reports: the whole image, counted once.
    for mac in (SIGNED, HTTP):
        report = reports[mac]
        assert report["phase"] == "kexec", report
        assert report["from_server"] + report["from_peers"] == report["size"], report
    # The unsigned image: refused before its download, said to the server.
    report = reports[UNSIGNED]
    assert report["phase"] == "failed" and "not signed" in report["message"], report
    assert report["from_server"] == report["from_peers"] == 0, report
    assert f"{UNSIGNED}: image unsigned: its kernel is not signed" in status, status
    assert MARKER not in refused.console()
