"""The pure decisions of ktpy exchange: port mapping, the lock, the change bodies,
the guard's verdict, EndpointSlices, scale mode."""

import copy
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from ktpy.cluster import exchange as plan
from ktpy.cluster import labels, modify
from ktpy.cluster.exchange import Decision, Forward, GuardAction, ServicePortEntry
from ktpy.cluster.heartbeat import LocalProcess, sessions_from_objects
from ktpy.cluster.labels import Lock, PidStart, Role
from ktpy.errors import (
    AlreadyExchanged,
    NoSelector,
    PortNotInService,
    UnresolvedTargetPort,
    UsageProblem,
)
from ktpy.params import PortMapping, parse_expose
from tests.unit.cluster.objects import created, user_service

NOW = datetime(2026, 11, 27, 12, 0, 0, tzinfo=UTC)
STALE_AFTER = timedelta(minutes=3)

# The test bed's echo Service: port 80 to the named target port http (8080 in the
# pods), port 9090 by number.
ECHO = (
    ServicePortEntry(80, "http", "http"),
    ServicePortEntry(9090, 9090, "alt"),
)
NAMED = {"http": 8080}


def forwards(text: str, entries: tuple[ServicePortEntry, ...] = ECHO) -> tuple[Forward, ...]:
    return plan.plan_forwards("echo", entries, parse_expose(text) if text else (), NAMED)


# --- ports ---------------------------------------------------------------------------------


def test_service_ports_read_numbers_names_and_defaults() -> None:
    service = user_service()
    service["spec"]["ports"] = [
        {"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"},
        {"port": 53, "targetPort": "5353", "protocol": "UDP"},
        {"port": 9000},
    ]
    assert plan.service_ports(service) == (
        ServicePortEntry(80, "http", "http", "TCP"),
        ServicePortEntry(53, 5353, None, "UDP"),
        ServicePortEntry(9000, 9000, None, "TCP"),
    )


def test_remote_as_service_port_follows_its_named_target_port() -> None:
    assert forwards("3001:80") == (Forward(3001, 8080, 80, "http", "http"),)


def test_remote_as_target_port_number_resolved_through_the_pods() -> None:
    assert forwards("3001:8080") == (Forward(3001, 8080, 80, "http", "http"),)


def test_remote_as_port_name_and_as_target_port_name() -> None:
    entries = (ServicePortEntry(80, "web-api", "web"), ServicePortEntry(81, 7000, "other"))
    named = {"web-api": 8081}
    by_service_name = plan.plan_forwards("s", entries, [PortMapping(3001, "web")], named)
    by_target_name = plan.plan_forwards("s", entries, [PortMapping(3001, "web-api")], named)
    assert by_service_name == by_target_name == (Forward(3001, 8081, 80, "web", "web-api"),)


def test_a_number_that_is_a_port_and_another_entrys_target_port_means_the_service_port() -> None:
    entries = (ServicePortEntry(80, 8080, "a"), ServicePortEntry(8080, 9090, "b"))
    assert plan.plan_forwards("s", entries, [PortMapping(3001, 8080)], {}) == (
        Forward(3001, 9090, 8080, "b"),
    )


def test_a_name_that_is_a_port_name_and_another_entrys_target_name_means_the_port() -> None:
    entries = (ServicePortEntry(80, "api", "web"), ServicePortEntry(81, 7000, "api"))
    assert plan.plan_forwards("s", entries, [PortMapping(3001, "api")], {"api": 8000}) == (
        Forward(3001, 7000, 81, "api"),
    )


def test_a_bare_port_is_the_same_number_on_both_sides() -> None:
    assert forwards("9090") == (Forward(9090, 9090, 9090, "alt"),)


def test_without_expose_each_target_port_goes_to_the_same_local_number() -> None:
    assert forwards("") == (
        Forward(8080, 8080, 80, "http", "http"),
        Forward(9090, 9090, 9090, "alt"),
    )


def test_several_ports_at_once() -> None:
    assert forwards("3001:http,3002:9090") == (
        Forward(3001, 8080, 80, "http", "http"),
        Forward(3002, 9090, 9090, "alt"),
    )


def test_the_shadow_declares_the_named_target_port() -> None:
    (forward,) = forwards("3001:80")
    assert forward.shadow.name == "http"
    assert forward.shadow.port == 8080
    assert forward.describe() == "service port 80 (http) -> shadow port http=8080 -> local 3001"


def test_a_port_the_service_lacks_is_refused_with_what_it_has() -> None:
    with pytest.raises(PortNotInService) as caught:
        forwards("3001:81")
    assert caught.value.exit_code == 13
    assert "has no port 81" in caught.value.message
    assert "80 (http) -> http" in caught.value.message


def test_an_unknown_name_is_refused() -> None:
    with pytest.raises(PortNotInService, match="'grpc'"):
        forwards("3001:grpc")


def test_a_named_target_port_no_pod_declares_is_refused() -> None:
    with pytest.raises(UnresolvedTargetPort) as caught:
        plan.plan_forwards("echo", ECHO, [PortMapping(3001, 80)], {})
    assert caught.value.exit_code == 15
    assert "target port 'http'" in caught.value.message


def test_udp_only_ports_are_refused_and_skipped_by_default() -> None:
    entries = (ServicePortEntry(53, 53, "dns", "UDP"), ServicePortEntry(80, 8080, "web"))
    with pytest.raises(UsageProblem, match="UDP"):
        plan.plan_forwards("s", entries, [PortMapping(3001, 53)], {})
    assert plan.plan_forwards("s", entries, [], {}) == (Forward(8080, 8080, 80, "web"),)
    with pytest.raises(UsageProblem, match="no TCP port"):
        plan.plan_forwards("s", entries[:1], [], {})


def test_a_tcp_twin_of_a_udp_port_is_taken() -> None:
    entries = (ServicePortEntry(53, 53, "dns", "UDP"), ServicePortEntry(53, 53, "dns-tcp"))
    assert plan.plan_forwards("s", entries, [PortMapping(5300, 53)], {}) == (
        Forward(5300, 53, 53, "dns-tcp"),
    )


def test_the_shadows_usual_port_numbers_and_names_are_a_services_to_use() -> None:
    # The shadow moves its own sshd and dnsmasq instead (ShadowSpec, own_ports_avoiding).
    assert plan.plan_forwards("s", (ServicePortEntry(22, 2222),), [PortMapping(3001, 22)], {}) == (
        Forward(3001, 2222, 22),
    )
    assert plan.plan_forwards("s", (ServicePortEntry(22, "ssh"),), [], {"ssh": 22}) == (
        Forward(22, 22, 22, None, "ssh"),
    )


def test_two_service_ports_on_one_target_share_the_listener() -> None:
    entries = (ServicePortEntry(80, 8080, "a"), ServicePortEntry(8000, 8080, "b"))
    assert plan.plan_forwards("s", entries, [], {}) == (Forward(8080, 8080, 80, "a"),)
    with pytest.raises(UsageProblem, match="both go to target port 8080"):
        plan.plan_forwards("s", entries, [PortMapping(3001, 80), PortMapping(3002, 8000)], {})


def test_unexposed_ports_are_named() -> None:
    assert plan.unexposed_ports(ECHO, forwards("3001:80")) == [ECHO[1]]
    assert plan.unexposed_ports(ECHO, forwards("")) == []


def test_named_container_ports_first_seen_wins_tcp_only() -> None:
    specs = [
        {"containers": [{"ports": [{"name": "http", "containerPort": 8080}]}]},
        {"containers": [{"ports": [{"name": "http", "containerPort": 9999}]}]},
        {"containers": [{"ports": [{"name": "dns", "containerPort": 53, "protocol": "UDP"}]}]},
        {"containers": [{"name": "no-ports"}]},
    ]
    assert plan.named_container_ports(specs) == {"http": 8080}


def test_a_service_without_selector_is_refused() -> None:
    service = user_service(selector={})
    with pytest.raises(NoSelector) as caught:
        plan.check_selector(service)
    assert caught.value.exit_code == 14
    assert plan.check_selector(user_service()) == {"app": "nginx"}


# --- the lock -------------------------------------------------------------------------------


def held(session: str = "s1", since: datetime = NOW - timedelta(seconds=42)) -> dict[str, Any]:
    lock = Lock(session, "alice@lap", Role.EXCHANGE, since)
    return plan.switched_service(user_service(), lock)


def shadow_objects(
    session: str, heartbeat: datetime, pid: PidStart | None = None
) -> list[dict[str, Any]]:
    return [
        created(
            "Pod", f"nginx-kt-exchange-{session}", session,
            role=Role.EXCHANGE, heartbeat=heartbeat, pid_start=pid,
        ),
    ]  # fmt: skip


def judge(body: dict[str, Any], objects: list[dict[str, Any]], **kw: Any) -> plan.LockJudgement:
    return plan.judge_lock(
        body,
        sessions_from_objects(objects),
        me=kw.pop("me", "s2"),
        now=NOW,
        stale_after=STALE_AFTER,
        **kw,
    )


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


# --- the changes ----------------------------------------------------------------------------


def test_the_switch_replaces_the_selector_and_records_it_with_the_lock() -> None:
    service = user_service(selector={"app": "nginx", "tier": "web"})
    lock = plan.lock_for("s1", "alice@lap", NOW)
    switched = plan.switched_service(service, lock)
    assert switched["spec"]["selector"] == {"ktpy.dev/role": "exchange", "ktpy.dev/session": "s1"}
    assert modify.lock_of(switched) == lock
    assert switched["metadata"]["resourceVersion"] == "41"  # the write is conditional
    assert plan.restoration(switched, "s1") == service


def test_a_restoration_only_undoes_our_own_change() -> None:
    assert plan.restoration(held("s1"), "s2") is None
    assert plan.restoration(user_service(), "s1") is None


def test_scale_mode_locks_the_service_without_changing_it() -> None:
    service = user_service()
    locked = plan.locked_service(service, plan.lock_for("s1", "alice@lap", NOW))
    assert locked["spec"] == service["spec"]
    assert modify.modifier_session(locked) == "s1"
    assert plan.restoration(locked, "s1") == service


def test_scale_mode_records_and_restores_the_replicas() -> None:
    deployment = {"kind": "Deployment", "metadata": {"name": "web"}, "spec": {"replicas": 3}}
    scaled = plan.scaled_deployment(deployment, "s1")
    assert scaled["spec"]["replicas"] == 0
    assert plan.restoration(scaled, "s1") == deployment


# --- the guard ------------------------------------------------------------------------------

WANTED = plan.selector_changes("s1")


def verdict(body: dict[str, Any] | None) -> plan.GuardVerdict:
    return plan.guard_verdict(body, session_id="s1", wanted=WANTED, what="service 'nginx'")


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
    assert result.body["spec"]["selector"] == plan.exchange_selector("s1")
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


# --- endpoints ------------------------------------------------------------------------------


def endpoint_slice(*pods: tuple[str, bool | None]) -> dict[str, Any]:
    endpoints = []
    for name, ready in pods:
        conditions = {} if ready is None else {"ready": ready}
        endpoints.append({"targetRef": {"kind": "Pod", "name": name}, "conditions": conditions})
    return {"endpoints": endpoints}


def test_ready_endpoint_pods() -> None:
    slices = [
        endpoint_slice(("a", True), ("b", False)),
        endpoint_slice(("c", None)),
        {"endpoints": None},
        {"endpoints": [{"addresses": ["10.0.0.1"]}]},
    ]
    assert plan.ready_endpoint_pods(slices) == frozenset({"a", "c"})


def test_switch_conditions() -> None:
    assert plan.only_shadow(frozenset({"shadow"}), "shadow")
    assert not plan.only_shadow(frozenset({"shadow", "a"}), "shadow")
    assert plan.back_to_original(frozenset({"a"}), "shadow", ["a", "b"])
    assert not plan.back_to_original(frozenset({"a", "shadow"}), "shadow", ["a"])
    assert not plan.back_to_original(frozenset(), "shadow", ["a"])
    assert plan.back_to_original(frozenset(), "shadow", [])


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
        plan.backing_deployment("nginx", {"app": "nginx"}, [other, web])["metadata"]["name"]
        == "web"
    )
    with pytest.raises(UsageProblem, match="no Deployment"):
        plan.backing_deployment("nginx", {"app": "nginx"}, [other])
    with pytest.raises(UsageProblem, match=r"several Deployments \(a, web\)"):
        plan.backing_deployment("nginx", {"app": "nginx"}, [web, deployment("a", {"app": "nginx"})])


def test_the_shadow_takes_the_template_labels_but_never_the_hash_or_ktpys_keys() -> None:
    web = deployment(
        "web",
        {"app": "nginx", "pod-template-hash": "abc", labels.MANAGED_BY: "Helm", labels.ROLE: "x"},
    )
    assert plan.template_labels(web) == {"app": "nginx"}


def test_a_deployment_is_settled_when_every_wanted_replica_is_ready() -> None:
    web = deployment("web", {}, replicas=2)
    web["status"] = {"observedGeneration": 3, "updatedReplicas": 2, "readyReplicas": 2,
                     "replicas": 2}  # fmt: skip
    assert plan.deployment_settled(web)
    old = copy.deepcopy(web)
    old["status"]["observedGeneration"] = 2
    assert not plan.deployment_settled(old)
    surplus = copy.deepcopy(web)
    surplus["status"]["replicas"] = 3
    assert not plan.deployment_settled(surplus)
    assert plan.replicas_of({"spec": {}}) == 1


def test_label_patches_add_and_remove() -> None:
    assert plan.label_patch({"app": "x"}) == {"metadata": {"labels": {"app": "x"}}}
    assert plan.label_patch({"app": "x"}, remove=True) == {"metadata": {"labels": {"app": None}}}


def test_the_lock_on_the_object_is_plain_json() -> None:
    lock = Lock.decode(held()["metadata"]["annotations"][labels.LOCK])
    assert json.loads(lock.encode())["owner"] == "alice@lap"


def test_the_original_selector_is_the_recorded_one_while_switched() -> None:
    service = user_service(selector={"app": "nginx", "tier": "web"})
    assert plan.original_selector(service) == {"app": "nginx", "tier": "web"}
    switched = plan.switched_service(service, plan.lock_for("s1", "alice@lap", NOW))
    assert plan.original_selector(switched) == {"app": "nginx", "tier": "web"}
    locked = plan.locked_service(service, plan.lock_for("s1", "alice@lap", NOW))
    assert plan.original_selector(locked) == {"app": "nginx", "tier": "web"}


def test_selects_pods_of_and_the_template_spec() -> None:
    web = deployment("web", {"app": "nginx", "tier": "web"})
    web["spec"]["template"]["spec"] = {"containers": []}
    assert plan.selects_pods_of({"app": "nginx"}, web)
    assert not plan.selects_pods_of({"app": "other"}, web)
    assert not plan.selects_pods_of({}, web)
    assert plan.template_spec(web) == {"containers": []}
    assert plan.template_spec({}) == {}


def test_scale_mode_relocks_the_service_with_its_own_selector() -> None:
    service = user_service(selector={"app": "nginx"})
    lock = plan.lock_for("s1", "alice@lap", NOW)
    relocked = plan.relocked_service(plan.switched_service(service, lock), lock)
    assert relocked["spec"]["selector"] == {"app": "nginx"}
    assert modify.lock_of(relocked) == lock
    assert plan.restoration(relocked, "s1") == service
