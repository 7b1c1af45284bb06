"""`ktpy doctor` end to end (issue 19): one fault at a time on the bed, and each time
doctor names the hop it is in; for a slowed hop it reports the measured change
against the run before. Every run leaves nothing of its own in the cluster."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from typing import Any

import pytest

from tests.e2e.conftest import Bed, Laptop
from tests.e2e.testbed import config

PROBLEM_FOUND = 60
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

# The image has bash and a few busybox tools (cat, grep), no procps or sleep: find
# dnsmasq by its comm, stop it, see it stopped.
STOP_DNSMASQ = (
    'for p in /proc/[0-9]*; do [ "$(cat $p/comm 2>/dev/null)" = dnsmasq ] || continue;'
    " kill -STOP ${p#/proc/} || exit 1;"
    " for i in {1..500}; do grep -q '^State:.*T' $p/status && exit 0; done; done; exit 1"
)


def doctor(
    laptop: Laptop, ns: str, *args: str, env: dict[str, str] | None = None
) -> tuple[int, dict[str, Any]]:
    done = laptop.run(
        sys.executable, "-m", "ktpy", "-n", ns, "doctor", *args, "-o", "json",
        check=False, timeout=120, env=env,
    )  # fmt: skip
    assert done.returncode in (0, PROBLEM_FOUND), done.stderr
    return done.returncode, json.loads(done.stdout)


def hop(report: dict[str, Any], name: str) -> dict[str, Any]:
    return next(h for h in report["hops"] if h["hop"] == name)


def assert_nothing_left(bed: Bed, ns: str, report: dict[str, Any]) -> None:
    assert any(d.startswith("pod/kt-doctor-shadow-") for d in report["deleted"])
    assert bed.ktpy_objects(ns) == []


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
    # The other hops work (a busy bed may make one slow, never failed): the finding
    # is the Service, not the tunnel.
    assert hop(report, "port-forward")["status"] != "fail"
    assert hop(report, "dns")["status"] != "fail"
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
    bed: Bed, namespace: str, laptop: Laptop
) -> None:
    # Doctor is held (SIGSTOP) as soon as its pod exists, so the fault is in place
    # before it measures anything; then dnsmasq is stopped in the pod and doctor goes on.
    running = laptop.popen(sys.executable, "-m", "ktpy", "-n", namespace, "doctor", "-o", "json")
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
    assert hop(report, "target")["status"] != "fail"
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

    def restore() -> None:
        subprocess.run(["tc", "qdisc", "del", "dev", veth, "root"], check=True)

    yield slow, restore
    subprocess.run(["tc", "qdisc", "del", "dev", veth, "root"], check=False, capture_output=True)


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


def test_ctrl_c_once_the_pod_is_ready_removes_it(bed: Bed, namespace: str, laptop: Laptop) -> None:
    running = laptop.popen(sys.executable, "-m", "ktpy", "-n", namespace, "doctor")
    pod = _doctor_pod(bed, namespace)
    bed.kubectl("-n", namespace, "wait", "--for=condition=Ready", f"pod/{pod}", "--timeout=60s")
    running.send_signal(signal.SIGINT)
    _, stderr = running.communicate(timeout=60)
    assert running.returncode == 130, stderr
    assert bed.ktpy_objects(namespace) == []


# A TCP relay in the laptop in front of the API server that holds every chunk for
# DELAY seconds each way (order kept): the port-forward's round trip grows by twice that.
RELAY = r"""
import queue, socket, sys, threading, time
listen_port, upstream, delay = int(sys.argv[1]), (sys.argv[2], int(sys.argv[3])), float(sys.argv[4])

def pump(src, dst):
    held = queue.Queue()
    def write():
        while True:
            due, data = held.get()
            time.sleep(max(0.0, due - time.monotonic()))
            if not data:
                dst.shutdown(socket.SHUT_WR)
                return
            dst.sendall(data)
    threading.Thread(target=write, daemon=True).start()
    while True:
        try:
            data = src.recv(65536)
        except OSError:
            data = b""
        held.put((time.monotonic() + delay, data))
        if not data:
            return

server = socket.create_server(("127.0.0.1", listen_port))
print("ready", flush=True)
while True:
    client, _ = server.accept()
    up = socket.create_connection(upstream)
    for a, b in ((client, up), (up, client)):
        a.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        threading.Thread(target=pump, args=(a, b), daemon=True).start()
"""
RELAY_PORT = 16443


@pytest.fixture
def relayed(laptop: Laptop, tmp_path: Any) -> Any:
    """A kubeconfig through the relay (the API server's certificate names 127.0.0.1),
    and a function that (re)starts the relay with a given delay."""
    admin = (config.KUBECONFIG_DIR / "admin.yaml").read_text()
    server = next(line.split()[-1] for line in admin.splitlines() if "server:" in line)
    host, port = server.removeprefix("https://").rsplit(":", 1)
    kubeconfig = tmp_path / "relayed.yaml"
    kubeconfig.write_text(admin.replace(server, f"https://127.0.0.1:{RELAY_PORT}"))
    running: list[Any] = []

    def start(delay: float) -> str:
        for old in running:
            old.kill()
            old.communicate()
        running.clear()
        relay = laptop.popen(sys.executable, "-c", RELAY, str(RELAY_PORT), host, port, str(delay))
        running.append(relay)
        assert relay.stdout is not None
        assert relay.stdout.readline().strip() == "ready", relay.communicate()
        return str(kubeconfig)

    yield start
    for old in running:
        old.kill()
        old.communicate()


def test_a_slowed_hop_is_named_as_the_port_forward_with_the_measured_change(
    bed: Bed, namespace: str, laptop: Laptop, slowed: Any, relayed: Any
) -> None:
    """Two slowdowns in turn, each against the run before: a token bucket (throughput),
    then a delaying relay before the API server (round trip). All runs go through the
    relay, so they compare as one cluster."""
    slow, restore = slowed
    kubeconfig = {"KUBECONFIG": relayed(0.0)}
    code, before = doctor(laptop, namespace, env=kubeconfig)
    assert hop(before, "port-forward")["status"] == "ok", before["problem"]
    assert all(h["status"] != "fail" for h in before["hops"])
    fast = hop(before, "port-forward")
    assert fast["throughput"]["mbit_s"] > 40
    assert_nothing_left(bed, namespace, before)

    slow()
    code, bucket = doctor(laptop, namespace, env=kubeconfig)
    assert code == PROBLEM_FOUND
    assert bucket["problem"]["hop"] == "port-forward", bucket["problem"]
    forward = hop(bucket, "port-forward")
    assert forward["throughput"]["mbit_s"] < 5
    assert "throughput" in forward["problem"]
    assert "down from" in forward["problem"]
    was = re.search(r"throughput was ([0-9.]+) Mbit/s", forward["change"])
    assert was is not None, forward["change"]
    assert float(was.group(1)) == pytest.approx(fast["throughput"]["mbit_s"], abs=0.6)
    assert hop(bucket, "target")["status"] != "fail"
    assert hop(bucket, "dns")["status"] != "fail"
    assert_nothing_left(bed, namespace, bucket)

    restore()
    kubeconfig = {"KUBECONFIG": relayed(0.025)}
    code, delayed = doctor(laptop, namespace, env=kubeconfig)
    assert code == PROBLEM_FOUND
    assert delayed["problem"]["hop"] == "port-forward", delayed["problem"]
    forward = hop(delayed, "port-forward")
    assert forward["rtt"]["p50_ms"] > hop(bucket, "port-forward")["rtt"]["p50_ms"] + 40
    assert forward["figures"]["api_rtt_ms"] > 40  # 25 ms each way
    assert "round trip" in forward["problem"]
    assert "up from" in forward["problem"]
    assert "round trip was" in forward["change"]
    # The hops above it subtract the port-forward's share: the 50 ms are not theirs.
    for above in ("ssh", "target", "dns"):
        assert hop(delayed, above)["rtt"]["p50_ms"] < 25, hop(delayed, above)
    assert_nothing_left(bed, namespace, delayed)


def test_a_missing_service_is_refused_before_anything_is_made(
    bed: Bed, namespace: str, laptop: Laptop
) -> None:
    done = laptop.run(
        sys.executable, "-m", "ktpy", "-n", namespace, "doctor", "nosuch", check=False
    )
    assert done.returncode == 12, done.stderr
    assert f"service 'nosuch' not found in namespace '{namespace}'" in done.stderr
    assert bed.kubectl("-n", namespace, "get", "pods,secrets", "-o", "name").stdout == ""
