"""Running the host's own tools (``ip``, ``resolvectl``, ``nft``) with argv lists.

Everything in ``ktpy.host`` that runs a command takes a ``Runner``, so unit
tests can script the answers and the real one is used everywhere else. No
shell is ever involved, and every call has a timeout: a hung ``resolvectl``
(a stuck D-Bus) must not hang ``ktpy clean --local`` for ever.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from ktpy.errors import HostChangeFailed

DEFAULT_TIMEOUT = 15.0


@dataclass(frozen=True)
class Completed:
    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    def describe(self) -> str:
        """``ip route add ...: exit 2: RTNETLINK answers: File exists`` for messages."""
        detail = self.stderr.strip() or self.stdout.strip() or "no output"
        return f"{' '.join(self.argv)}: exit {self.returncode}: {detail}"


class Runner(Protocol):
    def __call__(self, argv: Sequence[str]) -> Completed: ...


# ip and friends live in sbin, which a root shell reached by 'sudo -E' or 'su' may
# lack in its PATH; clean --local must still find them.
_SYSTEM_DIRS = ("/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin")


def _program(name: str) -> str:
    if "/" in name:
        return name
    path = os.pathsep.join([os.environ.get("PATH", ""), *_SYSTEM_DIRS])
    return shutil.which(name, path=path) or name


def run(argv: Sequence[str]) -> Completed:
    """Run argv and collect its output; a missing program or a timeout is exit 127 / 124,
    as a shell would say, so callers handle one kind of failure."""
    args = tuple(argv)
    try:
        done = subprocess.run(
            (_program(args[0]), *args[1:]),
            capture_output=True,
            text=True,
            errors="replace",
            timeout=DEFAULT_TIMEOUT,
            check=False,
            stdin=subprocess.DEVNULL,
        )
    except FileNotFoundError:
        return Completed(args, 127, "", f"{args[0]}: command not found")
    except subprocess.TimeoutExpired:
        return Completed(args, 124, "", f"timed out after {DEFAULT_TIMEOUT:g}s")
    return Completed(args, done.returncode, done.stdout, done.stderr)


def check(done: Completed, what: str) -> Completed:
    """``done`` if it succeeded, else HostChangeFailed saying what could not be done."""
    if not done.ok:
        raise HostChangeFailed(f"cannot {what}: {done.describe()}")
    return done
