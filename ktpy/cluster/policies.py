"""NetworkPolicies against what a ktpy pod needs, pure: which policies select
the pod, and which of its needs none of them allows.

A policy that selects a pod and lists Ingress (or Egress) in its policyTypes
denies that direction except what its rules, together with every other such
policy's, allow (networking.k8s.io/v1). A blocked shadow pod shows up as a
silent hang, so ktpy says so in one line instead.

What counts as allowed: a need for a port is met by any rule covering that
protocol and port, whoever the peers are (a rule limiting the callers of a
Service is the Service owner's intent, and the laptop cannot know the callers).
A need for "any TCP port" (connect and forward reach whatever the user asks)
is met only by a rule allowing every TCP port to everyone. Named ports match
the pod's own port names.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from ktpy.cluster.labels import MANAGED_BY, MANAGED_BY_KTPY, Role

Direction = Literal["ingress", "egress"]
DNS_PORT = 53


@dataclass(frozen=True)
class Need:
    """Traffic a pod must be allowed: ``port`` None means every port of the protocol."""

    direction: Direction
    protocol: str
    port: int | None
    name: str | None = None  # the pod's name for the port, for named-port rules

    def describe(self) -> str:
        where = "any port" if self.port is None else f"port {self.port}"
        return f"{self.direction} to {where}/{self.protocol}"


def needs_for(role: Role, ports: Iterable[tuple[int, str | None]] = ()) -> tuple[Need, ...]:
    """What a pod of this role needs; ports: (number, name) a Service sends to it."""
    if role in (Role.CONNECT, Role.FORWARD):
        # The shadow pod opens the laptop's connections and asks cluster DNS.
        return (
            Need("egress", "TCP", None),
            Need("egress", "UDP", DNS_PORT),
            Need("egress", "TCP", DNS_PORT),
        )
    # exchange, mesh and preview pods (and the mesh router) are called on the
    # Service's ports; the router also calls the Service's own pods on them.
    ports = tuple(ports)  # read twice below
    listed = tuple(Need("ingress", "TCP", port, name) for port, name in ports)
    if role is Role.ROUTER:
        listed += tuple(Need("egress", "TCP", port, name) for port, name in ports)
    return listed


def _matches_expression(labels: Mapping[str, str], expression: Mapping[str, Any]) -> bool:
    key, operator = str(expression.get("key", "")), str(expression.get("operator", ""))
    values = {str(v) for v in expression.get("values") or ()}
    match operator:
        case "In":
            return key in labels and labels[key] in values
        case "NotIn":
            return key not in labels or labels[key] not in values
        case "Exists":
            return key in labels
        case "DoesNotExist":
            return key not in labels
    return False  # an operator the API server would have refused


def selects(selector: Mapping[str, Any] | None, labels: Mapping[str, str]) -> bool:
    """Whether a LabelSelector selects these labels ({} selects everything)."""
    selector = selector or {}
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(str(key)) != str(value):
            return False
    return all(_matches_expression(labels, e) for e in selector.get("matchExpressions") or ())


def policy_types(policy: Mapping[str, Any]) -> set[str]:
    spec = policy.get("spec") or {}
    listed = spec.get("policyTypes")
    if listed:
        return {str(t) for t in listed}
    # Unset: Ingress always, Egress when the policy has egress rules.
    return {"Ingress", "Egress"} if spec.get("egress") is not None else {"Ingress"}


def _port_covers(entry: Mapping[str, Any], need: Need) -> bool:
    if str(entry.get("protocol") or "TCP") != need.protocol:
        return False
    port = entry.get("port")
    if port is None:
        return True  # every port of the protocol
    if need.port is None:
        return False
    if isinstance(port, str) and not port.isdigit():
        return need.name is not None and port == need.name
    end = entry.get("endPort")
    first = int(port)
    return first <= need.port <= (int(end) if end is not None else first)


def _rule_allows(rule: Mapping[str, Any], need: Need) -> bool:
    peers = rule.get("from" if need.direction == "ingress" else "to")
    if need.port is None and peers:
        return False  # "any port to anyone" is not met by a rule for some peers
    entries = rule.get("ports")
    if not entries:
        return True  # every port
    return any(_port_covers(entry, need) for entry in entries)


@dataclass(frozen=True)
class Blocked:
    """Needs of one pod that the policies selecting it do not allow."""

    policies: tuple[str, ...]  # the policies that restrict the directions concerned
    needs: tuple[Need, ...]


def blocked(
    policies: Sequence[Mapping[str, Any]], labels: Mapping[str, str], needs: Iterable[Need]
) -> Blocked | None:
    """The needs that no policy selecting the pod allows, or None if all are met."""
    selecting = [p for p in policies if selects((p.get("spec") or {}).get("podSelector"), labels)]
    unmet: list[Need] = []
    restricting: list[str] = []
    for need in needs:
        kind = "Ingress" if need.direction == "ingress" else "Egress"
        applying = [p for p in selecting if kind in policy_types(p)]
        if not applying:
            continue  # nothing restricts this direction
        rules = [r for p in applying for r in (p.get("spec") or {}).get(need.direction) or ()]
        if not any(_rule_allows(rule, need) for rule in rules):
            unmet.append(need)
            restricting += [str(p["metadata"]["name"]) for p in applying]
    if not unmet:
        return None
    return Blocked(tuple(dict.fromkeys(restricting)), tuple(unmet))


def warning(pod: str, found: Blocked) -> str:
    """The one line a user reads."""
    policies = ", ".join(found.policies)
    noun = "NetworkPolicy" if len(found.policies) == 1 else "NetworkPolicies"
    needs = ", ".join(need.describe() for need in found.needs)
    return (
        f"{noun} {policies} select pod {pod} and allow no {needs}: such connections will "
        f"hang. Hint: allow them for pods labelled {MANAGED_BY}={MANAGED_BY_KTPY}, or ask "
        "the namespace's owner."
    )
