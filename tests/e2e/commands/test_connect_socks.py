"""The shadow-pod session end to end, through `ktpy connect --mode socks`, run in a
laptop that reaches only the API server (issue 3's acceptance)."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time

import pytest

from tests.e2e.commands.liveness import BEATS, killed_in_a
from tests.e2e.conftest import Bed, Laptop, echo_manifest, run_ktpy
from tests.e2e.testbed import config


def _socks_get(laptop: Laptop, port: int, url: str) -> dict[str, object]:
    result = laptop.run(
        "curl", "-sf", "--max-time", "10", "--socks5-hostname", f"127.0.0.1:{port}", url
    )
    body: dict[str, object] = json.loads(result.stdout)
    return body


def _shadow_ip(bed: Bed, namespace: str, output: list[str]) -> str:
    pod = re.search(r"Shadow pod (\S+)", "\n".join(output))
    assert pod, output
    return str(bed.get_json("-n", namespace, "pod", pod.group(1))["status"]["podIP"])


def test_socks_session_reaches_a_service_by_name_and_leaves_nothing(
    bed: Bed, echo: str, laptop: Laptop, other_laptop: Laptop
) -> None:
    ns = echo
    session = run_ktpy(laptop, "-n", ns, "connect", "--mode", "socks", "--socks-port", "2301")
    try:
        output = session.wait_ready()
        body = _socks_get(laptop, 2301, f"http://echo.{ns}/")
        # The echo server saw the shadow pod as its client: the request went through the tunnel.
        assert str(body["client"]).split(":")[0] == _shadow_ip(bed, ns, output)
        assert (
            body["pod"]
            in bed.kubectl("-n", ns, "get", "pods", "-l", "app=echo", "-o", "name").stdout
        )
        # Another developer, on another laptop, with namespace rights only, sees it live.
        bed.grant(ns, "dev")
        listed = other_laptop.run(
            sys.executable, "-m", "ktpy", "-n", ns, "status", "-o", "json", user="dev"
        )
        rows = json.loads(listed.stdout)
        assert [r["state"] for r in rows] == ["live"]
        assert rows[0]["role"] == "connect"
    finally:
        code = session.stop(signal.SIGINT)
    assert code == 130
    assert bed.ktpy_objects(ns) == []


def test_kill9_session_is_cleaned_while_a_live_one_survives(
    bed: Bed, echo: str, laptop: Laptop, other_laptop: Laptop
) -> None:
    """Two sessions in laptop A, one killed; laptop B (another developer) sees it live
    until its heartbeat is stale, and only then does its `clean` remove it."""
    ns = echo
    args = ("-n", ns, "connect", "--mode", "socks", "--socks-port")
    doomed = run_ktpy(laptop, *args, "2302", env=BEATS)
    survivor = run_ktpy(laptop, *args, "2303", env=BEATS)
    try:
        doomed.wait_ready()
        survivor.wait_ready()
        killed_in_a(bed, ns, a=laptop, b=other_laptop, killed=doomed, live=survivor)
        assert laptop.processes("2302") == []  # nothing of the killed ktpy runs on
        assert _socks_get(laptop, 2303, f"http://echo.{ns}/")["pod"]
    finally:
        doomed.stop(signal.SIGKILL)
        survivor.stop(signal.SIGINT)
    assert bed.ktpy_objects(ns) == []


def test_missing_image_fails_fast_with_one_line_and_leaves_nothing(
    bed: Bed, namespace: str, laptop: Laptop
) -> None:
    started = time.monotonic()
    result = laptop.run(
        sys.executable, "-m", "ktpy", "-n", namespace, "--image", "ktbed.local/not-built:0.0.1",
        "connect", check=False, timeout=60,
    )  # fmt: skip
    elapsed = time.monotonic() - started
    assert result.returncode == 30, result.stderr
    assert elapsed < 15
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1
    assert "ktbed.local/not-built:0.0.1" in errors[0]
    assert bed.ktpy_objects(namespace) == []


@pytest.mark.parametrize("user", ["dev", "dev-noexec", "dev-nosecrets"])
def test_session_in_the_restricted_namespace_as_a_namespace_developer(
    bed: Bed, laptop: Laptop, user: str
) -> None:
    ns = "ktbed-restricted"
    bed.kubectl("-n", ns, "delete", "rolebinding", f"{user}-binding", "--ignore-not-found")
    bed.grant(ns, user)
    try:
        # A name of its own per user: a re-created Service would get a new ClusterIP
        # that cluster DNS may not know yet (it caches for 30 s).
        bed.apply(echo_manifest(name=f"echo-{user}", replicas=1), ns)
        bed.kubectl(
            "-n", ns, "rollout", "status", f"deployment/echo-{user}", "--timeout=90s", timeout=100
        )
        session = run_ktpy(
            laptop, "-n", ns, "connect", "--mode", "socks", "--socks-port", "2304", user=user
        )
        try:
            session.wait_ready()
            assert _socks_get(laptop, 2304, f"http://echo-{user}.{ns}/")["namespace"] == ns
        finally:
            assert session.stop(signal.SIGINT) == 130
        assert bed.ktpy_objects(ns) == []
    finally:
        bed.kubectl("-n", ns, "delete", "rolebinding", f"{user}-binding", "--ignore-not-found")
        bed.kubectl("-n", ns, "delete", "deployment,service", f"echo-{user}", "--ignore-not-found")


def test_tunnel_reconnects_after_the_api_server_restarts(
    bed: Bed, echo: str, laptop: Laptop
) -> None:
    ns = echo
    session = run_ktpy(laptop, "-n", ns, "connect", "--mode", "socks", "--socks-port", "2305")
    try:
        session.wait_ready()
        assert _socks_get(laptop, 2305, f"http://echo.{ns}/")["pod"]
        restart = subprocess.run(
            [sys.executable, "-m", "tests.e2e.testbed", "restart", "apiserver"],
            cwd=config.REPO_ROOT, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert restart.returncode == 0, restart.stderr
        deadline = time.monotonic() + 60
        while True:
            answer = laptop.run(
                "curl", "-s", "--max-time", "5", "--socks5-hostname", "127.0.0.1:2305",
                f"http://echo.{ns}/", check=False,
            )  # fmt: skip
            if answer.returncode == 0:
                break
            assert time.monotonic() < deadline, "the tunnel did not come back within 60 s"
            time.sleep(1)
        assert json.loads(answer.stdout)["namespace"] == ns
        log = "\n".join(session.errors)
        assert "tunnel dropped" in log
        assert "tunnel reconnected" in log
    finally:
        assert session.stop(signal.SIGINT) == 130
    assert bed.ktpy_objects(ns) == []
