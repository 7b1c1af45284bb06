"""Which API rights each command needs in a namespace, and which of them this user
lacks, asked of the API server itself (SelfSubjectAccessReview): RBAC, webhooks and
any other authorizer answer as they would for the real request.

``NEEDS`` is read from what the commands do (``ktpy doctor`` reports it); a right
a command can do without (connect listing namespaces) is not in its list.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from ktpy.cluster.api import ClusterApi, Kind


@dataclass(frozen=True, order=True)
class Right:
    verb: str
    resource: str
    group: str = ""
    subresource: str = ""

    def describe(self) -> str:
        what = f"{self.resource}/{self.subresource}" if self.subresource else self.resource
        return f"{self.verb} {what}" + (f".{self.group}" if self.group else "")


def _rights(group: str, resource: str, *verbs: str, subresource: str = "") -> tuple[Right, ...]:
    return tuple(Right(verb, resource, group, subresource) for verb in verbs)


# Every session: its Secret and shadow pod, their heartbeat, Ready, the tunnel.
_SESSION = (
    *_rights("", "pods", "create", "get", "list", "watch", "patch", "delete"),
    *_rights("", "secrets", "create", "patch", "delete"),
    Right("create", "pods", "", "portforward"),
)
_READ_SERVICES = _rights("", "services", "get", "list", "watch")
_TAKE_SERVICE = (
    *_READ_SERVICES,
    *_rights("", "services", "update"),
    *_rights("discovery.k8s.io", "endpointslices", "list", "watch"),
)
_SWEEP = (
    *_rights("", "pods", "list", "delete"),
    *_rights("", "secrets", "list", "delete"),
    *_rights("", "services", "list", "update", "delete"),
    *_rights("apps", "deployments", "list", "update", "delete"),
)

NEEDS: dict[str, tuple[Right, ...]] = {
    "connect": (*_SESSION, *_READ_SERVICES, Right("create", "services")),
    "exchange": (*_SESSION, *_TAKE_SERVICE, *_rights("apps", "deployments", "get", "update")),
    "mesh": (
        *_SESSION,
        *_TAKE_SERVICE,
        *_rights("", "services", "create", "delete"),
        *_rights("", "secrets", "get", "update"),
        *_rights("apps", "deployments", "create", "get", "update", "delete"),
    ),
    "preview": (*_SESSION, *_rights("", "services", "create", "delete")),
    "forward": (*_SESSION, *_rights("", "services", "get")),
    "env": (
        *_rights("", "pods", "get", "list"),
        *_rights("", "configmaps", "get"),
        *_rights("", "secrets", "get"),
        *_rights("apps", "deployments", "get"),
    ),
    "status": _rights("", "pods", "list"),
    "clean": _SWEEP,
    "recover": _SWEEP,
    "doctor": _SESSION,
}


@dataclass(frozen=True)
class Missing:
    """The rights a command lacks in a namespace (empty: it has them all)."""

    command: str
    rights: tuple[Right, ...]


def review_body(right: Right, namespace: str) -> dict[str, object]:
    attributes = {
        "namespace": namespace,
        "verb": right.verb,
        "group": right.group,
        "resource": right.resource,
    }
    if right.subresource:
        attributes["subresource"] = right.subresource
    return {
        "apiVersion": Kind.SELF_SUBJECT_ACCESS_REVIEW.api_version,
        "kind": Kind.SELF_SUBJECT_ACCESS_REVIEW.value,
        "spec": {"resourceAttributes": attributes},
    }


def allowed(api: ClusterApi, right: Right, namespace: str) -> bool:
    answer = api.create(Kind.SELF_SUBJECT_ACCESS_REVIEW, "", review_body(right, namespace))
    return bool((answer.get("status") or {}).get("allowed"))


def missing_rights(
    namespace: str,
    ask: Callable[[Right, str], bool],
    commands: Iterable[str] = NEEDS,
) -> list[Missing]:
    """Each command with the rights it lacks; every distinct right is asked once."""
    answers: dict[Right, bool] = {}
    found = []
    for command in commands:
        lacking = []
        for right in NEEDS[command]:
            if right not in answers:
                answers[right] = ask(right, namespace)
            if not answers[right]:
                lacking.append(right)
        found.append(Missing(command, tuple(dict.fromkeys(lacking))))
    return found


def review(api: ClusterApi, namespace: str) -> list[Missing]:
    return missing_rights(namespace, lambda right, ns: allowed(api, right, namespace=ns))
