"""`ktpy preview` end to end (issue 6): a local server in a laptop published in the
cluster as a Service, reached from a pod and from another laptop's ktpy connect;
Ctrl-C and kill -9 + clean leave nothing; a taken NAME changes nothing."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from typing import Any

from tests.e2e.commands.liveness import BEATS, killed_in_a
from tests.e2e.conftest import Bed, Laptop, RunningKtpy, client_manifest, local_server, run_ktpy

NAME = "nginx-local"
READY = f"Now you can access your local service in cluster by name '{NAME}'"


def service_names(bed: Bed, namespace: str) -> list[str]:
    return bed.kubectl("-n", namespace, "get", "services", "-o", "name").stdout.split()


def exec_curl(bed: Bed, namespace: str, url: str) -> subprocess.CompletedProcess[str]:
    return bed.kubectl(
        "-n", namespace, "exec", "client", "--", "curl", "-sS", "--max-time", "10", url,
        check=False,
    )  # fmt: skip


def curl_json(
    bed: Bed, namespace: str, url: str, session: RunningKtpy, retry_for: float = 0
) -> Any:
    deadline = time.monotonic() + retry_for
    while True:
        result = exec_curl(bed, namespace, url)
        if result.returncode == 0 or time.monotonic() >= deadline:
            break
        time.sleep(0.2)
    assert result.returncode == 0, f"{url}: {result.stderr.strip()}; ktpy: {session.errors[-10:]}"
    return json.loads(result.stdout)


def wait_client(bed: Bed, namespace: str) -> None:
    bed.apply(client_manifest(), namespace)
    bed.kubectl(
        "-n", namespace, "wait", "pod/client", "--for=condition=Ready", "--timeout=90s", timeout=100
    )


def stderr_has(session: RunningKtpy, text: str, timeout: float = 5) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(text in line for line in session.errors):
            return True
        time.sleep(0.1)
    return False


def test_preview_reaches_this_laptop_from_a_pod_and_from_another_laptop(
    bed: Bed, namespace: str, laptop: Laptop, other_laptop: Laptop
) -> None:
    ns = namespace
    wait_client(bed, ns)
    servers = [
        local_server(laptop, 3001, "laptop-v4"),
        # Only on ::1: the forward falls back to IPv6 loopback when 127.0.0.1 refuses.
        local_server(laptop, 3002, "laptop-v6", host="::1"),
    ]
    preview = run_ktpy(
        laptop, "-n", ns, "preview", NAME, "--expose", "3001:8080,3002:8081,3003:8082"
    )
    connect: RunningKtpy | None = None
    try:
        preview.wait_for(READY, timeout=90)
        # Port 3003 has no local server: said at start, and a caller fails at once.
        assert stderr_has(preview, "nothing listens on localhost:3003"), preview.errors

        started = time.monotonic()
        body = curl_json(bed, ns, f"http://{NAME}.{ns}:8080/from-pod", preview, retry_for=10)
        print(f"\nfirst answer from the pod {time.monotonic() - started:.2f}s after the ready line")
        assert (body["server"], body["path"]) == ("laptop-v4", "/from-pod")
        body = curl_json(bed, ns, f"http://{NAME}.{ns}:8081/v6", preview)
        assert (body["server"], body["path"]) == ("laptop-v6", "/v6")
        started = time.monotonic()
        refused = exec_curl(bed, ns, f"http://{NAME}.{ns}:8082/")
        took = time.monotonic() - started
        assert refused.returncode != 0, refused.stdout
        assert took < 5, f"a caller of an unserved port waited {took:.1f}s"
        print(f"\nunserved preview port: curl exit {refused.returncode} after {took:.2f}s")

        # The Service is this session's and selects its shadow pod only.
        service = bed.get_json("-n", ns, "service", NAME)
        assert service["spec"]["type"] == "ClusterIP"
        assert service["metadata"]["labels"]["ktpy.dev/role"] == "preview"
        pods = bed.kubectl(
            "-n", ns, "get", "pods", "-l",
            ",".join(f"{k}={v}" for k, v in service["spec"]["selector"].items()), "-o", "name",
        ).stdout.split()  # fmt: skip
        assert len(pods) == 1
        assert pods[0].startswith(f"pod/{NAME}-kt-")

        # Another developer, through ktpy connect on their laptop.
        connect = run_ktpy(
            other_laptop, "-n", ns, "connect", "--mode", "socks", "--socks-port", "2311"
        )
        connect.wait_ready(timeout=90)
        fetched = other_laptop.run(
            "curl", "-sS", "--max-time", "10", "--socks5-hostname", "127.0.0.1:2311",
            f"http://{NAME}.{ns}:8080/from-other-laptop",
        )  # fmt: skip
        reached = json.loads(fetched.stdout)
        assert (reached["server"], reached["path"]) == ("laptop-v4", "/from-other-laptop")

        # The same NAME from another session, while this one lives: refused, named.
        second = other_laptop.run(
            sys.executable, "-m", "ktpy", "-n", ns, "preview", NAME, "--expose", "3001:8080",
            check=False,
        )  # fmt: skip
        assert second.returncode == 21, second.stderr
        errors = [line for line in second.stderr.splitlines() if line.startswith("Error:")]
        assert len(errors) == 1
        assert "preview session" in errors[0], errors
    finally:
        if connect is not None:
            assert connect.stop(signal.SIGINT) == 130
        code = preview.stop(signal.SIGINT)
        for server in servers:
            server.kill()
            server.wait()
    assert code == 130, preview.errors
    assert bed.ktpy_objects(ns) == []
    assert f"service/{NAME}" not in service_names(bed, ns)
    # Ctrl-C ends with one line saying what was undone, in the order it was, not an error.
    errors = preview.all_errors()
    endings = [line for line in errors if line.startswith("Stopped by Ctrl-C after ")]
    assert len(endings) == 1, errors
    assert f": deleted service/{NAME}, pod/{NAME}-kt-" in endings[0], endings
    assert endings[0].endswith(".")
    assert not [line for line in errors if line.startswith("Error:")], errors


def test_kill9_preview_is_cleaned_by_ktpy_clean(bed: Bed, namespace: str, laptop: Laptop) -> None:
    ns = namespace
    fast = {"KTPY_HEARTBEAT_INTERVAL": "2s", "KTPY_STALE_AFTER": "6s"}
    server = local_server(laptop, 3001, "laptop")
    preview = run_ktpy(
        laptop, "-n", ns, "preview", NAME, "--expose", "3001:8080", "--external", env=fast
    )
    try:
        preview.wait_for(READY, timeout=90)
        assert bed.get_json("-n", ns, "service", NAME)["spec"]["type"] == "LoadBalancer"
        left = bed.ktpy_objects(ns)
        assert f"service/{NAME}" in left
        assert any(o.startswith(f"pod/{NAME}-kt-") for o in left)
        preview.stop(signal.SIGKILL)
        # Nothing was undone by the killed process.
        assert bed.ktpy_objects(ns) == left
        cleaned = laptop.run(sys.executable, "-m", "ktpy", "-n", ns, "clean", env=fast)
        assert f"Service/{ns}/{NAME}" in cleaned.stdout or NAME in cleaned.stdout
    finally:
        preview.stop(signal.SIGKILL)
        server.kill()
        server.wait()
    assert bed.ktpy_objects(ns) == []
    assert f"service/{NAME}" not in service_names(bed, ns)


def _snapshot(bed: Bed, namespace: str) -> list[tuple[str, str, str, str]]:
    """Every object a preview could touch, with uid and resourceVersion."""
    body: dict[str, Any] = bed.get_json(
        "-n", namespace, "pods,services,secrets,configmaps,deployments,endpointslices"
    )
    return sorted(
        (
            item["kind"],
            item["metadata"]["name"],
            item["metadata"]["uid"],
            item["metadata"]["resourceVersion"],
        )
        for item in body["items"]
    )


def test_a_killed_preview_is_live_from_another_laptop_until_its_heartbeat_is_stale(
    bed: Bed, namespace: str, laptop: Laptop, other_laptop: Laptop
) -> None:
    ns = namespace
    expose = ("--expose", "3001:8080")
    doomed = run_ktpy(laptop, "-n", ns, "preview", NAME, *expose, env=BEATS)
    kept = run_ktpy(laptop, "-n", ns, "preview", "kept", *expose, env=BEATS)
    try:
        doomed.wait_for(READY, timeout=90)
        kept.wait_for("Now you can access", timeout=90)
        cleaned = killed_in_a(bed, ns, a=laptop, b=other_laptop, killed=doomed, live=kept)
        assert NAME in cleaned
        assert f"service/{NAME}" not in service_names(bed, ns)
        assert "service/kept" in service_names(bed, ns)
    finally:
        doomed.stop(signal.SIGKILL)
        kept.stop(signal.SIGINT)
    assert bed.ktpy_objects(ns) == []


def test_a_name_taken_by_a_service_fails_with_one_line_and_changes_nothing(
    bed: Bed, namespace: str, laptop: Laptop
) -> None:
    ns = namespace
    bed.kubectl("-n", ns, "create", "service", "clusterip", NAME, "--tcp=8080:80")
    before = _snapshot(bed, ns)
    started = time.monotonic()
    result = laptop.run(
        sys.executable, "-m", "ktpy", "-n", ns, "preview", NAME, "--expose", "3001:8080",
        check=False,
    )  # fmt: skip
    took = time.monotonic() - started
    assert result.returncode == 21, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert errors == [f"Error: service '{NAME}' already exists in namespace '{ns}'"], result.stderr
    assert "Hint:" in result.stderr
    time.sleep(1)  # anything started in the background would show by now
    assert _snapshot(bed, ns) == before
    print(f"\nrefused in {took:.2f}s: {errors[0]}")
