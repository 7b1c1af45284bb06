"""Shared by the tests of the lock, redirect, guard, waits and sweep modules: a
Service held by a session, that session's shadow objects, a take-over."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from ktpy.cluster import lock as locks
from ktpy.cluster import manifests, redirect
from ktpy.cluster.api import Kind
from ktpy.cluster.bodies import JsonObject
from ktpy.cluster.heartbeat import sessions_from_objects
from ktpy.cluster.labels import Lock, PidStart, Role
from ktpy.cluster.manifests import SessionMeta
from tests.unit.cluster.objects import created, user_service
from tests.unit.fakes import FakeCluster

NOW = datetime(2026, 11, 27, 12, 0, 0, tzinfo=UTC)
STALE_AFTER = timedelta(minutes=3)
NS = "dev"


def held(session: str = "s1", since: datetime = NOW - timedelta(seconds=42)) -> dict[str, Any]:
    lock = Lock(session, "alice@lap", Role.EXCHANGE, since)
    return redirect.switched_service(user_service(), lock)


def shadow_objects(
    session: str, heartbeat: datetime, pid: PidStart | None = None
) -> list[dict[str, Any]]:
    return [
        created(
            "Pod", f"nginx-kt-exchange-{session}", session,
            role=Role.EXCHANGE, heartbeat=heartbeat, pid_start=pid,
        ),
    ]  # fmt: skip


def judge(body: dict[str, Any], objects: list[dict[str, Any]], **kw: Any) -> locks.LockJudgement:
    return locks.judge_lock(
        body,
        sessions_from_objects(objects),
        me=kw.pop("me", "s2"),
        now=NOW,
        stale_after=STALE_AFTER,
        **kw,
    )


def start_shadow(cluster: FakeCluster, session: str, owner: str = "alice@lap") -> str:
    """What a session creates before it touches the Service: its Secret and pod."""
    meta = SessionMeta(session, Role.EXCHANGE, owner, cluster.clock(), target="service/nginx")
    name = f"nginx-kt-exchange-{session}"
    cluster.create(Kind.POD, NS, {"metadata": manifests.object_meta(name, NS, meta)})
    cluster.create(Kind.SECRET, NS, {"metadata": manifests.object_meta(name, NS, meta)})
    return name


def take(cluster: Any, session: str, owner: str = "alice@lap", **kw: Any) -> JsonObject:
    lock = locks.lock_for(session, owner, cluster.clock())
    return locks.take(
        cluster,
        Kind.SERVICE,
        NS,
        "nginx",
        build=lambda current: redirect.switched_service(current, lock),
        check=redirect.check_selector,
        session_id=session,
        stale_after=STALE_AFTER,
        **kw,
    )


def without_version(body: JsonObject) -> JsonObject:
    body["metadata"].pop("resourceVersion")
    return body


def dead_scale_exchange(cluster: FakeCluster, *, make_service: bool = False) -> None:
    """A scale-mode exchange whose session died: Deployment at 0, Service nginx
    (made here with make_service) locked."""
    start_shadow(cluster, "dead0001")
    if make_service:
        cluster.put(Kind.SERVICE, user_service("nginx", selector={"app": "nginx"}))
    web = {
        "metadata": {"name": "web", "namespace": NS},
        "spec": {"replicas": 2, "template": {"metadata": {"labels": {"app": "nginx"}}}},
    }
    cluster.create(Kind.DEPLOYMENT, NS, web)
    current = cluster.get(Kind.DEPLOYMENT, NS, "web")
    cluster.replace(Kind.DEPLOYMENT, NS, "web", redirect.scaled_deployment(current, "dead0001"))
    service = cluster.get(Kind.SERVICE, NS, "nginx")
    lock = locks.lock_for("dead0001", "bob@box", cluster.clock())
    cluster.replace(Kind.SERVICE, NS, "nginx", redirect.locked_service(service, lock))
