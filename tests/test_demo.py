"""`make demo`, shortened to two machines and a small image."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import uuid
from pathlib import Path

import pytest

from conftest import PYTHON, REPO, interruptible, wait_for


TAG = "BOOTTORRENT_TEST_RUN"


def tagged_environment() -> tuple[dict[str, str], str]:
    """An environment that marks every process this demo run starts (they
    all inherit it), so that the test finds its own, not another run's."""
    tag = uuid.uuid4().hex
    return {**os.environ, TAG: tag}, tag


def processes_of(tag: str) -> dict[int, str]:
    """The processes whose environment carries tag: pid -> command line."""
    marker = f"{TAG}={tag}".encode()
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if marker in (entry / "environ").read_bytes().split(b"\0"):
                found[int(entry.name)] = (entry / "cmdline").read_bytes().replace(
                    b"\0", b" ").decode(errors="replace")
        except OSError:
            continue  # gone meanwhile
    return found


@pytest.mark.qemu
def test_demo_boots_two_machines_and_sums_up():
    env, tag = tagged_environment()
    # The demo's own time-out comes first: it then stops and removes its lab.
    result = subprocess.run([PYTHON, "-m", "demo", "--vms", "2", "--image-mib", "16",
                             "--timeout", "600"],
                            cwd=REPO, capture_output=True, text=True, timeout=900, env=env)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert re.search(r"demo: the status page: http://127\.0\.0\.1:\d+/ ", result.stdout)
    summary = result.stdout[result.stdout.index("Summary:"):]
    assert re.search(r"Summary: image 'demo', [\d.]+ MiB, 2 machines", summary), summary
    for n in (1, 2):
        assert re.search(rf"vm{n} 52:54:00:de:00:0{n}  booted in \d+ s", summary), summary
        assert (f"vm{n}: Hello from node-000{n}, running image demo, booted over "
                "BitTorrent.") in summary
    assert re.search(r"The server sent [\d.]+ MiB of image data for 2 x", summary), summary
    # Everything the demo started is gone: no machine, no server, no work folder.
    assert processes_of(tag) == {}
    assert "logs kept" not in result.stdout


def namespaces() -> set[str]:
    listing = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True,
                             check=True).stdout
    return {line.split()[0] for line in listing.splitlines() if line.strip()}


@pytest.mark.qemu
def test_demo_interrupted_cleans_up():
    """Ctrl-C while a machine boots: the demo stops, and nothing it started
    is left: no namespace, no QEMU, no server process."""
    env, tag = tagged_environment()
    demo = subprocess.Popen([PYTHON, "-m", "demo", "--vms", "1", "--image-mib", "8"],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=env, preexec_fn=interruptible)
    output = []
    try:
        # The live table comes once every machine is powered on.
        for line in demo.stdout:
            output.append(line)
            if line.startswith("MACHINE"):
                break
        # QEMU runs under `ip netns exec`, which may not have exec'd it yet.
        def qemu_started() -> dict[int, str]:
            started = processes_of(tag)
            return started if any("qemu-system" in a for a in started.values()) else {}

        wait_for(qemu_started, 60, "QEMU to be started")
        # The demo's lab namespaces are named after its PID (lab/netns.py);
        # other test runs may have labs of their own meanwhile.
        own = {name for name in namespaces() if name.startswith(f"bt{demo.pid % 100000}")}
        assert own, namespaces()
    finally:
        # Also when an assertion failed: a killed demo would leave its lab.
        demo.send_signal(signal.SIGINT)
        rest, _ = demo.communicate(timeout=60)
    output.append(rest)
    assert demo.returncode == 130, "".join(output)
    assert "interrupted; everything it started is stopped and removed" in rest
    # What it keeps is its logs, and it says where.
    kept = re.search(r"logs kept in (/\S+)", rest)
    assert kept, rest
    shutil.rmtree(kept.group(1))
    assert processes_of(tag) == {}
    assert not own & namespaces(), own & namespaces()
