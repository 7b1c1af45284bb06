"""Small builders of API-shaped objects for the cluster tests."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from ktpy.cluster import labels
from ktpy.cluster.labels import PidStart, Role


def created(
    kind: str,
    name: str,
    session: str,
    *,
    role: Role = Role.CONNECT,
    namespace: str = "dev",
    heartbeat: datetime | None = None,
    created_at: datetime | None = None,
    owner: str = "alice@lap",
    pid_start: PidStart | None = None,
    terminating: bool = False,
) -> dict[str, Any]:
    annotations = {labels.OWNER: owner}
    if heartbeat is not None:
        annotations[labels.HEARTBEAT] = labels.format_time(heartbeat)
    if pid_start is not None:
        annotations[labels.PID_START] = str(pid_start)
    meta: dict[str, Any] = {
        "name": name,
        "namespace": namespace,
        "uid": f"uid-{name}",
        "resourceVersion": "7",
        "labels": labels.session_labels(session, role),
        "annotations": annotations,
    }
    if created_at is not None:
        meta["creationTimestamp"] = labels.format_time(created_at)
    if terminating:
        meta["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    return {"kind": kind, "apiVersion": "v1", "metadata": meta}


def user_service(
    name: str = "nginx", selector: dict[str, str] | None = None, namespace: str = "dev"
) -> dict[str, Any]:
    return {
        "kind": "Service",
        "apiVersion": "v1",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "uid": f"uid-{name}",
            "resourceVersion": "41",
            "labels": {"app": name},
        },
        "spec": {
            "selector": selector if selector is not None else {"app": name},
            "ports": [{"port": 80, "targetPort": 8080, "protocol": "TCP"}],
            "type": "ClusterIP",
        },
    }
