"""`ktpy exchange` and `ktpy recover` end to end (issue 5's acceptance).

A client pod in the cluster calls the echo Service with an open-loop load (a new
connection per request, no retries) while ktpy exchange runs in a laptop whose
local server answers {"pod": "laptop"}. The failed requests from 2 s before to
5 s after each switch are counted; in selector mode there must be none.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import pytest

from tests.e2e.commands.liveness import BEATS, killed_in_a
from tests.e2e.conftest import (
    Bed,
    Laptop,
    RunningKtpy,
    echo_manifest,
    local_server,
    run_ktpy,
)
from tests.e2e.testbed import config

READY = "All looks good"
FAST = {"KTPY_HEARTBEAT_INTERVAL": "2s", "KTPY_STALE_AFTER": "6s"}


def ktpy_run(
    laptop: Laptop, *args: str, env: dict[str, str] | None = None, timeout: float = 90
) -> subprocess.CompletedProcess[str]:
    return laptop.run(sys.executable, "-m", "ktpy", *args, check=False, timeout=timeout, env=env)


def exact(body: dict[str, Any]) -> str:
    """An object as JSON, without what the server changes on any write."""
    meta = body["metadata"]
    for key in ("resourceVersion", "managedFields", "generation"):
        meta.pop(key, None)
    body.pop("status", None)
    return json.dumps(body, sort_keys=True)


def service_text(bed: Bed, namespace: str, name: str = "echo") -> str:
    return exact(bed.get_json("-n", namespace, "service", name))


def deployment_text(bed: Bed, namespace: str, name: str = "echo") -> str:
    return exact(bed.get_json("-n", namespace, "deployment", name))


def selector(bed: Bed, namespace: str, name: str = "echo") -> dict[str, str]:
    spec = bed.get_json("-n", namespace, "service", name)["spec"]
    return dict(spec.get("selector") or {})


def curl(
    bed: Bed, namespace: str, url: str, timeout: float = 5
) -> subprocess.CompletedProcess[str]:
    return bed.kubectl(
        "-n", namespace, "exec", "client", "--",
        "curl", "-sS", "--max-time", str(timeout), url,
        check=False,
    )  # fmt: skip


def answer(bed: Bed, namespace: str, url: str) -> str:
    result = curl(bed, namespace, url)
    assert result.returncode == 0, result.stderr
    return str(json.loads(result.stdout)["pod"])


def wait_answer(bed: Bed, namespace: str, url: str, want: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    seen = ""
    while time.monotonic() < deadline:
        result = curl(bed, namespace, url)
        if result.returncode == 0:
            seen = str(json.loads(result.stdout)["pod"])
            if seen == want or (want == "cluster" and seen.startswith("echo-")):
                return
        time.sleep(0.3)
    raise AssertionError(f"{url} did not answer from {want} within {timeout}s (last: {seen!r})")


def error_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("Error:")]


def exchange(
    laptop: Laptop, namespace: str, *args: str, env: dict[str, str] | None = None
) -> RunningKtpy:
    """`ktpy exchange echo ARGS` in the laptop."""
    return run_ktpy(laptop, "-n", namespace, "exchange", "echo", *args, env=env)


def drain(session: RunningKtpy) -> list[str]:
    """Every stdout line so far, also those after the ready line."""
    time.sleep(0.3)  # the reader thread hands over what the process wrote last
    while not session.lines.empty():
        session.output.append(session.lines.get())
    return session.output


def shadow_name(session: RunningKtpy) -> str:
    found = re.search(r"Shadow pod (\S+)", "\n".join(session.output))
    assert found, session.output
    return found.group(1)


# --- load -----------------------------------------------------------------------------------


@dataclass
class Load:
    """`ktbed-echo load` in the client pod, its JSON lines gathered as they come."""

    proc: subprocess.Popen[str]
    results: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, Any] | None = None

    @classmethod
    def start(
        cls, bed: Bed, namespace: str, url: str, rate: int, seconds: int, header: str = ""
    ) -> Load:
        """header: k=v, sent with every request."""
        proc = subprocess.Popen(
            [
                *_kubectl(bed), "-n", namespace, "exec", "client", "--",
                "ktbed-echo", "load", "--url", url, "--rate", str(rate),
                "--duration", f"{seconds}s", "--timeout", "2s",
                *(["--header", header] if header else []),
            ],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        load = cls(proc)
        threading.Thread(target=load._read, daemon=True).start()
        return load

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            data = json.loads(line)
            if data.get("summary"):
                self.summary = data
            else:
                self.results.append(data)

    def wait(self, timeout: float) -> None:
        self.proc.wait(timeout)
        deadline = time.monotonic() + 5
        while self.summary is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert self.summary is not None, self.proc.stderr.read() if self.proc.stderr else ""

    def seen_from(self, pod: str, since: float) -> bool:
        return any(r["ok"] and r["pod"] == pod and r["t"] >= since for r in list(self.results))


def _kubectl(bed: Bed) -> list[str]:
    from tests.e2e.testbed import config

    return [str(config.BIN_DIR / "kubectl"), f"--kubeconfig={bed.kubeconfig()}"]


@dataclass
class Window:
    name: str
    at: float
    requests: int
    failed: int
    errors: dict[str, int]

    def __str__(self) -> str:
        return (
            f"{self.name}: {self.requests} requests from 2 s before to 5 s after, "
            f"{self.failed} failed {self.errors or ''}"
        )


def window(results: list[dict[str, Any]], name: str, at: float) -> Window:
    inside = [r for r in results if at - 2 <= r["t"] <= at + 5]
    failed = [r for r in inside if not r["ok"]]
    errors: dict[str, int] = {}
    for r in failed:
        key = r["err"] or f"status {r['status']}"
        errors[key] = errors.get(key, 0) + 1
    return Window(name, at, len(inside), len(failed), errors)


def switch_windows(results: list[dict[str, Any]]) -> tuple[Window, Window]:
    """The windows around the two switches, found where the answers flip."""
    laptop = sorted(r["t"] for r in results if r["ok"] and r["pod"] == "laptop")
    assert laptop, "no request reached the laptop"
    return window(results, "switch in", laptop[0]), window(results, "switch out", laptop[-1])


def report(name: str, windows: tuple[Window, ...], load: Load) -> None:
    lines = [f"[{name}] {w}" for w in windows]
    lines.append(f"[{name}] whole run: {load.summary}")
    # Failures outside the windows, by time after the switch in, to tell a switch's
    # doing from something else on the shared bed.
    outside = [
        f"{r['t'] - windows[0].at:+.2f}s {r['err'] or r['status']}"
        for r in sorted(load.results, key=lambda r: r["t"])
        if not r["ok"] and not any(w.at - 2 <= r["t"] <= w.at + 5 for w in windows)
    ]
    if outside:
        lines.append(f"[{name}] failed outside the windows: {outside}")
    text = "\n".join(lines)
    print(text)
    with open("/tmp/ktpy-exchange-windows.txt", "a") as out:  # noqa: PTH123
        out.write(text + "\n")


def run_with_load(
    bed: Bed, namespace: str, laptop: Laptop, mode: str, rate: int = 80
) -> tuple[Window, Window, Load, RunningKtpy]:
    """Load before, during and after an exchange; Ctrl-C once the laptop answered a while."""
    server = local_server(laptop, 3001)
    # kube-proxy may still be programming the fixture's fresh Service: not ktpy's doing.
    wait_answer(bed, namespace, f"http://echo.{namespace}/", "cluster")
    time.sleep(2)
    load = Load.start(bed, namespace, f"http://echo.{namespace}/", rate, 55)
    try:
        time.sleep(4)  # answered by the cluster before the switch
        session = exchange(laptop, namespace, "--expose", "3001:80", "--mode", mode)
        try:
            session.wait_ready(timeout=60)
            ready_at = time.time()
            deadline = time.monotonic() + 20
            while not load.seen_from("laptop", ready_at + 12):
                assert time.monotonic() < deadline, "the laptop stopped answering"
                time.sleep(0.2)
        finally:
            code = session.stop(signal.SIGINT, timeout=120)
        assert code == 130, session.errors
        stopped_at = time.time()
        assert stopped_at < load.results[0]["t"] + 48, "the load ended too soon to see after"
        load.wait(timeout=90)
    finally:
        server.kill()
        if load.proc.poll() is None:
            load.proc.kill()
    windows = switch_windows(load.results)
    after = [r for r in load.results if r["t"] > windows[1].at + 5]
    assert after
    assert all(r["pod"].startswith("echo-") for r in after if r["ok"])
    return windows[0], windows[1], load, session


# --- tests ------------------------------------------------------------------------------------


def test_selector_mode_switches_both_ways_without_a_failed_request(
    bed: Bed, echo: str, laptop: Laptop
) -> None:
    ns = echo
    before = service_text(bed, ns)
    switch_in, switch_out, load, session = run_with_load(bed, ns, laptop, "selector")
    report("selector", (switch_in, switch_out), load)
    assert switch_in.requests >= 300
    assert switch_out.requests >= 300
    assert switch_in.failed == 0, str(switch_in)
    assert switch_out.failed == 0, str(switch_out)
    assert service_text(bed, ns) == before
    assert bed.ktpy_objects(ns) == []
    assert "Restored the selector of service echo" in drain(session)
    # The last line says what Ctrl-C undid: the selector, then the shadow's objects.
    ending = session.all_errors()[-1]
    assert ending.startswith("Stopped by Ctrl-C after "), session.errors
    assert ": restored the selector of service echo; deleted pod/echo-kt-exchange-" in ending


def test_scale_mode_restores_the_replica_count(bed: Bed, echo: str, laptop: Laptop) -> None:
    ns = echo
    before_service = service_text(bed, ns)
    before_deployment = deployment_text(bed, ns)
    switch_in, switch_out, load, _ = run_with_load(bed, ns, laptop, "scale")
    report("scale", (switch_in, switch_out), load)
    assert bed.get_json("-n", ns, "deployment", "echo")["spec"]["replicas"] == 2
    assert deployment_text(bed, ns) == before_deployment
    assert service_text(bed, ns) == before_service
    assert bed.ktpy_objects(ns) == []


def test_scale_mode_shadow_carries_the_template_labels_and_the_deployment_goes_to_zero(
    bed: Bed, echo: str, laptop: Laptop
) -> None:
    ns = echo
    server = local_server(laptop, 3001)
    session = exchange(laptop, ns, "--expose", "3001:80", "--mode", "scale")
    try:
        session.wait_ready()
        shadow = bed.get_json("-n", ns, "pod", shadow_name(session))
        assert shadow["metadata"]["labels"]["app"] == "echo"
        assert "pod-template-hash" not in shadow["metadata"]["labels"]
        assert bed.get_json("-n", ns, "deployment", "echo")["spec"]["replicas"] == 0
        assert answer(bed, ns, f"http://echo.{ns}/") == "laptop"
    finally:
        assert session.stop(signal.SIGINT, timeout=120) == 130
        server.kill()
    assert bed.get_json("-n", ns, "deployment", "echo")["spec"]["replicas"] == 2
    assert answer(bed, ns, f"http://echo.{ns}/").startswith("echo-")


def test_several_ports_named_target_ports_and_a_local_port_with_nothing_behind(
    bed: Bed, echo: str, laptop: Laptop
) -> None:
    ns = echo
    before = service_text(bed, ns)
    first = local_server(laptop, 3001, "laptop-http")
    session = exchange(laptop, ns, "--expose", "3001:http,3002:9090")
    second = None
    try:
        session.wait_ready()
        assert any("nothing listens on local port 3002" in line for line in session.errors)
        shadow = bed.get_json("-n", ns, "pod", shadow_name(session))
        ports = {
            p.get("name"): p["containerPort"] for p in shadow["spec"]["containers"][0]["ports"]
        }
        assert ports["http"] == 8080  # the named target port, as the echo pods declare it
        assert 9090 in ports.values()
        assert answer(bed, ns, f"http://echo.{ns}/") == "laptop-http"
        # Nothing on local 3002: the caller's connection ends at once, it does not hang.
        started = time.monotonic()
        refused = curl(bed, ns, f"http://echo.{ns}:9090/", timeout=10)
        assert refused.returncode != 0
        assert time.monotonic() - started < 3
        second = local_server(laptop, 3002, "laptop-alt")
        assert answer(bed, ns, f"http://echo.{ns}:9090/") == "laptop-alt"
    finally:
        assert session.stop(signal.SIGINT) == 130, session.errors
        first.kill()
        if second is not None:
            second.kill()
    assert service_text(bed, ns) == before
    assert bed.ktpy_objects(ns) == []


def test_without_expose_each_target_port_goes_to_the_same_local_port(
    bed: Bed, echo: str, laptop: Laptop
) -> None:
    ns = echo
    server = local_server(laptop, 8080)
    session = exchange(laptop, ns)
    try:
        session.wait_ready()
        out = "\n".join(session.output)
        assert "service port 80 (http) -> shadow port http=8080 -> local 8080" in out
        assert "service port 9090 (alt) -> shadow port 9090 -> local 9090" in out
        assert answer(bed, ns, f"http://echo.{ns}/") == "laptop"
    finally:
        assert session.stop(signal.SIGINT) == 130, session.errors
        server.kill()


def test_a_second_ctrl_c_skips_the_waits_but_still_restores(
    bed: Bed, echo: str, laptop: Laptop
) -> None:
    ns = echo
    before = service_text(bed, ns)
    session = exchange(laptop, ns, "--expose", "3001:80")
    session.wait_ready()
    session.proc.send_signal(signal.SIGINT)
    time.sleep(0.2)
    started = time.monotonic()
    assert session.stop(signal.SIGINT, timeout=60) == 130, session.errors
    assert time.monotonic() - started < 5
    assert service_text(bed, ns) == before
    deadline = time.monotonic() + 30  # deleted without waiting: it may still terminate
    while bed.ktpy_objects(ns):
        assert time.monotonic() < deadline, bed.ktpy_objects(ns)
        time.sleep(0.5)


def test_kill9_then_recover_restores_the_selector_byte_for_byte(
    bed: Bed, echo: str, laptop: Laptop
) -> None:
    ns = echo
    before = service_text(bed, ns)
    server = local_server(laptop, 3001)
    session = exchange(laptop, ns, "--expose", "3001:80")
    try:
        session.wait_ready()
        shadow = shadow_name(session)
        session.stop(signal.SIGKILL)
        # A crashed exchange leaves the Service selecting the shadow (kt-connect #363).
        assert selector(bed, ns)["ktpy.dev/role"] == "exchange"
        result = ktpy_run(laptop, "-n", ns, "recover", "echo")
        assert result.returncode == 0, result.stderr
        assert f"Deleted pod/{shadow}" in result.stdout
    finally:
        session.stop(signal.SIGKILL)
        server.kill()
    assert service_text(bed, ns) == before
    assert bed.ktpy_objects(ns) == []
    assert answer(bed, ns, f"http://echo.{ns}/").startswith("echo-")
    again = ktpy_run(laptop, "-n", ns, "recover", "echo")
    assert again.returncode == 0
    assert "nothing to recover" in again.stdout


@pytest.mark.parametrize("mode", ["selector", "scale"])
def test_kill9_then_clean_after_the_threshold_restores_the_selector_byte_for_byte(
    bed: Bed, echo: str, laptop: Laptop, other_laptop: Laptop, mode: str
) -> None:
    """Two exchanges in laptop A (echo and echo2), one killed; from laptop B it is live
    until its heartbeat is stale, and only then does B's `clean` restore echo byte for
    byte; echo2's exchange is never touched."""
    ns = echo
    bed.apply(echo_manifest("echo2", replicas=1), ns)
    bed.kubectl("-n", ns, "rollout", "status", "deployment/echo2", "--timeout=90s", timeout=100)
    before = service_text(bed, ns), deployment_text(bed, ns)
    expose = ("--expose", "3001:80", "--mode", mode)
    session = exchange(laptop, ns, *expose, env=BEATS)
    other = run_ktpy(
        laptop, "-n", ns, "exchange", "echo2", "--expose", "3002:80", "--mode", mode, env=BEATS
    )
    try:
        session.wait_ready()
        other.wait_ready()
        held = selector(bed, ns, "echo2")
        cleaned = killed_in_a(bed, ns, a=laptop, b=other_laptop, killed=session, live=other)
        assert "restored service/echo" in cleaned
        assert (service_text(bed, ns), deployment_text(bed, ns)) == before
        assert selector(bed, ns, "echo2") == held
    finally:
        session.stop(signal.SIGKILL)
        other.stop(signal.SIGINT)
    assert bed.ktpy_objects(ns) == []


def test_scale_mode_kill9_then_recover_and_clean_restore_the_deployment_byte_for_byte(
    bed: Bed, echo: str, laptop: Laptop
) -> None:
    ns = echo
    before_service = service_text(bed, ns)
    before_deployment = deployment_text(bed, ns)
    for undo in (["recover", "echo"], ["clean"]):
        session = exchange(laptop, ns, "--expose", "3001:80", "--mode", "scale", env=FAST)
        try:
            session.wait_ready()
            session.stop(signal.SIGKILL)
            assert bed.get_json("-n", ns, "deployment", "echo")["spec"]["replicas"] == 0
            if undo == ["clean"]:
                time.sleep(7)  # past KTPY_STALE_AFTER
            result = ktpy_run(laptop, "-n", ns, *undo, env=FAST)
            assert result.returncode == 0, result.stderr
            assert "estored deployment/echo" in result.stdout
        finally:
            session.stop(signal.SIGKILL)
        assert deployment_text(bed, ns) == before_deployment
        assert service_text(bed, ns) == before_service
        assert bed.ktpy_objects(ns) == []
        bed.kubectl("-n", ns, "rollout", "status", "deployment/echo", "--timeout=90s", timeout=100)


def test_a_second_session_is_refused_naming_the_first_and_changes_nothing(
    bed: Bed, echo: str, laptop: Laptop, other_laptop: Laptop
) -> None:
    ns = echo
    first = exchange(laptop, ns, "--expose", "3001:80")
    try:
        first.wait_ready()
        session_id = re.search(r"\(session (\w+)\)", "\n".join(first.output))
        assert session_id
        held = service_text(bed, ns)
        pods = bed.kubectl("-n", ns, "get", "pods", "-o", "name").stdout.split()
        second = ktpy_run(other_laptop, "-n", ns, "exchange", "echo", "--expose", "3001:80")
        assert second.returncode == 20, second.stderr
        errors = error_lines(second.stderr)
        assert len(errors) == 1
        owner = bed.get_json("-n", ns, "pod", shadow_name(first))["metadata"]["annotations"][
            "ktpy.dev/owner"
        ]
        assert f"already exchanged by {owner}, session {session_id.group(1)}" in errors[0]
        assert service_text(bed, ns) == held
        assert bed.kubectl("-n", ns, "get", "pods", "-o", "name").stdout.split() == pods
    finally:
        assert first.stop(signal.SIGINT) == 130


def test_twenty_sessions_at_once_one_wins_and_the_service_ends_as_it_began(
    bed: Bed, echo: str, laptop: Laptop
) -> None:
    ns = echo
    before = service_text(bed, ns)
    sessions = [exchange(laptop, ns, "--expose", f"{3100 + i}:80") for i in range(20)]
    try:
        deadline = time.monotonic() + 180
        winners: list[RunningKtpy] = []
        while time.monotonic() < deadline:
            for s in sessions:
                while not s.lines.empty():
                    s.output.append(s.lines.get())
            winners = [s for s in sessions if any(READY in line for line in s.output)]
            if all(s.proc.poll() is not None or s in winners for s in sessions):
                break
            time.sleep(0.5)
        losers = [s for s in sessions if s not in winners]
        assert len(winners) == 1, [s.errors[-3:] for s in sessions]
        assert len(losers) == 19
        for loser in losers:
            assert loser.proc.wait(30) == 20, loser.errors[-5:]
            errors = error_lines("\n".join(loser.errors))
            assert len(errors) == 1, loser.errors
            assert "already exchanged by" in errors[0]
        assert selector(bed, ns)["ktpy.dev/role"] == "exchange"
    finally:
        for s in sessions:
            s.stop(signal.SIGINT, timeout=120)
    assert service_text(bed, ns) == before
    assert bed.ktpy_objects(ns) == []


def test_the_watch_puts_the_selector_back_and_the_session_stops_when_restored(
    bed: Bed, echo: str, laptop: Laptop, other_laptop: Laptop
) -> None:
    ns = echo
    before = service_text(bed, ns)
    session = exchange(laptop, ns, "--expose", "3001:80")
    try:
        session.wait_ready()
        ours = selector(bed, ns)
        # Merged into ktpy's selector; put back, and its part ({app: echo}) is what the
        # restore gives back.
        bed.kubectl(
            "-n", ns, "patch", "service", "echo", "-p", '{"spec":{"selector":{"app":"echo"}}}'
        )
        deadline = time.monotonic() + 10
        while selector(bed, ns) != ours:
            assert time.monotonic() < deadline, "the selector was not put back"
            time.sleep(0.2)
        # A live holder is not recovered without --force; with it, the session stops.
        refused = ktpy_run(other_laptop, "-n", ns, "recover", "echo")
        assert refused.returncode == 20
        assert "--force" in refused.stderr
        forced = ktpy_run(other_laptop, "-n", ns, "recover", "echo", "--force")
        assert forced.returncode == 0, forced.stderr
        code = session.proc.wait(30)
        assert code == 22, session.errors
        errors = error_lines("\n".join(session.errors))
        assert len(errors) == 1
        assert "restored by someone else" in errors[0]
    finally:
        session.stop(signal.SIGKILL)
    assert service_text(bed, ns) == before
    assert bed.ktpy_objects(ns) == []


def set_selector(bed: Bed, namespace: str, value: dict[str, str], manager: str) -> list[str]:
    """kubectl's argv that sets the echo Service's selector as field manager ``manager``."""
    patch = json.dumps([{"op": "replace", "path": "/spec/selector", "value": value}])
    return [
        str(config.BIN_DIR / "kubectl"), f"--kubeconfig={bed.kubeconfig()}", "-n", namespace,
        "patch", "service", "echo", "--type=json", "-p", patch, f"--field-manager={manager}",
    ]  # fmt: skip


def ktpy_marks(bed: Bed, namespace: str) -> list[str]:
    meta = bed.get_json("-n", namespace, "service", "echo")["metadata"]
    keys = [*(meta.get("labels") or {}), *(meta.get("annotations") or {})]
    return [k for k in keys if k.startswith("ktpy.dev/")]


def test_a_controller_that_keeps_reverting_the_selector_wins_within_the_bound(
    bed: Bed, echo: str, laptop: Laptop
) -> None:
    """Argo CD's self-heal, played by a loop that puts the selector back every second
    under its own field manager: ktpy re-asserts 3 times, then stops with one line
    naming the writer, and leaves the Service as the controller wants it."""
    ns = echo
    session = exchange(laptop, ns, "--expose", "3001:80")
    controller: subprocess.Popen[str] | None = None
    try:
        session.wait_ready()
        argv = " ".join(
            f"'{a}'" for a in set_selector(bed, ns, {"app": "echo"}, "argocd-controller")
        )
        controller = subprocess.Popen(
            ["sh", "-c", f"while :; do {argv} >/dev/null; sleep 1; done"], text=True
        )
        started = time.monotonic()
        code = session.proc.wait(40)
        took = time.monotonic() - started
    finally:
        if controller is not None:
            controller.kill()
            controller.wait(10)
        session.stop(signal.SIGKILL)
    errors = session.all_errors()
    print(f"\ncontroller fight: the session stopped {took:.1f}s after the loop began")
    assert code == 23, errors
    said = error_lines("\n".join(errors))
    assert len(said) == 1, errors
    assert said[0].startswith(
        "Error: argocd-controller keeps setting /spec/selector of service 'echo' back"
    ), said
    assert "ktpy put its value back 3 times" in said[0]
    assert any("Hint:" in line and "--mode scale" in line for line in errors), errors
    assert any(
        "/spec/selector of service echo is left as argocd-controller set it" in line
        for line in errors
    ), errors
    # 3 re-assertions after pauses of 0.5, 1 and 2 s against a revert a second.
    assert took < 20
    assert selector(bed, ns) == {"app": "echo"}
    assert ktpy_marks(bed, ns) == []
    assert bed.ktpy_objects(ns) == []


def test_a_selector_changed_once_mid_session_ends_as_they_set_it(
    bed: Bed, echo: str, laptop: Laptop
) -> None:
    """A Helm upgrade during the exchange: ktpy keeps the session (its selector back once)
    and at the end gives the Service the selector Helm set, not the stale original."""
    ns = echo
    session = exchange(laptop, ns, "--expose", "3001:80")
    theirs = {"app": "echo", "tier": "v2"}
    try:
        session.wait_ready()
        ours = selector(bed, ns)
        changed = subprocess.run(
            set_selector(bed, ns, theirs, "helm"), capture_output=True, text=True, timeout=30
        )
        assert changed.returncode == 0, changed.stderr
        deadline = time.monotonic() + 10
        while selector(bed, ns) != ours:
            assert time.monotonic() < deadline, "the selector was not put back"
            time.sleep(0.2)
        assert session.proc.poll() is None
    finally:
        code = session.stop(signal.SIGINT)
    errors = session.all_errors()
    assert code == 130, errors
    assert any(
        "/spec/selector of service echo is put back as helm set it, not as it was before" in line
        for line in errors
    ), errors
    assert selector(bed, ns) == theirs
    assert ktpy_marks(bed, ns) == []
    assert bed.ktpy_objects(ns) == []


def test_a_dead_holder_is_taken_over(bed: Bed, echo: str, laptop: Laptop) -> None:
    ns = echo
    before = service_text(bed, ns)
    server = local_server(laptop, 3001)
    crashed = exchange(laptop, ns, "--expose", "3001:80", env=FAST)
    try:
        crashed.wait_ready()
        crashed.stop(signal.SIGKILL)
        session = exchange(laptop, ns, "--expose", "3001:80", env=FAST)
        try:
            session.wait_ready()
            assert any("Taking over service/echo" in line for line in session.errors)
            assert answer(bed, ns, f"http://echo.{ns}/") == "laptop"
        finally:
            assert session.stop(signal.SIGINT) == 130, session.errors
    finally:
        crashed.stop(signal.SIGKILL)
        server.kill()
    assert service_text(bed, ns) == before
    assert bed.ktpy_objects(ns) == []


SELECTORLESS = """
apiVersion: v1
kind: Service
metadata: {name: manual}
spec:
  ports: [{port: 80, targetPort: 8080}]
"""


def snapshot(bed: Bed, namespace: str) -> list[str]:
    listed = bed.get_json("-n", namespace, "pods,services,deployments,secrets,endpointslices")[
        "items"
    ]
    return sorted(
        f"{o['kind']}/{o['metadata']['name']}@{o['metadata']['resourceVersion']}" for o in listed
    )


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["echo", "--expose", "3001:"], 2, "is not LOCAL:REMOTE"),
        (["echo", "--expose", "3001:80,3002:80"], 2, "remote port 80 appears twice"),
        (["nosuch", "--expose", "3001:80"], 12, "service 'nosuch' not found"),
        (["echo", "--expose", "3001:81"], 13, "has no port 81"),
        (["echo", "--expose", "3001:grpc"], 13, "has no port 'grpc'"),
        (["manual", "--expose", "3001:80"], 14, "service 'manual' has no selector"),
        (["echo", "--mode", "scale", "--expose", "3001:80", "--bogus"], 2, "No such option"),
    ],
)
def test_bad_requests_say_one_line_and_change_nothing(
    bed: Bed, echo: str, laptop: Laptop, args: list[str], code: int, message: str
) -> None:
    ns = echo
    bed.apply(SELECTORLESS, ns)
    before = snapshot(bed, ns)
    result = ktpy_run(laptop, "-n", ns, "exchange", *args)
    assert result.returncode == code, result.stderr
    errors = error_lines(result.stderr)
    assert len(errors) == 1, result.stderr
    assert message in errors[0]
    assert snapshot(bed, ns) == before


def test_a_service_on_the_shadows_usual_ssh_port_is_exchanged(
    bed: Bed, echo: str, laptop: Laptop
) -> None:
    # Port 22 -> target 2222 (a git server's ssh, say): the shadow must listen on 2222
    # for the Service, so its own sshd moves to the next free port.
    ns = echo
    bed.kubectl("-n", ns, "apply", "-f", "-", input=(
        "apiVersion: v1\nkind: Service\nmetadata: {name: gitssh}\n"
        "spec:\n  selector: {app: echo}\n  ports: [{name: ssh, port: 22, targetPort: 2222}]\n"
    ))  # fmt: skip
    before = service_text(bed, ns, "gitssh")
    server = local_server(laptop, 3001, "laptop-on-2222")
    session = run_ktpy(laptop, "-n", ns, "exchange", "gitssh", "--expose", "3001:22")
    try:
        session.wait_ready()
        shadow = bed.get_json("-n", ns, "pod", shadow_name(session))
        ports = {p["name"]: p["containerPort"] for p in shadow["spec"]["containers"][0]["ports"]}
        assert ports["kt-ssh"] == 2223
        assert 2222 in ports.values()
        assert answer(bed, ns, f"http://gitssh.{ns}:22/") == "laptop-on-2222"
    finally:
        assert session.stop(signal.SIGINT) == 130, session.errors
        server.kill()
    assert service_text(bed, ns, "gitssh") == before
    assert bed.ktpy_objects(ns) == []
