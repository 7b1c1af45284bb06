"""What ktpy has in the cluster: the objects it created, the objects it modified,
and the sessions they add up to. Read by status, clean, recover and the lock."""

from __future__ import annotations

from ktpy.cluster import labels, redirect
from ktpy.cluster.api import ClusterApi, Kind, NotFound
from ktpy.cluster.bodies import JsonObject
from ktpy.cluster.heartbeat import SessionView, sessions_from_objects
from ktpy.errors import ServiceNotFound, UsageProblem

# Kinds ktpy creates for a session (labelled managed-by=ktpy), and kinds it modifies.
CREATED_KINDS = (Kind.SERVICE, Kind.DEPLOYMENT, Kind.POD, Kind.SECRET)
MODIFIABLE_KINDS = (Kind.SERVICE, Kind.DEPLOYMENT)


def created_objects(
    api: ClusterApi, namespace: str | None, *, session_id: str | None = None
) -> list[JsonObject]:
    """Every object ktpy created, in one namespace or (None) in all; only one
    session's with ``session_id``."""
    selector = labels.session_selector(session_id) if session_id else labels.MANAGED_SELECTOR
    found: list[JsonObject] = []
    for kind in CREATED_KINDS:
        found += api.list_objects(kind, namespace, label_selector=selector).items
    return found


def modified_objects(
    api: ClusterApi, namespace: str | None, *, session_id: str | None = None
) -> list[JsonObject]:
    """Every object ktpy modified (it carries the originals), or only one session's.

    List these BEFORE the created objects: a session creates its shadow pod
    before it modifies anything, so a modification seen here has its pod there.
    """
    selector = f"{labels.MODIFIED_BY}={session_id}" if session_id else labels.MODIFIED_SELECTOR
    found: list[JsonObject] = []
    for kind in MODIFIABLE_KINDS:
        found += api.list_objects(kind, namespace, label_selector=selector).items
    return found


def namespace_sessions(api: ClusterApi, namespace: str) -> list[SessionView]:
    return sessions_from_objects(created_objects(api, namespace))


def get_service(api: ClusterApi, namespace: str, name: str) -> JsonObject:
    try:
        return api.get(Kind.SERVICE, namespace, name)
    except NotFound:
        raise ServiceNotFound(name, namespace) from None


def service_of_deployment(api: ClusterApi, namespace: str, name: str) -> str:
    """The name of the one Service that selects Deployment ``name``'s pods."""
    try:
        deployment = api.get(Kind.DEPLOYMENT, namespace, name)
    except NotFound:
        raise UsageProblem(
            f"deployment {name!r} not found in namespace {namespace!r}",
            hint="List them with 'kubectl get deployments -n NAMESPACE'.",
        ) from None
    services = api.list_objects(Kind.SERVICE, namespace).items
    return redirect.service_of_deployment(deployment, services)
