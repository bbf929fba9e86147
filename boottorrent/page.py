"""The status page: the boot as a browser shows it, live (README, "The
status page"). Its files are in boottorrent/page/; its script polls
/status once a second and draws every string a machine or a request
supplied as text, never as markup (page.js); the answers forbid any
script, style or connection but the page's own (SECURITY_HEADERS).

It is served by the machines' HTTP side (web.py) at /, or, with [seeder]
page_address, by a listener of its own (PageServer) that serves nothing
else but /status; with [seeder] page off, by neither.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from http import HTTPStatus
from importlib.resources import files

from jinja2 import Environment, PackageLoader

from boottorrent.answers import Answers
from boottorrent.fleet.state import BOOTED
from boottorrent.listener import Listener, Served
from boottorrent.pivotal import paths
from boottorrent.pivotal.wire import PHASES

# An admin or two with a page open: each polls once a second.
PAGE_WORKERS = 4
# URL path: the file in boottorrent/page/ and its type.
FILES = {
    "/": ("index.html.j2", "text/html; charset=utf-8"),
    "/page.js": ("page.js", "text/javascript; charset=utf-8"),
    "/page.css": ("page.css", "text/css; charset=utf-8"),
}
SECURITY_HEADERS = (
    # Should a string ever reach the page as markup, it still cannot run
    # or load anything: only the page's own script, style and /status.
    ("Content-Security-Policy", "default-src 'none'; script-src 'self'; style-src 'self'; "
     "connect-src 'self'; img-src 'self'; base-uri 'none'; form-action 'none'; "
     "frame-ancestors 'none'"),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
    ("Cache-Control", "no-cache"),
)


class Page:
    """The page's files, read once: what the seeder's package ships."""

    def __init__(self) -> None:
        environment = Environment(loader=PackageLoader("boottorrent", "page"),
                                  autoescape=True, keep_trailing_newline=True)
        self.files: dict[str, tuple[bytes, str]] = {}
        for url_path, (name, kind) in FILES.items():
            if name.endswith(".j2"):
                # The phases as the pivotal reports them (wire.py), and which
                # of them mean the machine booted its image (fleet/state.py).
                body = environment.get_template(name).render(
                    phases=json.dumps(PHASES), booted=json.dumps(sorted(BOOTED))).encode()
            else:
                body = (files("boottorrent") / "page" / name).read_bytes()
            self.files[url_path] = (body, kind)

    def answer(self, handler: Answers) -> bool:
        """Send the page's file that handler's request names (GET or HEAD);
        False when it names none."""
        found = self.files.get(handler.path.partition("?")[0])
        if found is None:
            return False
        body, kind = found
        handler.send_response(HTTPStatus.OK)
        handler.send_header("Content-Type", kind)
        handler.send_header("Content-Length", str(len(body)))
        for name, value in SECURITY_HEADERS:
            handler.send_header(name, value)
        handler.end_headers()
        if handler.command != "HEAD":
            handler.wfile.write(body)
        return True


class PageHandler(Served):
    """The page's own listener: the page and /status, nothing else."""

    server: "PageServer"

    def do_GET(self) -> None:
        if self.path == paths.STATUS:
            self._send_json(json.dumps(self.server.status()).encode())
        elif not self.server.page.answer(self):
            self.send_error(HTTPStatus.NOT_FOUND)

    def do_HEAD(self) -> None:
        if not self.server.page.answer(self):
            self.send_error(HTTPStatus.NOT_FOUND)


class PageServer(Listener):
    def __init__(self, address: tuple[str, int], page: Page, status: Callable[[], dict],
                 log_request_line: Callable[[str], None],
                 log_bad_request: Callable[[str], None]):
        # No request to the page has a body: one is answered 413, unread.
        super().__init__(address, PageHandler, PAGE_WORKERS, 0, log_request_line,
                         log_bad_request)
        self.page = page
        self.status = status
