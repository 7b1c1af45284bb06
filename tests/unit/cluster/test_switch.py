"""Carrying out the switch against the fake cluster: conditional writes, twenty sessions
racing, take-over of a dead holder, restore, the guard, waits on EndpointSlices."""

import threading
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import pytest

from ktpy.cluster import exchange as plan
from ktpy.cluster import labels, manifests, modify, switch
from ktpy.cluster.api import Kind
from ktpy.cluster.bodies import JsonObject
from ktpy.cluster.labels import Role
from ktpy.cluster.manifests import SessionMeta
from ktpy.errors import AlreadyExchanged, LockLost, ServiceNotFound
from tests.unit.cluster.objects import user_service
from tests.unit.fakes import FakeCluster

STALE_AFTER = timedelta(minutes=3)
NS = "dev"


@pytest.fixture
def cluster() -> FakeCluster:
    made = FakeCluster()
    made.create(Kind.SERVICE, NS, user_service())
    return made


def start_shadow(cluster: FakeCluster, session: str, owner: str = "alice@lap") -> str:
    """What a session creates before it touches the Service: its Secret and pod."""
    meta = SessionMeta(session, Role.EXCHANGE, owner, cluster.clock(), target="service/nginx")
    name = f"nginx-kt-exchange-{session}"
    cluster.create(Kind.POD, NS, {"metadata": manifests.object_meta(name, NS, meta)})
    cluster.create(Kind.SECRET, NS, {"metadata": manifests.object_meta(name, NS, meta)})
    return name


def take(cluster: Any, session: str, owner: str = "alice@lap", **kw: Any) -> JsonObject:
    lock = plan.lock_for(session, owner, cluster.clock())
    return switch.take(
        cluster,
        Kind.SERVICE,
        NS,
        "nginx",
        build=lambda current: plan.switched_service(current, lock),
        check=plan.check_selector,
        session_id=session,
        stale_after=STALE_AFTER,
        **kw,
    )


def without_version(body: JsonObject) -> JsonObject:
    body["metadata"].pop("resourceVersion")
    return body


def test_a_free_service_is_taken_in_one_conditional_write(cluster: FakeCluster) -> None:
    start_shadow(cluster, "s0000001")
    written = take(cluster, "s0000001")
    assert written["spec"]["selector"] == plan.exchange_selector("s0000001")
    assert [c[0] for c in cluster.calls].count("replace") == 1


def test_an_unknown_service_is_service_not_found() -> None:
    with pytest.raises(ServiceNotFound):
        take(FakeCluster(), "s0000001")


class Serialized:
    """The fake behind one lock (an API server handles each request atomically), with
    every session's first read of the Service held until all twenty have read."""

    def __init__(self, cluster: FakeCluster, racers: int) -> None:
        self._cluster = cluster
        self._lock = threading.Lock()
        self._barrier = threading.Barrier(racers)
        self._first_read = threading.local()
        self.clock = cluster.clock

    def __getattr__(self, name: str) -> Callable[..., Any]:
        method = getattr(self._cluster, name)

        def call(*args: Any, **kwargs: Any) -> Any:
            with self._lock:
                result = method(*args, **kwargs)
            if (
                name == "get"
                and args[0] is Kind.SERVICE
                and not getattr(self._first_read, "done", False)
            ):
                self._first_read.done = True
                self._barrier.wait(timeout=10)
            return result

        return call


def test_twenty_sessions_racing_exactly_one_wins_and_the_service_ends_as_it_began(
    cluster: FakeCluster,
) -> None:
    original = cluster.get(Kind.SERVICE, NS, "nginx")
    api = Serialized(cluster, 20)
    sessions = [f"s{n:07d}" for n in range(20)]
    for session in sessions:
        start_shadow(cluster, session, owner=f"user{session[-2:]}@lap")
    winners: list[str] = []
    refusals: dict[str, AlreadyExchanged] = {}

    def race(session: str) -> None:
        try:
            take(api, session, owner=f"user{session[-2:]}@lap")
            winners.append(session)
        except AlreadyExchanged as exc:
            refusals[session] = exc

    threads = [threading.Thread(target=race, args=(s,)) for s in sessions]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(20)
    assert len(winners) == 1
    assert len(refusals) == 19
    (winner,) = winners
    for refusal in refusals.values():
        assert f"by user{winner[-2:]}@lap, session {winner}" in refusal.message
    # All twenty read the same version: nineteen replaces were refused with 409.
    assert [c[0] for c in cluster.calls].count("replace") == 20
    assert switch.restore(cluster, Kind.SERVICE, NS, "nginx", winner) is not None
    assert without_version(cluster.get(Kind.SERVICE, NS, "nginx")) == without_version(original)


def test_a_dead_holder_is_restored_and_removed_before_the_take_over(cluster: FakeCluster) -> None:
    dead = start_shadow(cluster, "dead0001")
    take(cluster, "dead0001")
    cluster.clock.advance(timedelta(minutes=10))  # its heartbeat is long gone
    start_shadow(cluster, "live0001")
    seen: list[plan.Holder] = []
    written = take(cluster, "live0001", on_takeover=seen.append)
    assert [h.session for h in seen] == ["dead0001"]
    assert written["spec"]["selector"] == plan.exchange_selector("live0001")
    # The recorded original is the user's selector, not the dead session's.
    assert modify.restored_body(written)["spec"]["selector"] == {"app": "nginx"}
    assert dead not in cluster.names(Kind.POD, NS)
    assert dead not in cluster.names(Kind.SECRET, NS)


def test_a_live_holder_is_refused_and_nothing_changes(cluster: FakeCluster) -> None:
    start_shadow(cluster, "first001", owner="alice@lap")
    take(cluster, "first001")
    before = cluster.get(Kind.SERVICE, NS, "nginx")
    with pytest.raises(AlreadyExchanged, match="alice@lap, session first001"):
        take(cluster, "second01")
    assert cluster.get(Kind.SERVICE, NS, "nginx") == before


def test_restore_leaves_someone_elses_change_alone(cluster: FakeCluster) -> None:
    start_shadow(cluster, "s0000001")
    take(cluster, "s0000001")
    assert switch.restore(cluster, Kind.SERVICE, NS, "nginx", "s0000002") is None
    assert switch.restore(cluster, Kind.SERVICE, NS, "missing", "s0000001") is None
    assert switch.restore(cluster, Kind.SERVICE, NS, "nginx", "s0000001") is not None
    assert not modify.is_modified(cluster.get(Kind.SERVICE, NS, "nginx"))


def test_release_session_restores_deployments_first_then_deletes(cluster: FakeCluster) -> None:
    start_shadow(cluster, "dead0001")
    web = {
        "metadata": {"name": "web", "namespace": NS},
        "spec": {"replicas": 2, "template": {"metadata": {"labels": {"app": "nginx"}}}},
    }
    cluster.create(Kind.DEPLOYMENT, NS, web)
    current = cluster.get(Kind.DEPLOYMENT, NS, "web")
    cluster.replace(Kind.DEPLOYMENT, NS, "web", plan.scaled_deployment(current, "dead0001"))
    service = cluster.get(Kind.SERVICE, NS, "nginx")
    lock = plan.lock_for("dead0001", "bob@box", cluster.clock())
    cluster.replace(Kind.SERVICE, NS, "nginx", plan.locked_service(service, lock))
    done = switch.release_session(cluster, NS, "dead0001")
    assert done[:2] == ["restored deployment/web", "restored service/nginx"]
    assert cluster.get(Kind.DEPLOYMENT, NS, "web")["spec"]["replicas"] == 2
    assert cluster.names(Kind.POD, NS) == []


def guard_for(cluster: FakeCluster, session: str) -> switch.Guard:
    body = cluster.get(Kind.SERVICE, NS, "nginx")
    return switch.Guard(
        cluster,
        Kind.SERVICE,
        NS,
        "nginx",
        session_id=session,
        wanted=plan.selector_changes(session),
        resource_version=str(body["metadata"]["resourceVersion"]),
    )


def test_the_guard_puts_the_selector_back_then_stops_when_restored(cluster: FakeCluster) -> None:
    start_shadow(cluster, "s0000001")
    take(cluster, "s0000001")
    guard = guard_for(cluster, "s0000001")
    edited = cluster.get(Kind.SERVICE, NS, "nginx")
    edited["spec"]["selector"] = {"app": "other"}
    cluster.replace(Kind.SERVICE, NS, "nginx", edited)
    guard._watch_once()  # replays the edit
    assert guard.reapplied == 1
    assert cluster.get(Kind.SERVICE, NS, "nginx")["spec"]["selector"] == plan.exchange_selector(
        "s0000001"
    )
    assert not guard.lost.is_set()
    # ktpy recover (or clean) elsewhere: the guard gives up instead of fighting.
    switch.restore(cluster, Kind.SERVICE, NS, "nginx", None, anyone=True)
    guard._watch_once()
    assert guard.lost.is_set()
    assert "restored by someone else" in guard.reason
    assert cluster.get(Kind.SERVICE, NS, "nginx")["spec"]["selector"] == {"app": "nginx"}


def test_a_stopped_guard_writes_nothing(cluster: FakeCluster) -> None:
    start_shadow(cluster, "s0000001")
    take(cluster, "s0000001")
    guard = guard_for(cluster, "s0000001")
    guard.stop()
    edited = cluster.get(Kind.SERVICE, NS, "nginx")
    edited["spec"]["selector"] = {"app": "other"}
    cluster.replace(Kind.SERVICE, NS, "nginx", edited)
    guard._recheck()
    assert guard.reapplied == 0


def endpoint_slice(name: str, *pods: str) -> JsonObject:
    return {
        "metadata": {
            "name": name,
            "namespace": NS,
            "labels": {plan.SERVICE_NAME_LABEL: "nginx"},
        },
        "endpoints": [
            {"targetRef": {"kind": "Pod", "name": p}, "conditions": {"ready": True}} for p in pods
        ],
    }


def test_wait_endpoints_sees_the_slices(cluster: FakeCluster) -> None:
    cluster.create(Kind.ENDPOINT_SLICE, NS, endpoint_slice("nginx-abc", "shadow"))
    assert switch.wait_endpoints(
        cluster, NS, "nginx", lambda ready: plan.only_shadow(ready, "shadow"), timeout=1
    )
    assert not switch.wait_endpoints(
        cluster, NS, "nginx", lambda ready: "other" in ready, timeout=0.2
    )


def test_wait_endpoints_follows_events_after_the_list(cluster: FakeCluster) -> None:
    cluster.create(Kind.ENDPOINT_SLICE, NS, endpoint_slice("nginx-abc", "a"))
    original_watch = cluster.watch

    def watch_after_a_change(*args: Any, **kwargs: Any) -> Iterator[Any]:
        # The slice changes between the list and the watch: the watch replays it.
        if cluster.names(Kind.ENDPOINT_SLICE, NS) != ["nginx-def"]:
            cluster.delete(Kind.ENDPOINT_SLICE, NS, "nginx-abc")
            cluster.create(Kind.ENDPOINT_SLICE, NS, endpoint_slice("nginx-def", "shadow"))
        return original_watch(*args, **kwargs)

    cluster.watch = watch_after_a_change  # type: ignore[method-assign]
    assert switch.wait_endpoints(
        cluster, NS, "nginx", lambda ready: plan.only_shadow(ready, "shadow"), timeout=1
    )


def test_ready_pods_skips_unready_and_terminating(cluster: FakeCluster) -> None:
    def pod(name: str, ready: str) -> JsonObject:
        meta: JsonObject = {"name": name, "namespace": NS, "labels": {"app": "nginx"}}
        return {"metadata": meta, "status": {"conditions": [{"type": "Ready", "status": ready}]}}

    for body in (pod("a", "True"), pod("b", "False"), pod("c", "True")):
        cluster.create(Kind.POD, NS, body)
    terminating = {"metadata": {"deletionTimestamp": "2026-11-27T12:00:00Z"}}
    cluster.patch(Kind.POD, NS, "c", terminating)
    assert switch.ready_pods(cluster, NS, {"app": "nginx"}) == ["a"]


def test_namespace_sessions_see_the_shadow(cluster: FakeCluster) -> None:
    start_shadow(cluster, "s0000001")
    (view,) = switch.namespace_sessions(cluster, NS)
    assert view.session_id == "s0000001"
    assert view.role is Role.EXCHANGE
    assert labels.MANAGED_SELECTOR


def test_rewrite_changes_only_what_this_session_holds(cluster: FakeCluster) -> None:
    start_shadow(cluster, "s0000001")
    take(cluster, "s0000001")
    lock = plan.lock_for("s0000001", "alice@lap", cluster.clock())
    rewritten = switch.rewrite(
        cluster,
        Kind.SERVICE,
        NS,
        "nginx",
        "s0000001",
        lambda current: plan.relocked_service(current, lock),
    )
    assert rewritten["spec"]["selector"] == {"app": "nginx"}
    assert modify.modifier_session(rewritten) == "s0000001"
    with pytest.raises(LockLost):
        switch.rewrite(cluster, Kind.SERVICE, NS, "nginx", "s0000002", lambda current: current)
