"""A port on this host's loopback that leads to a port in a lab namespace:
the demo's and the tests' way for a browser on this host to open the
status page of a server in a lab (the host's network is never configured).

The listening socket is made here, in this host's namespace, and handed
to a process that runs in the lab's namespace: it accepts on it and
connects from there. The lab stops that process when it closes.

    python3 -m lab.forward FD ADDRESS PORT    (what forward() starts)
"""

from __future__ import annotations

import socket
import sys
import threading

from lab.netns import Host
from lab.server import PYTHON, REPO


def forward(host: Host, address: str, port: int) -> int:
    """A port on 127.0.0.1 whose connections reach address:port from host's
    namespace, for as long as its lab runs."""
    listener = socket.create_server(("127.0.0.1", 0))
    try:
        host.popen([PYTHON, "-m", "lab.forward", str(listener.fileno()), address, str(port)],
                   pass_fds=(listener.fileno(),), cwd=REPO)
        return listener.getsockname()[1]
    finally:
        listener.close()  # the forwarder holds its own copy


def pump(source: socket.socket, target: socket.socket) -> None:
    try:
        while data := source.recv(65536):
            target.sendall(data)
        target.shutdown(socket.SHUT_WR)
    except OSError:
        pass


def connect(client: socket.socket, target: tuple[str, int]) -> None:
    with client:
        try:
            server = socket.create_connection(target, timeout=10)
        except OSError:
            return
        with server:
            server.settimeout(None)
            back = threading.Thread(target=pump, args=(server, client), daemon=True)
            back.start()
            pump(client, server)
            back.join()


def main() -> None:
    listener = socket.socket(fileno=int(sys.argv[1]))
    target = (sys.argv[2], int(sys.argv[3]))
    while True:
        client, _ = listener.accept()
        threading.Thread(target=connect, args=(client, target), daemon=True).start()


if __name__ == "__main__":
    main()
