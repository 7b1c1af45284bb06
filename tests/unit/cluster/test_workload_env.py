"""The kubelet's environment and files, computed from API objects."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest

from ktpy.cluster import workload_env as we
from ktpy.cluster.api import Kind

VARS = {"A": "a", "B": "b"}


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("$(A)-$(B)", "a-b"),
        ("$$(A)", "$(A)"),
        ("$(C)", "$(C)"),
        ("$A", "$A"),
        ("x$", "x$"),
        ("$(A", "$(A"),
        ("$$$(A)", "$a"),
        ("", ""),
    ],
)
def test_expansion_as_kubernetes_does_it(text: str, want: str) -> None:
    assert we.expand(text, VARS.get) == want


@pytest.mark.parametrize(
    ("text", "want"),
    [("500m", Decimal("0.5")), ("64Mi", Decimal(64 * 2**20)), ("1G", Decimal(10**9)), ("2", 2)],
)
def test_quantities(text: str, want: Decimal) -> None:
    assert we.quantity(text) == want


def test_resources_round_up_by_the_divisor_and_requests_default_to_limits() -> None:
    container = {"resources": {"limits": {"cpu": "1500m", "memory": "64Mi"}}}
    assert we.resource_value(container, "limits.cpu", None) == "2"
    assert we.resource_value(container, "limits.memory", "1Mi") == "64"
    assert we.resource_value(container, "requests.cpu", "1m") == "1500"
    with pytest.raises(we.EnvProblem, match="node's capacity"):
        we.resource_value({}, "limits.memory", None)


def test_service_links_like_the_kubelets() -> None:
    service = {
        "metadata": {"name": "web-db"},
        "spec": {
            "clusterIP": "10.96.0.9",
            "ports": [
                {"name": "pg", "port": 5432, "protocol": "TCP"},
                {"port": 53, "protocol": "UDP"},
            ],
        },
    }
    headless = {"metadata": {"name": "h"}, "spec": {"clusterIP": "None", "ports": [{"port": 1}]}}
    env = we.service_link_env([service, headless])
    assert env == {
        "WEB_DB_SERVICE_HOST": "10.96.0.9",
        "WEB_DB_SERVICE_PORT": "5432",
        "WEB_DB_SERVICE_PORT_PG": "5432",
        "WEB_DB_PORT": "tcp://10.96.0.9:5432",
        "WEB_DB_PORT_5432_TCP": "tcp://10.96.0.9:5432",
        "WEB_DB_PORT_5432_TCP_PROTO": "tcp",
        "WEB_DB_PORT_5432_TCP_PORT": "5432",
        "WEB_DB_PORT_5432_TCP_ADDR": "10.96.0.9",
        "WEB_DB_PORT_53_UDP": "udp://10.96.0.9:53",
        "WEB_DB_PORT_53_UDP_PROTO": "udp",
        "WEB_DB_PORT_53_UDP_PORT": "53",
        "WEB_DB_PORT_53_UDP_ADDR": "10.96.0.9",
    }


def test_services_made_after_the_container_started_are_left_out() -> None:
    started = datetime(2026, 12, 7, 12, tzinfo=UTC)
    old = {"metadata": {"name": "a", "creationTimestamp": "2026-12-07T11:00:00Z"}}
    new = {"metadata": {"name": "b", "creationTimestamp": "2026-12-07T13:00:00Z"}}
    assert we.services_at([old, new], started) == [old]


POD: dict[str, Any] = {
    "metadata": {"name": "p", "namespace": "dev", "labels": {"tier": "back", "app": "x"}},
    "status": {"podIP": "10.244.0.7"},
}


def test_precedence_envfrom_then_env_then_services() -> None:
    container = {
        "envFrom": [
            {"prefix": "CFG_", "configMapRef": {"name": "cm"}},
            {"secretRef": {"name": "s"}},
        ],
        "env": [
            {"name": "token", "value": "overridden"},
            {"name": "REF", "value": "$(CFG_a)+$(token)+$(SVC_SERVICE_HOST)"},
            {
                "name": "OPT",
                "valueFrom": {"configMapKeyRef": {"name": "cm", "key": "no", "optional": True}},
            },
            {"name": "TIER", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['tier']"}}},
            {"name": "SVC_SERVICE_HOST", "value": "mine"},
        ],
    }
    sources = we.Sources(
        config_maps={"cm": {"a": b"1", "bad=key": b"skip"}}, secrets={"s": {"token": b"t"}}
    )
    skipped: list[str] = []
    env = we.container_env(
        POD, container, sources, {"SVC_SERVICE_HOST": "10.96.0.1", "X": "y"}, skipped
    )
    assert skipped == [
        "OPT: optional key 'no' of configmap 'cm' is missing, so it is left out "
        "(as Kubernetes does)"
    ]
    assert env == {
        "CFG_a": "1",
        "token": "overridden",
        "REF": "1+overridden+10.96.0.1",
        "TIER": "back",
        "SVC_SERVICE_HOST": "mine",
        "X": "y",
    }


def test_a_missing_reference_that_is_not_optional_is_one_clear_problem() -> None:
    container = {"env": [{"name": "A", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}]}
    with pytest.raises(we.EnvProblem, match="secret 's' does not exist"):
        we.container_env(POD, container, we.Sources(), {})


def test_files_at_their_mount_paths_without_the_token() -> None:
    pod = {
        **POD,
        "spec": {
            "volumes": [
                {
                    "name": "c",
                    "configMap": {"name": "cm", "items": [{"key": "a", "path": "x/a.txt"}]},
                },
                {
                    "name": "d",
                    "downwardAPI": {
                        "items": [{"path": "ns", "fieldRef": {"fieldPath": "metadata.namespace"}}]
                    },
                },
                {
                    "name": "t",
                    "projected": {"sources": [{"serviceAccountToken": {"path": "token"}}]},
                },
            ]
        },
    }
    container = {
        "volumeMounts": [
            {"name": "c", "mountPath": "/etc/c"},
            {"name": "d", "mountPath": "/etc/d"},
            {"name": "t", "mountPath": we.SERVICE_ACCOUNT_PATH},
        ]
    }
    files = we.volume_files(pod, container, we.Sources(config_maps={"cm": {"a": b"1"}}))
    assert [(f.path, f.data, f.mount) for f in files] == [
        ("/etc/c/x/a.txt", b"1", "/etc/c"),
        ("/etc/d/ns", b"dev", "/etc/d"),
    ]


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("web", (Kind.DEPLOYMENT, "web")),
        ("deploy/web", (Kind.DEPLOYMENT, "web")),
        ("sts/db", (Kind.STATEFUL_SET, "db")),
        ("pod/p", (Kind.POD, "p")),
        ("svc/web", (Kind.SERVICE, "web")),
    ],
)
def test_targets_as_kubectl_writes_them(text: str, want: tuple[Kind, str]) -> None:
    assert we.parse_target(text) == want


def test_an_unknown_target_kind_is_refused() -> None:
    with pytest.raises(we.EnvProblem, match="use deploy/NAME"):
        we.parse_target("cronjob/x")
