"""Keeping a redirect in place."""

from __future__ import annotations

import copy
import itertools
from typing import Any

from ktpy.cluster import guard, modify, redirect
from ktpy.cluster.api import Kind
from ktpy.cluster.guard import Fight, GuardAction
from ktpy.errors import ContestedField, LockLost
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
    # Their value becomes the recorded original: the restore gives them what they set.
    restored = modify.restore_plan(result.body)
    assert restored.body["spec"]["selector"] == {"app": "someone"}
    assert restored.left == (modify.LeftField("/spec/selector", "someone else", adopted=True),)


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


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def guard_for(cluster: FakeCluster, session: str, clock: Clock | None = None) -> guard.Guard:
    body = cluster.get(Kind.SERVICE, NS, "nginx")
    return guard.Guard(
        cluster,
        Kind.SERVICE,
        NS,
        "nginx",
        session_id=session,
        wanted=redirect.selector_changes(session),
        body=body,
        fight=guard.Fight(backoff=(0.0,)),  # no pause in a unit test: the clock is scripted
        clock=clock or Clock(),
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
    assert isinstance(guard.error, LockLost)
    # The restore gave the selector as the other writer last set it.
    assert cluster.get(Kind.SERVICE, NS, "nginx")["spec"]["selector"] == {"app": "other"}


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


# --- a writer that fights back ---------------------------------------------------------------


def test_a_fight_allows_three_reassertions_a_window_with_growing_pauses() -> None:
    fight = Fight()
    pauses = []
    for now in (0.0, 1.0, 2.0):
        assert fight.may_reassert(now)
        pauses.append(fight.pause(now))
        fight.reasserted(now)
    assert pauses == [0.5, 1.0, 2.0]
    assert not fight.may_reassert(3.0)
    assert not fight.may_reassert(59.9)
    assert fight.may_reassert(60.5)  # the first one left the window


def revert(cluster: FakeCluster, manager: str, at: str) -> None:
    """What a GitOps controller's self-heal does: its selector back, under its name."""
    body = cluster.get(Kind.SERVICE, NS, "nginx")
    body["spec"]["selector"] = {"app": "nginx"}
    body["metadata"]["managedFields"] = [
        {
            "manager": "ktpy",
            "operation": "Update",
            "time": "2026-11-27T12:00:00Z",
            "fieldsV1": {"f:metadata": {"f:labels": {}}},
        },
        {
            "manager": manager,
            "operation": "Update",
            "time": at,
            "fieldsV1": {"f:spec": {"f:selector": {"f:app": {}}}},
        },
    ]
    cluster.replace(Kind.SERVICE, NS, "nginx", body)


def test_a_writer_that_keeps_reverting_wins_after_three_reassertions(
    cluster: FakeCluster,
) -> None:
    start_shadow(cluster, "s0000001")
    take(cluster, "s0000001")
    clock = Clock()
    held = guard_for(cluster, "s0000001", clock)
    steps = held.steps()
    next(steps)  # the body it wrote
    for second in range(1, 5):
        clock.now += 1.0
        revert(cluster, "argocd-controller", f"2026-11-27T12:00:{second:02d}Z")
        for _ in itertools.islice(steps, 2):  # the revert (judged), ktpy's own write
            if held.lost.is_set() or held.reapplied == second:
                break
    assert held.reapplied == 3
    assert held.lost.is_set()
    assert isinstance(held.error, ContestedField)
    assert held.error.exit_code == 23
    message = held.error.format_message()
    assert message.startswith("argocd-controller keeps setting /spec/selector of service 'nginx'")
    assert "3 times in 3s" in message
    assert "--mode scale" in held.error.hint
    # The writer's last word stands; the restore leaves it and names it.
    service = cluster.get(Kind.SERVICE, NS, "nginx")
    assert service["spec"]["selector"] == {"app": "nginx"}
    restored = redirect.restore(cluster, Kind.SERVICE, NS, "nginx", "s0000001")
    assert restored is not None
    assert restored.left == (modify.LeftField("/spec/selector", "argocd-controller"),)
    assert restored.body["spec"]["selector"] == {"app": "nginx"}
    assert not modify.is_modified(restored.body)
    line = redirect.left_line(restored.left, "service nginx")
    assert line == (
        "/spec/selector of service nginx is left as argocd-controller set it "
        "(changed while ktpy held it)"
    )


def test_edits_spread_beyond_the_window_are_each_put_back(cluster: FakeCluster) -> None:
    start_shadow(cluster, "s0000001")
    take(cluster, "s0000001")
    clock = Clock()
    held = guard_for(cluster, "s0000001", clock)
    steps = held.steps()
    next(steps)
    for second in range(1, 6):
        clock.now += 30.0
        revert(cluster, "helm", f"2026-11-27T12:0{second}:00Z")
        for _ in itertools.islice(steps, 2):
            if held.reapplied == second:
                break
    assert held.reapplied == 5
    assert not held.lost.is_set()


def test_a_merge_patch_into_ktpys_selector_is_adopted_without_ktpys_labels() -> None:
    edited = held()
    edited["spec"]["selector"] = {**redirect.exchange_selector("s1"), "tier": "web"}
    result = verdict(edited)
    assert result.action is GuardAction.REAPPLY
    assert result.body is not None
    assert modify.restored_body(result.body)["spec"]["selector"] == {"tier": "web"}


def test_the_guard_reads_again_after_its_pause_and_writes_nothing_if_the_edit_is_gone(
    cluster: FakeCluster,
) -> None:
    start_shadow(cluster, "s0000001")
    take(cluster, "s0000001")
    held = guard_for(cluster, "s0000001")
    ours = cluster.get(Kind.SERVICE, NS, "nginx")
    edited = copy.deepcopy(ours)
    edited["spec"]["selector"] = {"app": "other"}
    held._judge(edited)  # an old version; the object itself still holds ktpy's value
    assert held.reapplied == 0
    assert cluster.get(Kind.SERVICE, NS, "nginx") == ours
