"""What ``ktpy clean`` does, decided as a pure filter over labelled objects.

Input: the objects ktpy modified (label ``ktpy.dev/modified-by``) and the
objects ktpy created (``app.kubernetes.io/managed-by=ktpy``), the cluster's
"now", the staleness threshold, and a check of this machine's processes.
Output: a plan of which modified objects to restore (first) and which created
objects to delete (after), each named with its uid so that the delete can be
made conditional on it. A live session's objects are never in the plan.

List the modified objects BEFORE the created ones: a session always creates
its shadow pod before it modifies anything, so a modification seen in the
first list has its pod in the second, and a live session is never mistaken
for an orphan.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from ktpy.cluster import labels, modify
from ktpy.cluster.bodies import JsonObject
from ktpy.cluster.heartbeat import (
    Liveness,
    LocalProcessCheck,
    ObjectRef,
    SessionView,
    no_local_check,
    object_ref,
    sessions_from_objects,
)
from ktpy.durations import format_duration
from ktpy.errors import UsageProblem

# Stop traffic first, then the pods behind it; Secrets go with their pod anyway.
_DELETE_ORDER = {"Service": 0, "Deployment": 1, "Pod": 2, "Secret": 3}


def check_threshold(threshold: timedelta, interval: timedelta) -> None:
    """Refuse a threshold that could call a live session stale."""
    if threshold < 2 * interval:
        raise UsageProblem(
            f"threshold {format_duration(threshold)} is less than twice the heartbeat interval "
            f"({format_duration(interval)}); live sessions could be removed",
            hint=f"Use --threshold {format_duration(2 * interval)} or more.",
        )


@dataclass(frozen=True)
class Restoration:
    ref: ObjectRef
    session_id: str | None
    body: JsonObject  # the object as it should be; carries resourceVersion for a replace


@dataclass(frozen=True)
class CleanPlan:
    restore: tuple[Restoration, ...]
    delete: tuple[ObjectRef, ...]
    removed_sessions: tuple[SessionView, ...]
    live_sessions: tuple[SessionView, ...]
    # Modified objects that cannot be restored automatically, with the reason.
    unreadable: tuple[tuple[ObjectRef, str], ...] = ()

    @property
    def is_empty(self) -> bool:
        return not self.restore and not self.delete


def plan_clean(
    modified: Iterable[Mapping[str, Any]],
    created: Iterable[Mapping[str, Any]],
    *,
    now: datetime,
    threshold: timedelta,
    interval: timedelta,
    check_local: LocalProcessCheck = no_local_check,
    sessions: frozenset[str] | None = None,
) -> CleanPlan:
    """Decide what to restore and delete. ``sessions`` limits the plan to those session ids."""
    check_threshold(threshold, interval)
    created_list = list(created)
    views = sessions_from_objects(created_list)
    live_ids: set[tuple[str, str]] = set()
    dead_views: list[SessionView] = []
    live_views: list[SessionView] = []
    for view in views:
        key = (view.namespace, view.session_id)
        if view.liveness(now, threshold, check_local) is Liveness.LIVE:
            live_ids.add(key)
            live_views.append(view)
        elif sessions is None or view.session_id in sessions:
            dead_views.append(view)
        else:
            # Not ours to clean this time: treat as if live.
            live_ids.add(key)

    restorations: list[Restoration] = []
    unreadable: list[tuple[ObjectRef, str]] = []
    for body in modified:
        if not modify.is_modified(body):
            continue
        ref = object_ref(body)
        session_id = modify.modifier_session(body)
        if session_id is not None and (ref.namespace, session_id) in live_ids:
            continue
        if sessions is not None and session_id not in sessions:
            continue
        try:
            restored = modify.restored_body(body)
        except ValueError as exc:
            unreadable.append((ref, str(exc)))
            continue
        restorations.append(Restoration(ref, session_id, restored))

    dead_keys = {(v.namespace, v.session_id) for v in dead_views}
    deletions = [
        object_ref(body)
        for body in created_list
        if _session_key(body) in dead_keys and not object_ref(body).terminating
    ]
    deletions.sort(key=lambda r: (_DELETE_ORDER.get(r.kind, 9), r.namespace, r.name))
    return CleanPlan(
        restore=tuple(restorations),
        delete=tuple(deletions),
        removed_sessions=tuple(dead_views),
        live_sessions=tuple(live_views),
        unreadable=tuple(unreadable),
    )


def _session_key(body: Mapping[str, Any]) -> tuple[str, str] | None:
    meta = body.get("metadata") or {}
    object_labels = meta.get("labels") or {}
    if object_labels.get(labels.MANAGED_BY) != labels.MANAGED_BY_KTPY:
        return None
    session_id = object_labels.get(labels.SESSION)
    if not session_id:
        return None
    return (str(meta.get("namespace", "")), str(session_id))
