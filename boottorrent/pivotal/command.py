"""Running a program, the one way the server and the pivotal do (mkosi's
pattern): its output captured, and on failure one error, CommandError,
that names the command and the last line it wrote to stderr.

Here, in the pivotal's package, because the pivotal ships only that
package; standard library only. Programs that run beside ours for long
(QEMU, an HTTP server, a pipeline) are Popen's, where they are started.
"""

from __future__ import annotations

import shlex
import subprocess
from collections.abc import Mapping, Sequence
from os import PathLike


class CommandError(Exception):
    """A program failed, or is not there."""

    def __init__(self, argv: Sequence[str], status: int | None, stderr: str):
        super().__init__(argv, status, stderr)
        self.argv, self.status, self.stderr = list(argv), status, stderr

    @property
    def reason(self) -> str:
        """The last line the program wrote to stderr, or its exit status."""
        lines = [line.strip() for line in self.stderr.splitlines() if line.strip()]
        if self.status is None:
            return "no such program"
        return lines[-1] if lines else f"exit status {self.status}"

    def __str__(self) -> str:
        command = shlex.join(self.argv)
        command = command if len(command) <= 120 else command[:117] + "..."
        return f"{command} failed: {self.reason}"


def run(argv: Sequence[str | PathLike], *, input: str | bytes | None = None,  # noqa: A002
        check: bool = True, text: bool = True, cwd: str | PathLike | None = None,
        env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run argv to its end, its stdout and stderr captured (text, or bytes
    with text=False); CommandError when it cannot start, or, with check,
    when it exits with another status than 0."""
    words = [str(word) for word in argv]
    try:
        result = subprocess.run(words, input=input, capture_output=True, text=text, cwd=cwd,
                                env=env)
    except FileNotFoundError:
        raise CommandError(words, None, "") from None
    if check and result.returncode:
        stderr = result.stderr if text else result.stderr.decode(errors="replace")
        raise CommandError(words, result.returncode, stderr)
    return result
