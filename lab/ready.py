"""Start a Python program when told to, its imports done beforehand.

    python3 -m lab.ready MODULE [ARG ...]

Imports MODULE (what `python3 -m MODULE` runs, with everything it
imports, libtorrent included), prints "ready", waits for SIGUSR1, then runs
it as `python3 -m MODULE ARG ...` would and exits with its status.

For the benchmark's N machines: N computers each start their pivotal at
the same moment, where the lab's two cores would start N Pythons one after
the other (a second for 32 of them). Started this way, they all begin
together once signalled (lab.cluster.Client.prepare).
"""

from __future__ import annotations

import importlib
import runpy
import signal
import sys


def main() -> None:
    module, args = sys.argv[1], sys.argv[2:]
    importlib.import_module(f"{module}.__main__")
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
    print("ready", flush=True)
    signal.sigwait({signal.SIGUSR1})
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGUSR1})
    sys.argv = [module, *args]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
