"""Keeping a redirect in place."""

from __future__ import annotations

import itertools
from typing import Any

from ktpy.cluster import guard, modify, redirect
from ktpy.cluster.api import Kind
from ktpy.cluster.guard import GuardAction
from tests.unit.cluster.objects import user_service
from tests.unit.cluster.redirects import (
    NS,
    held,
    start_shadow,
    take,
)
from tests.unit.fakes import FakeCluster

# --- the guard ------------------------------------------------------------------------------

WANTED = redirect.selector_changes("s1")


def verdict(body: dict[str, Any] | None) -> guard.GuardVerdict:
    return guard.guard_verdict(body, session_id="s1", wanted=WANTED, what="service 'nginx'")


def test_our_change_in_place_is_kept() -> None:
    assert verdict(held()).action is GuardAction.KEEP


def test_an_edited_selector_is_put_back_keeping_everything_else() -> None:
    edited = held()
    edited["spec"]["selector"] = {"app": "someone"}
    edited["metadata"]["annotations"]["team"] = "web"
    result = verdict(edited)
    assert result.action is GuardAction.REAPPLY
    assert result.edited == ("/spec/selector",)
    assert result.body is not None
    assert result.body["spec"]["selector"] == redirect.exchange_selector("s1")
    assert result.body["metadata"]["annotations"]["team"] == "web"
    # The recorded original is still the user's, not the edit.
    assert modify.restored_body(result.body)["spec"]["selector"] == {"app": "nginx"}


def test_a_restored_service_means_the_lock_is_lost() -> None:
    result = verdict(user_service())
    assert result.action is GuardAction.LOST
    assert "restored by someone else" in result.reason


def test_a_taken_over_service_means_the_lock_is_lost() -> None:
    result = verdict(held("s9"))
    assert result.action is GuardAction.LOST
    assert "taken over by ktpy session s9 of alice@lap" in result.reason


def test_a_deleted_service_means_the_lock_is_lost() -> None:
    assert verdict(None).action is GuardAction.LOST


def guard_for(cluster: FakeCluster, session: str) -> guard.Guard:
    body = cluster.get(Kind.SERVICE, NS, "nginx")
    return guard.Guard(
        cluster,
        Kind.SERVICE,
        NS,
        "nginx",
        session_id=session,
        wanted=redirect.selector_changes(session),
        body=body,
    )


def test_the_guard_puts_the_selector_back_then_stops_when_restored(cluster: FakeCluster) -> None:
    start_shadow(cluster, "s0000001")
    take(cluster, "s0000001")
    guard = guard_for(cluster, "s0000001")
    edited = cluster.get(Kind.SERVICE, NS, "nginx")
    edited["spec"]["selector"] = {"app": "other"}
    cluster.replace(Kind.SERVICE, NS, "nginx", edited)
    steps = guard.steps()
    for _ in itertools.islice(steps, 5):  # the body it wrote, then the edit
        if guard.reapplied:
            break
    assert guard.reapplied == 1
    assert cluster.get(Kind.SERVICE, NS, "nginx")["spec"]["selector"] == redirect.exchange_selector(
        "s0000001"
    )
    assert not guard.lost.is_set()
    # ktpy recover (or clean) elsewhere: the guard gives up instead of fighting.
    redirect.restore(cluster, Kind.SERVICE, NS, "nginx", None, anyone=True)
    assert len(list(itertools.islice(steps, 5))) < 5  # judged lost, then stops by itself
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
    assert list(guard.steps()) == []  # follows nothing once stopped
    guard._judge(cluster.get(Kind.SERVICE, NS, "nginx"))
    assert guard.reapplied == 0
