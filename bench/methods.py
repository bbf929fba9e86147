"""The three ways of getting one image onto N machines, each measured the
same way on the same lab hosts, plus the Kumar-Ross bound."""

from __future__ import annotations

import os
import resource
import shutil
import statistics
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from lab.cluster import Cluster, sha256
from lab.netns import Host

MULTICAST_RATE_SHARE = 0.9  # udp-sender's --max-bitrate, as a share of the link rate
# udpcast's receivers say hello to the interface's broadcast address unless
# told otherwise; the lab's static addresses have none (ip addr add without
# brd), so the rendezvous goes to the all-hosts group, as the sender's does.
RENDEZVOUS = "224.0.0.1"
GIB = 1 << 30


@dataclass
class Result:
    method: str
    clients: int
    size: int  # F, bytes
    rate_mbit: int
    piece_size: int
    last: float  # s until the last client held a verified copy
    median: float  # median of the clients' times
    server_wire: int  # bytes the server sent, counted on the wire (Ethernet frames)
    server_payload: int  # bytes of image data the server sent, by its own counters
    cpu_busy: float  # share of both cores busy during the run (whole machine)
    ok: bool  # every client ended with the right bytes
    wall: float = 0.0  # s from start to every process of the method gone
    note: str = ""
    times: list[float] = field(default_factory=list)
    cpu_seconds: float = 0.0  # CPU time of the method's own processes (see CpuMeter)
    # Each client's CPU seconds (user + system of its processes: the
    # pivotal's program once begun, curl, udp-receiver), which received F.
    client_cpu: list[float] = field(default_factory=list)

    @property
    def server_wire_f(self) -> float:
        return self.server_wire / self.size

    def client_cpu_per_gib(self) -> tuple[float, float] | None:
        """The clients' CPU seconds per GiB received: median and most."""
        if not self.client_cpu:
            return None
        per_gib = [seconds / (self.size / GIB) for seconds in self.client_cpu]
        return statistics.median(per_gib), max(per_gib)


def kumar_ross(size: int, clients: int, rate_mbit: float) -> float:
    """Minimum distribution time of F bytes to N peers, server and peers all
    uploading and downloading at rate: max(F/u_s, F/d_min, N F/(u_s + sum u_i))."""
    rate = rate_mbit * 1e6 / 8
    return max(size / rate, size / rate, clients * size / (rate + clients * rate))


class CpuMeter:
    """Share of the machine's CPU time that was busy between start and stop
    (whole machine: other users' work counts too), and the CPU seconds of
    the processes the method started and reaped in between (its clients,
    curl or udpcast; the kernel's network work is not in it)."""

    @staticmethod
    def _read() -> tuple[int, int]:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        idle = fields[3] + fields[4]  # idle + iowait
        return sum(fields) - idle, sum(fields)

    @staticmethod
    def _children() -> float:
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        return usage.ru_utime + usage.ru_stime

    def __enter__(self) -> "CpuMeter":
        self.start = self._read()
        self.start_children = self._children()
        self.busy = 0.0
        self.seconds = 0.0
        return self

    @staticmethod
    def busy_between(start: tuple[int, int], end: tuple[int, int]) -> float:
        """The busy share between two of _read()'s samples."""
        busy, total = (b - a for a, b in zip(start, end))
        return busy / total if total else 0.0

    def __exit__(self, *exc) -> None:
        self.busy = self.busy_between(self.start, self._read())
        self.seconds = self._children() - self.start_children


def process_cpu(pid: int) -> float:
    """CPU seconds (user + system) a running process used so far."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def server_cpu(cluster: Cluster) -> float:
    """CPU seconds used so far by the server's services (seeder, tracker)."""
    return sum(process_cpu(p.pid) for p in cluster.server.processes.values())


def _waiter(process: subprocess.Popen, ends: dict, key: object,
            cpu: dict | None = None) -> threading.Thread:
    """A thread that reaps process (started with `ip netns exec`, which
    execs it) and notes when it ended in ends[key], and its CPU seconds in
    cpu[key]."""
    def wait() -> None:
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
        ends[key] = time.time()
        if cpu is not None:
            cpu[key] = usage.ru_utime + usage.ru_stime
    thread = threading.Thread(target=wait, daemon=True)
    thread.start()
    return thread


def _wait_threads(threads: list[threading.Thread], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
        if thread.is_alive():
            raise TimeoutError(f"{what}: not done after {timeout:.0f} s")


def image_payload_sent(cluster: Cluster, image: str) -> int:
    """The seeder's own count: BitTorrent payload uploaded plus HTTP sent."""
    for entry in cluster.server.status()["images"]:
        if entry["name"] == image:
            return entry["uploaded"] + entry["http_sent"]
    return 0


def warm_ram(cluster: Cluster, size: int) -> None:
    """Write and free size bytes of RAM just before a method runs. This
    lab is a virtual machine that hands RAM freed for a few seconds back to
    its host (virtio_balloon's free page reporting), after which the first
    write to each page costs 1.6 CPU-s per GiB more (0.5 once the page is
    the guest's: measured with pwrite into tmpfs). A real machine's RAM is
    simply there; without this, whichever method ran first in a row would
    pay for the pages the next one reuses."""
    scratch = cluster.ram / "warm"
    block = bytes(1 << 20)
    with scratch.open("wb") as out:
        for _ in range(size >> 20):
            out.write(block)
    scratch.unlink()


def run_boottorrent(cluster: Cluster, hosts: list[Host], image: str,
                    files: dict[str, Path], run: str, timeout: float) -> Result:
    # Each begins with its imports done, as N computers would begin together.
    clients = [cluster.client(f"{run}-{i}", image, host).prepare()
               for i, host in enumerate(hosts)]
    size = sum(p.stat().st_size for p in files.values())
    wire_before = cluster.wire_bytes(cluster.server_host)[0]
    payload_before = image_payload_sent(cluster, image)
    server_cpu_before = server_cpu(cluster)
    warm_ram(cluster, len(hosts) * size)
    with CpuMeter() as cpu:
        start = time.time()
        for client in clients:
            client.start()
        cluster.wait_all(clients, timeout)
        wall = time.time() - start
    cpu.seconds += server_cpu(cluster) - server_cpu_before
    wire = cluster.wire_bytes(cluster.server_host)[0] - wire_before
    payload = image_payload_sent(cluster, image) - payload_before
    times, ok, hashfails, from_server, startup = [], True, 0, 0, []
    for client in clients:
        summary = client.summary()
        times.append(summary["verified_at"] - start)
        startup.append(summary["started"] - client.launched)
        hashfails += summary.get("hashfails", 0)
        from_server += summary["from_server"]
        ok = ok and client.has_image(files)
        shutil.rmtree(client.work / "images", ignore_errors=True)
    note = (f"clients counted {from_server / size:.2f} F from the server; client start-up "
            f"(imports done beforehand: lab/ready.py) median {statistics.median(startup):.2f} s, "
            f"max {max(startup):.2f} s")
    if hashfails:
        note += f"; {hashfails} hash failures"
    return Result("BootTorrent", len(hosts), size, cluster.rate_mbit, cluster.piece_size(image),
                  max(times), statistics.median(times), wire, payload, cpu.busy, ok, wall,
                  note, times, cpu.seconds, [client.cpu_seconds() for client in clients])


def run_http(cluster: Cluster, hosts: list[Host], image: str, files: dict[str, Path],
             run: str, timeout: float) -> Result:
    """Every client GETs every file of the image from the seeder's HTTP side
    at once, as PXE/iPXE boot servers serve kernels and initrds."""
    size = sum(p.stat().st_size for p in files.values())
    folders = [cluster.ram / "http" / f"{run}-{i}" for i in range(len(hosts))]
    ends: dict[int, float] = {}
    client_cpu: dict[int, float] = {}
    threads = []
    wire_before = cluster.wire_bytes(cluster.server_host)[0]
    payload_before = image_payload_sent(cluster, image)
    server_cpu_before = server_cpu(cluster)
    warm_ram(cluster, len(hosts) * size)
    with CpuMeter() as cpu:
        start = time.time()
        for i, (host, folder) in enumerate(zip(hosts, folders)):
            folder.mkdir(parents=True)
            argv = ["curl", "--silent", "--show-error", "--fail"]
            for name in files:
                argv += ["-o", str(folder / name), cluster.url(image, name)]
            threads.append(_waiter(host.popen(argv, stdout=subprocess.DEVNULL), ends, i,
                                   client_cpu))
        _wait_threads(threads, timeout, "HTTP downloads")
        wall = time.time() - start
    cpu.seconds += server_cpu(cluster) - server_cpu_before  # the seeder serves HTTP
    wire = cluster.wire_bytes(cluster.server_host)[0] - wire_before
    payload = image_payload_sent(cluster, image) - payload_before
    ok = all(sha256(folder / name) == sha256(source)
             for folder in folders for name, source in files.items()
             if (folder / name).exists()) and all(
        (folder / name).exists() for folder in folders for name in files)
    for folder in folders:
        shutil.rmtree(folder, ignore_errors=True)
    times = [ends[i] - start for i in range(len(hosts))]
    return Result("HTTP", len(hosts), size, cluster.rate_mbit, cluster.piece_size(image),
                  max(times), statistics.median(times), wire, payload, cpu.busy, ok, wall,
                  "curl, one connection per client", times, cpu.seconds,
                  [client_cpu[i] for i in range(len(hosts))])


def run_multicast(cluster: Cluster, hosts: list[Host], image: str, files: dict[str, Path],
                  run: str, timeout: float) -> Result:
    """udpcast: udp-sender in the server's namespace, udp-receiver in each
    client's, the image's files sent as one stream."""
    size = sum(p.stat().st_size for p in files.values())
    stream = cluster.tmp / "multicast" / f"{image}.stream"
    stream.parent.mkdir(parents=True, exist_ok=True)
    if not stream.exists():
        with stream.open("wb") as out:
            for source in files.values():
                out.write(source.read_bytes())
    expected = sha256(stream)
    outputs = [cluster.ram / "multicast" / f"{run}-{i}" for i in range(len(hosts))]
    outputs[0].parent.mkdir(exist_ok=True)
    log_dir = cluster.tmp / "logs"
    ends: dict[int, float] = {}
    client_cpu: dict[int, float] = {}
    threads = []
    bitrate = cluster.rate_mbit * MULTICAST_RATE_SHARE
    wire_before = cluster.wire_bytes(cluster.server_host)[0]
    warm_ram(cluster, len(hosts) * size)
    with CpuMeter() as cpu:
        start = time.time()
        for i, (host, output) in enumerate(zip(hosts, outputs)):
            log = open(log_dir / f"{run}-{i}.udp-receiver.log", "wb")
            process = host.popen(["udp-receiver", "--nokbd", "--interface", "eth0",
                                  "--mcast-rdv-address", RENDEZVOUS, "--file", str(output)],
                                 stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
            log.close()
            threads.append(_waiter(process, ends, i, client_cpu))
        log = open(log_dir / f"{run}.udp-sender.log", "wb")
        sender = cluster.server_host.popen(
            ["udp-sender", "--nokbd", "--interface", "eth0", "--file", str(stream),
             "--min-receivers", str(len(hosts)), "--max-bitrate", f"{bitrate:g}m",
             "--full-duplex", "--mcast-rdv-address", RENDEZVOUS],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        _wait_threads(threads, timeout, "udp-receivers")
        try:
            sender.wait(30)
        except subprocess.TimeoutExpired:
            cluster.lab.stop(sender)
        wall = time.time() - start
    wire = cluster.wire_bytes(cluster.server_host)[0] - wire_before
    ok = all(output.exists() and sha256(output) == expected for output in outputs)
    for output in outputs:
        output.unlink(missing_ok=True)
    times = [ends[i] - start for i in range(len(hosts))]
    return Result("multicast", len(hosts), size, cluster.rate_mbit, cluster.piece_size(image),
                  max(times), statistics.median(times), wire, -1, cpu.busy, ok, wall,
                  f"udpcast, --max-bitrate {bitrate:g}m --full-duplex", times, cpu.seconds,
                  [client_cpu[i] for i in range(len(hosts))])
