"""Which API rights each command needs in a namespace, and which of them this user
lacks, asked of the API server itself (SelfSubjectAccessReview): RBAC, webhooks and
any other authorizer answer as they would for the real request.

``NEEDS`` mirrors the Roles of docs/rbac/ (a test holds them equal); a right a
command can do without (connect listing namespaces, a rarely taken path) is not in
its list.
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


def _rights(*lines: str) -> tuple[Right, ...]:
    """Rights written as RBAC reads: ``"create,delete pods"``, ``"list apps/deployments"``,
    ``"create pods/portforward"``."""
    found = []
    for line in lines:
        verbs, what = line.split()
        first, _, rest = what.partition("/")
        group = first if "." in first or first == "apps" else ""  # the core group has none
        resource, _, subresource = (rest if group else what).partition("/")
        found += [Right(verb, resource, group, subresource) for verb in verbs.split(",")]
    return tuple(found)


# What a session needs: its Secret and shadow pod, their heartbeat, Ready, the tunnel,
# and the NetworkPolicies that could keep callers from it.
_SESSION = (
    "create,delete,list,patch,watch pods",
    "create,get pods/portforward",
    "create,delete,patch secrets",
    "list networking.k8s.io/networkpolicies",
)

# A normal run's rights per command: the rules of docs/rbac/<command>.yaml less the
# ones it names as rarely used (tests/unit/cluster/test_access.py holds them equal),
# so a user bound to the documented Role is never told a right is missing.
NEEDS: dict[str, tuple[Right, ...]] = {
    "connect": _rights(*_SESSION, "list,watch services"),
    "exchange": _rights(
        *_SESSION,
        "list secrets",
        "get,list,update,watch services",
        "list discovery.k8s.io/endpointslices",
        "list apps/deployments",
    ),
    "mesh": _rights(
        *_SESSION,
        "get,list,update secrets",
        "create,delete,get,list,patch,update,watch services",
        "list discovery.k8s.io/endpointslices",
        "create,delete,list,patch apps/deployments",
    ),
    "preview": _rights(
        *_SESSION,
        "create,delete,get,patch services",
        "list discovery.k8s.io/endpointslices",
    ),
    "forward": _rights(*_SESSION, "get services"),
    "env": _rights("list pods", "list services", "get configmaps", "get apps/deployments"),
    "status": _rights("list pods", "list secrets", "list services", "list apps/deployments"),
    "clean": _rights(
        "delete,list,watch pods",
        "delete,list secrets",
        "delete,get,list,update services",
        "get,list,update apps/deployments",
    ),
    "recover": _rights(
        "delete,list,watch pods",
        "delete,list secrets",
        "get,list,update services",
        "list apps/deployments",
    ),
    # doctor's own session, its target Service and that Service's endpoints.
    "doctor": _rights(*_SESSION, "get services", "list discovery.k8s.io/endpointslices"),
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
