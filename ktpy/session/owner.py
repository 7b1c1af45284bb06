"""Who owns a session on this machine: the identity recorded on every object a
session creates, and the check of a recorded owner against this machine's
processes (the cluster's view and the host's facts meet here, above both)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta
from typing import Any

from ktpy.cluster import lock
from ktpy.cluster.heartbeat import LocalProcess, SessionView
from ktpy.cluster.labels import PidStart
from ktpy.host import procs


def local_owner_identity() -> PidStart:
    return PidStart(*procs.identity())


def check_local_process(pid_start: PidStart) -> LocalProcess:
    """Whether a session's owner process runs on this host (``procs.judge``'s rule)."""
    p = pid_start
    state = procs.state(
        procs.Identity(p.pid, p.start_ticks, p.boot_id, p.pid_ns, p.time_ns, p.hostname)
    )
    return {
        procs.ProcessState.ALIVE: LocalProcess.ALIVE,
        procs.ProcessState.GONE: LocalProcess.GONE,
    }.get(state, LocalProcess.ELSEWHERE)


def judge_holder(
    body: Mapping[str, Any],
    sessions: Iterable[SessionView],
    *,
    now: datetime,
    stale_after: timedelta,
) -> lock.LockJudgement:
    """Who holds ``body``, judged from outside any session (``me`` is nobody), with
    this machine's process check for a holder that is provably this host's."""
    return lock.judge_lock(
        body, sessions, me="", now=now, stale_after=stale_after, check_local=check_local_process
    )
