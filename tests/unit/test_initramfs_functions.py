"""Unit tests of the pivotal builder's pure parts: which kernel modules
`auto_add_modules net` takes, and where host files go in the tree."""

from __future__ import annotations

from pathlib import Path, PurePosixPath

from boottorrent.initramfs.kernel import KernelPart, net_driver_names
from boottorrent.initramfs.staging import Tree


def test_net_driver_names_follow_initramfs_tools(tmp_path: Path):
    moddir = tmp_path / "6.1.0-1-amd64"
    for name in ("ethernet/intel/igc/igc.ko", "ethernet/intel/e1000e/e1000e.ko.xz",
                 "virtio_net.ko", "vmxnet3/vmxnet3.ko", "hyperv/hv_netvsc.ko",
                 "usb/r8152.ko", "usb/zaurus.ko", "usb/cdc_mbim.ko.zst",
                 "wireless/intel/iwlwifi/iwlwifi.ko", "can/vcan.ko", "team/team.ko",
                 "veth.ko", "tun.ko", "bonding/bonding.ko", "phy/libphy.ko",
                 "ethernet/sfc/sfc-siena.ko", "ethernet/README"):
        path = moddir / "kernel/drivers/net" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")
    assert net_driver_names(moddir) == ["e1000e", "hv_netvsc", "igc", "libphy", "r8152",
                                        "sfc_siena", "virtio_net", "vmxnet3"]
    assert net_driver_names(tmp_path / "missing") == []


def test_firmware_warnings_name_the_driver_and_its_files():
    part = KernelPart(Path("v"), Path("m"), "6.1", Path("n"), ("tg3",),
                      {"tg3": ["tigon/tg3.bin", "tigon/tg3_tso.bin"], "bnx2": ["bnx2/a.fw"]})
    assert part.warnings() == [
        "warning: bnx2 may ask for firmware this server lacks (/usr/lib/firmware): bnx2/a.fw",
        "warning: tg3 may ask for firmware this server lacks (/usr/lib/firmware): "
        "tigon/tg3.bin, tigon/tg3_tso.bin"]


def test_host_files_land_under_merged_usr():
    assert Tree.canonical(Path("/usr/bin/python3")) == PurePosixPath("/usr/bin/python3")
    assert Tree.canonical(Path("/bin/busybox")) == PurePosixPath("/usr/bin/busybox")
    assert Tree.canonical(Path("/lib64/ld-linux-x86-64.so.2")) == \
        PurePosixPath("/usr/lib64/ld-linux-x86-64.so.2")
