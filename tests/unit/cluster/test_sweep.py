from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from ktpy.cluster import inventory, modify, sweep
from ktpy.cluster.api import Conflict, Kind
from ktpy.cluster.heartbeat import LocalProcess
from ktpy.cluster.labels import Lock, PidStart, Role
from ktpy.cluster.modify import FieldChange
from ktpy.cluster.sweep import CleanPlan, check_threshold, plan_clean
from ktpy.errors import UsageProblem
from tests.unit.cluster.objects import created, user_service
from tests.unit.cluster.redirects import NS, dead_scale_exchange
from tests.unit.fakes import FakeCluster

NOW = datetime(2026, 11, 27, 12, 0, 0, tzinfo=UTC)
INTERVAL = timedelta(seconds=30)
THRESHOLD = timedelta(minutes=3)
FRESH = NOW - timedelta(seconds=20)
OLD = NOW - timedelta(minutes=10)


def exchanged(service: str, session: str) -> dict[str, Any]:
    lock = Lock(session, "alice@lap", Role.EXCHANGE, OLD)
    return modify.modified_body(
        user_service(service),
        [FieldChange(("spec", "selector"), {"ktpy.dev/session": session})],
        session_id=session,
        lock=lock,
    )


def exchange_session(
    service: str, session: str, heartbeat: datetime, pid: PidStart | None = None
) -> list[dict[str, Any]]:
    name = f"{service}-kt-exchange-{session[:5]}"
    return [
        created("Pod", name, session, role=Role.EXCHANGE, heartbeat=heartbeat, pid_start=pid),
        created("Secret", name, session, role=Role.EXCHANGE, heartbeat=heartbeat),
    ]


def plan(modified: list[dict[str, Any]], made: list[dict[str, Any]], **kw: Any) -> CleanPlan:
    options: dict[str, Any] = {"now": NOW, "threshold": THRESHOLD, "interval": INTERVAL}
    options.update(kw)
    return plan_clean(modified, made, **options)


class TestThreshold:
    def test_under_twice_the_interval_is_refused(self) -> None:
        with pytest.raises(UsageProblem, match="less than twice") as caught:
            check_threshold(timedelta(seconds=59), INTERVAL)
        assert "--threshold 1m" in caught.value.hint

    def test_plan_refuses_too(self) -> None:
        with pytest.raises(UsageProblem):
            plan([], [], threshold=timedelta(seconds=45))

    def test_exactly_twice_is_allowed(self) -> None:
        check_threshold(2 * INTERVAL, INTERVAL)


class TestSelection:
    def test_a_stale_session_is_restored_then_deleted(self) -> None:
        service = exchanged("nginx", "dead0001")
        result = plan([service], exchange_session("nginx", "dead0001", OLD))
        assert [r.ref.name for r in result.restore] == ["nginx"]
        assert result.restore[0].body["spec"]["selector"] == {"app": "nginx"}
        assert result.restore[0].body["metadata"]["resourceVersion"] == "41"
        assert [(r.kind, r.name) for r in result.delete] == [
            ("Pod", "nginx-kt-exchange-dead0"),
            ("Secret", "nginx-kt-exchange-dead0"),
        ]
        assert result.delete[0].uid == "uid-nginx-kt-exchange-dead0"
        assert [v.session_id for v in result.removed_sessions] == ["dead0001"]

    def test_a_live_session_is_never_touched(self) -> None:
        live = exchange_session("web", "live0001", FRESH)
        result = plan([exchanged("web", "live0001")], live)
        assert result.is_empty
        assert [v.session_id for v in result.live_sessions] == ["live0001"]

    def test_mixed_only_the_dead_go(self) -> None:
        made = exchange_session("web", "live0001", FRESH) + exchange_session("api", "dead0001", OLD)
        modified = [exchanged("web", "live0001"), exchanged("api", "dead0001")]
        result = plan(modified, made)
        assert {r.ref.name for r in result.restore} == {"api"}
        assert all("live0" not in r.name for r in result.delete)
        assert {r.name for r in result.delete} == {"api-kt-exchange-dead0"}

    def test_an_orphaned_modification_is_restored(self) -> None:
        result = plan([exchanged("nginx", "gone0001")], [])
        assert [r.ref.name for r in result.restore] == ["nginx"]
        assert result.restore[0].session_id == "gone0001"
        assert result.delete == ()

    def test_a_dead_local_process_is_cleaned_before_it_is_stale(self) -> None:
        pid = PidStart(4242, 1, "boot")
        made = exchange_session("nginx", "dead0001", FRESH, pid=pid)
        result = plan(
            [exchanged("nginx", "dead0001")], made, check_local=lambda _: LocalProcess.GONE
        )
        assert [r.ref.name for r in result.restore] == ["nginx"]
        assert len(result.delete) == 2

    def test_local_process_alive_keeps_even_a_stale_session(self) -> None:
        pid = PidStart(4242, 1, "boot")
        made = exchange_session("nginx", "slept001", OLD, pid=pid)
        result = plan([], made, check_local=lambda _: LocalProcess.ALIVE)
        assert result.is_empty

    def test_deletion_order_services_then_pods_then_secrets(self) -> None:
        made = [
            created("Secret", "web-kt-abcde", "dead0001", role=Role.PREVIEW, heartbeat=OLD),
            created("Pod", "web-kt-abcde", "dead0001", role=Role.PREVIEW, heartbeat=OLD),
            created("Service", "web", "dead0001", role=Role.PREVIEW, heartbeat=OLD),
        ]
        assert [r.kind for r in plan([], made).delete] == ["Service", "Pod", "Secret"]

    def test_objects_already_terminating_are_not_deleted_again(self) -> None:
        made = [
            created("Pod", "p", "dead0001", heartbeat=OLD, terminating=True),
            created("Secret", "p", "dead0001", heartbeat=OLD),
        ]
        assert [r.kind for r in plan([], made).delete] == ["Secret"]

    def test_session_filter_limits_the_plan(self) -> None:
        made = exchange_session("a", "dead0001", OLD) + exchange_session("b", "dead0002", OLD)
        modified = [exchanged("a", "dead0001"), exchanged("b", "dead0002")]
        result = plan(modified, made, sessions=frozenset({"dead0002"}))
        assert {r.ref.name for r in result.restore} == {"b"}
        assert {r.name for r in result.delete} == {"b-kt-exchange-dead0"}

    def test_unmodified_and_foreign_objects_are_ignored(self) -> None:
        foreign = user_service("db")
        foreign["metadata"]["labels"]["app.kubernetes.io/managed-by"] = "Helm"
        result = plan([user_service("plain")], [foreign])
        assert result.is_empty

    def test_unreadable_originals_are_reported_not_guessed(self) -> None:
        broken = exchanged("nginx", "dead0001")
        broken["metadata"]["annotations"]["ktpy.dev/original"] = "[{]"
        result = plan([broken], [])
        assert result.restore == ()
        assert [(ref.name, "unreadable" in why) for ref, why in result.unreadable] == [
            ("nginx", True)
        ]

    def test_same_session_id_in_another_namespace_is_a_different_session(self) -> None:
        made = [
            created("Pod", "p", "s1", namespace="a", heartbeat=FRESH),
            created("Pod", "p", "s1", namespace="b", heartbeat=OLD),
        ]
        result = plan([], made)
        assert [(r.namespace, r.name) for r in result.delete] == [("b", "p")]


def test_release_session_restores_deployments_first_then_deletes(cluster: FakeCluster) -> None:
    dead_scale_exchange(cluster)
    done = sweep.release(cluster, NS, "dead0001")
    assert done[:2] == ["restored deployment/web", "restored service/nginx"]
    assert cluster.get(Kind.DEPLOYMENT, NS, "web")["spec"]["replicas"] == 2
    assert cluster.names(Kind.POD, NS) == []


def test_clean_restores_in_the_same_order_as_release(cluster: FakeCluster) -> None:
    # The Service is listed first (inventory lists Services before Deployments); the
    # plan still restores the Deployment first, as release and the live teardown do.
    dead_scale_exchange(cluster)
    cluster.clock.advance(timedelta(hours=1))
    result = plan_clean(
        inventory.modified_objects(cluster, NS),
        inventory.created_objects(cluster, NS),
        now=cluster.clock(),
        threshold=timedelta(minutes=3),
        interval=timedelta(seconds=30),
    )
    assert [r.ref.kind for r in result.restore] == ["Deployment", "Service"]
    report = sweep.carry_out(cluster, result)
    assert [(verb, ref.kind) for verb, ref in report.done][:2] == [
        ("restored", "Deployment"),
        ("restored", "Service"),
    ]
    assert report.problems == []


def test_clean_retries_a_write_that_lost_a_race(cluster: FakeCluster) -> None:
    dead_scale_exchange(cluster)
    cluster.clock.advance(timedelta(hours=1))
    result = plan_clean(
        inventory.modified_objects(cluster, NS),
        inventory.created_objects(cluster, NS),
        now=cluster.clock(),
        threshold=timedelta(minutes=3),
        interval=timedelta(seconds=30),
    )
    # Someone edits the Service after clean read it (the plan's body is stale now),
    # and once more between clean's next read and its write: a 409 it retries.
    edited = cluster.get(Kind.SERVICE, NS, "nginx")
    edited["metadata"].setdefault("annotations", {})["team"] = "web"
    cluster.replace(Kind.SERVICE, NS, "nginx", edited)
    cluster.fail_next("replace", Kind.SERVICE, Conflict("the object has been modified"))
    report = sweep.carry_out(cluster, result)
    assert report.problems == []
    restored = cluster.get(Kind.SERVICE, NS, "nginx")
    assert not modify.is_modified(restored)
    assert restored["metadata"]["annotations"] == {"team": "web"}
    assert cluster.get(Kind.DEPLOYMENT, NS, "web")["spec"]["replicas"] == 2


def test_a_live_meshs_dead_member_loses_only_its_mark() -> None:
    from ktpy.cluster import mesh

    now = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)
    service = mesh.meshed_service(
        user_service(selector={"app": "nginx"}), mesh.mesh_lock("mesh0001", "alice@lap", now)
    )
    service = mesh.with_mark(service, mesh.Mark("live0001", "version", "a", "alice", now))
    service = mesh.with_mark(service, mesh.Mark("dead0001", "version", "b", "bob", now))
    service["kind"] = "Service"
    made = [
        # The mesh's objects beat with its live member; the dead member's do not.
        created("Deployment", "nginx-kt-router", "mesh0001", role=Role.ROUTER, heartbeat=now),
        created("Pod", "nginx-kt-mesh-a", "live0001", role=Role.MESH, heartbeat=now),
        created(
            "Pod", "nginx-kt-mesh-b", "dead0001", role=Role.MESH,
            heartbeat=now - timedelta(minutes=10),
        ),
    ]  # fmt: skip
    result = plan_clean(
        [service], made, now=now, threshold=timedelta(minutes=3), interval=timedelta(seconds=30)
    )
    assert result.restore == ()  # the mesh lives: the Service stays meshed
    assert [(ref.name, m.session) for ref, m in result.stale_marks] == [("nginx", "dead0001")]
    assert [ref.name for ref in result.delete] == ["nginx-kt-mesh-b"]
