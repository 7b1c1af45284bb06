"""The Roles of docs/rbac/ cover every call clean, recover and status make, on the
paths a short end-to-end run does not take (a dead member of a live mesh, a dead
scale-mode exchange), from the calls recorded at ktpy's API wrapper (FakeCluster)."""

from __future__ import annotations

import base64
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from ktpy.cli import cli
from ktpy.cluster import manifests, mesh, router
from ktpy.cluster.api import Kind
from ktpy.cluster.api.client import rbac_resource
from ktpy.cluster.labels import Role
from tests.rbac import Access, load_role
from tests.unit.cluster.objects import created, user_service
from tests.unit.cluster.redirects import NS, dead_scale_exchange
from tests.unit.fakes import FakeCluster

VERBS = {"replace": "update"}  # FakeCluster's names for what RBAC calls otherwise


def accesses(cluster: FakeCluster) -> set[Access]:
    return {
        (VERBS.get(verb, verb), rbac_resource(kind))
        for verb, kind, _, _ in cluster.calls
        if kind is not None
    }


def live_mesh_with_a_dead_member(cluster: FakeCluster) -> None:
    """Service shop meshed by a live member and a dead one (whose mark clean prunes)."""
    now = cluster.clock()
    service = mesh.meshed_service(
        user_service("shop", selector={"app": "shop"}), mesh.mesh_lock("mesh0001", "a@l", now)
    )
    service = mesh.with_mark(service, mesh.Mark("live0001", "version", "a", "alice", now))
    service = mesh.with_mark(service, mesh.Mark("dead0001", "version", "b", "bob", now))
    cluster.put(Kind.SERVICE, {**service, "kind": "Service"})
    names = router.router_names("shop")
    data = {
        manifests.AUTHORIZED_KEYS: base64.b64encode(b"ssh-ed25519 AAA ktpy-client-dead0001\n"),
        router.MAP_FILE: base64.b64encode(b"a 10.0.0.1\nb 10.0.0.2\n"),
    }
    secret = created("Secret", names.secret, "mesh0001", role=Role.ROUTER, heartbeat=now)
    cluster.put(Kind.SECRET, {**secret, "data": {k: v.decode() for k, v in data.items()}})
    for kind, name, session, beat in (
        ("Deployment", names.deployment, "mesh0001", now),
        ("Pod", "shop-kt-mesh-a", "live0001", now),
        ("Pod", "shop-kt-mesh-b", "dead0001", now - timedelta(minutes=10)),
    ):
        body = created(kind, name, session, role=Role.MESH, heartbeat=beat)
        if kind == "Deployment":
            body["metadata"]["labels"]["ktpy.dev/role"] = Role.ROUTER.value
        cluster.put(Kind(kind), body)


def run(cluster: FakeCluster, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, *args: str) -> Any:
    for module in ("clean", "recover", "status"):
        # (the package's attributes of these names are the commands, not the modules)
        monkeypatch.setattr(sys.modules[f"ktpy.commands.{module}"], "make_api", lambda _: cluster)
    env = {"HOME": str(tmp_path), "XDG_CONFIG_HOME": str(tmp_path), "KUBECONFIG": "",
           "XDG_STATE_HOME": str(tmp_path), "XDG_RUNTIME_DIR": str(tmp_path)}  # fmt: skip
    return CliRunner().invoke(cli, ["-n", NS, *args], env=env, catch_exceptions=False)


def test_clean_of_a_dead_scale_exchange_and_a_dead_mesh_member_stays_in_its_role(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    cluster = FakeCluster()
    dead_scale_exchange(cluster, make_service=True)
    live_mesh_with_a_dead_member(cluster)
    cluster.clock.advance(timedelta(minutes=5))  # the live mesh beats on; the dead do not
    for name in ("shop-kt-mesh-a", router.router_names("shop").deployment):
        cluster.patch(Kind.POD if name.endswith("-a") else Kind.DEPLOYMENT, NS, name,
                      {"metadata": {"annotations": {"ktpy.dev/heartbeat":
                       cluster.clock().strftime("%Y-%m-%dT%H:%M:%SZ")}}})  # fmt: skip
    cluster.calls.clear()
    done = run(cluster, monkeypatch, tmp_path, "clean")
    assert done.exit_code == 0, done.output
    assert "removed the route" in done.output
    assert "restored deployment/web" in done.output
    used = accesses(cluster)
    assert {("update", "secrets"), ("update", "apps/deployments")} <= used  # both paths ran
    assert used <= load_role("clean").rules


def test_recover_of_a_dead_scale_exchange_stays_in_its_role(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    cluster = FakeCluster()
    dead_scale_exchange(cluster, make_service=True)
    cluster.clock.advance(timedelta(minutes=5))
    cluster.calls.clear()
    done = run(cluster, monkeypatch, tmp_path, "recover", "nginx")
    assert done.exit_code == 0, done.output
    assert ("update", "apps/deployments") in accesses(cluster)
    assert accesses(cluster) <= load_role("recover").rules


def test_status_stays_in_its_role(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    cluster = FakeCluster()
    dead_scale_exchange(cluster, make_service=True)
    cluster.calls.clear()
    assert run(cluster, monkeypatch, tmp_path, "status").exit_code == 0
    assert accesses(cluster) <= load_role("status").rules
