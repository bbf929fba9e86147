"""The status page (boottorrent/page.py) as an admin's browser shows it:
headless Chromium (lab/browser.py) opens it while the lab's machines boot,
through a port of this host's loopback that leads into the lab
(lab/forward.py)."""

from __future__ import annotations

import ipaddress
import json
import subprocess

from conftest import CLIENTS, PYTHON, REPO
from lab.browser import Browser
from lab.cluster import HTTP_URL, wait_for
from lab.forward import forward
from lab.netns import SERVER_ADDRESS
from lab.server import fetch

from boottorrent.fleet.state import BOOTED
from boottorrent.pivotal import paths
from boottorrent.pivotal.wire import HTTP_PORT

MIB = 1 << 20
# What a hostile host that holds a token reports: markup in every string.
MARKUP_IMAGE = "<script>window.pwned = 1</script>"
MARKUP_HOSTNAME = '<img src="x" onerror="window.pwned = 2">'
MARKUP_MESSAGE = "<b>bold</b> & <i>not</i>"

# The page's tables as text: each row's cells, each cell's text and title.
TABLES = """
const rows = (id) => [...document.querySelectorAll(`#${id} tbody tr`)].map(
  (tr) => [...tr.cells].map((td) => [td.textContent, td.title]));
return {images: rows("images"), machines: rows("machines"),
        summary: document.getElementById("summary").textContent,
        polylines: [...document.querySelectorAll("#chart polyline")].map(
          (line) => line.getAttribute("class")),
        scripts: document.scripts.length, images_in_page: document.images.length,
        pwned: window.pwned === undefined ? null : window.pwned};
"""
SHOWN = "return document.getElementById('shown').textContent"
MACHINE_COLUMNS = ("mac", "address", "server", "hostname", "image", "phase", "progress", "rate",
                   "peers", "from_server", "from_peers", "heard", "message")
IMAGE_COLUMNS = ("image", "size", "machines", "booted", "from_server", "from_peers", "share",
                 "sent")


def exact(cell: list[str]) -> int:
    """A byte count's exact number, from its cell's title ("N bytes")."""
    return int(cell[1].removesuffix(" bytes"))


def page_tables(browser: Browser) -> dict:
    shown = browser.run(TABLES)
    shown["machines"] = {row[1][0]: dict(zip(MACHINE_COLUMNS, row)) for row in shown["machines"]}
    shown["images"] = {row[0][0]: dict(zip(IMAGE_COLUMNS, row)) for row in shown["images"]}
    return shown


def mismatches(shown: dict, status: dict) -> list[str]:
    """Where the page's numbers differ from /status's (empty: they agree)."""
    problems = []
    clients = status["clients"]
    if set(shown["machines"]) != {c["address"] for c in clients}:
        problems.append(f"machines {sorted(shown['machines'])} != "
                        f"{sorted(c['address'] for c in clients)}")
        return problems
    for client in clients:
        row = shown["machines"][client["address"]]
        for key in ("from_server", "from_peers"):
            if exact(row[key]) != client[key]:
                problems.append(f"{client['address']} {key}: {row[key]} != {client[key]}")
        if (row["mac"][0], row["image"][0], row["server"][0]) != (
                client["mac"], client["image"], client.get("server", "this one")):
            problems.append(f"{client['address']}: {row['mac']} {row['image']}")
    for image in status["images"]:
        row = shown["images"].get(image["name"])
        if row is None:
            problems.append(f"image {image['name']} not shown")
            continue
        of_image = [c for c in clients if c["image"] == image["name"]]
        expected = {"size": image["size"], "sent": image["uploaded"] + image["http_sent"],
                    "from_server": sum(c["from_server"] for c in of_image),
                    "from_peers": sum(c["from_peers"] for c in of_image)}
        for key, value in expected.items():
            if exact(row[key]) != value:
                problems.append(f"image {image['name']} {key}: {row[key]} != {value}")
        booted = sum(c["phase"] in BOOTED for c in of_image)
        if (row["machines"][0], row["booted"][0]) != (str(len(of_image)), str(booted)):
            problems.append(f"image {image['name']}: {row['machines']} {row['booted']}")
    if not shown["summary"].startswith(f"{len(clients)} machines"):
        problems.append(f"summary {shown['summary']!r}")
    return problems


def test_the_page_shows_the_boot_live_and_as_status_says(make_cluster):
    cluster = make_cluster(rate_mbit=100, conf={"clients": CLIENTS})
    cluster.add_image("compute", {"kernel": 4 * MIB, "initrd.0": 12 * MIB})
    cluster.start()
    port = forward(cluster.server_host, SERVER_ADDRESS, HTTP_PORT)
    with Browser() as browser:
        browser.open(f"http://127.0.0.1:{port}/")
        wait_for(lambda: page_tables(browser)["summary"].startswith("0 machines"), 30,
                 "the page's first poll of /status")
        clients = [cluster.start_client(f"c{n}", "compute") for n in (1, 2, 3)]
        # A host the server booted (it holds a token) reports markup.
        hostile = cluster.add_host("hostile")
        assert cluster.token(hostile)  # its config part fetched as iPXE does
        assert cluster.send_report(hostile, image=MARKUP_IMAGE, hostname=MARKUP_HOSTNAME,
                                   phase="failed", message=MARKUP_MESSAGE, mac=hostile.mac)
        addresses = [client.host.address for client in clients]

        def every_machine_booted() -> bool:
            machines = page_tables(browser)["machines"]
            return all(machines.get(a, {}).get("phase", [""])[0].startswith("booted")
                       for a in addresses)

        wait_for(every_machine_booted, 180, "the page to show every machine booted")
        cluster.wait_all(clients, 60)
        # Once the machines are done the numbers stand still: the page's
        # (from its last poll) and /status's then agree.
        last: list[list[str]] = []

        def agrees() -> bool:
            last[:] = [mismatches(page_tables(browser), cluster.server.status())]
            return not last[0]

        try:
            wait_for(agrees, 30, "the page's numbers to match /status")
        except TimeoutError:
            raise AssertionError(last[0]) from None
        shown = page_tables(browser)
        status = cluster.server.status()

        # The forged strings are shown as the characters they are.
        row = shown["machines"][hostile.address]
        assert (row["image"][0], row["hostname"][0], row["message"][0], row["phase"][0]) == (
            MARKUP_IMAGE, MARKUP_HOSTNAME, MARKUP_MESSAGE, "failed")
        assert shown["images"][MARKUP_IMAGE]["size"][0] == "not registered"
        assert shown["pwned"] is None, "a reported string ran as a script"
        assert shown["scripts"] == 1 and shown["images_in_page"] == 0, shown

        # The machines carried most of the image between them, and the chart
        # draws it: both lines, the peers' summing to what they reported.
        assert shown["polylines"] == ["server", "peers"]
        booted = [c for c in status["clients"] if c["address"] in addresses]
        from_peers = sum(c["from_peers"] for c in booted)
        assert from_peers > 0
        chart = status["throughput"]
        charted = sum(rate * (end - start) for rate, start, end in
                      zip(chart["peers"][1:], chart["time"], chart["time"][1:]))
        assert abs(charted - from_peers) <= 0.02 * from_peers + 2 * MIB, (charted, from_peers)
        summary = shown["summary"]
        assert summary.startswith("4 machines: 3 booted, 1 failed"), summary

        # Filtering by text and phase, and sorting, in the browser.
        browser.run("const box = document.getElementById('filter-text');"
                    "box.value = arguments[0]; box.dispatchEvent(new Event('input', "
                    "{bubbles: true}));", clients[1].host.mac)
        assert list(page_tables(browser)["machines"]) == [clients[1].host.address]
        browser.run("const box = document.getElementById('filter-text'); box.value = '';"
                    "const phase = document.getElementById('filter-phase');"
                    "phase.value = 'failed';"
                    "phase.dispatchEvent(new Event('input', {bubbles: true}));")
        assert list(page_tables(browser)["machines"]) == [hostile.address]


def test_page_keys_move_it_or_switch_it_off(make_cluster):
    """[seeder] page_address: the page and /status on a listener of their
    own, and nothing else there; the machines' side no longer serves it.
    page = no: neither does."""
    cluster = make_cluster(conf={"seeder": {"page_address": f"{SERVER_ADDRESS}:8080"}})
    cluster.add_image("compute", {"kernel": 1 * MIB})
    cluster.start(("seeder",))
    host = cluster.server_host
    page = f"http://{SERVER_ADDRESS}:8080"

    def code(url: str) -> str:
        return host.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", url],
                        check=False).stdout

    assert b"BootTorrent" in fetch(host, f"{page}/")
    assert json.loads(fetch(host, f"{page}/status"))["images"][0]["name"] == "compute"
    assert [code(f"{page}/boot/boot.ipxe"), code(f"{HTTP_URL}/")] == ["404", "404"]
    assert code(f"{HTTP_URL}/boot/boot.ipxe") == "200"
    headers = host.run(["curl", "-sI", f"{page}/"]).stdout
    assert "Content-Security-Policy: default-src 'none'; script-src 'self'" in headers

    cluster.conf = {"seeder": {"page": False}}
    cluster.write_config()
    cluster.restart_seeder()
    assert [code(f"{HTTP_URL}/"), code(f"{page}/")] == ["404", "000"]
    assert code(f"{HTTP_URL}/status") == "200"
    assert "no status page ([seeder] page = no)" in cluster.server.log("seeder")


THOUSAND = 1000


def test_the_page_holds_a_thousand_machines(make_cluster):
    """A thousand machines report (lab/storm.py, each from its own address
    with its own token): the page lists every one of them, and its filter
    and sorting find one among them."""
    cluster = make_cluster()
    cluster.add_image("bench", {"kernel": MIB})  # the image lab.storm's machines report
    cluster.start(("seeder",))
    host, network = cluster.crowd("crowd", THOUSAND)
    reporters = host.popen([PYTHON, "-m", "lab.storm", "--report", "--from", network,
                            "--count", str(THOUSAND), "--seconds", "20",
                            f"{HTTP_URL}{paths.REPORT}"],
                           cwd=REPO, stdout=subprocess.PIPE, text=True)
    port = forward(cluster.server_host, SERVER_ADDRESS, HTTP_PORT)
    with Browser() as browser:
        browser.open(f"http://127.0.0.1:{port}/")

        def every_machine_reported() -> dict | None:
            rows = page_tables(browser)["machines"]
            return rows if len(rows) == THOUSAND and all(
                row["phase"][0] == "downloading" for row in rows.values()) else None

        rows = wait_for(every_machine_reported, 60, "the page to list every machine's report")
        assert browser.run(SHOWN) == f"{THOUSAND} of {THOUSAND} machines shown"
        addresses = sorted(rows, key=ipaddress.ip_address)
        # The last machine by address, found by its address, and first when
        # sorted by address the other way.
        last = addresses[-1]
        browser.run("const box = document.getElementById('filter-text');"
                    "box.value = arguments[0]; box.dispatchEvent(new Event('input', "
                    "{bubbles: true}));", rows[last]["mac"][0])
        assert list(page_tables(browser)["machines"]) == [last]
        browser.run("const box = document.getElementById('filter-text'); box.value = '';"
                    "document.querySelector('#machines th[data-key=\"address\"]').click();")
        assert next(iter(page_tables(browser)["machines"])) == last
        print(f"a redraw of {THOUSAND} machines: {browser.run('return view.drawMs'):.0f} ms")
    out, _ = reporters.communicate(timeout=120)
    assert json.loads(out)["failed"] == 0, out
