from typing import Any

import pytest

from ktpy.cluster.service_target import ServiceRoute, duplicate_local_ports, route
from ktpy.errors import PortNotInService, UsageProblem


def service(
    ports: list[dict[str, Any]],
    *,
    cluster_ip: str = "10.96.0.20",
    kind: str = "ClusterIP",
    **spec: Any,
) -> dict[str, Any]:
    return {
        "metadata": {"name": "web", "namespace": "dev"},
        "spec": {"type": kind, "clusterIP": cluster_ip, "ports": ports, **spec},
    }


WEB = service(
    [
        {"name": "dns", "port": 53, "targetPort": 5353, "protocol": "UDP"},
        {"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"},
        {"name": "admin", "port": 9000, "targetPort": 9001},
    ]
)


class TestRoute:
    def test_default_is_the_first_tcp_port_through_the_cluster_ip(self) -> None:
        assert route(WEB, None, None) == ServiceRoute(
            service="web",
            namespace="dev",
            port=80,
            port_name="http",
            host="10.96.0.20",
            target_port=80,
            local=80,
        )

    def test_by_name_or_number_with_local_given(self) -> None:
        assert route(WEB, "admin", 18000).port == 9000
        assert route(WEB, "admin", 18000).local == 18000
        # The Service's port is dialled, never the pod's target port.
        assert route(WEB, 9000, None).target_port == 9000

    def test_a_missing_port_lists_what_the_service_has(self) -> None:
        with pytest.raises(
            PortNotInService, match=r"no port 8080 \(it has: 53/dns, 80/http, 9000/admin\)"
        ) as err:
            route(WEB, 8080, None)
        assert "REMOTE" in err.value.hint
        with pytest.raises(PortNotInService, match="'metrics'"):
            route(WEB, "metrics", None)

    def test_a_udp_port_is_refused(self) -> None:
        with pytest.raises(UsageProblem, match="UDP; only TCP"):
            route(WEB, "dns", None)

    def test_no_tcp_port_at_all(self) -> None:
        udp_only = service([{"name": "dns", "port": 53, "protocol": "UDP"}])
        with pytest.raises(PortNotInService, match="any TCP port"):
            route(udp_only, None, None)

    def test_headless_goes_by_name_to_the_target_port(self) -> None:
        headless = service([{"name": "db", "port": 5432, "targetPort": 15432}], cluster_ip="None")
        found = route(headless, None, None)
        assert (found.host, found.target_port, found.local) == ("web.dev.svc", 15432, 5432)
        named = service([{"name": "db", "port": 5432, "targetPort": "pg"}], cluster_ip="None")
        assert route(named, None, None).target_port == 5432

    def test_external_name_needs_a_number(self) -> None:
        external = service([], kind="ExternalName", cluster_ip="", externalName="db.example.org")
        found = route(external, 5432, 15432)
        assert (found.host, found.target_port, found.local) == ("db.example.org", 5432, 15432)
        with pytest.raises(UsageProblem, match="ExternalName"):
            route(external, None, None)

    def test_label(self) -> None:
        assert route(WEB, None, None).label == "service web.dev port 80 (http)"


def test_duplicate_local_ports() -> None:
    routes = [route(WEB, None, 8080), route(WEB, "admin", 8080), route(WEB, "admin", None)]
    assert duplicate_local_ports(routes) == [8080]
    assert duplicate_local_ports(routes[1:]) == []
