"""A Service's mesh, as pure functions over API bodies.

A meshed Service selects the mesh's router instead of its pods; the router
sends a request carrying a developer's header value to that developer's
``<svc>-kt-mesh-<value>`` Service and everything else to ``<svc>-kt-stuntman``
(the original selector). The mesh, not its first developer, holds the
Service: the lock and ``modified-by`` name the mesh's id, and the router,
its Secret and the stuntman carry that id as their session label. Every live
member refreshes their heartbeat, so the mesh lives as long as one member
does and goes stale (and is swept) once none is left.

Each member also marks the Service with an annotation of its own
(``ktpy.dev/mesh-<session>``: header key, value, owner, heartbeat) that its
heartbeat refreshes: the live marks are the mesh's reference count, and the
values taken.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from ktpy.cluster import labels, modify, router
from ktpy.cluster.bodies import JsonObject
from ktpy.cluster.heartbeat import Liveness, LocalProcessCheck, SessionView, no_local_check
from ktpy.cluster.labels import Lock, Role
from ktpy.cluster.modify import FieldChange

SELECTOR_PATH = ("spec", "selector")


@dataclass(frozen=True)
class Mark:
    """One developer in a Service's mesh."""

    session: str
    key: str  # the header's name, lowercase
    value: str
    owner: str
    heartbeat: datetime

    @property
    def header(self) -> str:
        return f"{self.key.upper()}: {self.value}"

    def encode(self) -> str:
        return json.dumps(
            {
                "key": self.key,
                "value": self.value,
                "owner": self.owner,
                "heartbeat": labels.format_time(self.heartbeat),
            },
            sort_keys=True,
        )

    @classmethod
    def decode(cls, session: str, text: str) -> Mark:
        try:
            data = json.loads(text)
            return cls(
                session,
                str(data["key"]),
                str(data["value"]),
                str(data.get("owner", "someone")),
                labels.parse_time(str(data["heartbeat"])),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"unreadable mesh mark of session {session}: {text!r}") from exc


def mark_annotation(session: str) -> str:
    return labels.MESH_MARK_PREFIX + session


def marks_of(service: Mapping[str, Any]) -> list[Mark]:
    """The marks on a Service, unreadable ones left out."""
    annotations = (service.get("metadata") or {}).get("annotations") or {}
    found: list[Mark] = []
    for key, text in sorted(annotations.items()):
        if key.startswith(labels.MESH_MARK_PREFIX):
            try:
                found.append(Mark.decode(key[len(labels.MESH_MARK_PREFIX) :], str(text)))
            except ValueError:
                continue
    return found


def mark_liveness(
    mark: Mark,
    sessions: Iterable[SessionView],
    *,
    now: datetime,
    stale_after: timedelta,
    check_local: LocalProcessCheck = no_local_check,
) -> Liveness:
    """A mark is as live as its session (its own objects' heartbeat and, on this
    machine, its process); a mark without objects lives by its own heartbeat."""
    view = next((v for v in sessions if v.session_id == mark.session), None)
    if view is not None:
        return view.liveness(now, stale_after, check_local)
    return Liveness.STALE if now - mark.heartbeat >= stale_after else Liveness.LIVE


def live_marks(
    service: Mapping[str, Any],
    sessions: Iterable[SessionView],
    *,
    now: datetime,
    stale_after: timedelta,
    check_local: LocalProcessCheck = no_local_check,
) -> list[Mark]:
    views = list(sessions)
    return [
        m
        for m in marks_of(service)
        if mark_liveness(m, views, now=now, stale_after=stale_after, check_local=check_local)
        is Liveness.LIVE
    ]


def with_mark(service: Mapping[str, Any], mark: Mark) -> JsonObject:
    """The Service with this member's mark added or refreshed (keeps resourceVersion)."""
    body: JsonObject = json.loads(json.dumps(service))
    meta = body.setdefault("metadata", {})
    annotations = meta.get("annotations")
    if not isinstance(annotations, dict):
        annotations = meta["annotations"] = {}
    annotations[mark_annotation(mark.session)] = mark.encode()
    return body


def without_mark(service: Mapping[str, Any], session: str) -> JsonObject:
    body: JsonObject = json.loads(json.dumps(service))
    annotations = (body.get("metadata") or {}).get("annotations") or {}
    annotations.pop(mark_annotation(session), None)
    return body


def mark_patch(mark: Mark) -> JsonObject:
    """A merge patch that refreshes only this member's mark (its heartbeat)."""
    return {"metadata": {"annotations": {mark_annotation(mark.session): mark.encode()}}}


def mesh_lock(mesh_id: str, owner: str, now: datetime) -> Lock:
    return Lock(mesh_id, owner, Role.MESH, now)


def mesh_changes(service: str) -> tuple[FieldChange, ...]:
    """What a mesh changes on the Service: its selector, to the router's pods."""
    return (FieldChange(SELECTOR_PATH, router.router_selector(service)),)


def meshed_service(service: Mapping[str, Any], lock: Lock) -> JsonObject:
    """The Service selecting the router, its selector and the lock recorded."""
    changes = mesh_changes(str(service["metadata"]["name"]))
    return modify.modified_body(service, changes, session_id=lock.session, lock=lock)


def mesh_of(service: Mapping[str, Any]) -> str | None:
    """The id of the mesh holding the Service, if a mesh does."""
    lock = modify.lock_of(service)
    if lock is not None and lock.role is Role.MESH:
        return lock.session
    return None
