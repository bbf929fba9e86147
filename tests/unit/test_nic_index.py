"""Which modules part a machine gets for the NIC iPXE names (boottorrent/nics.py)."""

from __future__ import annotations

from boottorrent import nics
from boottorrent.nics import NicIndex, ServedIndex


def write(path, pci):
    drivers = {driver for _, _, driver in pci}
    nics.write_index(path, {d: f"{d}.cpio.zst" for d in drivers}, pci)
    return path


def test_a_busid_gets_the_part_of_the_one_driver_that_binds_it(tmp_path):
    aliases = ["pci:v00008086d0000100Esv*sd*bc*sc*i*", "pci:v00001AF4d*sv*sd*bc*sc*i*",
               "pci:v*d00008139sv*sd*bc*sc*i*", "pci:v00001022d00002000sv*sd*bc*sc*i*",
               "pci:v00001022d00002000sv*sd*bc*sc*i*"]
    drivers = ["e1000", "virtio_pci", "8139too", "pcnet32", "other_amd"]
    pci = [(*nics.pci_ids(a), d) for a, d in zip(aliases, drivers)]
    index = NicIndex.load(write(tmp_path / nics.INDEX, pci))
    assert index.part("018086100e") == "e1000.cpio.zst"
    assert index.part("018086100E") == "e1000.cpio.zst"  # iPXE's hex is lower case; any works
    assert index.part("011af41000") == index.part("011af41041") == "virtio_pci.cpio.zst"
    assert index.part("0110ec8139") == "8139too.cpio.zst"  # any vendor's 8139
    # Two drivers claim it, nobody does, another bus, or not a busid at all:
    # the whole modules part.
    for busid in ("0110222000", "018086ffff", "0a8086100e", "0700000000", "", "01",
                  "018086100e00", "01808610 e", "01\u0661\u0662\u0663\u0664\u0665\u0666\u0667\u0668"):
        assert index.part(busid) is None, busid


def test_an_alias_of_a_class_alone_or_another_bus_is_no_device():
    assert nics.pci_ids("pci:v*d*sv*sd*bc02sc00i*") is None
    assert nics.pci_ids("usb:v0BDAp8153d*dc*dsc*dp*ic*isc*ip*in*") is None
    assert nics.pci_ids("virtio:d00000001v*") is None
    assert nics.pci_ids("pci:v000015B3d00001003sv*sd*bc*sc*i*") == ("000015B3", "00001003")


def test_the_served_index_follows_the_snapshot(tmp_path):
    first = write(tmp_path / "a.json", [("00008086", "0000100E", "e1000")])
    second = write(tmp_path / "b.json", [("00008086", "0000100E", "e1000e")])
    served = ServedIndex()
    assert served.part(first, "018086100e") == "e1000.cpio.zst"
    assert served.part(second, "018086100e") == "e1000e.cpio.zst"
    assert served.part(None, "018086100e") is None  # a snapshot without NIC parts
    (tmp_path / "broken.json").write_text("{")
    assert served.part(tmp_path / "broken.json", "018086100e") is None
