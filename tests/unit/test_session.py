"""The pure part of the session: reading a pod's status while it starts."""

from typing import Any

import pytest

from ktpy.cluster import manifests
from ktpy.cluster.labels import Role
from ktpy.errors import ImageUnavailable, PodStartFailed
from ktpy.session import ShadowSpec, pod_is_ready

IMAGE = "ghcr.io/ktpy/shadow:0.1.0"


def pod(conditions: list[dict[str, Any]], containers: list[dict[str, Any]]) -> dict[str, Any]:
    return {"status": {"conditions": conditions, "containerStatuses": containers}}


def waiting(reason: str, message: str = "") -> dict[str, Any]:
    return {"state": {"waiting": {"reason": reason, "message": message}}, "restartCount": 0}


def test_ready_pod() -> None:
    assert pod_is_ready(pod([{"type": "Ready", "status": "True"}], []), IMAGE)


def test_pending_pod_is_not_ready_yet() -> None:
    assert not pod_is_ready(pod([{"type": "Ready", "status": "False"}], []), IMAGE)
    assert not pod_is_ready(pod([], [waiting("ContainerCreating")]), IMAGE)


@pytest.mark.parametrize(
    "reason", ["ErrImagePull", "ImagePullBackOff", "ErrImageNeverPull", "InvalidImageName"]
)
def test_image_problems_fail_at_once_naming_the_image(reason: str) -> None:
    with pytest.raises(ImageUnavailable) as caught:
        pod_is_ready(pod([], [waiting(reason, "not found")]), IMAGE)
    assert IMAGE in caught.value.format_message()
    assert reason in caught.value.format_message()


@pytest.mark.parametrize("reason", ["CreateContainerConfigError", "CreateContainerError"])
def test_container_problems_fail_with_the_reason(reason: str) -> None:
    with pytest.raises(PodStartFailed, match=reason):
        pod_is_ready(pod([], [waiting(reason, "secret missing")]), IMAGE)


def test_unschedulable_fails_with_the_schedulers_message() -> None:
    condition = {
        "type": "PodScheduled",
        "status": "False",
        "reason": "Unschedulable",
        "message": "0/1 nodes are available: 1 Insufficient cpu.",
    }
    with pytest.raises(PodStartFailed, match="Insufficient cpu"):
        pod_is_ready(pod([condition], []), IMAGE)


def test_a_crashing_container_fails_after_its_first_restart() -> None:
    crashed = {
        "state": {"waiting": {"reason": "CrashLoopBackOff"}},
        "lastState": {"terminated": {"reason": "Error", "exitCode": 1}},
        "restartCount": 1,
    }
    with pytest.raises(PodStartFailed, match="code 1"):
        pod_is_ready(pod([], [crashed]), IMAGE)


def test_a_shadow_spec_moves_its_own_ports_out_of_the_services_way() -> None:
    plain = ShadowSpec(role=Role.CONNECT, namespace="dev", pod_name="p", image="i")
    assert (plain.ssh_port, plain.dns_port) == (2222, 5353)
    busy = ShadowSpec(
        role=Role.EXCHANGE, namespace="dev", pod_name="p", image="i",
        ports=(manifests.ShadowPort(2222, "ssh"), manifests.ShadowPort(5353)),
    )  # fmt: skip
    assert (busy.ssh_port, busy.dns_port) == (2223, 5354)


def test_a_shadow_name_taken_already_is_refused_in_one_line() -> None:
    from types import SimpleNamespace
    from typing import cast

    from ktpy.cluster.api import Kind
    from ktpy.config import Settings
    from ktpy.errors import NameTaken
    from ktpy.logs import get_logger
    from ktpy.session.shadow import ShadowObjects
    from ktpy.tunnel import keys
    from tests.unit.fakes import FakeCluster

    cluster = FakeCluster()
    cluster.put(Kind.SECRET, {"metadata": {"name": "web-kt-mesh-a", "namespace": "dev"}})
    spec = ShadowSpec(Role.MESH, "dev", "web-kt-mesh-a", "img")
    objects = ShadowObjects(
        cluster,
        cast(Settings, SimpleNamespace(owner="alice@lap")),
        spec,
        "s1",
        keys.generate_session_keys("s1"),
        get_logger("test"),
    )
    with pytest.raises(NameTaken, match="shadow pod 'web-kt-mesh-a' already exists"):
        objects.create()
    assert objects.created == []
    assert cluster.names(Kind.POD, "dev") == []


def test_a_starting_pods_stage_in_words() -> None:
    from ktpy.session.shadow import pod_stage

    assert pod_stage({"spec": {}}) == "waiting for a node"
    on_node: dict[str, Any] = {"spec": {"nodeName": "n"}, "status": {}}
    assert pod_stage(on_node) == "pulling the image if needed, creating the container"
    creating = {"waiting": {"reason": "ContainerCreating"}}
    on_node["status"] = {"containerStatuses": [{"state": creating}]}
    assert pod_stage(on_node) == "pulling the image if needed, creating the container"
    on_node["status"] = {"containerStatuses": [{"state": {"waiting": {"reason": "Pulling"}}}]}
    assert pod_stage(on_node) == "Pulling"
    on_node["status"] = {"containerStatuses": [{"state": {"running": {}}}]}
    assert pod_stage(on_node) == "started, waiting until Ready"
