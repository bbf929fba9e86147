"""`make demo`, shortened to two machines and a small image."""

from __future__ import annotations

import re
import subprocess

import pytest

from conftest import PYTHON, REPO


@pytest.mark.qemu
def test_demo_boots_two_machines_and_sums_up():
    result = subprocess.run([PYTHON, "-m", "demo", "--vms", "2", "--image-mib", "16"],
                            cwd=REPO, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    summary = result.stdout[result.stdout.index("Summary:"):]
    assert re.search(r"Summary: image 'demo', [\d.]+ MiB, 2 machines", summary), summary
    for n in (1, 2):
        assert re.search(rf"vm{n} 52:54:00:de:00:0{n}  booted in \d+ s", summary), summary
        assert (f"vm{n}: Hello from node-000{n}, running image demo, booted over "
                "BitTorrent.") in summary
    assert re.search(r"The server sent [\d.]+ MiB of image data for 2 x", summary), summary
    # Everything the demo started is gone: no machine, no server, no work folder.
    assert subprocess.run(["pgrep", "-f", "boottorrent-demo-"]).returncode == 1
    assert "logs kept" not in result.stdout
