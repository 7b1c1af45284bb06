import pytest

from ktpy.cluster.api import (
    AlreadyExists,
    Conflict,
    Gone,
    Invalid,
    Kind,
    NotFound,
    ServerError,
    WatchEvent,
    WatchEventType,
    changes,
    error_from_status,
)
from ktpy.errors import ClusterUnreachable, Forbidden, KtpyError, PodSecurityRejected


def status(code: int, message: str = "", reason: str = "") -> Exception:
    body = {"kind": "Status", "message": message, "reason": reason, "code": code}
    return error_from_status(code, body, verb="create", kind=Kind.POD, namespace="dev")


def test_pod_security_rejection_is_told_apart_from_rbac() -> None:
    error = status(
        403,
        'pods "kt-connect-shadow-abcde" is forbidden: violates PodSecurity "restricted:latest": '
        "allowPrivilegeEscalation != false",
    )
    assert isinstance(error, PodSecurityRejected)
    assert "restricted:latest" in str(error)
    rbac = status(403, 'pods is forbidden: User "dev" cannot create resource "pods"')
    assert isinstance(rbac, Forbidden)
    assert str(rbac).startswith("not allowed to create pods in namespace 'dev'")


def test_unauthorized_says_to_log_in_again() -> None:
    error = status(401, "Unauthorized")
    assert isinstance(error, ClusterUnreachable)
    assert "Log in again" in error.hint


@pytest.mark.parametrize(
    ("code", "reason", "cls"),
    [
        (404, "NotFound", NotFound),
        (409, "AlreadyExists", AlreadyExists),
        (409, "Conflict", Conflict),
        (410, "Expired", Gone),
        (422, "Invalid", Invalid),
        (429, "TooManyRequests", ServerError),
        (503, "ServiceUnavailable", ServerError),
    ],
)
def test_statuses_callers_branch_on(code: int, reason: str, cls: type[Exception]) -> None:
    error = status(code, "msg", reason)
    assert type(error) is cls
    assert str(error) == "msg"


def test_server_error_keeps_its_status() -> None:
    error = status(503, "down")
    assert isinstance(error, ServerError)
    assert error.status == 503


def test_anything_else_is_a_ktpy_error_naming_the_status() -> None:
    error = error_from_status(418, None, verb="get", kind=Kind.POD, namespace=None)
    assert type(error) is KtpyError
    assert "HTTP 418" in str(error)


@pytest.mark.parametrize(
    ("kind", "api_version", "plural", "namespaced"),
    [
        (Kind.POD, "v1", "pods", True),
        (Kind.DEPLOYMENT, "apps/v1", "deployments", True),
        (Kind.ENDPOINT_SLICE, "discovery.k8s.io/v1", "endpointslices", True),
        (Kind.SERVICE_CIDR, "networking.k8s.io/v1", "servicecidrs", False),
        (Kind.NAMESPACE, "v1", "namespaces", False),
        (Kind.NODE, "v1", "nodes", False),
    ],
)
def test_kinds(kind: Kind, api_version: str, plural: str, namespaced: bool) -> None:
    assert (kind.api_version, kind.plural, kind.namespaced) == (api_version, plural, namespaced)


def test_every_kind_has_a_version_and_plural() -> None:
    for kind in Kind:
        assert kind.api_version
        assert kind.plural.islower()


def test_watch_event_resource_version() -> None:
    event = WatchEvent(WatchEventType.ADDED, {"metadata": {"resourceVersion": "42"}})
    assert event.resource_version == "42"
    assert WatchEvent(WatchEventType.BOOKMARK, {}).resource_version == ""


def test_changes_skip_bookmarks_but_not_their_versions_and_stop_when_asked() -> None:
    def event(kind: WatchEventType, version: str, name: str = "x") -> WatchEvent:
        return WatchEvent(kind, {"metadata": {"name": name, "resourceVersion": version}})

    stream = [
        event(WatchEventType.ADDED, "5", "a"),
        event(WatchEventType.BOOKMARK, "7"),
        event(WatchEventType.DELETED, "9", "a"),
        event(WatchEventType.ADDED, "11", "b"),
    ]
    seen: list[str] = []

    def stopped() -> bool:
        return len(seen) == 3  # asked to stop once three versions went by

    got = [e.object["metadata"]["name"] for e in changes(stream, seen.append, stopped)]
    assert got == ["a", "a"]  # the bookmark is not handed on; "b" comes after the stop
    assert seen == ["5", "7", "9"]
