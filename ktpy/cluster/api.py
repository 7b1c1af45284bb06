"""The one door to the Kubernetes API.

Everything else in ktpy calls the ``ClusterApi`` protocol defined here and
never the client library underneath; tests fake this protocol (see
tests/unit/fakes.py), never HTTP. The real implementation over the official
client lives in this module too, once written.

Conventions every implementation keeps:

- bodies in and out are plain JSON dicts (``JsonObject``); listed items get
  ``kind`` and ``apiVersion`` filled in, which list responses leave out;
- failures are typed from the HTTP status (``error_from_status``): expected
  outcomes a caller branches on (``NotFound``, ``Conflict``, ``AlreadyExists``,
  ``Gone``) are ``ApiError``s; what ends a command (RBAC refusal, Pod Security
  rejection, an unreachable or unauthenticated cluster) is a ``KtpyError``
  with its exit code and hint;
- "now" for heartbeats is the API server's clock, from its ``Date`` header.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any, Protocol, runtime_checkable

import websocket

from ktpy.cluster.bodies import JsonObject
from ktpy.errors import (
    ClusterUnreachable,
    Forbidden,
    KtpyError,
    PodSecurityRejected,
)


class Kind(StrEnum):
    POD = "Pod"
    SECRET = "Secret"  # noqa: S105 (a kind, not a password)
    SERVICE = "Service"
    DEPLOYMENT = "Deployment"
    ENDPOINT_SLICE = "EndpointSlice"
    NAMESPACE = "Namespace"
    NODE = "Node"
    SERVICE_CIDR = "ServiceCIDR"

    @property
    def api_version(self) -> str:
        return _API_VERSIONS[self]

    @property
    def plural(self) -> str:
        return _PLURALS[self]

    @property
    def namespaced(self) -> bool:
        return self not in (Kind.NAMESPACE, Kind.NODE, Kind.SERVICE_CIDR)


_API_VERSIONS = {
    Kind.POD: "v1",
    Kind.SECRET: "v1",
    Kind.SERVICE: "v1",
    Kind.NAMESPACE: "v1",
    Kind.NODE: "v1",
    Kind.DEPLOYMENT: "apps/v1",
    Kind.ENDPOINT_SLICE: "discovery.k8s.io/v1",
    Kind.SERVICE_CIDR: "networking.k8s.io/v1",
}
_PLURALS = {
    Kind.POD: "pods",
    Kind.SECRET: "secrets",
    Kind.SERVICE: "services",
    Kind.NAMESPACE: "namespaces",
    Kind.NODE: "nodes",
    Kind.DEPLOYMENT: "deployments",
    Kind.ENDPOINT_SLICE: "endpointslices",
    Kind.SERVICE_CIDR: "servicecidrs",
}


class PatchType(StrEnum):
    MERGE = "application/merge-patch+json"
    JSON = "application/json-patch+json"
    STRATEGIC = "application/strategic-merge-patch+json"


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


class ApiError(Exception):
    """An API answer a caller is expected to handle."""

    status = 0

    def __init__(self, message: str, *, reason: str = "", status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason
        if status is not None:
            self.status = status


class NotFound(ApiError):
    status = 404


class Conflict(ApiError):
    """The object changed since it was read (resourceVersion or uid precondition failed)."""

    status = 409


class AlreadyExists(ApiError):
    status = 409


class Gone(ApiError):
    """A watch's resourceVersion is too old: list again and watch from the new version."""

    status = 410


class Invalid(ApiError):
    status = 422


class ServerError(ApiError):
    """5xx or 429: worth a retry with backoff."""

    status = 500


def error_from_status(
    status: int,
    body: Mapping[str, Any] | None,
    *,
    verb: str,
    kind: Kind,
    namespace: str | None,
) -> Exception:
    """The exception for an error answer (``body`` is the API's ``Status`` object, if any)."""
    status_body = body or {}
    message = str(status_body.get("message") or f"HTTP {status}")
    reason = str(status_body.get("reason") or "")
    if status == 401:
        return ClusterUnreachable(
            f"the API server rejected the credentials ({message})",
            hint="Log in again (kubectl uses the same kubeconfig), then retry.",
        )
    if status == 403:
        if "PodSecurity" in message:
            return PodSecurityRejected(f"pod rejected by Pod Security admission: {message}")
        return Forbidden(verb, kind.plural, namespace, message)
    if status == 404:
        return NotFound(message, reason=reason)
    if status == 409:
        if reason == "AlreadyExists":
            return AlreadyExists(message, reason=reason)
        return Conflict(message, reason=reason)
    if status == 410:
        return Gone(message, reason=reason)
    if status == 422:
        return Invalid(message, reason=reason)
    if status == 429 or status >= 500:
        return ServerError(message, reason=reason, status=status)
    return KtpyError(f"unexpected answer from the API server: HTTP {status}: {message}")


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

    def create(self, kind: Kind, namespace: str, body: Mapping[str, Any]) -> JsonObject:
        """Raises AlreadyExists; PodSecurityRejected for a pod the namespace refuses."""
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
