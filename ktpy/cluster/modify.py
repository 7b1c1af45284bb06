"""Changing a user's object so that it can always be put back exactly.

ktpy modifies objects it does not own (a Service's selector, a Deployment's
replicas). Before each change, the original value of every field it touches
is written into the object itself (``ktpy.dev/original``), in the same write
as the change, so no crash can separate them. ``restored_body`` puts the
originals back and removes every ktpy mark, whoever runs it: the session at
exit, ``ktpy recover``, or ``ktpy clean`` on another machine.

Each recorded field also keeps the value ktpy set (``set``). A restore puts the
original back only where the field still holds ktpy's value: a field someone
else changed meanwhile (a Helm upgrade, a GitOps controller that won) is left as
they set it, and the restore names it and its writer (``managedFields``). A
guard that puts ktpy's value back over someone's edit records their value as
the field's new original (``adopt``), so the restore ends with what they wanted.

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
from ktpy.cluster.bodies import FIELD_MANAGER, JsonObject
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
        originals.append(_entry(change.pointer, field_value(body, change.path), change.value))
        _set(body, change.path, change.value)
    object_labels, annotations = _metadata_maps(body)
    object_labels[labels.MODIFIED_BY] = session_id
    annotations[labels.ORIGINAL] = json.dumps(originals, sort_keys=True)
    if lock is not None:
        annotations[labels.LOCK] = lock.encode()
    return body


def _entry(pointer: str, original: Any, ktpy_value: Any, by: str = "") -> dict[str, Any]:
    entry: dict[str, Any] = {"path": pointer}
    if original is ABSENT:
        entry["absent"] = True
    else:
        entry["value"] = copy.deepcopy(original)
    entry["set"] = copy.deepcopy(ktpy_value)
    if by:
        entry["by"] = by
    return entry


@dataclass(frozen=True)
class Recorded:
    """One field as recorded on a modified object."""

    change: FieldChange  # the change that restores the original
    ktpy_value: Any  # what ktpy set; ABSENT in records older than ``set``: always restored
    by: str = ""  # who set the original meanwhile (a guard adopted their value)


def recorded(body: Mapping[str, Any]) -> list[Recorded]:
    """The fields recorded on a modified object (ValueError if unreadable)."""
    annotations = (body.get("metadata") or {}).get("annotations") or {}
    text = annotations.get(labels.ORIGINAL)
    if not text:
        return []
    try:
        entries = json.loads(text)
        return [
            Recorded(
                FieldChange(
                    _pointer_path(entry["path"]),
                    ABSENT if entry.get("absent") else entry["value"],
                ),
                entry.get("set", ABSENT),
                str(entry.get("by") or ""),
            )
            for entry in entries
        ]
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ValueError(f"unreadable {labels.ORIGINAL} annotation: {text!r}") from exc


def recorded_originals(body: Mapping[str, Any]) -> list[FieldChange]:
    """The original values stored on a modified object, as changes that restore them."""
    return [r.change for r in recorded(body)]


def adopt(body: Mapping[str, Any], path: Sequence[str], value: Any, by: str) -> JsonObject:
    """``body`` with the recorded original of ``path`` replaced by ``value``: someone
    (``by``) set the field while ktpy held it, so a restore gives them their value."""
    copied: JsonObject = copy.deepcopy(dict(body))
    entries = [
        _entry(r.change.pointer, _theirs(value, r.ktpy_value), r.ktpy_value, by or "someone else")
        if r.change.path == tuple(path)
        else _entry(r.change.pointer, r.change.value, r.ktpy_value, r.by)
        for r in recorded(copied)
    ]
    _metadata_maps(copied)[1][labels.ORIGINAL] = json.dumps(entries, sort_keys=True)
    return copied


def _theirs(value: Any, ktpy_value: Any) -> Any:
    """Their part of a value: a map merged into ktpy's (a merge patch of a selector)
    keeps ktpy's entries, which are not theirs to get back."""
    if isinstance(value, Mapping) and isinstance(ktpy_value, Mapping):
        return {k: v for k, v in value.items() if ktpy_value.get(k) != v}
    return value


@dataclass(frozen=True)
class LeftField:
    """A field a restore did not put back: someone else set it meanwhile."""

    pointer: str
    by: str  # their field manager, "" if unknown
    adopted: bool = False  # the restore gave them their value (a guard had adopted it)

    def words(self, what: str) -> str:
        who = self.by or "someone else"
        if self.adopted:
            return f"{self.pointer} of {what} is put back as {who} set it, not as it was before"
        return f"{self.pointer} of {what} is left as {who} set it"


@dataclass(frozen=True)
class Restored:
    body: JsonObject
    left: tuple[LeftField, ...] = ()


def restore_plan(current: Mapping[str, Any]) -> Restored:
    """``current`` with every ktpy mark removed and the recorded originals put back
    where the field still holds ktpy's value; the other fields are named in ``left``."""
    if not is_modified(current):
        raise NotModified("the object carries no ktpy change")
    body: JsonObject = copy.deepcopy(dict(current))
    left: list[LeftField] = []
    for entry in recorded(body):
        change = entry.change
        ours = entry.ktpy_value is ABSENT or change.path == labels.LOCK_PATH  # the lock goes
        if not ours and field_value(body, change.path) != entry.ktpy_value:
            left.append(LeftField(change.pointer, field_writer(body, change.path)))
            continue
        _set(body, change.path, change.value)
        if entry.by:
            left.append(LeftField(change.pointer, entry.by, adopted=True))
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
    return Restored(body, tuple(left))


def restored_body(current: Mapping[str, Any]) -> JsonObject:
    """``current`` with ktpy's changes undone and every ktpy mark removed (see
    ``restore_plan``)."""
    return restore_plan(current).body


# --- who wrote a field --------------------------------------------------------------------


def _owns(fields: Any, path: Sequence[str]) -> bool:
    node = fields
    for part in path:
        if not isinstance(node, Mapping) or f"f:{part}" not in node:
            return False
        node = node[f"f:{part}"]
    return True


def field_writer(body: Mapping[str, Any], path: Sequence[str]) -> str:
    """The field manager (from ``metadata.managedFields``) that last wrote the field at
    ``path`` or anything under it, other than ktpy; "" if none is recorded."""
    entries = (body.get("metadata") or {}).get("managedFields") or []
    owners = [
        e
        for e in entries
        if isinstance(e, Mapping)
        and e.get("manager") != FIELD_MANAGER
        and _owns(e.get("fieldsV1"), path)
    ]
    if not owners:
        return ""
    newest = max(owners, key=lambda e: str(e.get("time") or ""))
    return str(newest.get("manager") or "")
