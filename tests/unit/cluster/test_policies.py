"""NetworkPolicies against what a ktpy pod needs (ktpy.cluster.policies)."""

from __future__ import annotations

from typing import Any

import pytest

from ktpy.cluster.labels import Role
from ktpy.cluster.policies import Need, blocked, needs_for, selects, warning

SHADOW = {
    "app.kubernetes.io/managed-by": "ktpy",
    "ktpy.dev/role": "exchange",
    "ktpy.dev/session": "ab12cd34",
}
EXCHANGE = needs_for(Role.EXCHANGE, [(8080, "http")])
CONNECT = needs_for(Role.CONNECT)


def policy(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {"metadata": {"name": name}, "spec": {"podSelector": {}, **spec}}


DENY_INGRESS = policy("default-deny", {"policyTypes": ["Ingress"]})
DENY_EGRESS = policy("deny-egress", {"policyTypes": ["Egress"]})


@pytest.mark.parametrize(
    ("selector", "chosen"),
    [
        ({}, True),
        ({"matchLabels": {"ktpy.dev/role": "exchange"}}, True),
        ({"matchLabels": {"app": "nginx"}}, False),
        ({"matchExpressions": [{"key": "app", "operator": "DoesNotExist"}]}, True),
        ({"matchExpressions": [{"key": "app", "operator": "Exists"}]}, False),
        (
            {
                "matchExpressions": [
                    {"key": "ktpy.dev/role", "operator": "In", "values": ["mesh", "exchange"]}
                ]
            },
            True,
        ),
        (
            {
                "matchExpressions": [
                    {"key": "ktpy.dev/role", "operator": "NotIn", "values": ["exchange"]}
                ]
            },
            False,
        ),
        ({"matchExpressions": [{"key": "tier", "operator": "NotIn", "values": ["db"]}]}, True),
    ],
)
def test_selectors_select_as_the_api_server_does(selector: dict[str, Any], chosen: bool) -> None:
    assert selects(selector, SHADOW) is chosen


def test_no_policy_blocks_nothing() -> None:
    assert blocked([], SHADOW, EXCHANGE + CONNECT) is None


def test_a_default_deny_blocks_the_service_port() -> None:
    found = blocked([DENY_INGRESS], SHADOW, EXCHANGE)
    assert found is not None
    assert found.policies == ("default-deny",)
    assert found.needs == (Need("ingress", "TCP", 8080, "http"),)
    line = warning("ktpy-exchange-nginx-ab12", found)
    assert "NetworkPolicy default-deny select pod ktpy-exchange-nginx-ab12" in line
    assert "ingress to port 8080/TCP" in line
    assert "\n" not in line


def test_a_policy_for_other_pods_blocks_nothing() -> None:
    other = policy(
        "nginx-only", {"podSelector": {"matchLabels": {"app": "nginx"}}, "policyTypes": ["Ingress"]}
    )
    assert blocked([other], SHADOW, EXCHANGE) is None


@pytest.mark.parametrize(
    "rule",
    [
        {},  # everything, from everyone
        {"ports": [{"port": 8080}]},
        {"ports": [{"port": 8000, "endPort": 9000, "protocol": "TCP"}]},
        {"ports": [{"port": "http"}]},  # the pod's own name for the port
        {
            "from": [{"podSelector": {"matchLabels": {"app": "frontend"}}}],
            "ports": [{"port": 8080}],
        },
        {"ports": [{"protocol": "TCP"}]},  # every TCP port
    ],
)
def test_a_rule_covering_the_port_meets_the_need(rule: dict[str, Any]) -> None:
    allow = policy("allow", {"ingress": [rule]})
    assert blocked([DENY_INGRESS, allow], SHADOW, EXCHANGE) is None


@pytest.mark.parametrize(
    "rule",
    [
        {"ports": [{"port": 80}]},
        {"ports": [{"port": 8080, "protocol": "UDP"}]},
        {"ports": [{"port": "grpc"}]},
        {"ports": [{"port": 9000, "endPort": 9100}]},
    ],
)
def test_a_rule_for_other_ports_does_not(rule: dict[str, Any]) -> None:
    allow = policy("web", {"ingress": [rule]})
    found = blocked([allow], SHADOW, EXCHANGE)
    assert found is not None
    assert found.policies == ("web",)


def test_connect_needs_every_tcp_port_to_everyone_and_dns() -> None:
    found = blocked([DENY_EGRESS], SHADOW, CONNECT)
    assert found is not None
    assert [n.describe() for n in found.needs] == [
        "egress to any port/TCP",
        "egress to port 53/UDP",
        "egress to port 53/TCP",
    ]
    dns_only = policy(
        "dns", {"egress": [{"ports": [{"port": 53, "protocol": "UDP"}, {"port": 53}]}]}
    )
    found = blocked([dns_only], SHADOW, CONNECT)
    assert found is not None
    assert [n.describe() for n in found.needs] == ["egress to any port/TCP"]
    some_peers = policy("ns-only", {"egress": [{"to": [{"namespaceSelector": {}}]}]})
    assert blocked([some_peers], SHADOW, CONNECT) is not None
    open_egress = policy("open", {"egress": [{}]})
    assert blocked([DENY_EGRESS, open_egress], SHADOW, CONNECT) is None


def test_an_ingress_policy_leaves_connect_alone() -> None:
    assert blocked([DENY_INGRESS], SHADOW, CONNECT) is None


def test_policy_types_default_as_the_api_server_fills_them() -> None:
    # No policyTypes and egress rules: both directions are restricted.
    both = policy("both", {"egress": [{"ports": [{"port": 443}]}]})
    found = blocked([both], SHADOW, EXCHANGE + CONNECT)
    assert found is not None
    assert {n.direction for n in found.needs} == {"ingress", "egress"}


def test_the_router_needs_both_ways_on_the_target_ports() -> None:
    ports = ((port, None) for port in [8080])  # any iterable, read once
    assert [n.describe() for n in needs_for(Role.ROUTER, ports)] == [
        "ingress to port 8080/TCP",
        "egress to port 8080/TCP",
    ]
