"""Unit tests of the pivotal program's pure parts: kernel parameters, image
choice, the image's command line, the account of who sent what, and the
chain's files and digests."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re

import pytest

from boottorrent.pivotal import ClientError, run
from boottorrent.pivotal.digest import StreamDigest
from boottorrent.pivotal.kexec import image_cmdline, one_initrd
from boottorrent.pivotal.run import CannotRun, check_room
from boottorrent.pivotal.spans import FileSpan
from boottorrent.pivotal.network import bootif_mac, kernel_parameters
from boottorrent.pivotal.counter import SourceCounter
from boottorrent.pivotal.swarm import choose_image
from boottorrent.pivotal.wire import ImageSpec, PivotalConfig, SwarmSettings

SERVER = "198.18.0.1"


def spec(cmdline: str = "", name: str = "compute") -> ImageSpec:
    return ImageSpec(name=name, torrent="", kernel="kernel", initrds=[], cmdline=cmdline,
                     size=1, sha256={})


CONFIG = PivotalConfig(
    server=SERVER, seeder_port=6881, report_url=f"http://{SERVER}:6980/report",
    swarm=SwarmSettings(), default_image="compute",
    mac_images={"52:54:00:00:00:02": "gpu"},
    images={"compute": spec("quiet"), "gpu": spec(name="gpu")})


def test_kernel_parameters():
    params = kernel_parameters("console=ttyS0 quiet BOOTIF=01-52-54-00-AA-bb-0c "
                               "boottorrent.image=gpu root=UUID=a=b\n")
    assert params == {"console": "ttyS0", "quiet": "", "BOOTIF": "01-52-54-00-AA-bb-0c",
                      "boottorrent.image": "gpu", "root": "UUID=a=b"}
    assert bootif_mac(params["BOOTIF"]) == "52:54:00:aa:bb:0c"
    assert bootif_mac(None) is None


@pytest.mark.parametrize("params, mac, expected", [
    ({"boottorrent.image": "gpu"}, "52:54:00:00:00:01", "gpu"),   # the iPXE menu or mapping
    ({}, "52:54:00:00:00:02", "gpu"),                              # the MAC mapping
    ({}, "52:54:00:00:00:03", "compute"),                          # the default
])
def test_image_choice(params, mac, expected):
    assert choose_image(CONFIG, params, mac).name == expected


def test_image_choice_errors():
    with pytest.raises(ClientError, match="'other' is not in this pivotal"):
        choose_image(CONFIG, {"boottorrent.image": "other"}, "")
    with pytest.raises(ClientError, match="no image registered"):
        choose_image(dataclasses.replace(CONFIG, default_image=None), {}, "")


def test_image_cmdline_names_the_boot_nic():
    image = spec("quiet")
    assert image_cmdline(image, "52:54:00:aa:bb:0c") == "quiet BOOTIF=01-52-54-00-aa-bb-0c"
    assert image_cmdline(spec(name="x"), "52:54:00:aa:bb:0c") == \
        "BOOTIF=01-52-54-00-aa-bb-0c"
    own = spec("BOOTIF=01-00-00-00-00-00-01", name="x")
    assert image_cmdline(own, "52:54:00:aa:bb:0c") == "BOOTIF=01-00-00-00-00-00-01"
    assert image_cmdline(image, "") == "quiet"
    # The machine's own words ([machines]) go between the image's and BOOTIF=.
    assert image_cmdline(image, "52:54:00:aa:bb:0c", "systemd.hostname=node-007 role=gpu") \
        == "quiet systemd.hostname=node-007 role=gpu BOOTIF=01-52-54-00-aa-bb-0c"


def server_connection(total: int, port: int = 40000):
    return ((SERVER, 6881), ("198.18.0.100", port), total)


def peer_connection(total: int, address: str = "198.18.0.101", port: int = 6881):
    return ((address, port), ("198.18.0.100", 40001), total)


def test_only_the_server_connected_means_nothing_from_peers():
    """The torrent's total is read before the connections; bytes that arrive
    in between must not show up as coming from peers (they did: from_peers
    went 1.2 MiB, 0, 121 KiB, 0 on a machine only the server served)."""
    counter = SourceCounter(SERVER)
    for step in range(1, 50):
        total = step * 300_000  # the server connection's counter
        received = total - 150_000  # the torrent's total, read a moment before
        assert counter.update(received, [server_connection(total)]) == (total, 0)


def test_reconnections_and_closed_connections_are_kept():
    counter = SourceCounter(SERVER)
    assert counter.update(0, [server_connection(1000), peer_connection(500)]) == (1000, 500)
    # The peer's connection closed: its bytes stay counted.
    assert counter.update(1500, [server_connection(3000)]) == (3000, 500)
    # The server reconnected from the same local port: its counter restarts.
    assert counter.update(3500, [server_connection(200)]) == (3200, 500)
    # A new connection from the same peer, another one from a second peer.
    assert counter.update(3700, [server_connection(200), peer_connection(100, port=6882),
                                 peer_connection(50, "198.18.0.102")]) == (3200, 650)


def test_bytes_of_unseen_connections_go_to_the_peers_and_nothing_shrinks():
    counter = SourceCounter(SERVER)
    # A peer connected, sent 700 bytes and left between two updates.
    assert counter.update(1700, [server_connection(1000)]) == (1000, 700)
    # The connections' sum catching up never takes bytes back.
    assert counter.update(1700, [server_connection(1000), peer_connection(100)]) == (1000, 700)
    assert counter.update(2900, [server_connection(1000), peer_connection(1900)]) == (1000, 1900)


# ---------------------------------------------------------------- methods qemu and exec

def vm_image(**vm) -> ImageSpec:
    settings = {"format": "qcow2", "memory": "50%", "cpus": 0, "firmware": "bios",
                "qemu_args": [], **vm}
    return dataclasses.replace(spec(name="lab"), kernel="", method="qemu", vm=settings)


@pytest.mark.parametrize("setting, total, available, expected", [
    ("50%", 4096, 4000, 2048), ("90%", 1000, 1000, None), ("50%", 1000, 1000, 500),
    ("2048M", 8192, 8192, 2048), ("2G", 8192, 8192, 2048), ("8G", 8192, 8192, None),
])
def test_vm_memory_is_what_the_node_can_give(setting, total, available, expected):
    from boottorrent.pivotal.run import CannotRun, vm_memory_mib
    if expected is None:
        with pytest.raises(CannotRun, match=f"memory = {setting}"):
            vm_memory_mib(setting, total, available)
    else:
        assert vm_memory_mib(setting, total, available) == expected


def test_vm_command_protects_the_seeded_disk_and_adds_only_checked_arguments(tmp_path):
    from boottorrent.pivotal.run import vm_command
    command = vm_command(vm_image(qemu_args=["-rtc base=localtime"]), tmp_path / "lab",
                         tmp_path, 512, 4, kvm=False)
    drive = command[command.index("-drive") + 1]
    assert drive == f"file={tmp_path}/lab/disk,format=qcow2,if=ide,snapshot=on"
    assert command[command.index("-accel") + 1] == "tcg" and "host" not in command
    assert command[command.index("-smp") + 1] == "4"  # cpus = 0: the node's
    assert command[-2:] == ["-rtc", "base=localtime"]
    assert "pflash" not in " ".join(command)


def test_vm_command_with_uefi_and_kvm(tmp_path):
    from boottorrent.pivotal.run import OVMF_VARS, vm_command  # package ovmf (make deps)
    command = vm_command(vm_image(firmware="uefi", cpus=2), tmp_path, tmp_path, 512, 4, kvm=True)
    assert command[command.index("-accel") + 1] == "kvm"
    assert command[command.index("-cpu") + 1] == "host"
    assert command[command.index("-smp") + 1] == "2"
    assert f"if=pflash,format=raw,file={tmp_path}/OVMF_VARS.fd" in command
    assert (tmp_path / "OVMF_VARS.fd").read_bytes() == OVMF_VARS.read_bytes()


def test_several_initrds_become_one_without_a_second_copy(tmp_path):
    parts = []
    for n, data in enumerate((b"first " * 1000, b"second " * 3000, b"third")):
        parts.append(tmp_path / f"initrd.{n}")
        parts[-1].write_bytes(data)
    assert one_initrd(parts) == parts[0]
    assert parts[0].read_bytes() == b"first " * 1000 + b"second " * 3000 + b"third"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["initrd.0"]
    alone = tmp_path / "alone"
    alone.write_bytes(b"as it is")
    assert one_initrd([alone]) == alone and alone.read_bytes() == b"as it is"


MIB = 1 << 20


@pytest.mark.parametrize("method, size_mib, available_mib, refused", [
    ("kexec", 640, 2048, None),
    ("kexec", 700, 2048, "needs 2228 MiB of RAM here (700 MiB, held in RAM three times "
                         "while kexec loads it, and 128 MiB for the pivotal) and this machine "
                         "has 2048 MiB available (4096 MiB in all)"),
    ("exec", 1900, 2048, None),
    ("exec", 1950, 2048, "needs 2078 MiB"),
])
def test_an_image_too_large_for_the_ram_is_refused_before_the_download(
        method, size_mib, available_mib, refused, monkeypatch, tmp_path):
    monkeypatch.setattr(run, "meminfo_mib", lambda: (4096, available_mib))
    image = dataclasses.replace(spec(name="big"), size=size_mib * MIB, method=method)
    if refused is None:
        check_room(image, tmp_path)
    else:
        with pytest.raises(CannotRun, match=re.escape(refused)):
            check_room(image, tmp_path)


def test_a_qemu_image_needs_room_for_its_disk_and_its_vm(monkeypatch, tmp_path):
    monkeypatch.setattr(run, "meminfo_mib", lambda: (4096, 3000))
    vm = {"memory": "2G", "cpus": 0, "firmware": "bios", "qemu_args": [], "format": "raw"}
    image = dataclasses.replace(spec(name="vm"), size=500 * MIB, method="qemu", vm=vm)
    check_room(image, tmp_path)
    bigger = dataclasses.replace(image, size=1000 * MIB)
    with pytest.raises(CannotRun, match="the VM needs 2048 MiB of RAM"):
        check_room(bigger, tmp_path)


def test_the_files_written_as_one_span_and_hashed_on_the_way(tmp_path):
    """The chain writes a torrent's bytes at offsets of its files one after
    the other (an empty file among them) and hashes them as they come: the
    digests are the files' SHA-256, whether the bytes were fed in order,
    with a gap (the rest read from the files) or not at all."""
    sizes = {"a": 5000, "empty": 0, "b": 70000, "c": 3}
    layout = [(tmp_path / "img" / name, size) for name, size in sizes.items()]
    data = os.urandom(sum(sizes.values()))
    span = FileSpan(layout)
    for offset in range(0, len(data), 4096):  # blocks across the files' ends
        span.write(offset, memoryview(data)[offset:offset + 4096])
    buffer = memoryview(bytearray(8192))
    assert span.read_into(4096, buffer) == 5000 - 4096  # up to the end of "a"
    assert bytes(buffer[:904]) == data[4096:5000]
    span.close()
    expected = {path: hashlib.sha256(path.read_bytes()).hexdigest() for path, _ in layout}
    assert b"".join(path.read_bytes() for path, _ in layout) == data

    for fed in (len(data), 30000, 0):
        digest = StreamDigest(layout)
        digest.feed(0, memoryview(data)[:fed // 2])
        digest.feed(fed // 2 + 1, memoryview(data)[fed // 2 + 1:fed])  # not next: ignored
        digest.feed(fed // 2, memoryview(data)[fed // 2:fed])
        assert digest.finish() == expected
