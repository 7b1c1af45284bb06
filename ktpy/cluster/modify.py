"""Changing a user's object so that it can always be put back exactly.

ktpy modifies objects it does not own (a Service's selector, a Deployment's
replicas). Before each change, the original value of every field it touches
is written into the object itself (``ktpy.dev/original``), in the same write
as the change, so no crash can separate them. ``restored_body`` puts the
originals back and removes every ktpy mark, whoever runs it: the session at
exit, ``ktpy recover``, or ``ktpy clean`` on another machine.

Both functions return a new body that keeps ``metadata.resourceVersion``;
sending it with a replace makes the write conditional (409 Conflict if
someone changed the object in between), which is also what makes the
exchange lock safe against a race of twenty sessions.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from ktpy.cluster import labels
from ktpy.cluster.bodies import JsonObject
from ktpy.cluster.labels import Lock

# Conditional writes re-read and try again on 409 this many times before giving up.
WRITE_ATTEMPTS = 20


class _Absent:
    """Marks a field that did not exist (restoring it means removing it)."""

    _instance: _Absent | None = None

    def __new__(cls) -> _Absent:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "ABSENT"


ABSENT: Final = _Absent()


class AlreadyModified(ValueError):
    """The object already carries ktpy's changes (of ``session``)."""

    def __init__(self, session: str | None, lock: Lock | None) -> None:
        super().__init__(f"already modified by ktpy session {session or 'unknown'}")
        self.session = session
        self.lock = lock


class NotModified(ValueError):
    """The object carries no ktpy change to restore."""


@dataclass(frozen=True)
class FieldChange:
    """Set the field at ``path`` (keys from the top of the body) to ``value``."""

    path: tuple[str, ...]
    value: Any

    @property
    def pointer(self) -> str:
        return "/" + "/".join(part.replace("~", "~0").replace("/", "~1") for part in self.path)


def _pointer_path(pointer: str) -> tuple[str, ...]:
    if not pointer.startswith("/"):
        raise ValueError(f"bad path {pointer!r}")
    return tuple(part.replace("~1", "/").replace("~0", "~") for part in pointer[1:].split("/"))


def field_value(body: Mapping[str, Any], path: Sequence[str]) -> Any:
    """The value at ``path``, or ABSENT where the field does not exist."""
    node: Any = body
    for part in path:
        if not isinstance(node, Mapping) or part not in node:
            return ABSENT
        node = node[part]
    return node


def _set(body: dict[str, Any], path: Sequence[str], value: Any) -> None:
    node = body
    for part in path[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            if value is ABSENT:
                return
            child = {}
            node[part] = child
        node = child
    if value is ABSENT:
        node.pop(path[-1], None)
    else:
        node[path[-1]] = copy.deepcopy(value)


def with_changes(current: Mapping[str, Any], changes: Sequence[FieldChange]) -> JsonObject:
    """A copy of ``current`` with ``changes`` applied and nothing else (no marks)."""
    body: JsonObject = copy.deepcopy(dict(current))
    for change in changes:
        _set(body, change.path, change.value)
    return body


def _metadata_maps(body: dict[str, Any]) -> tuple[dict[str, str], dict[str, str]]:
    meta = body.setdefault("metadata", {})
    if not isinstance(meta.get("labels"), dict):
        meta["labels"] = {}
    if not isinstance(meta.get("annotations"), dict):
        meta["annotations"] = {}
    return meta["labels"], meta["annotations"]


def modifier_session(body: Mapping[str, Any]) -> str | None:
    meta = body.get("metadata") or {}
    session = (meta.get("labels") or {}).get(labels.MODIFIED_BY)
    if session:
        return str(session)
    lock = lock_of(body)
    return lock.session if lock else None


def lock_of(body: Mapping[str, Any]) -> Lock | None:
    annotations = (body.get("metadata") or {}).get("annotations") or {}
    text = annotations.get(labels.LOCK)
    if not text:
        return None
    try:
        return Lock.decode(text)
    except ValueError:
        return None


def is_modified(body: Mapping[str, Any]) -> bool:
    meta = body.get("metadata") or {}
    return (
        labels.MODIFIED_BY in (meta.get("labels") or {})
        or labels.ORIGINAL in (meta.get("annotations") or {})
        or labels.LOCK in (meta.get("annotations") or {})
    )


def modified_body(
    current: Mapping[str, Any],
    changes: Sequence[FieldChange],
    *,
    session_id: str,
    lock: Lock | None = None,
) -> JsonObject:
    """``current`` with ``changes`` applied, the originals recorded, and marked as ours.

    Refuses an object that already carries ktpy's marks (AlreadyModified): a
    stale holder's changes must be restored first (``restored_body``), so the
    recorded originals are always the user's own values.
    """
    if is_modified(current):
        raise AlreadyModified(modifier_session(current), lock_of(current))
    if not changes:
        raise ValueError("nothing to change")
    body: JsonObject = copy.deepcopy(dict(current))
    originals: list[dict[str, Any]] = []
    for change in changes:
        before = field_value(body, change.path)
        if before is ABSENT:
            originals.append({"path": change.pointer, "absent": True})
        else:
            originals.append({"path": change.pointer, "value": copy.deepcopy(before)})
        _set(body, change.path, change.value)
    object_labels, annotations = _metadata_maps(body)
    object_labels[labels.MODIFIED_BY] = session_id
    annotations[labels.ORIGINAL] = json.dumps(originals, sort_keys=True)
    if lock is not None:
        annotations[labels.LOCK] = lock.encode()
    return body


def recorded_originals(body: Mapping[str, Any]) -> list[FieldChange]:
    """The original values stored on a modified object, as changes that restore them."""
    annotations = (body.get("metadata") or {}).get("annotations") or {}
    text = annotations.get(labels.ORIGINAL)
    if not text:
        return []
    try:
        entries = json.loads(text)
        return [
            FieldChange(
                _pointer_path(entry["path"]),
                ABSENT if entry.get("absent") else entry["value"],
            )
            for entry in entries
        ]
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"unreadable {labels.ORIGINAL} annotation: {text!r}") from exc


def restored_body(current: Mapping[str, Any]) -> JsonObject:
    """``current`` with the recorded originals put back and every ktpy mark removed."""
    if not is_modified(current):
        raise NotModified("the object carries no ktpy change")
    body: JsonObject = copy.deepcopy(dict(current))
    for change in recorded_originals(body):
        _set(body, change.path, change.value)
    object_labels, annotations = _metadata_maps(body)
    object_labels.pop(labels.MODIFIED_BY, None)
    annotations.pop(labels.ORIGINAL, None)
    annotations.pop(labels.LOCK, None)
    for key in [k for k in annotations if k.startswith(labels.MESH_MARK_PREFIX)]:
        del annotations[key]  # a mesh member's mark goes with the mesh
    meta = body["metadata"]
    # The API server stores an empty map as no map; drop ours to compare equal to the original.
    for key in ("labels", "annotations"):
        if not meta[key]:
            del meta[key]
    return body
