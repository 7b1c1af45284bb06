"""Judging, taking and handing over the lock on a Service."""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest

from ktpy.cluster import lock as locks
from ktpy.cluster import modify, redirect
from ktpy.cluster.api import Kind
from ktpy.cluster.heartbeat import LocalProcess
from ktpy.cluster.labels import Lock, PidStart, Role
from ktpy.cluster.lock import Decision
from ktpy.errors import (
    AlreadyExchanged,
    ServiceNotFound,
)
from tests.unit.cluster.objects import user_service
from tests.unit.cluster.redirects import (
    NOW,
    NS,
    held,
    judge,
    shadow_objects,
    start_shadow,
    take,
    without_version,
)
from tests.unit.fakes import FakeCluster


def test_an_unmarked_service_is_free() -> None:
    assert judge(user_service(), []).decision is Decision.FREE


def test_our_own_lock_is_mine() -> None:
    assert judge(held("s2"), []).decision is Decision.MINE


def test_a_live_holder_is_refused_naming_owner_session_and_age() -> None:
    judgement = judge(held(), shadow_objects("s1", NOW - timedelta(seconds=10)))
    assert judgement.decision is Decision.HELD
    refusal = judgement.refusal("nginx", NOW)
    assert isinstance(refusal, AlreadyExchanged)
    assert refusal.exit_code == 20
    assert refusal.message == (
        "service 'nginx' is already exchanged by alice@lap, session s1 (since 42s ago)"
    )


def test_a_meshed_service_says_meshed() -> None:
    lock = Lock("s1", "bob@box", Role.MESH, NOW - timedelta(minutes=2))
    body = modify.modified_body(
        user_service(), [modify.FieldChange(("spec", "selector"), {})], session_id="s1", lock=lock
    )
    judgement = judge(body, shadow_objects("s1", NOW))
    assert "already meshed by bob@box" in judgement.refusal("nginx", NOW).message


def test_a_holder_with_an_old_heartbeat_is_stale() -> None:
    judgement = judge(held(), shadow_objects("s1", NOW - timedelta(minutes=5)))
    assert judgement.decision is Decision.STALE
    assert judgement.holder is not None
    assert judgement.holder.session == "s1"


def test_a_holder_whose_local_process_is_gone_is_taken_over_at_once() -> None:
    pid = PidStart(4242, 99, "boot")
    objects = shadow_objects("s1", NOW, pid)
    assert judge(held(), objects).decision is Decision.HELD
    gone = judge(held(), objects, check_local=lambda _: LocalProcess.GONE)
    assert gone.decision is Decision.STALE


def test_a_holder_without_objects_is_an_orphan() -> None:
    assert judge(held(), []).decision is Decision.STALE


def test_a_holder_in_another_namespace_does_not_count() -> None:
    objects = shadow_objects("s1", NOW)
    objects[0]["metadata"]["namespace"] = "elsewhere"
    assert judge(held(), objects).decision is Decision.STALE


def test_a_free_service_is_taken_in_one_conditional_write(cluster: FakeCluster) -> None:
    start_shadow(cluster, "s0000001")
    written = take(cluster, "s0000001")
    assert written["spec"]["selector"] == redirect.exchange_selector("s0000001")
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
    assert redirect.restore(cluster, Kind.SERVICE, NS, "nginx", winner) is not None
    assert without_version(cluster.get(Kind.SERVICE, NS, "nginx")) == without_version(original)


def test_a_dead_holder_is_restored_and_removed_before_the_take_over(cluster: FakeCluster) -> None:
    dead = start_shadow(cluster, "dead0001")
    take(cluster, "dead0001")
    cluster.clock.advance(timedelta(minutes=10))  # its heartbeat is long gone
    start_shadow(cluster, "live0001")
    seen: list[locks.Holder] = []
    written = take(cluster, "live0001", on_takeover=seen.append)
    assert [h.session for h in seen] == ["dead0001"]
    assert written["spec"]["selector"] == redirect.exchange_selector("live0001")
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
