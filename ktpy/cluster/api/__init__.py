"""The one door to the Kubernetes API.

Everything else in ktpy calls the ``ClusterApi`` protocol and never the client
library underneath; tests fake the protocol (tests/unit/fakes.py), never HTTP.
This package's public face is this module; behind it:

- ``kinds``: the kinds ktpy reads and writes, and where the API serves them;
- ``errors``: API answers a caller branches on (``NotFound``, ``Conflict``,
  ``AlreadyExists``, ``Gone``...), typed from the HTTP status; what ends a
  command (RBAC, Pod Security, an unreachable cluster) is a ``KtpyError``;
- ``protocol``: ``ClusterApi`` and the values it returns;
- ``watching``: the one watch helper, used by every wait and follower;
- ``kubeconfig`` and ``client``: ``KubernetesApi`` over the official client
  (the only modules that import ``kubernetes``).

Conventions every implementation keeps: bodies are plain JSON dicts, listed
items get ``kind`` and ``apiVersion`` filled in; "now" for heartbeats is the
API server's clock, from its ``Date`` header.
"""

from __future__ import annotations

from ktpy.cluster.api.client import KubernetesApi, parse_watch_line, resource_path, with_kind
from ktpy.cluster.api.errors import (
    AlreadyExists,
    ApiError,
    Conflict,
    Gone,
    Invalid,
    NotFound,
    ServerError,
    error_from_status,
    for_user,
)
from ktpy.cluster.api.kinds import Kind, PatchType
from ktpy.cluster.api.kubeconfig import PluginUser, run_plugin_as
from ktpy.cluster.api.protocol import ClusterApi, ListResult, WatchEvent, WatchEventType
from ktpy.cluster.api.watching import changes, follow, wait_gone, wait_until, watching

__all__ = [
    "AlreadyExists",
    "ApiError",
    "ClusterApi",
    "Conflict",
    "Gone",
    "Invalid",
    "Kind",
    "KubernetesApi",
    "ListResult",
    "NotFound",
    "PatchType",
    "PluginUser",
    "ServerError",
    "WatchEvent",
    "WatchEventType",
    "changes",
    "error_from_status",
    "follow",
    "for_user",
    "parse_watch_line",
    "resource_path",
    "run_plugin_as",
    "wait_gone",
    "wait_until",
    "watching",
    "with_kind",
]
