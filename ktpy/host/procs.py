"""Read-only facts about this host's processes, and the rule for when they may be trusted.

A pid alone is reused; a pid with its start time (clock ticks since boot,
field 22 of /proc/PID/stat) names one process, but only to a reader that
sees the same pids and the same ticks. A dev container, a WSL distribution or
a CI job shares the kernel (and so the boot id) but has pids of its own: to
it, another namespace's pid 57 is a different process or none. So a record
(``Identity``) also names the PID namespace the pid was read in, the time
namespace the ticks were read in (a time namespace shifts them), and the
hostname, and it is judged by the process table only when all of them are
this reader's (``judge``): otherwise it says ``ELSEWHERE`` and the caller
judges by what works across machines (the cluster heartbeat, the journal lock).

An old record (``pid:ticks@boot``, no namespaces) proves no namespace: a
matching live process here keeps it alive (never wrong in the harmful
direction), but a missing one proves nothing, so it is ``ELSEWHERE``.

These take and return plain values, so ``ktpy.cluster`` can keep its own
type for them (``PidStart``) without either package importing the other.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import NamedTuple

PROC = Path("/proc")
UNPROVABLE = 0  # the pid namespace recorded when /proc is not this process's own


class ProcessState(StrEnum):
    ALIVE = "alive"
    GONE = "gone"
    # Not provably a process of this host: another machine, another boot, another PID
    # or time namespace, another hostname, or a record too old to say. Judge otherwise.
    ELSEWHERE = "elsewhere"


class Identity(NamedTuple):
    """One process, as recorded by itself: what ``judge`` needs to trust the record."""

    pid: int
    start_ticks: int
    boot_id: str
    pid_ns: int | None = None  # inode of /proc/self/ns/pid; None in an old record
    time_ns: int | None = None  # inode of /proc/self/ns/time, 0 without time namespaces
    hostname: str | None = None


@dataclass(frozen=True)
class Host:
    """Where the reader stands: the kernel's boot, its PID and time namespaces, its
    hostname, and whether the /proc it reads shows its own PID namespace (a /proc
    mounted for another one shows other pids under the same numbers)."""

    boot_id: str
    pid_ns: int
    time_ns: int
    hostname: str
    proc_is_own: bool


def boot_id(proc: Path = PROC) -> str:
    return (proc / "sys/kernel/random/boot_id").read_text(encoding="ascii").strip()


def _ns_inode(proc: Path, kind: str) -> int | None:
    try:
        return (proc / "self/ns" / kind).stat().st_ino
    except OSError:
        return None


def _proc_is_own(proc: Path) -> bool:
    try:
        return str((proc / "self").readlink()) == str(os.getpid())
    except OSError:
        return False


def this_host(proc: Path = PROC) -> Host:
    own = _proc_is_own(proc)
    return Host(
        boot_id=boot_id(proc),
        pid_ns=(_ns_inode(proc, "pid") or UNPROVABLE) if own else UNPROVABLE,
        time_ns=_ns_inode(proc, "time") or 0,  # before Linux 5.6 there are none
        hostname=os.uname().nodename,
        proc_is_own=own,
    )


def start_ticks(pid: int, proc: Path = PROC) -> int | None:
    """The process's start time in clock ticks since boot, or None if there is no such
    pid or it has ended (a zombie waiting for its parent has dropped its locks and
    files: it is as dead as it gets)."""
    try:
        stat = (proc / str(pid) / "stat").read_text(encoding="utf-8", errors="replace")
    except (FileNotFoundError, ProcessLookupError, NotADirectoryError):
        return None
    # The command name (field 2) is in parentheses and may hold spaces or ')'.
    fields = stat[stat.rindex(")") + 2 :].split()
    if fields[0] in ("Z", "X"):  # field 3, the state: zombie or dead
        return None
    # fields[0] is field 3 (state), so field 22 (starttime) is fields[19].
    return int(fields[19])


def identity(pid: int | None = None, proc: Path = PROC) -> Identity:
    """The record of a process, by default this one, in this host's namespaces. When
    /proc is not this process's own, the pid namespace is ``UNPROVABLE``: no reader
    will judge the record by its process table."""
    here = this_host(proc)
    if pid is None and not here.proc_is_own:
        # This /proc lists another namespace's pids: nothing in it names this process.
        return Identity(os.getpid(), 0, here.boot_id, UNPROVABLE, here.time_ns, here.hostname)
    pid = os.getpid() if pid is None else pid
    ticks = start_ticks(pid, proc)
    if ticks is None:
        raise ProcessLookupError(pid)
    return Identity(pid, ticks, here.boot_id, here.pid_ns, here.time_ns, here.hostname)


def judge(record: Identity, here: Host, ticks_of: Callable[[int], int | None]) -> ProcessState:
    """The liveness rule: by the process table only if the record is provably this
    host's process (same boot, same PID and time namespace, same hostname, and a
    /proc of our own); otherwise ``ELSEWHERE``. ``ticks_of`` reads a pid's start ticks."""
    if record.boot_id != here.boot_id or not here.proc_is_own:
        return ProcessState.ELSEWHERE
    running = ticks_of(record.pid) == record.start_ticks
    if record.pid_ns is None:
        # An old record names no namespace: a match is kept alive, a miss proves nothing.
        return ProcessState.ALIVE if running else ProcessState.ELSEWHERE
    same_place = (record.pid_ns, record.time_ns, record.hostname) == (
        here.pid_ns,
        here.time_ns,
        here.hostname,
    )
    if record.pid_ns == UNPROVABLE or not same_place:
        return ProcessState.ELSEWHERE
    return ProcessState.ALIVE if running else ProcessState.GONE


def state(record: Identity, proc: Path = PROC) -> ProcessState:
    """Whether the recorded process still runs here, by ``judge`` on this host's facts."""
    return judge(record, this_host(proc), lambda pid: start_ticks(pid, proc))
