"""Read-only facts about this machine's processes, to tell a dead session at once.

A pid alone is reused; a pid with its start time (clock ticks since boot,
field 22 of /proc/PID/stat) and the boot id names one process for ever.
These take and return plain values, so ``ktpy.cluster`` can keep its own
type for them (``PidStart``) without either package importing the other.
"""

from __future__ import annotations

import os
from enum import StrEnum
from pathlib import Path

PROC = Path("/proc")


class ProcessState(StrEnum):
    ALIVE = "alive"
    GONE = "gone"
    ELSEWHERE = "elsewhere"  # another machine or an earlier boot of this one


def boot_id(proc: Path = PROC) -> str:
    return (proc / "sys/kernel/random/boot_id").read_text(encoding="ascii").strip()


def start_ticks(pid: int, proc: Path = PROC) -> int | None:
    """The process's start time in clock ticks since boot, or None if there is no such pid."""
    try:
        stat = (proc / str(pid) / "stat").read_text(encoding="utf-8", errors="replace")
    except (FileNotFoundError, ProcessLookupError, NotADirectoryError):
        return None
    # The command name (field 2) is in parentheses and may hold spaces or ')'.
    fields = stat[stat.rindex(")") + 2 :].split()
    # fields[0] is field 3 (state), so field 22 (starttime) is fields[19].
    return int(fields[19])


def identity(pid: int | None = None, proc: Path = PROC) -> tuple[int, int, str]:
    """(pid, start ticks, boot id) of a process, by default this one."""
    pid = os.getpid() if pid is None else pid
    ticks = start_ticks(pid, proc)
    if ticks is None:
        raise ProcessLookupError(pid)
    return pid, ticks, boot_id(proc)


def state(pid: int, ticks: int, boot: str, proc: Path = PROC) -> ProcessState:
    """Whether the process named by (pid, start ticks, boot id) still runs here."""
    if boot != boot_id(proc):
        return ProcessState.ELSEWHERE
    return ProcessState.ALIVE if start_ticks(pid, proc) == ticks else ProcessState.GONE
