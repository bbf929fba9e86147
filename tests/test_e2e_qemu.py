"""End to end: two QEMU machines, one BIOS and one UEFI, PXE-boot from a
BootTorrent server, load the pivotal, download a test image from the server
and from each other, and kexec into it. Run alone with `make test-qemu`
(pytest -m qemu)."""

from __future__ import annotations

import gzip
import ipaddress
import json
import re
import shutil
import subprocess
import threading
from pathlib import Path

import pytest

from lab import nodetree
from lab.netns import Lab
from lab.qemu import VM
from lab.server import Server
from lab.cluster import MIB, random_image, wait_for
from lab.diskimage import boot_sector_disk
from lab.testimage import CMDLINE_PREFIX, HOSTNAME_PREFIX, MARKER_PREFIX, build_test_image

REPO = Path(__file__).resolve().parent.parent
MARKER = "booted-by-boottorrent"
PAD_MIB = 40
# [dhcp] of a server whose machines are on its own subnet, with the router
# as their gateway, and on rack-b behind it (Lab.add_subnet).
RELAYED_DHCP = ("netmask = 255.255.255.0\nrouter = 198.18.0.252\n"
                "[[rack-b]]\nnetwork = 198.18.2.0/24\nrouter = 198.18.2.1\n"
                "range_start = 198.18.2.100\nrange_end = 198.18.2.199\n")
# Both machines are powered on at once, as a rack is; the first to get its
# pivotal up keeps seeding while the server counts the other on its way (it
# fetched the boot files and has not joined yet), however much slower it
# boots, and then while it downloads: the product's own rule, with the
# product's default seed_idle_time.


@pytest.mark.qemu
def test_two_vms_boot_an_image_through_the_swarm(tmp_path, config_dir, state_dir):
    image = build_test_image(REPO / ".cache" / "testimage", MARKER, pad_mib=PAD_MIB)
    """Two machines, the second on another subnet behind a router that
    relays DHCP ([dhcp] [[rack-b]]): both PXE-boot, and the second gets
    pieces from the first across the router."""
    conf = config_dir / "boottorrent.conf"
    conf.write_text(conf.read_text().replace("netmask = 255.255.255.0\n", RELAYED_DHCP)
                    + "[clients]\nseed_idle_time = 5\nseed_time_max = 300\n"
                    + "[machines]\n[[e2e-nodes]]\nimage = e2e\n"
                    + "macs = 52:54:00:e2:e0:01, 52:54:00:e2:e0:02\nhostname = node-{index:02}\n")

    with Lab() as lab:
        server = Server(lab.add_server(), config_dir, state_dir, tmp_path / "logs")
        rack_b = lab.add_subnet(tmp_path / "logs")
        assert (rack_b.upstream, str(rack_b.network)) == ("198.18.0.252", "198.18.2.0/24")
        server.boottorrent("add-image", "e2e", "--kernel", str(image["kernel"]),
                           "--initrd", str(image["initrd"]),
                           "--cmdline", "console=ttyS0 panic=-1 boottorrent.test=e2e")
        # The server's link is the bottleneck, as with a cluster behind one
        # uplink: the second machine has to take pieces from the first.
        server.host.shape(40)
        server.start()

        # An Intel NIC (e1000) on the first, virtio on the second: each gets
        # the modules part of its own NIC's driver (nics.py).
        first = VM(lab, "vm1", tmp_path, mac="52:54:00:e2:e0:01", memory_mib=1024,
                   nic="e1000").start()
        # The second is a UEFI machine with the firmware's own PXE client
        # (no iPXE ROM): snponly.efi, then the pivotal through the EFI stub.
        # It is on rack-b: every DHCP answer comes through the relay, and
        # TFTP, HTTP, the tracker and its peer through the router.
        second = VM(lab, "vm2", tmp_path, mac="52:54:00:e2:e0:02", memory_mib=1024,
                    firmware="uefi", romfile="", subnet=rack_b).start()

        times = {}
        for number, vm in enumerate((first, second), start=1):
            times[vm.name] = vm.wait_for(MARKER_PREFIX + MARKER, timeout=600)
            vm.wait_for(HOSTNAME_PREFIX, timeout=60)  # printed after the command line
            console = vm.console()
            # The image's kernel got the image's own command line, and the
            # machine's hostname from its [machines] group, for systemd.
            cmdline = re.search(f"^{re.escape(CMDLINE_PREFIX)}(.*)$", console, re.M)
            assert cmdline, console
            assert "boottorrent.test=e2e" in cmdline[1].split(), cmdline[1]
            assert f"systemd.hostname=node-0{number}" in cmdline[1].split(), cmdline[1]
            assert "dry run" not in console
        reports = {r["mac"]: r for r in server.status()["clients"]}
        sent = server.status()["pivotal"]["http_sent_by_part"]

    # Each machine loaded its own NIC's drivers alone, not the whole modules part.
    for vm, drivers in ((first, "e1000"), (second, "virtio_pci virtio_net")):
        assert f"boottorrent-pivotal: network drivers in this pivotal: {drivers}" in vm.console()
    assert "modules.cpio.zst" not in sent, sent
    assert 0 < sent["nics/e1000.cpio.zst"] < 200_000, sent
    assert 0 < sent["nics/virtio_pci.cpio.zst"] < 200_000, sent

    assert set(reports) == {"52:54:00:e2:e0:01", "52:54:00:e2:e0:02"}, reports
    # The second machine's address is rack-b's, from the relayed DHCP.
    assert ipaddress.ip_address(reports["52:54:00:e2:e0:02"]["address"]) in rack_b.network
    # The machine whose client started later got pieces from the other.
    first_report, second_report = sorted(reports.values(), key=lambda r: r["started"])
    size = first_report["size"]
    assert first_report["phase"] == second_report["phase"] == "kexec"
    assert second_report["from_peers"] > 0, second_report
    assert first_report["uploaded"] > 0, first_report
    figures = {
        "power_on_to_marker_s": {name: round(t, 1) for name, t in times.items()},
        "later_client": second_report["mac"],
        "image_bytes": size,
        "from_peers": {mac: r["from_peers"] for mac, r in reports.items()},
        "from_server": {mac: r["from_server"] for mac, r in reports.items()},
        "peer_share_of_second": round(second_report["from_peers"] / size, 3),
    }
    (tmp_path / "figures.json").write_text(json.dumps(figures, indent=1))
    print(json.dumps(figures, indent=1))


@pytest.mark.qemu
def test_machine_whose_pivotal_peer_dies_mid_transfer_still_boots(make_cluster, tmp_path):
    """The server sends the machine's /stage to a machine that serves the
    pivotal's base; that machine is pulled from the plug while it sends it:
    the stage's next try gets it from the server."""
    image = build_test_image(REPO / ".cache" / "testimage", MARKER)
    cluster = make_cluster(conf={"clients": {"seed_idle_time": 2}})
    cluster.server.boottorrent("add-image", "e2e", "--kernel", str(image["kernel"]),
                               "--initrd", str(image["initrd"]),
                               "--cmdline", "console=ttyS0 panic=-1 boottorrent.test=e2e")
    cluster.start(("dnsmasq", "tracker", "seeder"))
    # The peer is a pivotal in a namespace (the real program, --dry-run)
    # that stays in the swarm until it is killed. It shares the pivotal's
    # files once a machine waits for them: one whose /stage asks for the
    # pivotal's base while the peer runs (the server holds it: 503), and
    # which then reports from its pivotal (so that it is not on its way
    # any more when the VM's pivotal asks).
    pivotal = json.loads(cluster.pivotal_json().read_text())
    pivotal["swarm"].update(seed_idle_time=900, seed_time_max=900)
    (tmp_path / "peer.json").write_text(json.dumps(pivotal))
    other = cluster.add_host("other")
    cluster.fetch_boot_script(other)
    peer = cluster.start_client("peer", "e2e", config=tmp_path / "peer.json")
    wait_for(lambda: cluster.reports().get(peer.host.address, {}).get("phase")
             in ("downloading", "seeding"), 120, "the peer to report from its pivotal")
    assert cluster.ask_for_pivotal_base(other, "e2e") == 503
    wait_for(lambda: peer.report().get("serving"), 120, "the peer to serve the pivotal's files")
    cluster.send_report(other, image="e2e", phase="downloading")
    # Slow enough that the base (10 MiB) takes seconds to go.
    peer.host.shape(8)
    sent_before = cluster.wire_bytes(peer.host)[0]

    # UEFI with the firmware's own PXE client: iPXE's messages reach the serial console.
    vm = VM(cluster.lab, "vm", tmp_path, mac="52:54:00:e2:e0:03", memory_mib=1024,
            firmware="uefi", romfile="").start()
    wait_for(lambda: cluster.server.status()["pivotal"]["redirects"] >= 1, 600,
             "the server to send the machine's /stage to the peer")
    wait_for(lambda: cluster.wire_bytes(peer.host)[0] - sent_before > 2 * 1024 * 1024, 120,
             "the peer to have sent 2 MiB of the pivotal's base")
    peer.kill()

    vm.wait_for(MARKER_PREFIX + MARKER, timeout=600)
    console = vm.console()
    failed = f"base.cpio.zst from {peer.host.address} failed"
    assert failed in console
    assert console.index(failed) < console.index("base.cpio.zst: from the server, SHA-256 checked")
    assert "boottorrent.test=e2e" in console
    report = next(r for r in cluster.server.status()["clients"] if r["mac"] == vm.mac)
    assert report["phase"] == "kexec", report


def evil_pivotal(folder: Path, marker: str) -> Path:
    """An attacker's pivotal: a kernel, and initrds in every pivotal part's
    name whose /init prints marker. Returns the folder to serve."""
    evil = build_test_image(REPO / ".cache" / "testimage", marker)
    pivotal = folder / "pivotal"
    pivotal.mkdir(parents=True)
    shutil.copyfile(evil["kernel"], pivotal / "vmlinuz")
    archive = gzip.decompress(evil["initrd"].read_bytes())
    packed = subprocess.run(["zstd", "-q", "-c"], input=archive, capture_output=True,
                            check=True).stdout
    for name in ("base.cpio.zst", "modules.cpio.zst", "stage.cpio.zst"):
        (pivotal / name).write_bytes(packed)
    (pivotal / "config.cpio").write_bytes(archive)
    return folder


@pytest.mark.qemu
def test_a_forger_serving_an_evil_pivotal_never_runs_on_a_machine(make_cluster, tmp_path):
    """A host on the LAN tells the server it serves the pivotal's files (a
    forged report, again and again) and serves its own at the port the
    server sends machines to: a kernel and initrds whose /init prints a
    marker. A BIOS machine boots: what iPXE loads comes from the server,
    its /stage is sent to the forger for the base, finds that the bytes do
    not match the server's SHA-256, gets the base from the server, and boots
    the genuine image. The forger's marker never appears."""
    image = build_test_image(REPO / ".cache" / "testimage", MARKER)
    cluster = make_cluster()
    cluster.server.boottorrent("add-image", "e2e", "--kernel", str(image["kernel"]),
                               "--initrd", str(image["initrd"]),
                               "--cmdline", "console=ttyS0 panic=-1")
    cluster.start(("dnsmasq", "tracker", "seeder"))
    forger = cluster.add_host("forger")
    evil_marker = "EVIL-PIVOTAL-RAN"
    httpd = forger.popen(["busybox", "httpd", "-f", "-vv", "-p", "6980",
                          "-h", str(evil_pivotal(tmp_path / "evil", evil_marker))],
                         stderr=subprocess.PIPE, text=True)
    infohash = cluster.server.status()["pivotal"]["infohash"]
    stop = threading.Event()

    def forge() -> None:
        while not stop.is_set():
            cluster.send_report(forger, image="e2e", phase="seeding", progress=1.0,
                                serving=infohash)
            stop.wait(2)

    forging = threading.Thread(target=forge, daemon=True)
    forging.start()
    try:
        vm = VM(cluster.lab, "vm", tmp_path, mac="52:54:00:e2:e0:05", memory_mib=1024).start()
        vm.wait_for(MARKER_PREFIX + MARKER, timeout=600)
    finally:
        stop.set()
        forging.join()
        httpd.terminate()
    console = vm.console()
    refused = f"base.cpio.zst from {forger.address} does not match the server's SHA-256"
    assert refused in console
    assert console.index(refused) < console.index("base.cpio.zst: from the server, SHA-256 checked")
    assert evil_marker not in console
    # The forger was asked for the base only: nothing iPXE loads comes from it.
    asked = re.findall(r"url:(\S+)", httpd.communicate()[1])
    assert asked and all(path.startswith("/pivotal/base.cpio.zst") for path in asked), asked


@pytest.mark.qemu
def test_a_machine_runs_a_qemu_image_in_a_vm_of_its_own(tmp_path, config_dir, state_dir):
    """Method qemu on a real (virtual) machine: PXE, the pivotal with its
    QEMU part, the disk through the swarm, then the disk under the pivotal's
    QEMU (a boot sector that prints a marker, nothing more). The lab's
    virtual CPU has AMD-V (QEMU's TCG emulates SVM), so the pivotal's
    kvm_amd gives its QEMU KVM; without it the VM would run under TCG."""
    marker = "BOOTTORRENT-VM-MARKER nested"
    disk = boot_sector_disk(tmp_path / "disk.raw", marker)
    (config_dir / "images.d" / "lab-vm.conf").write_text(
        f"method = qemu\ndisk = {disk}\nmemory = 32M\ncpus = 1\n")
    conf = config_dir / "boottorrent.conf"
    conf.write_text(conf.read_text() + "[machines]\n52:54:00:e2:e0:04 = lab-vm\n")
    with Lab() as lab:
        server = Server(lab.add_server(), config_dir, state_dir, tmp_path / "logs")
        server.boottorrent("add-image", "lab-vm")
        server.start()
        vm = VM(lab, "vm", tmp_path, mac="52:54:00:e2:e0:04", memory_mib=1024).start()
        vm.wait_for(marker, timeout=900)
        console = vm.console()
        started = re.search(r"starting its VM \(32 MiB, (KVM|TCG)\)", console)
        assert started and started.start() < console.index(marker), console[-3000:]
        if started.group(1) == "TCG":
            assert "the VM runs in software emulation" in console
        print(f"the pivotal ran the VM with {started.group(1)}")
        report = wait_for(lambda: next((r for r in server.status()["clients"]
                                        if r["mac"] == vm.mac and r["phase"] == "running"),
                                       None), 60, "the machine to report its VM running")
    assert report["exit_status"] is None and report["image"] == "lab-vm", report


@pytest.mark.qemu
def test_a_machine_runs_an_exec_image_while_another_gets_it_from_it(make_cluster, tmp_path):
    """Method exec on a real (virtual) machine: its program prints a marker
    and runs until the test says (it polls the server's /status for a word
    the test reports); meanwhile a machine that boots later (the real
    pivotal program in a namespace) gets the image from the VM; both
    programs' exit status and output reach `boottorrent status`."""
    cluster = make_cluster(conf={"clients": {"seed_idle_time": 2},
                                 "machines": {"52:54:00:e2:e0:05": "burn-in"}})
    payload = random_image(tmp_path, "burn-in", {"payload.bin": 4 << 20})["payload.bin"]
    program = tmp_path / "burn-in.sh"
    program.write_text("""#!/bin/sh
echo "BURN-IN-MARKER on $BOOTTORRENT_MAC: $(wc -c < burn-in-payload.bin) bytes"
until wget -q -O - "http://$BOOTTORRENT_SERVER:6980/status" | grep -q release-burn-in; do
    sleep 1
done
echo "burn-in passed"
exit 7
""")
    (cluster.config_dir / "images.d" / "burn-in.conf").write_text(
        f"method = exec\nprogram = {program}\nfiles = {payload},\n")
    cluster.server.boottorrent("add-image", "burn-in")
    cluster.start(("dnsmasq", "tracker", "seeder"))

    vm = VM(cluster.lab, "vm", tmp_path, mac="52:54:00:e2:e0:05", memory_mib=1024).start()
    vm.wait_for("BURN-IN-MARKER on 52:54:00:e2:e0:05: 4194304 bytes", timeout=600)
    wait_for(lambda: any(r["mac"] == vm.mac and r["phase"] == "running"
                         for r in cluster.server.status()["clients"]), 60,
             "the machine to report its program running")
    later = cluster.start_client("later", "burn-in")
    wait_for(lambda: later.report().get("phase") == "running", 300,
             "the later machine to run the program")
    assert later.report()["from_peers"] > 0, later.report()

    # A report of no machine on its way (phase failed), whose message the programs wait for.
    cluster.send_report(cluster.add_host("operator"), phase="failed", message="release-burn-in")
    assert later.wait(120) == 7, later.log()[-3000:]
    vm.wait_for("exited with status 7", timeout=300)
    status = cluster.server.boottorrent("status").stdout
    assert f"{vm.mac}: image burn-in exited with status 7" in status, status
    assert status.count("image burn-in exited with status 7") == 2, status
    assert "  | burn-in passed" in status, status
    vm_report = next(r for r in cluster.server.status()["clients"] if r["mac"] == vm.mac)
    assert vm_report["uploaded"] > 0 and vm_report["exit_status"] == 7, vm_report


@pytest.mark.qemu
def test_two_vms_boot_a_debian_tree_through_the_swarm_to_multi_user(tmp_path, config_dir,
                                                                    state_dir):
    """Issues 13 and 37: a real bookworm tree (minbase, systemd, Debian's
    kernel, live-boot, openssh-server; lab/nodetree.py) registered with
    --rootfs, booted on two machines through the swarm: each reaches
    multi-user.target running the tree from a squashfs in RAM, as itself:
    its hostname from [machines] in the kernel and in /etc/hostname and
    /etc/hosts, its own machine ID and SSH host keys (the server's for its
    MAC, not the tree's), the admin's /etc/motd rendered for it; the same
    keys again after a reboot."""
    node_tree = nodetree.node_tree()
    conf = config_dir / "boottorrent.conf"
    conf.write_text(conf.read_text()
                    + "[machines]\n[[rack]]\nimage = node\n"
                    + "macs = 52:54:00:e2:e1:01, 52:54:00:e2:e1:02\nhostname = rack-{index:02}\n")
    (config_dir / "node-files/etc").mkdir(parents=True)
    (config_dir / "node-files/etc/motd").write_text(
        "{{ name }} runs {{ image }} ({{ mac }}, {{ group }} #{{ index }})\n")
    with Lab() as lab:
        server = Server(lab.add_server(), config_dir, state_dir, tmp_path / "logs")
        added = server.boottorrent("add-image", "node", "--rootfs", str(node_tree),
                                   "--cmdline", "console=ttyS0 panic=-1")
        print(added.stdout)
        # The tree's own identity stays out of the image, and add-image says so.
        assert "warning: the tree's own etc/ssh/ssh_host_ecdsa_key" in added.stderr, \
            added.stderr
        server.host.shape(40)
        server.start()
        vms = [VM(lab, f"vm{n}", tmp_path, mac=f"52:54:00:e2:e1:0{n}", memory_mib=1536).start()
               for n in (1, 2)]
        times, memory, booted = {}, {}, {}
        for number, vm in enumerate(vms, start=1):
            times[vm.name], memory[vm.name], booted[vm.name] = greeted(vm, number)
        reports = {r["mac"]: r for r in server.status()["clients"]}
        # A reboot: the same machine, the same keys and machine ID.
        vms[0].stop()
        vms[0].start()
        _, _, again = greeted(vms[0], 1)
        assert again == booted["vm1"], (again, booted)
    record = json.loads((state_dir / "current" / "registry.json").read_text())["images"]["node"]
    size = sum(f["size"] for f in record["files"])
    for number, vm in enumerate(vms, start=1):
        identity = state_dir / "nodes" / vm.mac.replace(":", "")
        fingerprint = subprocess.run(
            ["ssh-keygen", "-lf", identity / "ssh_host_ed25519_key.pub"], capture_output=True,
            text=True, check=True).stdout.split()[1]
        machine_id = (identity / "machine-id").read_text().strip()
        assert booted[vm.name] == (machine_id, fingerprint), (vm.name, booted)
    assert booted["vm1"] != booted["vm2"]
    tree_key = node_tree / "etc/ssh/ssh_host_ed25519_key.pub"
    assert fingerprint != subprocess.run(["ssh-keygen", "-lf", tree_key], capture_output=True,
                                         text=True, check=True).stdout.split()[1]
    first, second = sorted(reports.values(), key=lambda r: r["started"])
    assert first["phase"] == second["phase"] == "kexec", reports
    assert second["from_peers"] > 0 or first["from_peers"] > 0, reports
    for report in reports.values():  # each of the image's bytes counted once
        assert report["from_server"] + report["from_peers"] <= size, report
    figures = {"image_mib": round(size / MIB, 1),
               "files_mib": {f["name"]: round(f["size"] / MIB, 1) for f in record["files"]},
               "power_on_to_multi_user_s": {name: round(t, 1) for name, t in times.items()},
               "memory_at_multi_user": memory,
               "from_peers_mib": {mac: round(r["from_peers"] / MIB, 1)
                                  for mac, r in reports.items()}}
    print(json.dumps(figures, indent=1))


def greeted(vm: VM, number: int) -> tuple[float, dict, tuple[str, str]]:
    """Wait for the node's greeting (lab/nodetree.py) as rack-0NUMBER, itself
    in every file and running sshd, the root an overlay (live-boot runs the
    tree from the squashfs in RAM): seconds since power-on, its memory, and
    its (machine ID, ed25519 host key fingerprint)."""
    name = f"rack-0{number}"
    greeting = (f"{nodetree.GREETING} hostname={name} multi-user=active root=overlay "
                r"mem_total_kib=(\d+) mem_available_kib=(\d+) "
                f"etc_hostname={name} hosts=127.0.1.1 "
                r"machine_id=([0-9a-f]{32}) ssh=active ssh_key=(SHA256:\S+) "
                + re.escape(f"motd=[{name} runs node ({vm.mac}, rack #{number})]"))
    seconds = vm.wait_for(greeting, timeout=900)
    total, available, machine_id, fingerprint = re.search(greeting, vm.console()).groups()
    return (seconds, {"total_mib": int(total) // 1024, "available_mib": int(available) // 1024},
            (machine_id, fingerprint))
