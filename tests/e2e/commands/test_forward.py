"""`ktpy forward` end to end (issue 6): local ports to Services through the shadow
pod, answering across a rolling restart of the pods behind them."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from typing import Any

from tests.e2e.commands.liveness import BEATS, killed_in_a
from tests.e2e.conftest import Bed, Laptop, run_ktpy
from tests.e2e.testbed import config

CLIENT_TIMEOUT = 10  # seconds, connect to end of body, for both loads
READY = "All looks good"

# A second Service over the echo pods, with a named port, to forward two at once.
ECHO_ALT = """
apiVersion: v1
kind: Service
metadata: {name: echo-alt}
spec:
  selector: {app: echo}
  ports:
  - {name: metrics, port: 9091, targetPort: http}
"""

# Bounded load from inside the laptop: one fresh connection per request (as a new
# caller would make), at most RATE a second, one JSON line per request.
LOAD = r"""
import http.client, json, sys, time
port, rate, limit, timeout = (
    int(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
)
start = time.time()
while time.time() - start < limit:
    sent = time.time()
    line = {"t": sent, "ok": False, "pod": None, "err": None}
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        conn.request("GET", "/")
        answer = conn.getresponse()
        body = answer.read()
        conn.close()
        line["ok"] = answer.status == 200
        line["pod"] = json.loads(body)["pod"]
        if not line["ok"]:
            line["err"] = f"status {answer.status}"
    except Exception as exc:
        line["err"] = f"{type(exc).__name__}: {exc}"
    line["ms"] = round((time.time() - sent) * 1000, 1)
    print(json.dumps(line), flush=True)
    time.sleep(max(0.0, 1 / rate - (time.time() - sent)))
"""


class LoadRun:
    """The LOAD script running in a laptop; its result lines collected as they come."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        self.results: list[dict[str, Any]] = []
        self.errors = ""
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.startswith("{"):
                self.results.append(json.loads(line))

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
        _, self.errors = self.proc.communicate(timeout=30)
        self._reader.join(timeout=5)


def _summary(output: str) -> dict[str, Any] | None:
    for line in reversed(output.splitlines()):
        if '"summary"' in line:
            found: dict[str, Any] = json.loads(line)
            return {k: found[k] for k in ("sent", "ok", "failed", "errors")}
    return None


def echo_pods(bed: Bed, namespace: str) -> set[str]:
    out = bed.kubectl("-n", namespace, "get", "pods", "-l", "app=echo", "-o", "name")
    return {name.removeprefix("pod/") for name in out.stdout.split()}


def get_json(laptop: Laptop, port: int, path: str = "/") -> Any:
    result = laptop.run("curl", "-sS", "--max-time", "10", f"http://127.0.0.1:{port}{path}")
    return json.loads(result.stdout)


def test_forward_follows_the_pods_across_a_rollout_restart(
    bed: Bed, echo: str, laptop: Laptop
) -> None:
    ns = echo
    bed.apply(ECHO_ALT, ns)
    session = run_ktpy(laptop, "-n", ns, "forward", "echo", "18080", "echo-alt", ":metrics")
    load: LoadRun | None = None
    control: dict[str, Any] | None = None
    try:
        output = session.wait_ready(timeout=90)
        text = "\n".join(output)
        assert f"127.0.0.1:18080 to service echo.{ns} port 80 (http)" in text
        assert f"127.0.0.1:9091 to service echo-alt.{ns} port 9091 (metrics)" in text
        old = echo_pods(bed, ns)
        assert get_json(laptop, 18080)["pod"] in old
        assert get_json(laptop, 9091)["pod"] in old

        load = LoadRun(
            laptop.popen(sys.executable, "-c", LOAD, "18080", "20", "180", str(CLIENT_TIMEOUT))
        )
        # The same load from a pod straight to the Service, to compare with.
        in_cluster = subprocess.Popen(
            [
                str(config.BIN_DIR / "kubectl"), f"--kubeconfig={bed.kubeconfig()}", "-n", ns,
                "exec", "client", "--", "ktbed-echo", "load", "--url", "http://echo/",
                "--rate", "20", "--duration", "30s", "--timeout", f"{CLIENT_TIMEOUT}s",
            ],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        )  # fmt: skip
        time.sleep(3)  # a baseline before the restart
        restarted = time.time()
        bed.kubectl("-n", ns, "rollout", "restart", "deployment/echo")
        bed.kubectl("-n", ns, "rollout", "status", "deployment/echo", "--timeout=120s", timeout=130)
        ready = time.time()  # every new pod Ready
        # Keep going on the new pods: 40 requests sent after this point, or 30 s.
        deadline = time.monotonic() + 30
        while sum(r["t"] >= ready for r in load.results) < 40 and time.monotonic() < deadline:
            time.sleep(0.2)
        load.stop()
        control = _summary(in_cluster.communicate(timeout=90)[0])
    finally:
        if load is not None:
            load.stop()
        code = session.stop(signal.SIGINT)
    results = load.results
    new = echo_pods(bed, ns) - old
    during = [r for r in results if restarted <= r["t"] < ready]
    after = [r for r in results if r["t"] >= ready]
    failed_during = [r for r in during if not r["ok"]]
    failed_after = [r for r in after if not r["ok"]]
    report = (
        f"\nforward across rollout restart: {len(results)} requests in all; "
        f"{len(during)} during the restart ({ready - restarted:.1f}s), {len(failed_during)} "
        f"failed; {len(after)} after the new pods were Ready, {len(failed_after)} failed; "
        f"slowest {max(r['ms'] for r in results):.0f} ms; errors: "
        f"{sorted({r['err'] for r in results if r['err']})}"
    )
    print(report)
    for r in failed_during:
        print(f"  failed at +{r['t'] - restarted:.2f}s after {r['ms']} ms: {r['err']}")
    for line in session.errors:
        if "warning" in line or "error" in line:
            print("  ktpy:", line[:300])
    if control:
        print(f"  in-cluster callers of the Service meanwhile (control): {control}")
    assert code == 130, session.errors
    assert results, load.errors
    assert len(during) >= 10, report
    assert failed_after == [], report
    # After the restart the answers come from the new pods: the forward followed them.
    assert after, report
    assert {r["pod"] for r in after} <= new, report
    assert bed.ktpy_objects(ns) == []


def test_forward_refuses_unknown_services_and_ports_before_creating_anything(
    bed: Bed, echo: str, laptop: Laptop
) -> None:
    ns = echo
    cases = [
        (("forward", "nope", "18081"), 12, "service 'nope' not found"),
        (("forward", "echo", "18081:nope"), 13, "has no port 'nope'"),
        (("forward", "echo", "18081", "echo", "18081:alt"), 2, "local port 18081"),
        (("forward", "18081", "echo"), 2, "before any Service"),
    ]
    for args, code, message in cases:
        result = laptop.run(sys.executable, "-m", "ktpy", "-n", ns, *args, check=False)
        assert result.returncode == code, (args, result.stderr)
        errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
        assert len(errors) == 1, (args, result.stderr)
        assert message in errors[0], (args, result.stderr)
    assert bed.ktpy_objects(ns) == []


def test_forward_status_shows_a_forward_session(bed: Bed, echo: str, laptop: Laptop) -> None:
    ns = echo
    session = run_ktpy(laptop, "-n", ns, "forward", "echo", "18082:http")
    try:
        session.wait_ready(timeout=90)
        assert get_json(laptop, 18082)["namespace"] == ns
        rows = json.loads(
            laptop.run(sys.executable, "-m", "ktpy", "-n", ns, "status", "-o", "json").stdout
        )
        assert [(r["role"], r["target"], r["state"]) for r in rows] == [
            ("forward", "service/echo", "live")
        ]
    finally:
        assert session.stop(signal.SIGINT) == 130
    assert bed.ktpy_objects(ns) == []


def test_a_killed_forward_is_live_from_another_laptop_until_its_heartbeat_is_stale(
    bed: Bed, echo: str, laptop: Laptop, other_laptop: Laptop
) -> None:
    ns = echo
    doomed = run_ktpy(laptop, "-n", ns, "forward", "echo", "18083:http", env=BEATS)
    kept = run_ktpy(laptop, "-n", ns, "forward", "echo", "18084:http", env=BEATS)
    try:
        doomed.wait_ready(timeout=90)
        kept.wait_ready(timeout=90)
        killed_in_a(bed, ns, a=laptop, b=other_laptop, killed=doomed, live=kept)
        assert get_json(laptop, 18084)["namespace"] == ns
    finally:
        doomed.stop(signal.SIGKILL)
        assert kept.stop(signal.SIGINT) == 130
    assert bed.ktpy_objects(ns) == []
