"""A shadow pod evicted mid-session (the Eviction API, as a node drain does) is
replaced and the session resumes within 10 s; for exchange and mesh the Service
keeps reaching the laptop through the new pod. A shadow pod deleted by a person
ends the session with one line, and everything is restored (issue 14, part 1)."""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Callable

import pytest

from tests.e2e.commands.test_exchange import curl, selector, service_text, shadow_name
from tests.e2e.conftest import Bed, Laptop, RunningKtpy, local_server, run_ktpy

RESUME_SECONDS = 10.0


def evict(bed: Bed, namespace: str, pod: str) -> None:
    """What `kubectl drain` does to each pod: a policy/v1 Eviction."""
    body = {"apiVersion": "policy/v1", "kind": "Eviction", "metadata": {"name": pod}}
    bed.kubectl(
        "create", "--raw", f"/api/v1/namespaces/{namespace}/pods/{pod}/eviction", "-f", "-",
        input=json.dumps(body),
    )  # fmt: skip


def pod_uid(bed: Bed, namespace: str, pod: str) -> str:
    return str(bed.get_json("-n", namespace, "pod", pod)["metadata"]["uid"])


def until(works: Callable[[], bool], within: float, what: str) -> float:
    """Seconds until works() first holds; fails after ``within`` (plus one try's time)."""
    started = time.monotonic()
    while not works():
        assert time.monotonic() - started < within, f"{what} not within {within:.0f}s"
        time.sleep(0.2)
    return time.monotonic() - started


def evicted_and_resumed(
    bed: Bed, namespace: str, session: RunningKtpy, works: Callable[[], bool]
) -> tuple[str, float]:
    """Evict the session's shadow pod; the seconds until `works` again. Returns the
    pod's name and those seconds, once a new pod (same name, new uid) serves."""
    pod = shadow_name(session)
    old = pod_uid(bed, namespace, pod)
    evicted = time.monotonic()
    evict(bed, namespace, pod)

    def replaced() -> bool:
        found = bed.kubectl("-n", namespace, "get", "pod", pod, "-o", "json", check=False)
        return found.returncode == 0 and json.loads(found.stdout)["metadata"]["uid"] != old

    # Until the old pod is gone, a request may still pass through it: not a resumption.
    try:
        until(replaced, RESUME_SECONDS, "a new shadow pod")
        until(works, RESUME_SECONDS - (time.monotonic() - evicted), "the session working again")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; ktpy said: {session.errors[-12:]}") from None
    took = time.monotonic() - evicted
    new = pod_uid(bed, namespace, pod)
    # The Secret (the pinned host key, the client's key) outlived the old pod, owned by the new.
    owners = bed.get_json("-n", namespace, "secret", pod)["metadata"]["ownerReferences"]
    assert [o["uid"] for o in owners] == [new]
    assert session.proc.poll() is None
    print(f"resumed {took:.1f}s after the eviction")
    return pod, took


def deleted_by_a_person(bed: Bed, namespace: str, session: RunningKtpy) -> str:
    """`kubectl delete pod` of the shadow: the session ends (exit 40) with one line
    naming what happened; its last stderr line."""
    bed.kubectl("-n", namespace, "delete", "pod", shadow_name(session), "--wait=false")
    assert session.proc.wait(60) == 40, session.errors
    errors = [line for line in session.all_errors() if line.startswith("Error:")]
    assert len(errors) == 1, session.errors
    assert "was deleted by someone, not evicted (no DisruptionTarget condition)" in errors[0]
    return errors[0]


def test_connect_resumes_after_an_eviction_and_ends_when_a_person_deletes_the_pod(
    bed: Bed, echo: str, laptop: Laptop
) -> None:
    ns = echo

    def through_socks() -> bool:
        """A request through the tunnel, made by the shadow pod serving now."""
        got = laptop.run(
            "curl", "-s", "--max-time", "2", "--socks5-hostname", "127.0.0.1:2311",
            f"http://echo.{ns}/", check=False,
        )  # fmt: skip
        if got.returncode != 0:
            return False
        shadow = bed.get_json("-n", ns, "pod", shadow_name(session))
        return str(json.loads(got.stdout)["client"]).split(":")[0] == shadow["status"].get("podIP")

    session = run_ktpy(laptop, "-n", ns, "connect", "--mode", "socks", "--socks-port", "2311")
    try:
        session.wait_ready()
        assert through_socks()
        evicted_and_resumed(bed, ns, session, through_socks)
        assert "shadow pod evicted; making a new one" in "\n".join(session.errors)
        deleted_by_a_person(bed, ns, session)
    finally:
        session.stop(signal.SIGINT)
    assert bed.ktpy_objects(ns) == []


def answered_by(bed: Bed, namespace: str, want: str) -> Callable[[], bool]:
    def check() -> bool:
        result = curl(bed, namespace, "http://echo/", timeout=2)
        return result.returncode == 0 and json.loads(result.stdout)["pod"] == want

    return check


# Scale mode (the new pod carries the template labels) through an eviction is the fault
# matrix's cell exchange-scale x eviction (tests/e2e/faults): run with "scale" to see it here.
@pytest.mark.parametrize("mode", ["selector"])
def test_exchange_keeps_the_service_on_the_new_shadow_and_restores_after_a_persons_delete(
    bed: Bed, echo: str, laptop: Laptop, mode: str
) -> None:
    ns = echo
    before = service_text(bed, ns)
    server = local_server(laptop, 3001)
    session = run_ktpy(laptop, "-n", ns, "exchange", "echo", "--expose", "3001:80", "--mode", mode)
    try:
        session.wait_ready(timeout=120)
        switched = selector(bed, ns)
        assert answered_by(bed, ns, "laptop")()
        pod, _ = evicted_and_resumed(bed, ns, session, answered_by(bed, ns, "laptop"))
        # Nothing was rewritten: the Service still selects what it did, which the new pod is.
        assert selector(bed, ns) == switched

        def serving() -> set[str]:
            slices = bed.get_json(
                "-n", ns, "endpointslices", "-l", "kubernetes.io/service-name=echo"
            )
            return {
                e["targetRef"]["name"]
                for s in slices["items"]
                for e in s.get("endpoints") or ()
                if e["conditions"].get("ready")
            }

        # The slices may lag the answers for a moment (a readiness flip after the start).
        until(lambda: serving() == {pod}, 10, "the EndpointSlices listing the new shadow only")
        # And kube-proxy follows the slices a moment later: then answer after answer.
        streak = 0

        def five_in_a_row() -> bool:
            nonlocal streak
            streak = streak + 1 if answered_by(bed, ns, "laptop")() else 0
            return streak >= 5

        until(five_in_a_row, 10, "five answers in a row from the laptop")
        deleted_by_a_person(bed, ns, session)
    finally:
        session.stop(signal.SIGINT, timeout=120)
        server.kill()
    assert service_text(bed, ns) == before
    assert bed.ktpy_objects(ns) == []
    assert until(lambda: not answered_by(bed, ns, "laptop")(), 10, "the pods answering again") < 10


# The mesh x eviction cell in depth: with the matrix's other mesh cells, KTPY_FAULT_MATRIX=full.
@pytest.mark.fault_matrix_full
def test_mesh_keeps_the_route_to_the_new_shadow(bed: Bed, echo: str, laptop: Laptop) -> None:
    ns = echo
    before = service_text(bed, ns)
    server = local_server(laptop, 3001, "laptop")
    session = run_ktpy(
        laptop, "-n", ns, "mesh", "echo", "--expose", "3001:80", "--version-mark", "evict"
    )

    def by_header() -> bool:
        result = curl(bed, ns, "http://echo/", timeout=2)
        headed = bed.kubectl(
            "-n", ns, "exec", "client", "--",
            "curl", "-sS", "--max-time", "2", "-H", "VERSION: evict", "http://echo/",
            check=False,
        )  # fmt: skip
        return (
            headed.returncode == 0
            and json.loads(headed.stdout)["pod"] == "laptop"
            and result.returncode == 0
            and str(json.loads(result.stdout)["pod"]).startswith("echo-")
        )

    try:
        session.wait_for("Now you can access your service by header", timeout=180)
        assert by_header()
        member = bed.get_json("-n", ns, "service", "echo-kt-mesh-evict")["spec"]["clusterIP"]
        pod, _ = evicted_and_resumed(bed, ns, session, by_header)
        # The router's route for the header is the member's Service, which selects the new pod.
        slices = bed.get_json(
            "-n", ns, "endpointslices", "-l", "kubernetes.io/service-name=echo-kt-mesh-evict"
        )
        assert {e["targetRef"]["name"] for s in slices["items"] for e in s["endpoints"]} == {pod}
        assert bed.get_json("-n", ns, "service", "echo-kt-mesh-evict")["spec"]["clusterIP"] == (
            member
        )
    finally:
        code = session.stop(signal.SIGINT, timeout=120)
        server.kill()
    assert code == 130, session.errors
    assert service_text(bed, ns) == before
    assert bed.ktpy_objects(ns) == []
