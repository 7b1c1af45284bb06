"""Undoing what dead sessions left in the cluster: the one sweep path used by
``ktpy clean``, ``ktpy recover`` and the take-over of a stale lock.

First a plan, decided as a pure filter over labelled objects (``plan_clean``,
``plan_release``); then ``carry_out``, the one place that restores and deletes,
always in the same order (``RESTORE_ORDER``, then ``DELETE_ORDER``).

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

from ktpy.cluster import inventory, labels, mesh, modify, redirect, router
from ktpy.cluster.api import ApiError, ClusterApi, Conflict, Kind, NotFound, wait_gone
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
from ktpy.cluster.modify import WRITE_ATTEMPTS
from ktpy.durations import format_duration
from ktpy.errors import KtpyError, UsageProblem

# Deployments are restored before Services: in scale mode the Deployment's pods
# start coming back while the Service still holds the lock (and, after a crash
# mid-switch, still selects the shadow), so when the Service is handed back its
# pods are on their way and no other session can take it half-restored. The
# live teardown of an exchange does the same (ktpy.intercept).
RESTORE_ORDER = {"Deployment": 0, "Service": 1}
# Stop traffic first, then the pods behind it; Secrets go with their pod anyway.
DELETE_ORDER = {"Service": 0, "Deployment": 1, "Pod": 2, "Secret": 3}


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
    # Members of a live mesh that are dead or stale: their mark and route go.
    stale_marks: tuple[tuple[ObjectRef, mesh.Mark], ...] = ()

    @property
    def is_empty(self) -> bool:
        return not self.restore and not self.delete and not self.stale_marks


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
    stale_marks: list[tuple[ObjectRef, mesh.Mark]] = []
    for body in modified:
        if not modify.is_modified(body):
            continue
        ref = object_ref(body)
        session_id = modify.modifier_session(body)
        if session_id is not None and (ref.namespace, session_id) in live_ids:
            # A live mesh: only its dead members' marks (and routes) go.
            stale_marks += [
                (ref, mark)
                for mark in mesh.marks_of(body)
                if mesh.mark_liveness(
                    mark, views, now=now, stale_after=threshold, check_local=check_local
                )
                is not Liveness.LIVE
                and (sessions is None or mark.session in sessions)
            ]
            continue
        if sessions is not None and session_id not in sessions:
            continue
        try:
            restored = modify.restored_body(body)
        except ValueError as exc:
            unreadable.append((ref, str(exc)))
            continue
        restorations.append(Restoration(ref, session_id, restored))

    restorations.sort(key=lambda r: RESTORE_ORDER.get(r.ref.kind, 9))
    dead_keys = {(v.namespace, v.session_id) for v in dead_views}
    deletions = [
        object_ref(body)
        for body in created_list
        if _session_key(body) in dead_keys and not object_ref(body).terminating
    ]
    deletions.sort(key=lambda r: (DELETE_ORDER.get(r.kind, 9), r.namespace, r.name))
    return CleanPlan(
        restore=tuple(restorations),
        delete=tuple(deletions),
        removed_sessions=tuple(dead_views),
        live_sessions=tuple(live_views),
        unreadable=tuple(unreadable),
        stale_marks=tuple(stale_marks),
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


def plan_release(
    modified: Iterable[Mapping[str, Any]],
    created: Iterable[Mapping[str, Any]],
    session_id: str | None,
    *,
    also: Mapping[str, Any] | None = None,
) -> CleanPlan:
    """Undo one session (judged dead or stale by the caller): restore what it
    modified, delete what it created. ``also`` is an object to restore whoever
    marked it (a mark whose session is unknown)."""
    bodies = list(modified)
    if also is not None and object_ref(also) not in {object_ref(b) for b in bodies}:
        bodies.insert(0, also)
    restorations: list[Restoration] = []
    unreadable: list[tuple[ObjectRef, str]] = []
    for body in bodies:
        if not modify.is_modified(body):
            continue
        marked_by = modify.modifier_session(body)
        if marked_by != session_id and body is not also:
            continue
        try:
            restorations.append(
                Restoration(object_ref(body), session_id, modify.restored_body(body))
            )
        except ValueError as exc:
            unreadable.append((object_ref(body), str(exc)))
    restorations.sort(key=lambda r: RESTORE_ORDER.get(r.ref.kind, 9))
    deletions = [
        object_ref(body)
        for body in created
        if session_id is not None
        and (_session_key(body) or ("", ""))[1] == session_id
        and not object_ref(body).terminating
    ]
    deletions.sort(key=lambda r: (DELETE_ORDER.get(r.kind, 9), r.namespace, r.name))
    return CleanPlan(
        restore=tuple(restorations),
        delete=tuple(deletions),
        removed_sessions=(),
        live_sessions=(),
        unreadable=tuple(unreadable),
    )


@dataclass
class SweepReport:
    done: list[tuple[str, ObjectRef]]  # ("restored", ref), ("deleted", ref)
    problems: list[str]


def carry_out(api: ClusterApi, plan: CleanPlan, *, wait: bool = True) -> SweepReport:
    """Restore (in RESTORE_ORDER), then delete (in DELETE_ORDER), then wait for the
    deleted pods to be gone. Each restore re-reads and undoes only the change of
    the session that made it (or, for a mark without a session, whoever's),
    retrying on 409; each delete carries the object's uid, so a same-named object
    someone made since is never touched."""
    report = SweepReport([], [])
    for ref, mark in plan.stale_marks:
        try:
            prune_mark(api, ref.namespace, ref.name, mark)
        except (ApiError, KtpyError) as exc:
            report.problems.append(f"{ref}: mark of session {mark.session}: {exc}")
            continue
        report.done.append((f"removed the route {mark.header} of session {mark.session} from", ref))
    for restoration in plan.restore:
        ref = restoration.ref
        try:
            restored = redirect.restore(
                api,
                Kind(ref.kind),
                ref.namespace,
                ref.name,
                restoration.session_id,
                anyone=restoration.session_id is None,
            )
        except (ApiError, KtpyError) as exc:
            report.problems.append(f"{ref}: {exc}")
            continue
        if restored is not None:
            kept = ", ".join(
                f"{f.pointer} as {f.by or 'someone else'} set it" for f in restored.left
            )
            report.done.append((f"restored (leaving {kept})" if kept else "restored", ref))
    for ref in plan.delete:
        try:
            api.delete(Kind(ref.kind), ref.namespace, ref.name, uid=ref.uid)
            report.done.append(("deleted", ref))
        except (NotFound, Conflict):
            pass
        except (ApiError, KtpyError) as exc:
            report.problems.append(f"{ref}: {exc}")
    pods = [(Kind.POD, r.namespace, r.name, r.uid) for r in plan.delete if r.kind == Kind.POD]
    if wait and not wait_gone(api, pods):
        report.problems.append("some deleted pods are still terminating")
    return report


def prune_mark(api: ClusterApi, namespace: str, service: str, mark: mesh.Mark) -> None:
    """Take a dead member out of a live mesh: its mark off the Service, its route
    and key out of the router's Secret (the live members' routers follow the Secret
    with their heartbeat; a restarted router reads it)."""
    names = router.router_names(service)
    for _ in range(WRITE_ATTEMPTS):
        try:
            secret = api.get(Kind.SECRET, namespace, names.secret)
        except NotFound:
            break
        try:
            api.replace(
                Kind.SECRET,
                namespace,
                names.secret,
                router.secret_without_member(secret, session=mark.session, value=mark.value),
            )
            break
        except Conflict:
            continue
    for _ in range(WRITE_ATTEMPTS):
        try:
            body = api.get(Kind.SERVICE, namespace, service)
        except NotFound:
            return
        if mesh.mark_annotation(mark.session) not in (body["metadata"].get("annotations") or {}):
            return
        try:
            api.replace(Kind.SERVICE, namespace, service, mesh.without_mark(body, mark.session))
        except Conflict:
            continue
        else:
            return
    raise KtpyError(f"service {service!r} keeps changing; could not remove a mark from it")


def release(
    api: ClusterApi,
    namespace: str,
    session_id: str | None,
    *,
    also: Mapping[str, Any] | None = None,
) -> list[str]:
    """Undo everything a dead or stale session did in a namespace (recover, and the
    take-over of its lock). Returns what was done; raises if something could not be."""
    modified = (
        inventory.modified_objects(api, namespace, session_id=session_id) if session_id else []
    )
    created = inventory.created_objects(api, namespace, session_id=session_id) if session_id else []
    report = carry_out(api, plan_release(modified, created, session_id, also=also))
    if report.problems:
        raise KtpyError(
            f"could not undo session {session_id or '(unknown)'}: {'; '.join(report.problems)}",
            hint="Run 'ktpy clean' (or 'ktpy recover SERVICE') again, or use --debug.",
        )
    return [f"{verb} {ref.kind.lower()}/{ref.name}" for verb, ref in report.done]
