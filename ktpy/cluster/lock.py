"""Who holds a Service (or the Deployment behind it): judge, take, hand over.

The lock is ``ktpy.dev/lock`` (or, for older marks, ``modified-by``) on the
object itself, written in the same conditional write as the change it
guards, so of sessions racing for one object exactly one wins. A holder is
live, stale or dead by its session's heartbeat (``heartbeat.SessionView``);
a live one is refused, a stale or dead one is swept first (``sweep.release``)
and then taken over.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from ktpy.cluster import inventory, modify, sweep
from ktpy.cluster.api import (
    ClusterApi,
    Conflict,
    Kind,
    NotFound,
)
from ktpy.cluster.bodies import JsonObject
from ktpy.cluster.heartbeat import Liveness, LocalProcessCheck, SessionView, no_local_check
from ktpy.cluster.labels import Lock, Role
from ktpy.cluster.modify import WRITE_ATTEMPTS
from ktpy.errors import (
    AlreadyExchanged,
    KtpyError,
    ServiceNotFound,
)


class Decision(StrEnum):
    FREE = "free"  # nobody holds it
    MINE = "mine"  # this very session holds it (an earlier write went through)
    HELD = "held"  # a live session holds it: refuse
    STALE = "stale"  # a stale or dead session holds it: restore, then take over


@dataclass(frozen=True)
class Holder:
    session: str | None
    owner: str
    since: datetime | None
    role: Role
    liveness: Liveness


@dataclass(frozen=True)
class LockJudgement:
    decision: Decision
    holder: Holder | None = None

    def refusal(self, service: str, now: datetime) -> AlreadyExchanged:
        assert self.holder is not None, "only a held lock is refused"
        holder = self.holder
        age = now - holder.since if holder.since is not None else timedelta(0)
        owner = holder.owner
        if holder.session:
            owner = f"{owner}, session {holder.session}"
        role = "meshed" if holder.role is Role.MESH else "exchanged"
        return AlreadyExchanged(service, owner, max(age, timedelta(0)), role)


def judge_lock(
    body: Mapping[str, Any],
    sessions: Iterable[SessionView],
    *,
    me: str,
    now: datetime,
    stale_after: timedelta,
    check_local: LocalProcessCheck = no_local_check,
) -> LockJudgement:
    """Who holds ``body`` (a Service or Deployment), and what this session may do.

    ``sessions`` are the sessions of the object's namespace, from the objects ktpy
    created, listed AFTER ``body`` was read (a session creates its pod before it
    modifies anything, so a live holder always has its pod in the list). A holder
    with no objects at all is an orphan: stale.
    """
    if not modify.is_modified(body):
        return LockJudgement(Decision.FREE)
    session = modify.modifier_session(body)
    if session == me:
        return LockJudgement(Decision.MINE)
    lock = modify.lock_of(body)
    namespace = str((body.get("metadata") or {}).get("namespace", ""))
    view = next((v for v in sessions if v.session_id == session and v.namespace == namespace), None)
    liveness = Liveness.STALE if view is None else view.liveness(now, stale_after, check_local)
    owner = (lock.owner if lock else None) or (view.owner if view else None) or "an unknown user"
    since = lock.since if lock else (view.created if view else None)
    role = lock.role if lock else (view.role if view and view.role else Role.EXCHANGE)
    holder = Holder(session, owner, since, role, liveness)
    if liveness is Liveness.LIVE:
        return LockJudgement(Decision.HELD, holder)
    return LockJudgement(Decision.STALE, holder)


def lock_for(session_id: str, owner: str, now: datetime, role: Role = Role.EXCHANGE) -> Lock:
    return Lock(session_id, owner, role, now)


def take(
    api: ClusterApi,
    kind: Kind,
    namespace: str,
    name: str,
    *,
    build: Callable[[JsonObject], JsonObject],
    check: Callable[[JsonObject], object] = lambda _: None,
    session_id: str,
    stale_after: timedelta,
    check_local: LocalProcessCheck = no_local_check,
    on_takeover: Callable[[Holder], None] = lambda _: None,
) -> JsonObject:
    """Write ``build(current)`` conditionally (resourceVersion), so of sessions racing
    for one object exactly one wins; the others read again and find the holder.

    A live holder: AlreadyExchanged naming it. A stale or dead holder: its changes
    are restored and its objects deleted, then the object is taken. ``check`` runs
    on every fresh read (the object may have changed since it was validated).
    """
    for _ in range(WRITE_ATTEMPTS):
        try:
            current = api.get(kind, namespace, name)
        except NotFound:
            if kind is Kind.SERVICE:
                raise ServiceNotFound(name, namespace) from None
            raise
        check(current)
        sessions = inventory.namespace_sessions(api, namespace)  # after the read: see judge_lock
        now = api.server_time()
        judgement = judge_lock(
            current,
            sessions,
            me=session_id,
            now=now,
            stale_after=stale_after,
            check_local=check_local,
        )
        if judgement.decision is Decision.MINE:
            return current
        if judgement.decision is Decision.HELD:
            raise judgement.refusal(name, now)
        if judgement.decision is Decision.STALE:
            assert judgement.holder is not None
            on_takeover(judgement.holder)
            sweep.release(api, namespace, judgement.holder.session, also=current)
            continue
        try:
            return api.replace(kind, namespace, name, build(current))
        except Conflict:
            continue  # someone wrote in between: read again and judge again
    raise KtpyError(
        f"{kind.value.lower()} {name!r} keeps changing; could not take it",
        hint="Something rewrites it continuously; try again later.",
    )
