from types import SimpleNamespace
from typing import Any, cast

import pytest

from ktpy.cluster import labels
from ktpy.cluster.api import Kind
from ktpy.cluster.labels import Role
from ktpy.cluster.manifests import ShadowPort
from ktpy.commands.preview import (
    _create_service,
    check_name_free,
    name_taken,
    remote_ports,
    routed_pods,
)
from ktpy.errors import NameTaken, UsageProblem
from ktpy.params import PortMapping, parse_expose
from ktpy.session import Created, Session, ShadowSpec
from tests.unit.cluster.objects import created
from tests.unit.fakes import FakeCluster


class TestRemotePorts:
    def test_remote_to_local(self) -> None:
        assert remote_ports(parse_expose("3001:8080,9000")) == {8080: 3001, 9000: 9000}

    def test_a_port_name_has_nothing_to_refer_to(self) -> None:
        with pytest.raises(UsageProblem, match="REMOTE must be a number"):
            remote_ports((PortMapping(3001, "http"),))

    @pytest.mark.parametrize("port", [2222, 5353])
    def test_the_shadows_usual_ports_can_be_published(self, port: int) -> None:
        # The shadow's own sshd and dnsmasq move instead (ShadowSpec).
        assert remote_ports((PortMapping(3001, port),)) == {port: 3001}


class TestNameTaken:
    def test_a_users_service(self) -> None:
        error = name_taken({"metadata": {"name": "web"}}, "dev", "web")
        assert error.exit_code == 21
        assert error.format_message() == "service 'web' already exists in namespace 'dev'"
        assert "never replaces a Service it did not create" in error.hint

    def test_another_preview_session_is_named(self) -> None:
        other = created("Service", "web", "s0th3r00", role=Role.PREVIEW, owner="bob@box")
        error = name_taken(other, "dev", "web")
        assert error.format_message() == (
            "service 'web' already exists in namespace 'dev' (preview session s0th3r00 of bob@box)"
        )
        assert "ktpy clean" in error.hint

    def test_check_reads_only(self) -> None:
        cluster = FakeCluster()
        check_name_free(cluster, "dev", "web")
        cluster.put(Kind.SERVICE, {"metadata": {"name": "web", "namespace": "dev"}, "spec": {}})
        cluster.calls.clear()
        with pytest.raises(NameTaken):
            check_name_free(cluster, "dev", "web")
        assert {verb for verb, *_ in cluster.calls} == {"get"}


def _session(cluster: FakeCluster) -> Session:
    spec = ShadowSpec(Role.PREVIEW, "dev", "web-kt-abcde", "img", target="service/web")
    fake = SimpleNamespace(
        spec=spec, id="s3ss10n0", settings=SimpleNamespace(owner="alice@lap"), created=[]
    )
    return cast(Session, fake)


class TestCreateService:
    def test_the_service_selects_the_shadow_and_is_cleaned_with_the_session(self) -> None:
        cluster = FakeCluster()
        session = _session(cluster)
        body = _create_service(cluster, session, "web", (ShadowPort(8080),), external=True)
        assert body["spec"]["type"] == "LoadBalancer"
        assert body["spec"]["selector"] == labels.shadow_selector("s3ss10n0", Role.PREVIEW)
        assert body["metadata"]["labels"][labels.SESSION] == "s3ss10n0"
        assert body["metadata"]["annotations"][labels.TARGET] == "service/web"
        assert session.created == [Created(Kind.SERVICE, "dev", "web", body["metadata"]["uid"])]

    def test_a_name_taken_meanwhile_is_refused_and_not_recorded(self) -> None:
        cluster = FakeCluster()
        session = _session(cluster)
        cluster.put(Kind.SERVICE, {"metadata": {"name": "web", "namespace": "dev"}, "spec": {}})
        with pytest.raises(NameTaken, match="'web' already exists"):
            _create_service(cluster, session, "web", (ShadowPort(8080),), external=False)
        assert session.created == []


def test_routed_pods_counts_ready_and_unknown_as_ready() -> None:
    slices: list[dict[str, Any]] = [
        {
            "endpoints": [
                {"targetRef": {"kind": "Pod", "name": "a"}, "conditions": {"ready": True}},
                {"targetRef": {"kind": "Pod", "name": "b"}, "conditions": {"ready": False}},
                {"targetRef": {"kind": "Pod", "name": "c"}},
            ]
        },
        {"endpoints": None},
    ]
    assert routed_pods(slices) == {"a", "c"}
