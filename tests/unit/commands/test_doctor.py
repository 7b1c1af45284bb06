"""doctor's reading of its target and its memory of the previous run."""

from __future__ import annotations

from pathlib import Path

import pytest

from ktpy.cluster.api import Kind
from ktpy.commands.doctor import load_history, resolve_target, save_history
from ktpy.errors import ServiceNotFound, UsageProblem
from ktpy.net.probe import RoundTrips, Throughput
from ktpy.session.hops import Hop, Measured
from tests.unit.fakes import FakeCluster


def _cluster(
    cluster_ip: str = "10.96.0.20", ready: tuple[bool, ...] = (True, False)
) -> FakeCluster:
    cluster = FakeCluster()
    cluster.put(
        Kind.SERVICE,
        {
            "metadata": {"name": "web", "namespace": "dev"},
            "spec": {
                "clusterIP": cluster_ip,
                "ports": [
                    {"port": 53, "protocol": "UDP", "targetPort": 53},
                    {"port": 80, "targetPort": 8080},
                ],
            },
        },
    )
    cluster.put(
        Kind.ENDPOINT_SLICE,
        {
            "metadata": {
                "name": "web-abc",
                "namespace": "dev",
                "labels": {"kubernetes.io/service-name": "web"},
            },
            "endpoints": [
                {"addresses": [f"10.244.0.{n + 5}"], "conditions": {"ready": r}}
                for n, r in enumerate(ready)
            ],
        },
    )
    return cluster


def test_the_target_is_the_services_first_tcp_port_with_its_ready_endpoints() -> None:
    target = resolve_target(_cluster(), "web", "dev")
    assert target is not None
    assert (target.label, target.host, target.port) == ("service/web", "10.96.0.20", 80)
    assert target.ready_endpoints == 1
    assert target.dns_name == "web.dev.svc"


def test_a_headless_service_is_reached_at_a_ready_pod_on_its_target_port() -> None:
    target = resolve_target(_cluster("None", ready=(False, True)), "web", "dev")
    assert target is not None
    assert (target.host, target.port) == ("10.244.0.6", 8080)


def test_a_missing_service_is_refused_before_anything_is_made() -> None:
    cluster = _cluster()
    with pytest.raises(ServiceNotFound, match="'nope' not found in namespace 'dev'"):
        resolve_target(cluster, "nope", "dev")
    assert not cluster.list_objects(Kind.POD, None).items


def test_without_a_service_the_api_servers_own_is_the_target_if_readable() -> None:
    assert resolve_target(_cluster(), None, "dev") is None
    cluster = _cluster()
    cluster.put(
        Kind.SERVICE,
        {
            "metadata": {"name": "kubernetes", "namespace": "default"},
            "spec": {"clusterIP": "10.96.0.1", "ports": [{"port": 443}]},
        },
    )
    target = resolve_target(cluster, None, "dev")
    assert target is not None
    assert (target.label, target.port) == ("service/default/kubernetes", 443)


def test_the_previous_runs_figures_are_kept_per_cluster_and_target(tmp_path: Path) -> None:
    path = tmp_path / "state" / "doctor.json"
    assert load_history(path) == {}
    measured = [
        Measured(
            Hop.PORT_FORWARD, "p", rtt=RoundTrips(7, 1.234, 2.0), throughput=Throughput(10**8, 1.0)
        ),
        Measured(Hop.DNS, "p", error="dnsmasq: no answer in time"),
    ]
    save_history(path, "https://api dev service/web", measured)
    save_history(path, "https://api dev -", measured[:1])
    kept = load_history(path)
    assert kept["https://api dev service/web"]["hops"] == {
        "port-forward": {"rtt_ms": 1.234, "mbit_s": 800.0}
    }  # a failed hop has no figures to compare with
    assert set(kept) == {"https://api dev service/web", "https://api dev -"}
    path.write_text("not json")
    assert load_history(path) == {}


def test_a_service_without_a_tcp_port_is_refused_with_why() -> None:
    cluster = FakeCluster()
    cluster.put(
        Kind.SERVICE,
        {
            "metadata": {"name": "dns", "namespace": "dev"},
            "spec": {"clusterIP": "10.96.0.53", "ports": [{"port": 53, "protocol": "UDP"}]},
        },
    )
    with pytest.raises(UsageProblem, match="service 'dns' has no TCP port"):
        resolve_target(cluster, "dns", "dev")
