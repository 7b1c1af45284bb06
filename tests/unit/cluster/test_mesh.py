"""A Service's mesh as pure functions: marks, their liveness, the switch to the router."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from ktpy.cluster import labels, mesh, modify, router
from ktpy.cluster.heartbeat import Liveness, sessions_from_objects
from ktpy.cluster.labels import Role
from tests.unit.cluster.objects import created, user_service

NOW = datetime(2026, 12, 7, 12, 0, 0, tzinfo=UTC)
STALE_AFTER = timedelta(minutes=3)


def mark(session: str, value: str, age: timedelta = timedelta(seconds=10)) -> mesh.Mark:
    return mesh.Mark(session, "version", value, "alice@lap", NOW - age)


def test_a_mark_round_trips_through_its_annotation() -> None:
    one = mark("s1", "foobar")
    body = mesh.with_mark(user_service(), one)
    key = labels.MESH_MARK_PREFIX + "s1"
    assert key in body["metadata"]["annotations"]
    assert mesh.marks_of(body) == [one]
    assert one.header == "VERSION: foobar"


def test_unreadable_marks_are_left_out() -> None:
    body = mesh.with_mark(user_service(), mark("s1", "a"))
    body["metadata"]["annotations"][labels.MESH_MARK_PREFIX + "s2"] = "{not json"
    assert [m.session for m in mesh.marks_of(body)] == ["s1"]


def test_without_mark_removes_only_that_member() -> None:
    body = mesh.with_mark(mesh.with_mark(user_service(), mark("s1", "a")), mark("s2", "b"))
    assert [m.session for m in mesh.marks_of(mesh.without_mark(body, "s1"))] == ["s2"]


def test_a_mark_lives_by_its_session_when_the_session_has_objects() -> None:
    objects = [created("Pod", "web-kt-mesh-a", "s1", role=Role.MESH, heartbeat=NOW)]
    views = sessions_from_objects(objects)
    old = mark("s1", "a", age=timedelta(hours=1))  # its own heartbeat is old ...
    live = mesh.mark_liveness(old, views, now=NOW, stale_after=STALE_AFTER)
    assert live is Liveness.LIVE  # ... but its session's objects beat


def test_a_mark_without_objects_lives_by_its_own_heartbeat() -> None:
    assert mesh.mark_liveness(mark("s9", "a"), [], now=NOW, stale_after=STALE_AFTER) is (
        Liveness.LIVE
    )
    old = mark("s9", "a", age=timedelta(minutes=5))
    assert mesh.mark_liveness(old, [], now=NOW, stale_after=STALE_AFTER) is Liveness.STALE


def test_live_marks_leave_out_the_stale() -> None:
    body = mesh.with_mark(user_service(), mark("s1", "a"))
    body = mesh.with_mark(body, mark("s2", "b", age=timedelta(minutes=10)))
    live = mesh.live_marks(body, [], now=NOW, stale_after=STALE_AFTER)
    assert [m.value for m in live] == ["a"]


def test_the_meshed_service_selects_the_router_and_the_mesh_holds_it() -> None:
    service = user_service(selector={"app": "nginx"})
    held = mesh.mesh_lock("mesh0001", "alice@lap", NOW)
    meshed = mesh.meshed_service(service, held)
    assert meshed["spec"]["selector"] == router.router_selector("nginx")
    assert mesh.mesh_of(meshed) == "mesh0001"
    assert modify.modifier_session(meshed) == "mesh0001"


def test_restoring_the_service_removes_the_marks_and_puts_the_selector_back() -> None:
    service = user_service(selector={"app": "nginx"})
    meshed = mesh.meshed_service(service, mesh.mesh_lock("mesh0001", "alice@lap", NOW))
    meshed = mesh.with_mark(mesh.with_mark(meshed, mark("s1", "a")), mark("s2", "b"))
    assert modify.restored_body(meshed) == service


def test_an_exchanged_service_has_no_mesh() -> None:
    lock = labels.Lock("s1", "alice@lap", Role.EXCHANGE, NOW)
    exchanged = modify.modified_body(
        user_service(),
        (modify.FieldChange(("spec", "selector"), {"x": "y"}),),
        session_id="s1",
        lock=lock,
    )
    assert mesh.mesh_of(exchanged) is None
    assert mesh.mesh_of(user_service()) is None


@pytest.mark.parametrize("text", ['{"key": "version"}', "[]", '{"value": "a", "key": "v"}'])
def test_a_mark_missing_fields_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="unreadable mesh mark"):
        mesh.Mark.decode("s1", text)
