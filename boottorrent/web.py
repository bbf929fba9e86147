"""The seeder's HTTP side: the boot files for iPXE, the images as a web seed,
and the status endpoint that pivotals report to.

    GET  /boot/PATH                    STATE/current/boot/PATH (iPXE script, pivotal);
                                       ?try=x (the pivotal's /stage, its first try)
                                       for one of SHARED_FILES: a redirect to a
                                       machine that serves it, or 503 and Retry-After
                                       while one is about to (fleet/rules.py)
    GET  /images/INFOHASH/NAME/FILE    a registered file (BEP 19 web seed; Range)
    GET  /chain/INFOHASH?port=P[&failed=ADDRESS:PORT]
                                       whom the asker (its relay on port P) streams a
                                       torrent's bytes from (fleet/chain.py), JSON:
                                       wire.ChainAnswer
    GET  /stream/INFOHASH              a torrent's bytes, its files one after the
                                       other (Range: bytes=N-), for the first machine
                                       of the chain
    POST /report                       a pivotal's state, JSON (pivotal/wire.py: Report);
                                       the answer: wire.ReportAnswer
    GET  /follow/registry.json         the registry, and each image's torrent, for the
    GET  /follow/torrents/NAME.torrent servers that follow this one (mirror.py)
    GET  /status                       the seeder's and the machines' state, JSON
    GET  /, /page.js, /page.css        the status page (page.py), unless [seeder]
                                       page is off or page_address puts it elsewhere

The paths are paths.py's, the decisions the fleet's (fleet/); answers.py
sends the bytes. A bad request gets an error status and one log line.

It lives in the seeder process rather than in a separate web server: the
answers to reports and /status need the seeder's live state, and a Debian
web server package would start its own site on port 80 when installed.

Built for a boot storm (hundreds of machines powered on within seconds)
and for a LAN with hostile hosts (listener.py): the kernel holds up to
LISTEN_BACKLOG connections; one thread reads every connection's request
within a deadline and caps what each source address holds (intake.py); a
fixed pool of WORKERS threads answers whole requests only, and a kept-alive
connection goes back to the intake after its answer (and is closed after
it while others wait). `make bench` measures it (bench/RESULTS.md, "HTTP
storm").
"""

from __future__ import annotations

import json
import os
import re
import threading
from collections.abc import Callable
from http import HTTPStatus
from pathlib import Path
from urllib.parse import parse_qs

from boottorrent.configfile import ConfigError
from boottorrent.fleet import Fleet, Via
from boottorrent.listener import Listener, Served
from boottorrent.nics import INDEX, ServedIndex
from boottorrent.nodes import NodeFiles
from boottorrent.page import Page
from boottorrent.pivotal import paths
from boottorrent.pivotal.wire import TOKEN_HEADER, ChainAnswer, Report
from boottorrent.registry import REGISTRY_FILE
from boottorrent.trust import Trust, neighbour_mac, token_part

WORKERS = 64
REPORT_MAX_BYTES = 4096  # a report is about 600 bytes: the most the intake reads
DECIMAL = re.compile(r"[0-9]{1,18}")  # not str.isdigit(): that takes "²" and "٣" too
# The pivotal's parts that machines serve each other (fleet/rules.py):
# the ones its /stage fetches and checks before they run (render.pivotal_shared).
SHARED_FILES = tuple(f"{paths.BOOT}/{path}" for path in (paths.BASE, paths.QEMU))
CONFIG_PART = f"{paths.BOOT}/{paths.CONFIG_PART}"  # with each machine's token (trust.py)
MODULES_PART = f"{paths.BOOT}/{paths.MODULES_PART}"  # or its NIC's part (nics.py)


class Handler(Served):
    """The machines' requests, and the status page's (page.py) when it is
    served here."""

    server: "WebServer"

    def do_HEAD(self) -> None:
        if not (self.server.page and self.server.page.answer(self)):
            self._serve_file(head=True)

    def do_GET(self) -> None:
        if self.server.page and self.server.page.answer(self):
            return
        if self.path == paths.STATUS:
            self._send_json(json.dumps(self.server.status()).encode())
        elif self.path.startswith(f"{paths.CHAIN}/"):
            self._chain_source()
        elif self.path.startswith(f"{paths.STREAM}/"):
            self._send_stream(self.path.removeprefix(f"{paths.STREAM}/")[:64])
        else:
            self._serve_file(head=False)

    def do_POST(self) -> None:
        if self.path != paths.REPORT:
            self.send_error(HTTPStatus.NOT_FOUND)
            return
        length = self.headers.get("Content-Length", "")
        if not DECIMAL.fullmatch(length):
            self.send_error(HTTPStatus.LENGTH_REQUIRED if not length else HTTPStatus.BAD_REQUEST,
                            "a report needs a Content-Length in decimal digits")
            return
        if not 0 < int(length) <= REPORT_MAX_BYTES:
            self.send_error(HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                            f"a report is 1 to {REPORT_MAX_BYTES} bytes")
            return
        try:
            data = json.loads(self.rfile.read(int(length)))
            if not isinstance(data, dict):
                raise ValueError("a JSON object is expected")
            report = Report.from_dict(data)
        except (ValueError, RecursionError) as error:
            reason = "JSON nested too deeply" if isinstance(error, RecursionError) else error
            self.send_error(HTTPStatus.BAD_REQUEST, str(reason)[:200])
            return
        mac = self._machine()
        if mac is None or report.mac not in ("", mac):
            self._refuse()
            return
        report.mac = mac
        self._send_json(self.server.fleet.add(report, self.client_address[0]).to_json())

    def _chain_source(self) -> None:
        if not self._machine():
            self._refuse()
            return
        infohash, _, query = self.path.removeprefix(f"{paths.CHAIN}/").partition("?")
        asked = parse_qs(query)
        port = asked.get("port", [""])[0]
        if not (DECIMAL.fullmatch(port) and 0 < int(port) < 65536):
            self.send_error(HTTPStatus.BAD_REQUEST, "port: a TCP port number is expected")
            return
        source = self.server.fleet.chains.source(infohash[:64], f"{self.client_address[0]}:{port}",
                                                 asked.get("failed", [""])[0][:64])
        if source is None:
            self.send_error(HTTPStatus.NOT_FOUND)
        else:
            self._send_json(ChainAnswer(source).to_json())

    def _send_stream(self, infohash: str) -> None:
        if not self._machine():
            self._refuse()
            return
        files = self.server.streams.get(infohash)
        if files is None:
            self.send_error(HTTPStatus.NOT_FOUND)
            return
        wanted = self._start_body(sum(size for _, size in files))
        if wanted is None:
            return
        start, end = wanted
        self.server.fleet.streaming(infohash, started=True)
        try:
            offset = 0
            for path, size in files:
                first, last = max(start - offset, 0), min(end - offset, size - 1)
                if first <= last:
                    with path.open("rb") as file:
                        self._send_range(file, first, last - first + 1,
                                         f"{paths.STREAM}/{infohash}")
                offset += size
        finally:
            self.server.fleet.streaming(infohash, started=False)

    def _serve_file(self, head: bool) -> None:
        url_path, _, query = self.path.partition("?")
        path = self.server.resolve(url_path)
        if path is None:
            self.send_error(HTTPStatus.NOT_FOUND)
            return
        # iPXE and the stage ask for whole files; a Range is libtorrent's web seed.
        if url_path.startswith(f"{paths.BOOT}/") and not head and "Range" not in self.headers:
            asked = parse_qs(query)
            if url_path == CONFIG_PART:
                self._send_config_part(path, asked)
                return
            if url_path == MODULES_PART and "nic" in asked:
                url_path = self.server.nic_part(asked["nic"][0][:16]) or url_path
                path = self.server.resolve(url_path) or path
            # The /stage's tries (paths.TRY); without one, or from a machine
            # the server did not boot, the storm's rules are not asked.
            if url_path in SHARED_FILES and paths.TRY in asked and self._machine():
                self._send_shared(path, url_path, paths.tries_of(asked[paths.TRY][0]))
                return
        self._send_file(path, url_path, head)

    def _send_shared(self, path: Path, url_path: str, tries: int) -> None:
        """A shared part, from where the fleet says: here, a machine that
        serves it (a redirect), or later (503)."""
        asker = self.client_address[0]
        answer = self.server.fleet.pivotal_part(asker, tries)
        if answer.via is Via.WAIT:
            self._retry_later(answer.retry_after)
        elif answer.via is Via.PEER:
            # Each pivotal serves the parts on the same port (wire.Ports).
            self._redirect(f"http://{answer.peer}:{self.server.server_port}"
                           f"{url_path.removeprefix(paths.BOOT)}")
        else:
            self.server.fleet.sending(asker, started=True)
            try:
                self._send_file(path, url_path, head=False)
            finally:
                self.server.fleet.sending(asker, started=False)

    def _send_config_part(self, path: Path, asked: dict[str, list[str]]) -> None:
        """The config part, and before it, for a machine that names its MAC
        (iPXE's ${netX/mac}), a part with its token (trust.py): it is then
        on its way to the swarm; and for a machine [machines] lists, its
        own files (nodes.py)."""
        address = self.client_address[0]
        mac = asked.get("mac", [""])[0][:17].lower()
        token = self.server.trust.token(address, mac)
        own = token_part(token) if token else b""
        if token:
            self.server.fleet.on_its_way(address, mac, asked.get("image", [""])[0][:64])
            own += self._node_part(address, mac)
        with path.open("rb") as file:
            size = os.fstat(file.fileno()).st_size
            self.send_response(HTTPStatus.OK)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(len(own) + size))
            self.end_headers()
            self.wfile.write(own)
            self._send_range(file, 0, size, CONFIG_PART)

    def _node_part(self, address: str, mac: str) -> bytes:
        """The machine's own files: only over its own connection (this one,
        from iPXE), to the MAC its packets come from, never through a peer."""
        nodes = self.server.node_files
        if nodes is None or mac not in nodes.nodes:
            return b""
        sender = neighbour_mac(address)
        if sender != mac:
            if self.server.trust.first_refusal(f"{address} {mac}"):
                self.server.log_bad_request(
                    f"{address} asked for the own files of {mac} from a host whose MAC is "
                    f"{sender or 'unknown'}: refused, sent none (further ones are not logged)")
            return b""
        try:
            return nodes.part(mac, address)
        except (OSError, ConfigError) as error:
            if self.server.trust.first_refusal(f"{address} {mac}"):
                self.server.log_bad_request(f"{mac}'s own files cannot be made: {error}")
            return b""

    def _machine(self) -> str | None:
        """The MAC of the machine the server booted that sent this request
        (its token, trust.py), or None."""
        return self.server.trust.machine(self.client_address[0],
                                         self.headers.get(TOKEN_HEADER, "")[:64])

    def _refuse(self) -> None:
        """403 for a request that only a machine this server booted may make."""
        address = self.client_address[0]
        if self.server.trust.first_refusal(address):
            self.server.log_bad_request(f"{address} {self.command} {self.path[:100]!r}: no "
                                        "token of a boot this server served to this address "
                                        "(further ones from it are not logged)")
        body = b"only a machine this server booted may ask this (its token)\n"
        self.send_response(HTTPStatus.FORBIDDEN)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def counted(self, counted_as: str, count: int) -> None:
        self.server.count_sent(counted_as, count)


class WebServer(Listener):
    def __init__(self, address: tuple[str, int], state_root: Path,
                 status: Callable[[], dict], log_request_line: Callable[[str], None],
                 log_bad_request: Callable[[str], None], fleet: Fleet, trust: Trust,
                 page: Page | None):
        super().__init__(address, Handler, WORKERS, REPORT_MAX_BYTES, log_request_line,
                         log_bad_request)
        self.state_root = state_root
        self.fleet = fleet
        self.trust = trust
        self.status = status
        self.page = page  # the status page, when it is served here
        # The files of each torrent offered for streaming, in torrent order.
        self.streams: dict[str, list[tuple[Path, int]]] = {}
        self.sent_by_path: dict[str, int] = {}
        self.nic_index = ServedIndex()
        self.node_files: NodeFiles | None = None  # the seeder's, from the current snapshot
        self._sent_lock = threading.Lock()

    def resolve(self, url_path: str) -> Path | None:
        """The file a URL names, or None; nothing outside the boot files,
        the images and, for followers, the registry and the torrents."""
        parts = [p for p in url_path.split("/") if p]
        if len(parts) < 2 or any(p in (".", "..") for p in parts):
            return None
        if parts[0] == paths.BOOT.strip("/"):
            root = (self.state_root / "current" / "boot").resolve()
        elif parts[0] == paths.IMAGES.strip("/"):
            root = (self.state_root / "images").resolve()
        elif parts[0] == paths.FOLLOW.strip("/") and (
                parts[1:] == [REGISTRY_FILE] or (parts[1] == "torrents" and len(parts) == 3)):
            root = (self.state_root / "current").resolve()
        else:
            return None
        path = root.joinpath(*parts[1:])
        # Pivotal parts are links into the cache or /usr/lib; is_file() follows them.
        try:
            return path if path.is_file() else None
        except (OSError, ValueError):  # a name too long, a NUL byte
            return None

    def nic_part(self, busid: str) -> str | None:
        """The URL path of the modules part for the NIC of this busid
        (iPXE's), or None: the whole modules part is sent then."""
        name = self.nic_index.part(self.resolve(f"{paths.BOOT}/{paths.NICS}/{INDEX}"), busid)
        return f"{paths.BOOT}/{paths.NICS}/{name}" if name else None

    def offer(self, infohash: str, files: list[tuple[Path, int]]) -> None:
        """Stream this torrent's files (in torrent order) to the machines' chain."""
        self.streams[infohash] = files
        self.fleet.chains.offer(infohash)

    def withdraw(self, infohash: str) -> None:
        self.streams.pop(infohash, None)
        self.fleet.chains.withdraw(infohash)

    def count_sent(self, path: str, count: int) -> None:
        with self._sent_lock:
            self.sent_by_path[path] = self.sent_by_path.get(path, 0) + count

    def sent_by_part(self, prefix: str) -> dict[str, int]:
        """Bytes sent of each file under prefix, by its path after prefix."""
        with self._sent_lock:
            return {path.removeprefix(prefix): n for path, n in sorted(self.sent_by_path.items())
                    if path.startswith(prefix)}

    def sent_under(self, prefix: str) -> int:
        """Bytes sent of the files whose URL path starts with prefix."""
        with self._sent_lock:
            return sum(n for path, n in self.sent_by_path.items() if path.startswith(prefix))
