"""The methods that run an image on the machine instead of kexec (issue 17):
exec runs the image's program, qemu runs the image's disk under QEMU. The
real seeder, tracker and pivotal program (--dry-run: everything but a
kexec, which these methods do not do) in network namespaces; QEMU is
Debian's, in software emulation (a VM inside a VM is test_e2e_qemu's)."""

from __future__ import annotations

import hashlib
from pathlib import Path

from conftest import CLIENTS
from lab.cluster import MIB, add_image_args, random_image, wait_for
from lab.diskimage import boot_sector_disk

VM_MARKER = "BOOTTORRENT-VM-MARKER"


def write_conf(cluster, name: str, text: str) -> Path:
    path = cluster.config_dir / "images.d" / f"{name}.conf"
    path.write_text(text)
    return path


def exec_image(cluster, name: str, release: Path, status: int) -> dict[str, Path]:
    """A program that prints a marker with the line of its data file, waits
    for release to exist, and exits with status; and its data file."""
    files = random_image(cluster.tmp / "src", name, {"payload.bin": 4 * MIB})
    data = cluster.tmp / "src" / "data.txt"
    data.write_text("data-file-line\n")
    program = cluster.tmp / "src" / "diagnose"
    program.write_text(f"""#!/bin/sh
echo "exec-marker image=$BOOTTORRENT_IMAGE $(cat data.txt)"
while [ ! -e {release} ]; do sleep 0.2; done
echo "diagnosis done"
exit {status}
""")
    write_conf(cluster, name, f"description = Diagnostics\nmethod = exec\nprogram = {program}\n"
               f"files = {data}, {files['payload.bin']}\n")
    cluster.server.boottorrent("add-image", name)
    return {"program": program, "data.txt": data,
            files["payload.bin"].name: files["payload.bin"]}


def test_an_exec_image_runs_seeds_while_it_runs_and_its_status_reaches_the_server(
        make_cluster, tmp_path):
    cluster = make_cluster(conf={"clients": {**CLIENTS, "seed_idle_time": 1}})
    release = tmp_path / "release"
    files = exec_image(cluster, "diag", release, status=3)
    cluster.start()

    first = cluster.start_client("first", "diag")
    wait_for(lambda: first.report().get("phase") == "running", 120,
             "the first machine to run the program")
    assert "exec-marker image=diag data-file-line" in first.log()
    # A machine that boots later gets the image from the one running it.
    second = cluster.start_client("second", "diag")
    wait_for(lambda: second.report().get("phase") == "running", 120,
             "the second machine to run the program")
    assert second.has_image(files)
    # The first machine's upload reaches the server with its next report.
    wait_for(lambda: first.report().get("uploaded", 0) > 0, 30,
             "the first machine to report what it sent the second")
    reports = cluster.reports()
    assert second.report(reports)["from_peers"] > 0, second.report(reports)
    assert first.report(reports)["uploaded"] > 0, first.report(reports)
    # While it runs, the server shows it running and what it printed so far.
    assert "exec-marker" in first.report(reports)["output"]
    assert first.report(reports)["exit_status"] is None

    release.touch()
    for client in (first, second):
        assert client.wait(120) == 3, client.log()[-3000:]
    reports = cluster.reports()
    for client in (first, second):
        report = client.report(reports)
        assert report["phase"] == "exited" and report["exit_status"] == 3, report
        assert report["output"].endswith("diagnosis done\n"), report
    status = cluster.server.boottorrent("status").stdout
    assert status.count("image diag exited with status 3") == 2, status
    assert "  | exec-marker image=diag data-file-line" in status, status


def test_a_qemu_image_runs_its_disk_in_a_vm_and_keeps_it_intact(make_cluster, tmp_path):
    cluster = make_cluster(conf={"clients": CLIENTS})
    marker = f"{VM_MARKER} namespace"
    disk = boot_sector_disk(tmp_path / "disk.raw", marker, size_mib=2)
    write_conf(cluster, "vm", f"method = qemu\ndisk = {disk}\nmemory = 32M\ncpus = 1\n"
               "qemu_args = -no-reboot,\n")
    cluster.server.boottorrent("add-image", "vm")
    build = cluster.server.boottorrent("build-pivotal").stdout
    assert "qemu.cpio.zst" in build, build
    cluster.start()

    client = cluster.start_client("node", "vm")
    wait_for(lambda: marker in client.log(), 120, "the VM's boot sector to print its marker")
    log = client.log()
    assert "software emulation" in log  # --no-kvm, as on a node without VT-x
    wait_for(lambda: client.report().get("phase") == "running", 30, "a report of the VM running")
    # The VM wrote to a copy-on-write layer: the seeded file is the registered one.
    copy = client.folder() / "disk"
    assert hashlib.sha256(copy.read_bytes()).digest() == hashlib.sha256(disk.read_bytes()).digest()
    assert client.running()
    client.kill()


def test_a_kexec_only_pivotal_has_no_qemu_part(cluster, tmp_path):
    files = random_image(tmp_path, "k", {"kernel": MIB})
    cluster.server.boottorrent(*add_image_args("k", files))
    parts = sorted(p.name for p in (cluster.state_dir / "current/boot/pivotal").iterdir())
    assert parts == ["base.cpio.zst", "config.cpio", "modules.cpio.zst", "nics",
                     "stage.cpio.zst", "vmlinuz"], parts
    assert "qemu" not in (cluster.state_dir / "current/boot/boot.ipxe").read_text()


def test_a_vm_larger_than_the_machine_is_refused_on_the_machine(make_cluster, tmp_path):
    cluster = make_cluster(conf={"clients": CLIENTS})
    disk = boot_sector_disk(tmp_path / "disk.raw", VM_MARKER)
    write_conf(cluster, "big", f"method = qemu\ndisk = {disk}\nmemory = 9999999G\n")
    cluster.server.boottorrent("add-image", "big")
    cluster.start()
    client = cluster.start_client("node", "big")
    assert client.wait(120) == 1
    report = client.report()
    assert report["phase"] == "failed", report
    assert "the VM needs 10239998976 MiB of RAM (memory = 9999999G)" in report["message"], report
    assert "cannot run image big" in client.log()
    assert client.log().count("attempt") == 0  # refused once, not retried
    assert VM_MARKER not in client.log()
