"""`ktpy doctor` end to end (issue 19): one fault at a time on the bed, and each time
doctor names the hop it is in; for a slowed hop it reports the measured change
against the run before. Every run leaves nothing of its own in the cluster."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from typing import Any

import pytest

from tests.e2e.conftest import Bed, Laptop
from tests.e2e.testbed import config

PROBLEM_FOUND = 50
DOCTOR_PODS = "ktpy.dev/role=doctor"

LONELY = """
apiVersion: v1
kind: Service
metadata: {name: lonely}
spec:
  selector: {app: nobody-has-this-label}
  ports:
  - {port: 80, targetPort: 8080}
"""

# The image has bash but no procps: find dnsmasq by its comm, stop it, see it stopped.
STOP_DNSMASQ = (
    'for p in /proc/[0-9]*; do [ "$(cat $p/comm 2>/dev/null)" = dnsmasq ] || continue;'
    " kill -STOP ${p#/proc/} && sleep 0.1 && grep -q '^State:.*T' $p/status && exit 0; done;"
    " exit 1"
)


def doctor(laptop: Laptop, ns: str, *args: str) -> tuple[int, dict[str, Any]]:
    done = laptop.run(
        sys.executable, "-m", "ktpy", "-n", ns, "doctor", *args, "-o", "json",
        check=False, timeout=120,
    )  # fmt: skip
    assert done.returncode in (0, PROBLEM_FOUND), done.stderr
    return done.returncode, json.loads(done.stdout)


def hop(report: dict[str, Any], name: str) -> dict[str, Any]:
    return next(h for h in report["hops"] if h["hop"] == name)


def assert_nothing_left(bed: Bed, ns: str, report: dict[str, Any]) -> None:
    assert any(d.startswith("pod/kt-doctor-shadow-") for d in report["deleted"])
    assert bed.ktpy_objects(ns) == []


def test_doctor_runs_this_worktrees_ktpy(laptop: Laptop) -> None:
    where = laptop.run(sys.executable, "-c", "import ktpy; print(ktpy.__file__)").stdout
    assert where.strip() == str(config.REPO_ROOT / "ktpy" / "__init__.py")


def test_a_service_without_endpoints_is_named_as_the_target_hop(
    bed: Bed, namespace: str, laptop: Laptop
) -> None:
    bed.apply(LONELY, namespace)
    code, report = doctor(laptop, namespace, "lonely")
    assert code == PROBLEM_FOUND
    assert report["problem"]["hop"] == "target", report["problem"]
    assert "no ready endpoints" in report["problem"]["text"]
    target = hop(report, "target")
    assert target["figures"]["ready_endpoints"] == 0
    # The hops beneath it are fine: the finding is the Service, not the tunnel.
    assert hop(report, "port-forward")["status"] == "ok"
    assert hop(report, "dns")["status"] == "ok"
    assert_nothing_left(bed, namespace, report)


def _doctor_pod(bed: Bed, ns: str, timeout: float = 30) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        names = bed.kubectl("-n", ns, "get", "pods", "-l", DOCTOR_PODS, "-o", "name").stdout
        if names.strip():
            return names.split()[0].removeprefix("pod/")
        time.sleep(0.05)
    raise AssertionError("doctor made no shadow pod")


def test_dnsmasq_stopped_in_the_shadow_pod_is_named_as_the_dns_hop(
    bed: Bed, namespace: str, laptop: Laptop, echo: str
) -> None:
    # Doctor is held (SIGSTOP) as soon as its pod exists, so the fault is in place
    # before it measures anything; then dnsmasq is stopped in the pod and doctor goes on.
    running = laptop.popen(
        sys.executable, "-m", "ktpy", "-n", namespace, "doctor", "echo", "-o", "json"
    )
    pod = _doctor_pod(bed, namespace)
    running.send_signal(signal.SIGSTOP)
    try:
        bed.kubectl(
            "-n", namespace, "wait", "--for=jsonpath={.status.phase}=Running",
            f"pod/{pod}", "--timeout=60s",
        )  # fmt: skip
        deadline = time.monotonic() + 30
        while True:  # dnsmasq starts a moment after the container
            stopped = bed.kubectl(
                "-n", namespace, "exec", pod, "--", "bash", "-c",
                STOP_DNSMASQ,
                check=False,
            )  # fmt: skip
            if stopped.returncode == 0:
                break
            assert time.monotonic() < deadline, stopped.stderr
            time.sleep(0.2)
    finally:
        running.send_signal(signal.SIGCONT)
    stdout, stderr = running.communicate(timeout=120)
    assert running.returncode == PROBLEM_FOUND, stderr
    report = json.loads(stdout)
    assert report["problem"]["hop"] == "dns", report["problem"]
    assert "dnsmasq" in report["problem"]["text"]
    # It asked the cluster's DNS past dnsmasq: that one answers, so the pod's dnsmasq is named.
    assert "answers" in hop(report, "dns")["figures"]["cluster_dns"]
    assert hop(report, "target")["status"] == "ok"
    assert_nothing_left(bed, namespace, report)


@pytest.fixture
def slowed(laptop: Laptop) -> Any:
    """A token bucket on this laptop's own veth (the host end: traffic toward the laptop),
    so only this test's downloads are slowed."""
    veth = f"{config.LAPTOP_VETH_PREFIX}{laptop.number}"

    def slow() -> None:
        subprocess.run(
            ["tc", "qdisc", "add", "dev", veth, "root", "tbf",
             "rate", "4mbit", "burst", "32kbit", "latency", "400ms"],
            check=True,
        )  # fmt: skip

    yield slow
    subprocess.run(["tc", "qdisc", "del", "dev", veth, "root"], check=False)


def test_a_slowed_link_is_named_as_the_port_forward_with_the_change(
    bed: Bed, namespace: str, laptop: Laptop, echo: str, slowed: Any
) -> None:
    code, before = doctor(laptop, namespace, "echo")
    assert code == 0, before["problem"]
    assert all(h["status"] == "ok" for h in before["hops"])
    fast = hop(before, "port-forward")["throughput"]["mbit_s"]
    assert fast > 40
    assert_nothing_left(bed, namespace, before)

    slowed()
    code, after = doctor(laptop, namespace, "echo")
    assert code == PROBLEM_FOUND
    assert after["problem"]["hop"] == "port-forward", after["problem"]
    forward = hop(after, "port-forward")
    slow = forward["throughput"]["mbit_s"]
    assert slow < 5
    # The measured change, against the run before.
    assert "down from" in forward["problem"]
    assert f"{fast:.0f} Mbit/s" in forward["change"] or f"{fast:.1f} Mbit/s" in forward["change"]
    assert hop(after, "target")["status"] == "ok"
    assert hop(after, "dns")["status"] == "ok"
    assert_nothing_left(bed, namespace, after)


def test_missing_rights_are_named_per_command_before_any_pod(
    bed: Bed, namespace: str, laptop: Laptop
) -> None:
    # dev has no RoleBinding in this namespace: every command lacks its rights.
    done = laptop.run(
        sys.executable, "-m", "ktpy", "-n", namespace, "doctor", "-o", "json",
        user="dev", check=False, timeout=60,
    )  # fmt: skip
    assert done.returncode == PROBLEM_FOUND, done.stderr
    report = json.loads(done.stdout)
    assert report["problem"]["check"] == "permissions"
    rights = next(c for c in report["checks"] if c["name"] == "permissions")["text"]
    assert "doctor lacks create pods" in rights
    assert "create pods/portforward" in rights
    assert report["hops"] == []
    assert report["deleted"] == []


def test_an_image_that_cannot_be_pulled_is_named_with_where_to_read_next(
    bed: Bed, namespace: str, laptop: Laptop
) -> None:
    done = laptop.run(
        sys.executable, "-m", "ktpy", "-n", namespace, "--image", "ktbed.local/none:0.0.1",
        "doctor", check=False, timeout=90,
    )  # fmt: skip
    assert done.returncode == PROBLEM_FOUND, done.stderr
    assert "fail  shadow image: cannot pull the shadow image ktbed.local/none:0.0.1" in (
        done.stdout
    )
    assert "Hint:" in done.stderr
    assert "docs/shadow-image.md#getting-it-into-your-cluster" in done.stderr
    assert bed.ktpy_objects(namespace) == []


def test_ctrl_c_once_the_pod_is_ready_removes_it(
    bed: Bed, namespace: str, laptop: Laptop, echo: str
) -> None:
    running = laptop.popen(sys.executable, "-m", "ktpy", "-n", namespace, "doctor", "echo")
    pod = _doctor_pod(bed, namespace)
    bed.kubectl("-n", namespace, "wait", "--for=condition=Ready", f"pod/{pod}", "--timeout=60s")
    running.send_signal(signal.SIGINT)
    _, stderr = running.communicate(timeout=60)
    assert running.returncode == 130, stderr
    assert bed.ktpy_objects(namespace) == []
