"""Who owns a session on this machine: the identity recorded on every object a
session creates, and the check of a recorded owner against this machine's
processes (the cluster's view and the host's facts meet here, above both)."""

from __future__ import annotations

from ktpy.cluster.heartbeat import LocalProcess
from ktpy.cluster.labels import PidStart
from ktpy.host import procs


def local_owner_identity() -> PidStart:
    pid, ticks, boot = procs.identity()
    return PidStart(pid, ticks, boot)


def check_local_process(pid_start: PidStart) -> LocalProcess:
    """Whether a session's owner process runs on this machine (same boot)."""
    state = procs.state(pid_start.pid, pid_start.start_ticks, pid_start.boot_id)
    return {
        procs.ProcessState.ALIVE: LocalProcess.ALIVE,
        procs.ProcessState.GONE: LocalProcess.GONE,
    }.get(state, LocalProcess.ELSEWHERE)
