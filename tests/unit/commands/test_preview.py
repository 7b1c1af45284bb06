from types import SimpleNamespace
from typing import Any, cast

import pytest

from ktpy.cluster import labels
from ktpy.cluster.api import Kind
from ktpy.cluster.labels import Role
from ktpy.cluster.manifests import ShadowPort
from ktpy.cluster.waits import ready_endpoint_pods
from ktpy.commands.preview import (
    _create_service,
    check_name_free,
    name_taken,
    remote_ports,
    wait_routed,
)
from ktpy.config import Settings
from ktpy.errors import NameTaken, UsageProblem
from ktpy.logs import get_logger
from ktpy.params import PortMapping, parse_expose
from ktpy.session import Created, Session, ShadowSpec
from ktpy.session.shadow import ShadowObjects
from ktpy.tunnel.keys import SessionKeys
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
    settings = cast(Settings, SimpleNamespace(owner="alice@lap"))
    # The session's real object keeping; its tunnel and keys play no part here.
    objects = ShadowObjects(
        cluster, settings, spec, "s3ss10n0", cast(SessionKeys, None), get_logger("test")
    )
    fake = SimpleNamespace(
        spec=spec,
        id="s3ss10n0",
        settings=settings,
        created=objects.created,
        adopt=objects.adopt,
        meta=lambda: objects.meta(cluster.server_time()),
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
    assert ready_endpoint_pods(slices) == {"a", "c"}


class SliceAfterList(FakeCluster):
    """The endpoint controller adds the shadow to the Service's EndpointSlice right
    after ktpy listed the slices (the usual order: the pod just became Ready)."""

    def list_objects(self, kind: Kind, namespace: str | None, **kw: Any) -> Any:
        listed = super().list_objects(kind, namespace, **kw)
        if kind is Kind.ENDPOINT_SLICE and not self.names(Kind.ENDPOINT_SLICE, "dev"):
            self.put(
                Kind.ENDPOINT_SLICE,
                {
                    "metadata": {
                        "name": "web-abcde",
                        "namespace": "dev",
                        "labels": {labels.SERVICE_NAME_LABEL: "web"},
                    },
                    "endpoints": [{"targetRef": {"kind": "Pod", "name": "web-kt-abcde"}}],
                },
            )
        return listed


def test_wait_routed_sees_the_shadow_by_watch_not_by_listing_again() -> None:
    cluster = SliceAfterList()
    assert wait_routed(cluster, "dev", "web", "web-kt-abcde")
    reads = [v for v, kind, *_ in cluster.calls if kind is Kind.ENDPOINT_SLICE and v != "create"]
    assert reads == ["list", "watch"]
