"""An in-memory ``ClusterApi`` for unit tests (kopf's ``k8s_mocked`` idea, one level up).

It fakes ktpy's own API module, never HTTP, and keeps the semantics ktpy
relies on: resourceVersions that change on every write, 409 on a stale
replace or a uid precondition, AlreadyExists, NotFound, label and field
selectors, merge and JSON patches, an event log that watches replay from a
resourceVersion (410 Gone when it was compacted away), owner-reference
garbage collection of Secrets when their pod goes, and the server's clock.
Failures are injected per verb and kind.
"""

from __future__ import annotations

import copy
import itertools
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import websocket

from ktpy.cluster import labels
from ktpy.cluster.api import (
    AlreadyExists,
    Conflict,
    Gone,
    Invalid,
    Kind,
    ListResult,
    NotFound,
    PatchType,
    WatchEvent,
    WatchEventType,
)
from ktpy.cluster.bodies import JsonObject
from ktpy.errors import Forbidden

Key = tuple[Kind, str, str]
START = datetime(2026, 11, 27, 12, 0, 0, tzinfo=UTC)


@dataclass
class FakeClock:
    now: datetime = START

    def __call__(self) -> datetime:
        return self.now

    def advance(self, delta: timedelta) -> None:
        self.now += delta


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, Mapping):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, Mapping) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def _pointer(path: str) -> list[str]:
    return [p.replace("~1", "/").replace("~0", "~") for p in path.split("/")[1:]]


def json_patch(target: JsonObject, operations: Sequence[Mapping[str, Any]]) -> JsonObject:
    """RFC 6902 for objects (add, remove, replace, test); enough for ktpy's use."""
    result = copy.deepcopy(target)
    for op in operations:
        *parents, last = _pointer(str(op["path"]))
        node: Any = result
        for part in parents:
            if not isinstance(node, dict) or part not in node:
                raise Invalid(f"path {op['path']} does not exist")
            node = node[part]
        kind = op["op"]
        if kind == "test":
            if node.get(last) != op["value"]:
                raise Invalid(f"test failed at {op['path']}")
        elif kind in ("add", "replace"):
            if kind == "replace" and last not in node:
                raise Invalid(f"nothing to replace at {op['path']}")
            node[last] = copy.deepcopy(op["value"])
        elif kind == "remove":
            if last not in node:
                raise Invalid(f"nothing to remove at {op['path']}")
            del node[last]
        else:
            raise Invalid(f"unsupported op {kind}")
    return result


_REQUIREMENT = re.compile(r"^\s*(!?)([^=!\s]+)\s*(?:(==|=|!=)\s*(\S*))?\s*$")


def selector_matches(selector: str, object_labels: Mapping[str, str]) -> bool:
    """Equality-based label selectors: ``a=b``, ``a==b``, ``a!=b``, ``a``, ``!a``."""
    for requirement in filter(None, (r.strip() for r in selector.split(","))):
        match = _REQUIREMENT.match(requirement)
        if not match:
            raise Invalid(f"unsupported selector {requirement!r}")
        negate, key, operator, value = match.groups()
        if operator is None:
            present = key in object_labels
            if present == bool(negate):
                return False
        elif operator in ("=", "=="):
            if object_labels.get(key) != value:
                return False
        elif object_labels.get(key) == value:
            return False
    return True


def field_matches(selector: str, body: Mapping[str, Any]) -> bool:
    for requirement in filter(None, (r.strip() for r in selector.split(","))):
        path, _, value = requirement.partition("=")
        node: Any = body
        for part in path.split("."):
            node = node.get(part) if isinstance(node, Mapping) else None
        if str(node) != value:
            return False
    return True


@dataclass
class FakeCluster:
    """Implements ktpy.cluster.api.ClusterApi in memory."""

    clock: FakeClock = field(default_factory=FakeClock)
    objects: dict[Key, JsonObject] = field(default_factory=dict)
    events: list[tuple[int, Kind, WatchEvent]] = field(default_factory=list)
    # Watches from a resourceVersion older than this raise Gone (etcd compaction).
    compacted_before: int = 0
    calls: list[tuple[str, Kind | None, str, str]] = field(default_factory=list)
    # (verb, kind) -> exception raised once by the next such call.
    failures: dict[tuple[str, Kind | None], list[Exception]] = field(default_factory=dict)
    forbidden: set[tuple[str, Kind | None, str | None]] = field(default_factory=set)
    # Called with each pod body on create; may raise (e.g. PodSecurityRejected).
    pod_admission: Callable[[JsonObject], None] | None = None
    websockets: dict[str, Callable[[Sequence[str]], websocket.WebSocket]] = field(
        default_factory=dict
    )

    def __post_init__(self) -> None:
        self._versions = itertools.count(100)
        self._uids = itertools.count(1)

    # --- test controls -------------------------------------------------------

    def fail_next(self, verb: str, kind: Kind | None, error: Exception) -> None:
        self.failures.setdefault((verb, kind), []).append(error)

    def forbid(self, verb: str, kind: Kind | None, namespace: str | None = None) -> None:
        self.forbidden.add((verb, kind, namespace))

    def put(self, kind: Kind, body: Mapping[str, Any]) -> JsonObject:
        """Seed an object as if someone else had created it."""
        namespace = str(body["metadata"].get("namespace", "")) if kind.namespaced else ""
        return self.create(kind, namespace, body)

    def names(self, kind: Kind, namespace: str = "") -> list[str]:
        return sorted(n for k, ns, n in self.objects if k is kind and ns == namespace)

    # --- ClusterApi --------------------------------------------------------------

    def server_time(self) -> datetime:
        self._enter("time", None, "", "")
        return self.clock()

    def get(self, kind: Kind, namespace: str, name: str) -> JsonObject:
        self._enter("get", kind, namespace, name)
        return copy.deepcopy(self._existing(kind, namespace, name))

    def list_objects(
        self,
        kind: Kind,
        namespace: str | None,
        *,
        label_selector: str = "",
        field_selector: str = "",
    ) -> ListResult:
        self._enter("list", kind, namespace or "", "")
        items = [
            copy.deepcopy(body)
            for (k, ns, _), body in sorted(self.objects.items())
            if k is kind
            and (namespace is None or ns == namespace)
            and self._selected(body, label_selector, field_selector)
        ]
        return ListResult(tuple(items), str(self._current_version()))

    def create(
        self, kind: Kind, namespace: str, body: Mapping[str, Any], *, dry_run: bool = False
    ) -> JsonObject:
        stored = copy.deepcopy(dict(body))
        meta = stored.setdefault("metadata", {})
        name = meta.get("name")
        self._enter("create", kind, namespace, str(name))
        if dry_run:
            return stored
        if not name:
            raise Invalid("metadata.name is required")
        namespace = namespace if kind.namespaced else ""
        if body["metadata"].get("namespace", namespace) != namespace:
            raise Invalid("the namespace of the body does not match the request")
        key = (kind, namespace, name)
        if key in self.objects:
            raise AlreadyExists(f'{kind.plural} "{name}" already exists', reason="AlreadyExists")
        if kind is Kind.POD and self.pod_admission is not None:
            self.pod_admission(stored)
        stored["kind"] = kind.value
        stored["apiVersion"] = kind.api_version
        if kind.namespaced:
            meta["namespace"] = namespace
        meta["uid"] = f"uid-{next(self._uids):04d}"
        meta["creationTimestamp"] = labels.format_time(self.clock())
        meta.pop("deletionTimestamp", None)
        return self._store(key, stored, WatchEventType.ADDED)

    def replace(self, kind: Kind, namespace: str, name: str, body: Mapping[str, Any]) -> JsonObject:
        self._enter("replace", kind, namespace, name)
        current = self._existing(kind, namespace, name)
        stored = copy.deepcopy(dict(body))
        meta = stored.setdefault("metadata", {})
        expected = meta.get("resourceVersion")
        if expected and expected != current["metadata"]["resourceVersion"]:
            raise Conflict(
                f'Operation cannot be fulfilled on {kind.plural} "{name}": '
                "the object has been modified; please apply your changes to the latest version"
            )
        if meta.get("name", name) != name:
            raise Invalid("name in body does not match")
        for server_field in ("uid", "creationTimestamp", "namespace", "name"):
            if server_field in current["metadata"]:
                meta[server_field] = current["metadata"][server_field]
        stored["kind"], stored["apiVersion"] = kind.value, kind.api_version
        return self._store((kind, self._ns(kind, namespace), name), stored, WatchEventType.MODIFIED)

    def patch(
        self,
        kind: Kind,
        namespace: str,
        name: str,
        patch: Mapping[str, Any] | Sequence[Mapping[str, Any]],
        *,
        patch_type: PatchType = PatchType.MERGE,
    ) -> JsonObject:
        self._enter("patch", kind, namespace, name)
        current = self._existing(kind, namespace, name)
        if patch_type is PatchType.JSON:
            if not isinstance(patch, Sequence):
                raise Invalid("a JSON patch is a list of operations")
            patched = json_patch(current, patch)
        else:
            # Strategic merge is treated as a merge patch: ktpy only patches maps with it.
            if not isinstance(patch, Mapping):
                raise Invalid("a merge patch is an object")
            patched = merge_patch(current, patch)
        expected = (
            (patch if isinstance(patch, Mapping) else {}).get("metadata", {}).get("resourceVersion")
        )
        if expected and expected != current["metadata"]["resourceVersion"]:
            raise Conflict("the object has been modified")
        patched["metadata"]["uid"] = current["metadata"]["uid"]
        return self._store(
            (kind, self._ns(kind, namespace), name), patched, WatchEventType.MODIFIED
        )

    def delete(
        self,
        kind: Kind,
        namespace: str,
        name: str,
        *,
        uid: str | None = None,
        grace_period_seconds: int | None = None,
    ) -> bool:
        self._enter("delete", kind, namespace, name)
        key = (kind, self._ns(kind, namespace), name)
        current = self.objects.get(key)
        if current is None:
            return False
        if uid is not None and current["metadata"]["uid"] != uid:
            raise Conflict(f"precondition failed: uid in precondition: {uid}")
        del self.objects[key]
        self._record(kind, WatchEventType.DELETED, current, next(self._versions))
        self._collect_garbage(current["metadata"]["uid"])
        return True

    def watch(
        self,
        kind: Kind,
        namespace: str | None,
        *,
        label_selector: str = "",
        field_selector: str = "",
        resource_version: str = "",
        timeout_seconds: int = 60,
    ) -> Iterator[WatchEvent]:
        """Replays the events after ``resource_version``, then ends (as a timeout would)."""
        self._enter("watch", kind, namespace or "", "")
        since = int(resource_version) if resource_version else self._current_version()
        if since < self.compacted_before:
            raise Gone(f"too old resource version: {since}")
        for version, event_kind, event in list(self.events):
            meta = event.object["metadata"]
            if (
                version > since
                and event_kind is kind
                and (namespace is None or meta.get("namespace", "") == namespace)
                and self._selected(event.object, label_selector, field_selector)
            ):
                yield WatchEvent(event.type, copy.deepcopy(event.object))

    def namespaces(self) -> list[str]:
        self._enter("list", Kind.NAMESPACE, "", "")
        return self.names(Kind.NAMESPACE)

    def open_websocket(self, path: str, subprotocols: Sequence[str]) -> websocket.WebSocket:
        self._enter("websocket", None, "", path)
        if path not in self.websockets:
            raise NotFound(f"no websocket at {path}")
        return self.websockets[path](subprotocols)

    # --- internals ---------------------------------------------------------------

    def _ns(self, kind: Kind, namespace: str) -> str:
        return namespace if kind.namespaced else ""

    def _enter(self, verb: str, kind: Kind | None, namespace: str, name: str) -> None:
        self.calls.append((verb, kind, namespace, name))
        for scope in (namespace or None, None):
            if (verb, kind, scope) in self.forbidden:
                resource = kind.plural if kind else verb
                raise Forbidden(verb, resource, namespace or None)
        queued = self.failures.get((verb, kind))
        if queued:
            raise queued.pop(0)

    def _existing(self, kind: Kind, namespace: str, name: str) -> JsonObject:
        key = (kind, self._ns(kind, namespace), name)
        if key not in self.objects:
            raise NotFound(f'{kind.plural} "{name}" not found', reason="NotFound")
        return self.objects[key]

    def _selected(self, body: Mapping[str, Any], label_sel: str, field_sel: str) -> bool:
        object_labels = (body.get("metadata") or {}).get("labels") or {}
        return selector_matches(label_sel, object_labels) and field_matches(field_sel, body)

    def _current_version(self) -> int:
        return self.events[-1][0] if self.events else 99

    def _store(self, key: Key, body: JsonObject, event: WatchEventType) -> JsonObject:
        version = next(self._versions)
        body["metadata"]["resourceVersion"] = str(version)
        self.objects[key] = body
        self._record(key[0], event, body, version)
        return copy.deepcopy(body)

    def _record(self, kind: Kind, event: WatchEventType, body: JsonObject, version: int) -> None:
        recorded = copy.deepcopy(body)
        # As the API server does: a DELETED event's object carries the deletion's version,
        # so a watch resumed from it does not see the deletion again.
        recorded["metadata"]["resourceVersion"] = str(version)
        self.events.append((version, kind, WatchEvent(event, recorded)))

    def _collect_garbage(self, owner_uid: str) -> None:
        for key, body in list(self.objects.items()):
            owners = body["metadata"].get("ownerReferences") or []
            if any(ref.get("uid") == owner_uid for ref in owners) and key in self.objects:
                del self.objects[key]
                self._record(key[0], WatchEventType.DELETED, body, next(self._versions))
                self._collect_garbage(body["metadata"]["uid"])
