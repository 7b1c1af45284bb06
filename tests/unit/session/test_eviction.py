"""The decision over a shadow pod's end, scripted: evicted pods are replaced, any other
end loses the session."""

from __future__ import annotations

from typing import Any

from ktpy.session.eviction import (
    Lose,
    PodSeen,
    Replace,
    Replaced,
    ReplaceFailed,
    ShadowWatch,
    State,
    disruption,
)
from tests.unit.playbook import Placeholder, Playbook

NAME = "echo-kt-exchange-ab12c"


def pod(uid: str = "u1", *, deleting: bool = False, phase: str = "Running", **marks: str) -> Any:
    """The shadow pod as a watch shows it; ``marks``: a DisruptionTarget reason."""
    conditions = [{"type": "Ready", "status": "True"}]
    if "reason" in marks:
        conditions.append({"type": "DisruptionTarget", "status": "True", "reason": marks["reason"]})
    meta: dict[str, Any] = {"name": NAME, "uid": uid, "labels": {"app": "echo"}}
    if deleting:
        meta["deletionTimestamp"] = "2026-12-07T06:00:00Z"
    return {"metadata": meta, "status": {"phase": phase, "conditions": conditions}}


def test_a_serving_pod_and_its_changes_ask_for_nothing() -> None:
    watch = ShadowWatch(NAME, "u1")
    assert Playbook(watch) >> PodSeen(pod()) >> PodSeen(pod())
    assert watch.state is State.SERVING


def test_an_evicted_pod_is_replaced_and_the_new_one_is_then_watched() -> None:
    watch = ShadowWatch(NAME, "u1")
    replace = Placeholder(Replace)
    assert (
        Playbook(watch)
        >> PodSeen(pod(reason="EvictionByEvictionAPI"))  # the condition comes first
        >> PodSeen(pod(deleting=True, reason="EvictionByEvictionAPI"))
        << replace
        # While the replacer works: the old pod's last events and the new one starting.
        >> PodSeen(None)
        >> PodSeen(pod("u2"))
        >> Replaced("u2")
        >> PodSeen(pod("u2"))
        >> PodSeen(pod("u1", deleting=True))  # a late event of the old pod: nothing
    )
    assert replace().old["metadata"]["uid"] == "u1"
    assert replace().old["metadata"]["labels"] == {"app": "echo"}  # the labels to keep
    assert "evicted (EvictionByEvictionAPI)" in replace().why
    assert (watch.uid, watch.replacements, watch.state) == ("u2", 1, State.SERVING)


def test_a_pod_evicted_twice_is_replaced_twice() -> None:
    watch = ShadowWatch(NAME, "u1")
    assert (
        Playbook(watch)
        >> PodSeen(pod(deleting=True, reason="EvictionByEvictionAPI"))
        << Placeholder(Replace)
        >> Replaced("u2")
        >> PodSeen(pod("u2", deleting=True, reason="PreemptionByScheduler"))
        << Placeholder(Replace)
        >> Replaced("u3")
    )
    assert watch.replacements == 2


def test_a_pod_deleted_by_a_person_loses_the_session_naming_what_happened() -> None:
    lose = Placeholder(Lose)
    assert Playbook(ShadowWatch(NAME, "u1")) >> PodSeen(pod(deleting=True)) << lose
    assert lose().reason == (
        f"shadow pod {NAME} was deleted by someone, not evicted (no DisruptionTarget condition)"
    )


def test_a_pod_gone_at_once_is_judged_by_its_last_body() -> None:
    """A forced delete (grace 0) shows no deletionTimestamp before the pod is gone."""
    assert (
        Playbook(ShadowWatch(NAME, "u1"))
        >> PodSeen(pod(reason="EvictionByEvictionAPI"))
        >> PodSeen(None)
        << Placeholder(Replace)
    )
    assert Playbook(ShadowWatch(NAME, "u1")) >> PodSeen(pod()) >> PodSeen(None) << Placeholder(Lose)


def test_another_pod_under_the_name_means_ours_is_gone() -> None:
    assert Playbook(ShadowWatch(NAME, "u1")) >> PodSeen(pod("other")) << Placeholder(Lose)


def test_a_pod_failed_by_the_kubelets_node_pressure_eviction_is_replaced() -> None:
    failed = pod(phase="Failed", reason="TerminationByKubelet")
    assert Playbook(ShadowWatch(NAME, "u1")) >> PodSeen(failed) << Placeholder(Replace)
    lose = Placeholder(Lose)
    assert Playbook(ShadowWatch(NAME, "u1")) >> PodSeen(pod(phase="Failed")) << lose
    assert "stopped (phase Failed) without being evicted" in lose().reason


def test_a_failed_replacement_loses_the_session_and_nothing_follows() -> None:
    lose = Placeholder(Lose)
    assert (
        Playbook(ShadowWatch(NAME, "u1"))
        >> PodSeen(pod(deleting=True, reason="EvictionByEvictionAPI"))
        << Placeholder(Replace)
        >> ReplaceFailed("0/1 nodes are available")
        << lose
        >> PodSeen(None)
        >> Replaced("u9")
    )
    assert lose().reason == (
        f"shadow pod {NAME} was evicted and no new one serves: 0/1 nodes are available"
    )


def test_only_a_true_disruption_target_counts() -> None:
    assert disruption(pod(reason="DeletionByTaintManager")) == "DeletionByTaintManager"
    assert disruption(pod()) is None
    false = pod()
    false["status"]["conditions"].append({"type": "DisruptionTarget", "status": "False"})
    assert disruption(false) is None
    assert disruption({}) is None
