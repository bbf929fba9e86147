"""How large an image a machine with 2 GiB of RAM boots (issue 13, item 2):
one QEMU machine (TCG, BIOS, 2048 MiB) PXE-boots the lab's test image
padded to each size, through the real server; the pivotal says on its
console how much RAM is left once kexec has loaded the image (the most the
image takes there: the download and kexec's copy), or that it refuses the
image before downloading it. Writes bench/RAM.md and bench/ram.json.

    /usr/bin/python3 -m bench.ram [--memory-mib 2048] [--sizes 256,448,512,544,576,640]
"""

from __future__ import annotations

import argparse
import json
import re
import signal
import sys
import tempfile
from pathlib import Path

from lab.cluster import Cluster
from lab.qemu import VM
from lab.testimage import MARKER_PREFIX, build_test_image

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
MARKER = "ram-bench"
LOADED = re.compile(r"kexec loaded the image: (\d+) MiB of RAM still available, of (\d+) MiB")
REFUSED = re.compile(r"cannot run image \S+: (.*)")
FAILED = re.compile(r"Out of memory: Killed process \d+ \(\S+\)|No space left on device|"
                    r"giving up after .*|Kernel panic.*")


def boot(size_mib: int, memory_mib: int, tmp: Path) -> dict:
    image = build_test_image(REPO / ".cache" / "testimage", MARKER, pad_mib=size_mib)
    with Cluster(tmp) as cluster:
        cluster.server.boottorrent("add-image", "ram", "--kernel", str(image["kernel"]),
                                   "--initrd", str(image["initrd"]),
                                   "--cmdline", "console=ttyS0 panic=-1")
        size = sum(f["size"] for f in cluster.registry()["ram"]["files"])
        cluster.start(("dnsmasq", "tracker", "seeder"))
        vm = VM(cluster.lab, "vm", tmp, mac="52:54:00:ab:00:01", memory_mib=memory_mib).start()
        pattern = (f"{re.escape(MARKER_PREFIX + MARKER)}|cannot run image|giving up|"
                   "Kernel panic|dropping to a rescue shell")
        try:
            seconds = vm.wait_for(pattern, timeout=1800)
        except TimeoutError:
            seconds = None
        console = vm.console()
    loaded = LOADED.search(console)
    refused = REFUSED.search(console)
    return {
        "pad_mib": size_mib, "image_mib": round(size / (1 << 20), 1),
        "booted": MARKER_PREFIX + MARKER in console,
        "seconds": round(seconds, 1) if seconds else None,
        "available_after_kexec_load_mib": int(loaded[1]) if loaded else None,
        "total_mib": int(loaded[2]) if loaded else None,
        "refused": refused[1].strip() if refused else None,
        "failed": failed[0].strip() if (failed := FAILED.search(console)) else None,
        "panic": "Kernel panic" in console,
    }


def write(memory_mib: int, rows: list[dict]) -> None:
    (BENCH / "ram.json").write_text(json.dumps({"memory_mib": memory_mib, "runs": rows},
                                               indent=1) + "\n")
    booted = [row["image_mib"] for row in rows if row["booted"]]
    lines = [
        f"# The largest image a machine with {memory_mib} MiB of RAM boots",
        "",
        "Written by `/usr/bin/python3 -m bench.ram` (issue 13, item 2): one QEMU",
        f"machine (TCG, BIOS, {memory_mib} MiB) PXE-boots the test image padded to each",
        "size (kexec; one gzip initrd of incompressible bytes) through the real",
        "server. 'In use at kexec' is the pivotal's MemTotal - MemAvailable once",
        "kexec has loaded the image: the download in /run and the loaded segment;",
        "while kexec_file_load loads it, the kernel holds the file as it read it",
        "too, which the pivotal's check counts (three copies).",
        "",
        "| image | booted | power-on to marker | RAM in use at kexec | refused or failed |",
        "|---:|---|---:|---:|---|",
    ]
    for row in sorted(rows, key=lambda row: row["image_mib"]):
        in_use = (f"{row['total_mib'] - row['available_after_kexec_load_mib']} MiB"
                  if row["total_mib"] else "-")
        lines.append(f"| {row['image_mib']} MiB | {'yes' if row['booted'] else 'no'} | "
                     f"{str(row['seconds']) + ' s' if row['booted'] else '-'} | {in_use} | "
                     f"{row['refused'] or row.get('failed') or ''} |")
    lines += ["", f"Largest image booted: {max(booted) if booted else 'none'} MiB.", ""]
    (BENCH / "RAM.md").write_text("\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m bench.ram",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--memory-mib", type=int, default=2048)
    parser.add_argument("--sizes", default="256,448,512,544,576,640",
                        help="padding of the test image, MiB, comma-separated")
    args = parser.parse_args(argv)
    # Killed by a TERM, it still takes its lab down (the Lab's exit).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    rows = []
    for size in (int(s) for s in args.sizes.split(",")):
        with tempfile.TemporaryDirectory(prefix="bench-ram-") as tmp:
            row = boot(size, args.memory_mib, Path(tmp))
        print(json.dumps(row), flush=True)
        rows.append(row)
        write(args.memory_mib, rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
