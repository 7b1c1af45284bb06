"""Waits on what the cluster serves: EndpointSlices, pods, Deployments.

Each is a pure predicate over listed objects plus a call to the API's one
watch helper (``wait_until``), so a wait ends the moment the cluster
changes, never after a poll interval.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from ktpy.cluster import labels
from ktpy.cluster.api import (
    ClusterApi,
    Kind,
    wait_until,
)
from ktpy.cluster.bodies import JsonObject


def ready_endpoint_pods(slices: Iterable[Mapping[str, Any]]) -> frozenset[str]:
    """Names of the pods a Service's EndpointSlices send new connections to."""
    pods: set[str] = set()
    for endpoint_slice in slices:
        for endpoint in endpoint_slice.get("endpoints") or ():
            ref = endpoint.get("targetRef") or {}
            ready = (endpoint.get("conditions") or {}).get("ready")
            # A missing ready condition means ready (EndpointSlice API).
            if ref.get("kind") == "Pod" and ready is not False:
                pods.add(str(ref.get("name")))
    return frozenset(pods)


def replicas_of(deployment: Mapping[str, Any]) -> int:
    value = (deployment.get("spec") or {}).get("replicas")
    return 1 if value is None else int(value)


def deployment_settled(deployment: Mapping[str, Any]) -> bool:
    """The controller has seen the latest spec and every wanted replica is ready."""
    meta = deployment.get("metadata") or {}
    status = deployment.get("status") or {}
    wanted = replicas_of(deployment)
    return (
        int(status.get("observedGeneration") or 0) >= int(meta.get("generation") or 0)
        and int(status.get("updatedReplicas") or 0) >= wanted
        and int(status.get("readyReplicas") or 0) >= wanted
        and int(status.get("replicas") or 0) == wanted
    )


def wait_endpoints(
    api: ClusterApi,
    namespace: str,
    service: str,
    done: Callable[[frozenset[str]], bool],
    *,
    timeout: float,
    stop: Callable[[], bool] = lambda: False,
) -> bool:
    """Wait until the pods the Service's EndpointSlices call ready satisfy ``done``."""
    return wait_until(
        api,
        Kind.ENDPOINT_SLICE,
        namespace,
        lambda slices: done(ready_endpoint_pods(slices.values())),
        label_selector=f"{labels.SERVICE_NAME_LABEL}={service}",
        timeout=timeout,
        stop=stop,
    )


def ready_pods(api: ClusterApi, namespace: str, selector: dict[str, str]) -> list[str]:
    listed = api.list_objects(Kind.POD, namespace, label_selector=labels.format_selector(selector))
    return sorted(serving_pods({str(p["metadata"]["name"]): p for p in listed.items}))


def serving_pods(pods: dict[str, JsonObject]) -> frozenset[str]:
    """Of listed pods, those ready and not terminating (what kube-proxy sends new
    connections to once a Service selects them)."""
    names = []
    for name, pod in pods.items():
        if (pod.get("metadata") or {}).get("deletionTimestamp"):
            continue
        conditions = (pod.get("status") or {}).get("conditions") or ()
        if any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions):
            names.append(name)
    return frozenset(names)


def wait_pods(
    api: ClusterApi,
    namespace: str,
    selector: dict[str, str],
    done: Callable[[frozenset[str]], bool],
    *,
    timeout: float,
    stop: Callable[[], bool] = lambda: False,
) -> bool:
    """Wait until the ready, non-terminating pods ``selector`` selects satisfy ``done``."""
    return wait_until(
        api,
        Kind.POD,
        namespace,
        lambda pods: done(serving_pods(pods)),
        label_selector=labels.format_selector(selector),
        timeout=timeout,
        stop=stop,
    )


def wait_deployment(
    api: ClusterApi,
    namespace: str,
    name: str,
    *,
    timeout: float,
    stop: Callable[[], bool] = lambda: False,
) -> bool:
    """Wait until the Deployment's wanted replicas are all ready."""
    return wait_until(
        api,
        Kind.DEPLOYMENT,
        namespace,
        lambda found: name in found and deployment_settled(found[name]),
        field_selector=f"metadata.name={name}",
        timeout=timeout,
        stop=stop,
    )
