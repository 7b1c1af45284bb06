import pytest

from ktpy.cluster.api import Kind
from ktpy.commands.forward import resolve
from ktpy.errors import ServiceNotFound, UsageProblem
from ktpy.params import parse_forward_targets
from tests.unit.fakes import FakeCluster


def _cluster() -> FakeCluster:
    cluster = FakeCluster()
    for name, namespace, ip in (("web", "dev", "10.96.0.20"), ("db", "data", "10.96.0.30")):
        cluster.put(
            Kind.SERVICE,
            {
                "metadata": {"name": name, "namespace": namespace},
                "spec": {
                    "clusterIP": ip,
                    "ports": [{"name": "main", "port": 80 if name == "web" else 5432}],
                },
            },
        )
    return cluster


def test_every_target_is_resolved_against_its_service() -> None:
    routes = resolve(_cluster(), parse_forward_targets(["web", "8080", "db.data"]), "dev")
    assert [(r.service, r.namespace, r.host, r.port, r.local) for r in routes] == [
        ("web", "dev", "10.96.0.20", 80, 8080),
        ("db", "data", "10.96.0.30", 5432, 5432),
    ]


def test_a_missing_service_is_named_with_its_namespace() -> None:
    with pytest.raises(ServiceNotFound, match="'db' not found in namespace 'dev'"):
        resolve(_cluster(), parse_forward_targets(["web", "db"]), "dev")


def test_two_forwards_on_one_local_port_are_refused() -> None:
    with pytest.raises(UsageProblem, match="local port 80 is used by two forwards"):
        resolve(_cluster(), parse_forward_targets(["web", "web", "80:main"]), "dev")
