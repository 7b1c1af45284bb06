"""The kinds of object ktpy reads and writes, with where the API serves them."""

from __future__ import annotations

from enum import StrEnum


class Kind(StrEnum):
    POD = "Pod"
    SECRET = "Secret"  # noqa: S105 (a kind, not a password)
    SERVICE = "Service"
    DEPLOYMENT = "Deployment"
    ENDPOINT_SLICE = "EndpointSlice"
    NAMESPACE = "Namespace"
    NODE = "Node"
    SERVICE_CIDR = "ServiceCIDR"
    CONFIG_MAP = "ConfigMap"
    STATEFUL_SET = "StatefulSet"
    SELF_SUBJECT_ACCESS_REVIEW = "SelfSubjectAccessReview"
    NETWORK_POLICY = "NetworkPolicy"

    @property
    def api_version(self) -> str:
        return _API_VERSIONS[self]

    @property
    def plural(self) -> str:
        return _PLURALS[self]

    @property
    def namespaced(self) -> bool:
        return self not in (
            Kind.NAMESPACE,
            Kind.NODE,
            Kind.SERVICE_CIDR,
            Kind.SELF_SUBJECT_ACCESS_REVIEW,
        )


_API_VERSIONS = {
    Kind.POD: "v1",
    Kind.SECRET: "v1",
    Kind.SERVICE: "v1",
    Kind.NAMESPACE: "v1",
    Kind.NODE: "v1",
    Kind.DEPLOYMENT: "apps/v1",
    Kind.CONFIG_MAP: "v1",
    Kind.STATEFUL_SET: "apps/v1",
    Kind.ENDPOINT_SLICE: "discovery.k8s.io/v1",
    Kind.SERVICE_CIDR: "networking.k8s.io/v1",
    Kind.SELF_SUBJECT_ACCESS_REVIEW: "authorization.k8s.io/v1",
    Kind.NETWORK_POLICY: "networking.k8s.io/v1",
}
_PLURALS = {
    Kind.POD: "pods",
    Kind.SECRET: "secrets",
    Kind.SERVICE: "services",
    Kind.NAMESPACE: "namespaces",
    Kind.NODE: "nodes",
    Kind.DEPLOYMENT: "deployments",
    Kind.CONFIG_MAP: "configmaps",
    Kind.STATEFUL_SET: "statefulsets",
    Kind.ENDPOINT_SLICE: "endpointslices",
    Kind.SERVICE_CIDR: "servicecidrs",
    Kind.SELF_SUBJECT_ACCESS_REVIEW: "selfsubjectaccessreviews",
    Kind.NETWORK_POLICY: "networkpolicies",
}


class PatchType(StrEnum):
    MERGE = "application/merge-patch+json"
    JSON = "application/json-patch+json"
    STRATEGIC = "application/strategic-merge-patch+json"
