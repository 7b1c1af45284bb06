"""The fake must behave like the API where ktpy depends on it; these pin that down,
and run the pure cluster modules against it the way the commands will."""

from datetime import timedelta

import pytest

from ktpy.cluster import labels, manifests, modify, sweep
from ktpy.cluster.api import (
    AlreadyExists,
    ClusterApi,
    Conflict,
    Gone,
    Invalid,
    Kind,
    NotFound,
    PatchType,
    WatchEventType,
)
from ktpy.cluster.labels import Lock, Role
from ktpy.cluster.manifests import SessionMeta, ShadowPodOptions, ShadowSecretOptions
from ktpy.cluster.modify import AlreadyModified, FieldChange
from ktpy.errors import Forbidden, PodSecurityRejected
from tests.unit.cluster.objects import user_service
from tests.unit.fakes import START, FakeCluster, merge_patch, selector_matches


@pytest.fixture
def cluster() -> FakeCluster:
    return FakeCluster()


def test_the_fake_implements_the_protocol(cluster: FakeCluster) -> None:
    assert isinstance(cluster, ClusterApi)


def test_create_get_list_delete(cluster: FakeCluster) -> None:
    made = cluster.create(Kind.SERVICE, "dev", user_service())
    assert made["metadata"]["uid"]
    assert made["metadata"]["creationTimestamp"] == "2026-11-27T12:00:00Z"
    assert cluster.get(Kind.SERVICE, "dev", "nginx")["spec"] == user_service()["spec"]
    with pytest.raises(AlreadyExists):
        cluster.create(Kind.SERVICE, "dev", user_service())
    listed = cluster.list_objects(Kind.SERVICE, "dev", label_selector="app=nginx")
    assert [i["metadata"]["name"] for i in listed.items] == ["nginx"]
    assert listed.items[0]["kind"] == "Service"
    assert cluster.list_objects(Kind.SERVICE, "other").items == ()
    assert cluster.list_objects(Kind.SERVICE, None).items[0]["metadata"]["name"] == "nginx"
    assert cluster.delete(Kind.SERVICE, "dev", "nginx") is True
    assert cluster.delete(Kind.SERVICE, "dev", "nginx") is False
    with pytest.raises(NotFound):
        cluster.get(Kind.SERVICE, "dev", "nginx")


def test_returned_bodies_are_copies(cluster: FakeCluster) -> None:
    made = cluster.create(Kind.SERVICE, "dev", user_service())
    made["spec"]["selector"]["app"] = "changed"
    assert cluster.get(Kind.SERVICE, "dev", "nginx")["spec"]["selector"] == {"app": "nginx"}


def test_replace_with_a_stale_version_conflicts(cluster: FakeCluster) -> None:
    first = cluster.create(Kind.SERVICE, "dev", user_service())
    first["spec"]["type"] = "NodePort"
    second = cluster.replace(Kind.SERVICE, "dev", "nginx", first)
    assert second["metadata"]["resourceVersion"] != first["metadata"]["resourceVersion"]
    with pytest.raises(Conflict):
        cluster.replace(Kind.SERVICE, "dev", "nginx", first)


def test_delete_with_a_uid_precondition(cluster: FakeCluster) -> None:
    old = cluster.create(Kind.SERVICE, "dev", user_service())
    cluster.delete(Kind.SERVICE, "dev", "nginx")
    cluster.create(Kind.SERVICE, "dev", user_service())
    with pytest.raises(Conflict, match="precondition"):
        cluster.delete(Kind.SERVICE, "dev", "nginx", uid=old["metadata"]["uid"])
    assert cluster.names(Kind.SERVICE, "dev") == ["nginx"]


def test_merge_and_json_patches(cluster: FakeCluster) -> None:
    cluster.create(Kind.SERVICE, "dev", user_service())
    patched = cluster.patch(Kind.SERVICE, "dev", "nginx", labels.heartbeat_patch(cluster.clock()))
    assert patched["metadata"]["annotations"][labels.HEARTBEAT] == "2026-11-27T12:00:00Z"
    ops = [{"op": "test", "path": "/spec/type", "value": "LoadBalancer"}]
    with pytest.raises(Invalid, match="test failed"):
        cluster.patch(Kind.SERVICE, "dev", "nginx", ops, patch_type=PatchType.JSON)
    ops = [{"op": "replace", "path": "/spec/type", "value": "NodePort"}]
    assert (
        cluster.patch(Kind.SERVICE, "dev", "nginx", ops, patch_type=PatchType.JSON)["spec"]["type"]
        == "NodePort"
    )


def test_merge_patch_rfc7386_examples() -> None:
    assert merge_patch({"a": "b"}, {"a": "c"}) == {"a": "c"}
    assert merge_patch({"a": "b"}, {"b": "c"}) == {"a": "b", "b": "c"}
    assert merge_patch({"a": "b"}, {"a": None}) == {}
    assert merge_patch({"a": [{"b": "c"}]}, {"a": [1]}) == {"a": [1]}
    assert merge_patch({"a": {"b": "c"}}, {"a": {"b": "d", "c": None}}) == {"a": {"b": "d"}}


@pytest.mark.parametrize(
    ("selector", "matches"),
    [
        ("app=web", True),
        ("app==web", True),
        ("app!=web", False),
        ("app", True),
        ("!app", False),
        ("tier", False),
        ("!tier", True),
        ("app=web,tier=fe", False),
        ("", True),
    ],
)
def test_label_selectors(selector: str, matches: bool) -> None:
    assert selector_matches(selector, {"app": "web"}) is matches


def test_watch_replays_changes_after_a_version(cluster: FakeCluster) -> None:
    start = cluster.list_objects(Kind.SERVICE, "dev").resource_version
    cluster.create(Kind.SERVICE, "dev", user_service())
    cluster.patch(Kind.SERVICE, "dev", "nginx", {"spec": {"type": "NodePort"}})
    cluster.create(Kind.SERVICE, "other", user_service(namespace="other"))
    cluster.delete(Kind.SERVICE, "dev", "nginx")
    events = list(cluster.watch(Kind.SERVICE, "dev", resource_version=start))
    assert [e.type for e in events] == [
        WatchEventType.ADDED,
        WatchEventType.MODIFIED,
        WatchEventType.DELETED,
    ]
    assert events[1].object["spec"]["type"] == "NodePort"
    cluster.compacted_before = int(events[-1].resource_version)
    with pytest.raises(Gone):
        list(cluster.watch(Kind.SERVICE, "dev", resource_version=start))


def test_injected_failures_and_forbidden_verbs(cluster: FakeCluster) -> None:
    cluster.fail_next("get", Kind.POD, NotFound("gone"))
    with pytest.raises(NotFound):
        cluster.get(Kind.POD, "dev", "p")
    cluster.forbid("list", Kind.NAMESPACE)
    with pytest.raises(Forbidden, match="not allowed to list namespaces"):
        cluster.namespaces()
    cluster.forbid("create", Kind.POD, "restricted")
    with pytest.raises(Forbidden):
        cluster.create(Kind.POD, "restricted", {"metadata": {"name": "p"}})


def test_server_time_is_the_fake_clock(cluster: FakeCluster) -> None:
    before = cluster.server_time()
    cluster.clock.advance(timedelta(minutes=5))
    assert cluster.server_time() - before == timedelta(minutes=5)


# --- the pure modules against the fake, as the commands will use them ---------

SESSION = SessionMeta("ab12cd34", Role.CONNECT, "alice@lap", START)


def start_shadow(cluster: FakeCluster, session: SessionMeta = SESSION) -> str:
    name = f"kt-connect-shadow-{session.session_id[:5]}"
    secret = manifests.shadow_secret(
        ShadowSecretOptions(name, "dev", session, "ssh-ed25519 AAAAc c\n", "PRIV", "ssh-ed25519 h")
    )
    cluster.create(Kind.SECRET, "dev", secret)
    pod = cluster.create(
        Kind.POD,
        "dev",
        manifests.shadow_pod(
            ShadowPodOptions(name, "dev", "ghcr.io/ktpy/shadow:0.1.0", session, name)
        ),
    )
    patch = manifests.secret_owner_patch(name, pod["metadata"]["uid"])
    cluster.patch(Kind.SECRET, "dev", name, dict(patch))
    return name


def test_deleting_the_shadow_pod_takes_its_secret(cluster: FakeCluster) -> None:
    name = start_shadow(cluster)
    assert cluster.names(Kind.SECRET, "dev") == [name]
    cluster.delete(Kind.POD, "dev", name)
    assert cluster.names(Kind.SECRET, "dev") == []


def test_pod_security_rejection_comes_from_create(cluster: FakeCluster) -> None:
    def admission(pod: dict[str, object]) -> None:
        raise PodSecurityRejected("violates PodSecurity restricted:latest")

    cluster.pod_admission = admission
    with pytest.raises(PodSecurityRejected):
        start_shadow(cluster)


def test_twenty_sessions_race_for_one_service_and_one_wins(cluster: FakeCluster) -> None:
    cluster.create(Kind.SERVICE, "dev", user_service())
    original = cluster.get(Kind.SERVICE, "dev", "nginx")
    seen = [cluster.get(Kind.SERVICE, "dev", "nginx") for _ in range(20)]
    winners, losers = [], []
    for number, snapshot in enumerate(seen):
        session = f"s{number:07d}"
        body = modify.modified_body(
            snapshot,
            [FieldChange(("spec", "selector"), labels.shadow_selector(session, Role.EXCHANGE))],
            session_id=session,
            lock=Lock(session, f"user{number}@lap", Role.EXCHANGE, cluster.clock()),
        )
        try:
            cluster.replace(Kind.SERVICE, "dev", "nginx", body)
            winners.append(session)
        except Conflict:
            losers.append(session)
    assert len(winners) == 1
    assert len(losers) == 19
    # A loser who reads again learns who holds it, and changes nothing.
    with pytest.raises(AlreadyModified) as caught:
        modify.modified_body(
            cluster.get(Kind.SERVICE, "dev", "nginx"),
            [FieldChange(("spec", "selector"), {})],
            session_id=losers[0],
        )
    assert caught.value.lock is not None
    assert caught.value.lock.owner == "user0@lap"
    # The winner restores: the Service is as it began, apart from server bookkeeping.
    restored = modify.restored_body(cluster.get(Kind.SERVICE, "dev", "nginx"))
    cluster.replace(Kind.SERVICE, "dev", "nginx", restored)
    after = cluster.get(Kind.SERVICE, "dev", "nginx")
    for body in (after, original):
        body["metadata"].pop("resourceVersion")
    assert after == original


def test_clean_after_a_crash_leaves_the_cluster_as_it_was(cluster: FakeCluster) -> None:
    cluster.create(Kind.SERVICE, "dev", user_service())
    before = cluster.get(Kind.SERVICE, "dev", "nginx")
    dead = SessionMeta("dead0001", Role.EXCHANGE, "bob@box", cluster.clock())
    live = SessionMeta("live0001", Role.CONNECT, "carol@pc", cluster.clock())
    start_shadow(cluster, dead)
    live_name = start_shadow(cluster, live)
    current = cluster.get(Kind.SERVICE, "dev", "nginx")
    cluster.replace(
        Kind.SERVICE,
        "dev",
        "nginx",
        modify.modified_body(
            current,
            [FieldChange(("spec", "selector"), labels.shadow_selector("dead0001", Role.EXCHANGE))],
            session_id="dead0001",
        ),
    )
    # Ten minutes later; only the live session kept its heartbeat fresh.
    cluster.clock.advance(timedelta(minutes=10))
    for kind in (Kind.POD, Kind.SECRET):
        cluster.patch(kind, "dev", live_name, labels.heartbeat_patch(cluster.server_time()))

    modified = cluster.list_objects(Kind.SERVICE, "dev", label_selector=labels.MODIFIED_SELECTOR)
    created = [
        item
        for kind in (Kind.SERVICE, Kind.POD, Kind.SECRET)
        for item in cluster.list_objects(kind, "dev", label_selector=labels.MANAGED_SELECTOR).items
    ]
    plan = sweep.plan_clean(
        modified.items,
        created,
        now=cluster.server_time(),
        threshold=timedelta(minutes=3),
        interval=timedelta(seconds=30),
    )
    for restoration in plan.restore:
        ref = restoration.ref
        cluster.replace(Kind(ref.kind), ref.namespace, ref.name, restoration.body)
    for ref in plan.delete:
        cluster.delete(Kind(ref.kind), ref.namespace, ref.name, uid=ref.uid)

    after = cluster.get(Kind.SERVICE, "dev", "nginx")
    after["metadata"].pop("resourceVersion")
    before["metadata"].pop("resourceVersion")
    assert after == before
    assert cluster.names(Kind.POD, "dev") == [live_name]
    assert cluster.names(Kind.SECRET, "dev") == [live_name]
