"""Start a Python program when told to, its imports done beforehand.

    python3 -m lab.ready [--rusage FILE] MODULE [ARG ...]

Imports MODULE (what `python3 -m MODULE` runs, with everything it
imports, libtorrent included), prints "ready", waits for SIGUSR1, then runs
it as `python3 -m MODULE ARG ...` would and exits with its status. With
--rusage, it writes the CPU seconds the program took once begun (user and
system, its own and its waited-for children's, imports not counted) to
FILE as JSON when it ends.

For the benchmark's N machines: N computers each start their pivotal at
the same moment, where the lab's two cores would start N Pythons one after
the other (a second for 32 of them). Started this way, they all begin
together once signalled (lab.cluster.Client.prepare).
"""

from __future__ import annotations

import importlib
import json
import resource
import runpy
import signal
import sys
from pathlib import Path


def cpu_seconds() -> dict[str, float]:
    own, children = (resource.getrusage(who) for who in (resource.RUSAGE_SELF,
                                                          resource.RUSAGE_CHILDREN))
    return {"user": own.ru_utime + children.ru_utime,
            "system": own.ru_stime + children.ru_stime}


def main() -> None:
    args = sys.argv[1:]
    rusage = None
    if args[0] == "--rusage":
        rusage, args = Path(args[1]), args[2:]
    module, args = args[0], args[1:]
    importlib.import_module(f"{module}.__main__")
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
    print("ready", flush=True)
    signal.sigwait({signal.SIGUSR1})
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGUSR1})
    before = cpu_seconds()
    sys.argv = [module, *args]
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    finally:
        if rusage:
            after = cpu_seconds()
            rusage.write_text(json.dumps({k: after[k] - before[k] for k in after}))


if __name__ == "__main__":
    main()
