"""Waits on EndpointSlices, pods and Deployments."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from ktpy.cluster import inventory, labels, redirect, waits
from ktpy.cluster.api import Kind
from ktpy.cluster.bodies import JsonObject
from ktpy.cluster.labels import Role
from tests.unit.cluster.redirects import (
    NS,
    start_shadow,
)
from tests.unit.fakes import FakeCluster

# --- endpoints ------------------------------------------------------------------------------


def endpoint_slice(*pods: tuple[str, bool | None]) -> dict[str, Any]:
    endpoints = []
    for name, ready in pods:
        conditions = {} if ready is None else {"ready": ready}
        endpoints.append({"targetRef": {"kind": "Pod", "name": name}, "conditions": conditions})
    return {"endpoints": endpoints}


def test_ready_endpoint_pods() -> None:
    slices = [
        endpoint_slice(("a", True), ("b", False)),
        endpoint_slice(("c", None)),
        {"endpoints": None},
        {"endpoints": [{"addresses": ["10.0.0.1"]}]},
    ]
    assert waits.ready_endpoint_pods(slices) == frozenset({"a", "c"})


def named_endpoint_slice(name: str, *pods: str) -> JsonObject:
    return {
        "metadata": {
            "name": name,
            "namespace": NS,
            "labels": {labels.SERVICE_NAME_LABEL: "nginx"},
        },
        "endpoints": [
            {"targetRef": {"kind": "Pod", "name": p}, "conditions": {"ready": True}} for p in pods
        ],
    }


def test_wait_endpoints_sees_the_slices(cluster: FakeCluster) -> None:
    cluster.create(Kind.ENDPOINT_SLICE, NS, named_endpoint_slice("nginx-abc", "shadow"))
    assert waits.wait_endpoints(
        cluster, NS, "nginx", lambda ready: redirect.only_shadow(ready, "shadow"), timeout=1
    )
    assert not waits.wait_endpoints(
        cluster, NS, "nginx", lambda ready: "other" in ready, timeout=0.2
    )


def test_wait_endpoints_follows_events_after_the_list(cluster: FakeCluster) -> None:
    cluster.create(Kind.ENDPOINT_SLICE, NS, named_endpoint_slice("nginx-abc", "a"))
    original_watch = cluster.watch

    def watch_after_a_change(*args: Any, **kwargs: Any) -> Iterator[Any]:
        # The slice changes between the list and the watch: the watch replays it.
        if cluster.names(Kind.ENDPOINT_SLICE, NS) != ["nginx-def"]:
            cluster.delete(Kind.ENDPOINT_SLICE, NS, "nginx-abc")
            cluster.create(Kind.ENDPOINT_SLICE, NS, named_endpoint_slice("nginx-def", "shadow"))
        return original_watch(*args, **kwargs)

    cluster.watch = watch_after_a_change  # type: ignore[method-assign]
    assert waits.wait_endpoints(
        cluster, NS, "nginx", lambda ready: redirect.only_shadow(ready, "shadow"), timeout=1
    )


def test_ready_pods_skips_unready_and_terminating(cluster: FakeCluster) -> None:
    def pod(name: str, ready: str) -> JsonObject:
        meta: JsonObject = {"name": name, "namespace": NS, "labels": {"app": "nginx"}}
        return {"metadata": meta, "status": {"conditions": [{"type": "Ready", "status": ready}]}}

    for body in (pod("a", "True"), pod("b", "False"), pod("c", "True")):
        cluster.create(Kind.POD, NS, body)
    terminating = {"metadata": {"deletionTimestamp": "2026-11-27T12:00:00Z"}}
    cluster.patch(Kind.POD, NS, "c", terminating)
    assert waits.ready_pods(cluster, NS, {"app": "nginx"}) == ["a"]


def test_namespace_sessions_see_the_shadow(cluster: FakeCluster) -> None:
    start_shadow(cluster, "s0000001")
    (view,) = inventory.namespace_sessions(cluster, NS)
    assert view.session_id == "s0000001"
    assert view.role is Role.EXCHANGE
    assert labels.MANAGED_SELECTOR
