"""The bodies of a redirect and its restore, and the writes that carry them out."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from ktpy.cluster import inventory, labels, modify, redirect, waits
from ktpy.cluster import lock as locks
from ktpy.cluster.api import Kind
from ktpy.cluster.labels import Lock
from ktpy.cluster.modify import Restored
from ktpy.errors import (
    LockLost,
    UsageProblem,
)
from tests.unit.cluster.objects import user_service
from tests.unit.cluster.redirects import (
    NOW,
    NS,
    held,
    start_shadow,
    take,
)
from tests.unit.fakes import FakeCluster

# --- the changes ----------------------------------------------------------------------------


def test_the_switch_replaces_the_selector_and_records_it_with_the_lock() -> None:
    service = user_service(selector={"app": "nginx", "tier": "web"})
    lock = locks.lock_for("s1", "alice@lap", NOW)
    switched = redirect.switched_service(service, lock)
    assert switched["spec"]["selector"] == {"ktpy.dev/role": "exchange", "ktpy.dev/session": "s1"}
    assert modify.lock_of(switched) == lock
    assert switched["metadata"]["resourceVersion"] == "41"  # the write is conditional
    assert redirect.restoration(switched, "s1") == Restored(service)


def test_a_restoration_only_undoes_our_own_change() -> None:
    assert redirect.restoration(held("s1"), "s2") is None
    assert redirect.restoration(user_service(), "s1") is None


def test_scale_mode_locks_the_service_without_changing_it() -> None:
    service = user_service()
    locked = redirect.locked_service(service, locks.lock_for("s1", "alice@lap", NOW))
    assert locked["spec"] == service["spec"]
    assert modify.modifier_session(locked) == "s1"
    assert redirect.restoration(locked, "s1") == Restored(service)


def test_scale_mode_records_and_restores_the_replicas() -> None:
    deployment = {"kind": "Deployment", "metadata": {"name": "web"}, "spec": {"replicas": 3}}
    scaled = redirect.scaled_deployment(deployment, "s1")
    assert scaled["spec"]["replicas"] == 0
    assert redirect.restoration(scaled, "s1") == Restored(deployment)


def test_switch_conditions() -> None:
    assert redirect.only_shadow(frozenset({"shadow"}), "shadow")
    assert not redirect.only_shadow(frozenset({"shadow", "a"}), "shadow")
    assert redirect.back_to_original(frozenset({"a"}), "shadow", ["a", "b"])
    assert not redirect.back_to_original(frozenset({"a", "shadow"}), "shadow", ["a"])
    assert not redirect.back_to_original(frozenset(), "shadow", ["a"])
    assert redirect.back_to_original(frozenset(), "shadow", [])


# --- scale mode -----------------------------------------------------------------------------


def deployment(name: str, template_labels: dict[str, str], replicas: int = 2) -> dict[str, Any]:
    return {
        "kind": "Deployment",
        "metadata": {"name": name, "generation": 3},
        "spec": {"replicas": replicas, "template": {"metadata": {"labels": template_labels}}},
    }


def test_the_backing_deployment_is_the_one_whose_pods_the_service_selects() -> None:
    web = deployment("web", {"app": "nginx", "pod-template-hash": "abc"})
    other = deployment("other", {"app": "other"})
    assert (
        redirect.backing_deployment("nginx", {"app": "nginx"}, [other, web])["metadata"]["name"]
        == "web"
    )
    with pytest.raises(UsageProblem, match="no Deployment"):
        redirect.backing_deployment("nginx", {"app": "nginx"}, [other])
    with pytest.raises(UsageProblem, match=r"several Deployments \(a, web\)"):
        redirect.backing_deployment(
            "nginx", {"app": "nginx"}, [web, deployment("a", {"app": "nginx"})]
        )


def test_deploy_slash_name_stands_for_the_one_service_that_selects_its_pods() -> None:
    web = deployment("web", {"app": "nginx", "pod-template-hash": "abc"})
    nginx = user_service("nginx", {"app": "nginx"})
    other = user_service("other", {"app": "other"})
    headless_no_selector = user_service("external", {})
    assert redirect.service_of_deployment(web, [other, nginx, headless_no_selector]) == "nginx"
    with pytest.raises(UsageProblem, match="no Service select its pods"):
        redirect.service_of_deployment(web, [other, headless_no_selector])
    with pytest.raises(UsageProblem, match=r"several Services \(a, nginx\)"):
        redirect.service_of_deployment(web, [nginx, user_service("a", {"app": "nginx"})])


def test_the_shadow_takes_the_template_labels_but_never_the_hash_or_ktpys_keys() -> None:
    web = deployment(
        "web",
        {"app": "nginx", "pod-template-hash": "abc", labels.MANAGED_BY: "Helm", labels.ROLE: "x"},
    )
    assert redirect.template_labels(web) == {"app": "nginx"}


def test_a_deployment_is_settled_when_every_wanted_replica_is_ready() -> None:
    web = deployment("web", {}, replicas=2)
    web["status"] = {"observedGeneration": 3, "updatedReplicas": 2, "readyReplicas": 2,
                     "replicas": 2}  # fmt: skip
    assert waits.deployment_settled(web)
    old = copy.deepcopy(web)
    old["status"]["observedGeneration"] = 2
    assert not waits.deployment_settled(old)
    surplus = copy.deepcopy(web)
    surplus["status"]["replicas"] = 3
    assert not waits.deployment_settled(surplus)
    assert waits.replicas_of({"spec": {}}) == 1


def test_label_patches_add_and_remove() -> None:
    assert redirect.label_patch({"app": "x"}) == {"metadata": {"labels": {"app": "x"}}}
    assert redirect.label_patch({"app": "x"}, remove=True) == {
        "metadata": {"labels": {"app": None}}
    }


def test_the_lock_on_the_object_is_plain_json() -> None:
    lock = Lock.decode(held()["metadata"]["annotations"][labels.LOCK])
    assert json.loads(lock.encode())["owner"] == "alice@lap"


def test_the_original_selector_is_the_recorded_one_while_switched() -> None:
    service = user_service(selector={"app": "nginx", "tier": "web"})
    assert redirect.original_selector(service) == {"app": "nginx", "tier": "web"}
    switched = redirect.switched_service(service, locks.lock_for("s1", "alice@lap", NOW))
    assert redirect.original_selector(switched) == {"app": "nginx", "tier": "web"}
    locked = redirect.locked_service(service, locks.lock_for("s1", "alice@lap", NOW))
    assert redirect.original_selector(locked) == {"app": "nginx", "tier": "web"}


def test_selects_pods_of_and_the_template_spec() -> None:
    web = deployment("web", {"app": "nginx", "tier": "web"})
    web["spec"]["template"]["spec"] = {"containers": []}
    assert redirect.selects_pods_of({"app": "nginx"}, web)
    assert not redirect.selects_pods_of({"app": "other"}, web)
    assert not redirect.selects_pods_of({}, web)
    assert redirect.template_spec(web) == {"containers": []}
    assert redirect.template_spec({}) == {}


def test_scale_mode_relocks_the_service_with_its_own_selector() -> None:
    service = user_service(selector={"app": "nginx"})
    lock = locks.lock_for("s1", "alice@lap", NOW)
    relocked = redirect.relocked_service(redirect.switched_service(service, lock), lock)
    assert relocked["spec"]["selector"] == {"app": "nginx"}
    assert modify.lock_of(relocked) == lock
    assert redirect.restoration(relocked, "s1") == Restored(service)


def test_restore_leaves_someone_elses_change_alone(cluster: FakeCluster) -> None:
    start_shadow(cluster, "s0000001")
    take(cluster, "s0000001")
    assert redirect.restore(cluster, Kind.SERVICE, NS, "nginx", "s0000002") is None
    assert redirect.restore(cluster, Kind.SERVICE, NS, "missing", "s0000001") is None
    assert redirect.restore(cluster, Kind.SERVICE, NS, "nginx", "s0000001") is not None
    assert not modify.is_modified(cluster.get(Kind.SERVICE, NS, "nginx"))


def test_rewrite_changes_only_what_this_session_holds(cluster: FakeCluster) -> None:
    start_shadow(cluster, "s0000001")
    take(cluster, "s0000001")
    lock = locks.lock_for("s0000001", "alice@lap", cluster.clock())
    rewritten = redirect.rewrite(
        cluster,
        Kind.SERVICE,
        NS,
        "nginx",
        "s0000001",
        lambda current: redirect.relocked_service(current, lock),
    )
    assert rewritten["spec"]["selector"] == {"app": "nginx"}
    assert modify.modifier_session(rewritten) == "s0000001"
    with pytest.raises(LockLost):
        redirect.rewrite(cluster, Kind.SERVICE, NS, "nginx", "s0000002", lambda current: current)


def test_deploy_slash_name_is_resolved_against_the_cluster() -> None:
    cluster = FakeCluster()
    web = deployment("web", {"app": "nginx"})
    web["metadata"]["namespace"] = "dev"
    cluster.put(Kind.DEPLOYMENT, web)
    cluster.put(Kind.SERVICE, user_service("nginx", {"app": "nginx"}))
    cluster.put(Kind.SERVICE, user_service("other", {"app": "other"}))
    assert inventory.service_of_deployment(cluster, "dev", "web") == "nginx"
    with pytest.raises(UsageProblem, match="deployment 'api' not found in namespace 'dev'"):
        inventory.service_of_deployment(cluster, "dev", "api")
