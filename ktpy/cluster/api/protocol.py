"""The ``ClusterApi`` protocol: what ktpy needs from Kubernetes, and the values it
returns (listed objects with the version to watch from, watch events)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any, Protocol, runtime_checkable

import websocket

from ktpy.cluster.api.kinds import Kind, PatchType
from ktpy.cluster.bodies import JsonObject


class WatchEventType(StrEnum):
    ADDED = "ADDED"
    MODIFIED = "MODIFIED"
    DELETED = "DELETED"
    BOOKMARK = "BOOKMARK"


@dataclass(frozen=True)
class WatchEvent:
    type: WatchEventType
    object: JsonObject

    @property
    def resource_version(self) -> str:
        return str((self.object.get("metadata") or {}).get("resourceVersion", ""))


@dataclass(frozen=True)
class ListResult:
    items: tuple[JsonObject, ...]
    # Start a watch here to see every change after this list (no gap, no repeat).
    resource_version: str


@runtime_checkable
class ClusterApi(Protocol):
    """What the session, status, clean, recover and the commands need from Kubernetes."""

    def server_time(self) -> datetime:
        """The API server's current time (UTC), from the Date header of a cheap request."""
        ...

    def get(self, kind: Kind, namespace: str, name: str) -> JsonObject:
        """Raises NotFound."""
        ...

    def list_objects(
        self,
        kind: Kind,
        namespace: str | None,
        *,
        label_selector: str = "",
        field_selector: str = "",
    ) -> ListResult:
        """``namespace`` None lists across all namespaces (and cluster-scoped kinds)."""
        ...

    def create(
        self, kind: Kind, namespace: str, body: Mapping[str, Any], *, dry_run: bool = False
    ) -> JsonObject:
        """Raises AlreadyExists; PodSecurityRejected for a pod the namespace refuses.
        With ``dry_run`` the server validates and admits but stores nothing."""
        ...

    def replace(self, kind: Kind, namespace: str, name: str, body: Mapping[str, Any]) -> JsonObject:
        """Write the whole object; with ``metadata.resourceVersion`` set, raises Conflict
        if the object changed since that version (optimistic concurrency)."""
        ...

    def patch(
        self,
        kind: Kind,
        namespace: str,
        name: str,
        patch: Mapping[str, Any] | Sequence[Mapping[str, Any]],
        *,
        patch_type: PatchType = PatchType.MERGE,
    ) -> JsonObject:
        """Raises NotFound; with a JSON patch ``test`` op that fails, Invalid."""
        ...

    def delete(
        self,
        kind: Kind,
        namespace: str,
        name: str,
        *,
        uid: str | None = None,
        grace_period_seconds: int | None = None,
    ) -> bool:
        """Delete; False if it was already gone. With ``uid``, only that very object
        (Conflict if the name now belongs to another)."""
        ...

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
        """Changes after ``resource_version`` until ``timeout_seconds``; raises Gone if
        that version is too old. Stop early by closing the iterator."""
        ...

    def namespaces(self) -> list[str]:
        """Names of the namespaces this user may list (raises Forbidden otherwise)."""
        ...

    def open_websocket(self, path: str, subprotocols: Sequence[str]) -> websocket.WebSocket:
        """A WebSocket to ``path`` on the API server (e.g. a pod's ``portforward``
        subresource), opened with this client's address, TLS and credentials."""
        ...
