"""The fault matrix (issue 14): every session command through evictions, restarts,
cuts and crashes, with counted outcomes.

One run starts a session of each command under test, side by side in laptop A,
each with a bounded load through it (from a pod in the cluster for exchange,
mesh and preview; from laptop A for connect and forward), then applies the
faults one after the other to all of them at once: faults in series, commands
in parallel, so a restart is paid once for every command. Each cell (command x
fault) is then one test over what was recorded:

- eviction, kube-apiserver, kubelet and CoreDNS restarts, the link cut: 0 failed
  requests from 10 s after the component is Ready again until the next fault
  (failures before that are counted and printed), at least one request counted
  then, and the session still running;
- two developers: laptop B asks for the same target (a second connect and
  forward work beside A's; a second exchange or preview is refused in one line;
  a second mesh member gets its own header) and A's load sees no failure meanwhile;
- SIGKILL: every ktpy of A killed, then ``ktpy clean`` and ``ktpy clean --local``
  in A: the Services and Deployments (spec, labels, annotations) byte for byte as
  before the sessions, nothing of ktpy left, and laptop A's host snapshot (routes,
  rules, addresses, resolver, nft) exactly as before.

The default run has the cells of connect (TUN, SOCKS) and exchange (selector,
scale); ``KTPY_FAULT_MATRIX=full`` adds mesh, preview and forward, which are
otherwise deselected by their ``fault_matrix_full`` mark (tests/e2e/conftest.py
says so in the run's summary). Restarts disturb the shared bed: on a shared
machine run this only under ``flock -x /work/bed.lock``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import (
    CLIENT_IMAGE,
    Bed,
    Laptop,
    RunningKtpy,
    _new_laptop,
    _release_laptop,
    echo_manifest,
    local_server,
    run_ktpy,
)
from tests.e2e.session.test_eviction import evict
from tests.e2e.testbed import config

FULL = os.environ.get("KTPY_FAULT_MATRIX", "").lower() == "full"
DEFAULT_COMMANDS = ("connect-tun", "connect-socks", "exchange-selector", "exchange-scale")
FULL_COMMANDS = ("mesh", "preview", "forward")
TIMED_FAULTS = ("eviction", "apiserver", "kubelet", "coredns", "link-cut")
FAULTS = (*TIMED_FAULTS, "two-developers", "sigkill")
SETTLE = 10.0  # the bound: no failure from this long after the component is Ready again
OBSERVE = 5.0  # requests are then counted this long before the next fault
CUT_SECONDS = 5.0
RATE = 4  # requests a second per load
LOAD_SECONDS = 400  # a load's upper bound; the run ends it sooner
TIMEOUT = 2.0  # per request
REPORT = Path("/tmp/ktpy-fault-matrix.txt")
# The mesh session's beats, as in tests/e2e/commands/test_mesh.py: its shared objects go
# stale (and clean takes them) seconds after a SIGKILL, not minutes.
MESH_BEATS = {"KTPY_HEARTBEAT_INTERVAL": "2s", "KTPY_STALE_AFTER": "6s"}

# The Service each command works on; the laptop's local server port for the
# commands that bring the cluster's traffic to the laptop.
SERVICES = {
    "connect-tun": "plain",
    "connect-socks": "plain",
    "forward": "plain",
    "exchange-selector": "echo",
    "exchange-scale": "echo2",
    "mesh": "echo3",
    "preview": "pv",
}
LOCAL_PORTS = {"exchange-selector": 3001, "exchange-scale": 3002, "mesh": 3003, "preview": 3004}
FORWARD_PORT = 18090
MESH_MARK = "version:fault"


def ktpy_args(
    command: str, *, socks_port: int, local_port: int, mark: str = MESH_MARK
) -> list[str]:
    service = SERVICES[command]
    return {
        "connect-tun": ["connect", "--socks-port", str(socks_port)],
        "connect-socks": ["connect", "--mode", "socks", "--socks-port", str(socks_port)],
        "exchange-selector": ["exchange", service, "--expose", f"{local_port}:80"],
        "exchange-scale": ["exchange", service, "--expose", f"{local_port}:80", "--mode", "scale"],
        "mesh": ["mesh", service, "--expose", f"{local_port}:80", "--version-mark", mark],
        "preview": ["preview", service, "--expose", f"{local_port}:80"],
        "forward": ["forward", service, f"{FORWARD_PORT}:http"],
    }[command]


def ready_marker(command: str) -> str:
    return {
        "mesh": "Now you can access your service by header",
        "preview": "Now you can access your local service in cluster by name",
    }.get(command, RunningKtpy.READY)


# --- loads ------------------------------------------------------------------------------------

# From the laptop: a request every 1/RATE s, each in its own curl (a new connection,
# as a new caller makes), at most `limit` seconds; one JSON line per request.
LAPTOP_LOAD = r"""
import json, subprocess, sys, threading, time
rate, limit, timeout, curl_args = float(sys.argv[1]), float(sys.argv[2]), sys.argv[3], sys.argv[4:]
out = threading.Lock()

def one(sent):
    got = subprocess.run(["curl", "-sS", "--max-time", timeout, *curl_args],
                         capture_output=True, text=True)
    line = {"t": sent, "ok": got.returncode == 0, "pod": None, "err": got.stderr.strip()[:120]}
    try:
        line["pod"] = json.loads(got.stdout)["pod"]
    except Exception:
        line["ok"] = False
    with out:
        print(json.dumps(line), flush=True)

start = time.time()
while time.time() - start < limit:
    sent = time.time()
    threading.Thread(target=one, args=(sent,), daemon=True).start()
    time.sleep(max(0.0, 1 / rate - (time.time() - sent)))
"""


def load_pod(name: str, url: str, header: str | None) -> str:
    """A pod running `ktbed-echo load` for the whole run; its log is read at the end
    (a log outlives API server and kubelet restarts, an exec stream does not)."""
    extra = f", --header, {header}" if header else ""
    return f"""
apiVersion: v1
kind: Pod
metadata: {{name: {name}}}
spec:
  restartPolicy: Never
  terminationGracePeriodSeconds: 0
  containers:
  - name: load
    image: {CLIENT_IMAGE}
    imagePullPolicy: Never
    command: [ktbed-echo, load, --url, "{url}", --rate, "{RATE}", --duration, "{LOAD_SECONDS}s",
              --timeout, "{TIMEOUT:g}s"{extra}]
    securityContext:
      runAsNonRoot: true
      runAsUser: 65532
      allowPrivilegeEscalation: false
      capabilities: {{drop: [ALL]}}
      seccompProfile: {{type: RuntimeDefault}}
"""


@dataclass
class Load:
    """One command's load: where its results come from and what a good answer is."""

    command: str
    good: Callable[[dict[str, Any]], bool]
    proc: subprocess.Popen[str] | None = None  # laptop loads
    pod: str | None = None  # cluster loads
    results: list[dict[str, Any]] = field(default_factory=list)

    def read(self, bed: Bed, namespace: str) -> None:
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.terminate()
            out, _ = self.proc.communicate(timeout=30)
            lines = out.splitlines()
        else:
            assert self.pod is not None
            lines = bed.kubectl("-n", namespace, "logs", self.pod).stdout.splitlines()
        self.results = [r for r in map(json.loads, lines) if not r.get("summary")]

    def live_results(self, bed: Bed, namespace: str) -> list[dict[str, Any]]:
        """Results so far, for cluster loads (the laptop's are read at the end)."""
        assert self.pod is not None
        got = bed.kubectl("-n", namespace, "logs", self.pod, check=False)
        return [r for r in map(json.loads, got.stdout.splitlines()) if not r.get("summary")]


def answered_by(prefix: str) -> Callable[[dict[str, Any]], bool]:
    return lambda r: bool(r["ok"]) and str(r.get("pod") or "").startswith(prefix)


# --- the run ----------------------------------------------------------------------------------


@dataclass
class Fault:
    name: str
    started: float
    ready: float = 0.0  # the component Ready again (the fault over)
    ends: float = 0.0  # the next fault starts
    alive: set[str] = field(default_factory=set)  # commands still running at the end


@dataclass
class Verdict:
    ok: bool
    summary: str


@dataclass
class MatrixRun:
    bed: Bed
    namespace: str
    a: Laptop
    b: Laptop
    commands: tuple[str, ...]
    sessions: dict[str, RunningKtpy] = field(default_factory=dict)
    loads: dict[str, Load] = field(default_factory=dict)
    faults: dict[str, Fault] = field(default_factory=dict)
    second: dict[str, str] = field(default_factory=dict)  # two-developers: what went wrong
    restore: dict[str, list[str]] = field(default_factory=dict)  # sigkill: what differs
    servers: list[subprocess.Popen[str]] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    pods: dict[str, str] = field(default_factory=dict)  # shadow pods after each fault

    # -- setup ---------------------------------------------------------------------------------

    def workloads(self) -> None:
        services = {SERVICES[c] for c in self.commands} - {"pv"}
        for name in sorted(services):
            self.bed.apply(echo_manifest(name, replicas=1), self.namespace)
        for name in sorted(services):
            self.bed.kubectl(
                "-n", self.namespace, "rollout", "status", f"deployment/{name}",
                "--timeout=120s", timeout=130,
            )  # fmt: skip

    def cluster_snapshot(self) -> dict[str, str]:
        """Every Service and Deployment: spec, labels and annotations, as JSON text."""
        found = self.bed.get_json("-n", self.namespace, "services,deployments")
        return {
            f"{body['kind']}/{body['metadata']['name']}": json.dumps(
                {
                    "spec": body["spec"],
                    "labels": body["metadata"].get("labels"),
                    "annotations": body["metadata"].get("annotations"),
                },
                sort_keys=True,
            )
            for body in found["items"]
        }

    def host_snapshot(self) -> dict[str, str]:
        deadline = time.monotonic() + 10
        while "tentative" in self.a.run("ip", "-6", "addr").stdout:
            assert time.monotonic() < deadline
            time.sleep(0.2)
        snapshot: dict[str, str] = json.loads(
            self.a.run(sys.executable, "-m", "ktpy.host", "snapshot").stdout
        )
        return snapshot

    def start_sessions(self) -> None:
        for command in self.commands:
            if command in LOCAL_PORTS:
                self.servers.append(local_server(self.a, LOCAL_PORTS[command], f"laptop-{command}"))
        for number, command in enumerate(self.commands):
            args = ktpy_args(
                command, socks_port=2330 + number, local_port=LOCAL_PORTS.get(command, 0)
            )
            env = MESH_BEATS if command == "mesh" else None
            self.sessions[command] = run_ktpy(self.a, "-n", self.namespace, *args, env=env)
        for command, session in self.sessions.items():
            session.wait_for(ready_marker(command), timeout=180)

    def start_loads(self) -> None:
        ns = self.namespace
        for number, command in enumerate(self.commands):
            if command.startswith("connect") or command == "forward":
                if command == "forward":
                    curl = [f"http://127.0.0.1:{FORWARD_PORT}/"]
                elif command == "connect-socks":
                    curl = [
                        "--socks5-hostname",
                        f"127.0.0.1:{2330 + number}",
                        f"http://plain.{ns}/",
                    ]
                else:
                    curl = [f"http://plain.{ns}/"]  # by the TUN device and ktpy's DNS
                proc = self.a.popen(
                    sys.executable, "-c", LAPTOP_LOAD, str(RATE), str(LOAD_SECONDS),
                    f"{TIMEOUT:g}", *curl,
                )  # fmt: skip
                self.loads[command] = Load(command, answered_by("plain-"), proc=proc)
                continue
            name = f"load-{command}"
            header = "version=fault" if command == "mesh" else None
            self.bed.apply(load_pod(name, f"http://{SERVICES[command]}/", header), ns)
            self.loads[command] = Load(command, answered_by(f"laptop-{command}"), pod=name)
        # A baseline: every cluster load answered by its laptop before the first fault.
        deadline = time.monotonic() + 60
        for load in self.loads.values():
            while load.pod is not None and sum(map(load.good, load.live_results(self.bed, ns))) < 3:
                assert time.monotonic() < deadline, f"{load.command}: no baseline"
                time.sleep(0.5)
        time.sleep(2)  # the laptop loads' baseline (read at the end)

    # -- faults --------------------------------------------------------------------------------

    def timed(self, name: str, act: Callable[[], None]) -> None:
        fault = Fault(name, time.time())
        act()
        fault.ready = time.time()
        self.faults[name] = fault
        time.sleep(SETTLE + OBSERVE)  # the window the cells count requests in
        fault.ends = time.time()
        fault.alive = {c for c, s in self.sessions.items() if s.proc.poll() is None}
        self.timings[name] = fault.ends - fault.started
        self.pods[name] = self.pod_states()

    def pod_states(self) -> str:
        """The shadow pods as the API shows them now: for the report."""
        found = self.bed.get_json("-n", self.namespace, "pods", "-l", "ktpy.dev/session")
        states = []
        for pod in found["items"]:
            status = pod["status"]
            ready = [c["status"] for c in status.get("conditions") or () if c["type"] == "Ready"]
            restarts = sum(c.get("restartCount", 0) for c in status.get("containerStatuses") or ())
            states.append(
                f"{pod['metadata']['name']}:{status.get('phase')}:ready={ready}:restarts={restarts}"
            )
        return " ".join(states)

    def evict_all(self) -> None:
        for session in self.sessions.values():
            evict(self.bed, self.namespace, shadow_of(session))

    def restart(self, component: str) -> Callable[[], None]:
        def act() -> None:
            done = subprocess.run(
                [sys.executable, "-m", "tests.e2e.testbed", "restart", component],
                cwd=config.REPO_ROOT, capture_output=True, text=True, timeout=300,
            )  # fmt: skip
            assert done.returncode == 0, done.stderr

        return act

    def cut_link(self) -> None:
        """Packets to and from laptop A's link dropped (not refused) for CUT_SECONDS."""
        rules = [(tool, chain, flag) for tool in ("iptables", "ip6tables")
                 for chain, flag in (("INPUT", "-i"), ("OUTPUT", "-o"))]  # fmt: skip
        for tool, chain, flag in rules:
            self.a.run(tool, "-I", chain, flag, "eth0", "-j", "DROP")
        try:
            time.sleep(CUT_SECONDS)
        finally:
            for tool, chain, flag in rules:
                self.a.run(tool, "-D", chain, flag, "eth0", "-j", "DROP")

    def two_developers(self) -> None:
        fault = Fault("two-developers", time.time())
        for command in self.commands:
            try:
                problem = self.second_developer(command)
            except AssertionError as exc:
                problem = str(exc)
            if problem:
                self.second[command] = problem
        fault.ready = fault.ends = time.time()
        fault.alive = {c for c, s in self.sessions.items() if s.proc.poll() is None}
        self.faults["two-developers"] = fault
        self.timings["two-developers"] = fault.ends - fault.started

    def second_developer(self, command: str) -> str:
        """Laptop B asks for command's target; what went wrong, or ''."""
        ns, b = self.namespace, self.b
        args = ktpy_args(command, socks_port=2350, local_port=3005, mark="version:other")
        if command.startswith("exchange") or command == "preview":
            got = b.run(sys.executable, "-m", "ktpy", "-n", ns, *args, check=False, timeout=90)
            errors = [line for line in got.stderr.splitlines() if line.startswith("Error:")]
            if got.returncode in (0, 70, 130) or len(errors) != 1:
                return f"not refused in one line: exit {got.returncode}: {got.stderr[-500:]}"
            return ""
        server = local_server(b, 3005, "laptop-b") if command == "mesh" else None
        session = run_ktpy(b, "-n", ns, *args)
        try:
            session.wait_for(ready_marker(command), timeout=120)
            if command == "mesh":
                seen = self.bed.kubectl(
                    "-n", ns, "exec", "load-mesh", "--",
                    "curl", "-sS", "--max-time", "5", "-H", "version: other", "http://echo3/",
                    check=False,
                ).stdout  # fmt: skip
                ok = '"laptop-b"' in seen
            else:
                curl = {
                    "connect-tun": [f"http://plain.{ns}/"],
                    "connect-socks": ["--socks5-hostname", "127.0.0.1:2350", f"http://plain.{ns}/"],
                    "forward": [f"http://127.0.0.1:{FORWARD_PORT}/"],
                }[command]
                seen = b.run("curl", "-sS", "--max-time", "5", *curl, check=False).stdout
                ok = '"plain-' in seen
            if not ok:
                return f"B's session does not work: {seen[:200]}"
        finally:
            code = session.stop(signal.SIGINT, timeout=120)
            if server is not None:
                server.kill()
        return "" if code == 130 else f"B's session ended with {code}: {session.errors[-5:]}"

    def kill_and_clean(self, before_cluster: dict[str, str], before_host: dict[str, str]) -> None:
        started = time.time()
        shadows = {c: shadow_of(s) for c, s in self.sessions.items()}
        for session in self.sessions.values():
            session.stop(signal.SIGKILL)
        ns = self.namespace
        ktpy = [sys.executable, "-m", "ktpy"]
        cleaned = self.a.run(*ktpy, "-n", ns, "clean", check=False, timeout=120)
        local = self.a.run(*ktpy, "clean", "--local", check=False, timeout=60)
        stale = ""
        if "mesh" in self.commands:
            # A mesh's router and stuntman are the mesh's, which any member's heartbeat
            # keeps alive, not the killed process's: clean takes them once that heartbeat
            # is stale (the mesh session beats fast and clean judges alike, MESH_BEATS).
            deadline = time.monotonic() + 30
            while any(owned_by(o.split("/")[1], "echo3") for o in self.bed.ktpy_objects(ns)):
                if time.monotonic() > deadline:
                    stale = "the mesh's objects were not cleaned within 30 s"
                    break
                time.sleep(1)
                cleaned = self.a.run(
                    *ktpy, "-n", ns, "clean", check=False, timeout=120, env=MESH_BEATS
                )
        after_cluster, after_host = self.cluster_snapshot(), self.host_snapshot()
        left = self.bed.ktpy_objects(ns)
        for command in self.commands:
            service = SERVICES[command]
            problems = [
                f"{key} differs" for key in sorted(set(before_cluster) | set(after_cluster))
                if owned_by(key.split("/", 1)[1], service)
                and before_cluster.get(key) != after_cluster.get(key)
            ]  # fmt: skip
            problems += [
                f"{o} left"
                for o in left
                if shadows[command] in o or owned_by(o.split("/")[1], service)
            ]
            problems += [
                f"host: {k} differs" for k in before_host if before_host[k] != after_host.get(k)
            ]
            if command == "mesh" and stale:
                problems.append(stale)
            if cleaned.returncode != 0 or local.returncode != 0:
                problems.append(f"clean exited {cleaned.returncode}, --local {local.returncode}")
            self.restore[command] = problems
        self.timings["sigkill"] = time.time() - started

    # -- cells ---------------------------------------------------------------------------------

    def verdict(self, command: str, fault: str) -> Verdict:
        if fault == "sigkill":
            problems = self.restore[command]
            return Verdict(
                not problems, "restored exactly" if not problems else "; ".join(problems)
            )
        window = self.faults[fault]
        results = self.loads[command].results
        good = self.loads[command].good
        if fault == "two-developers":
            during = [r for r in results if window.started <= r["t"] < window.ends - TIMEOUT]
            failed = [r for r in during if not good(r)]
            problem = self.second.get(command, "")
            summary = f"B: {problem or 'as expected'}; A: {len(failed)}/{len(during)} failed"
            ok = not problem and not failed and command in window.alive
            return Verdict(ok, summary + failures(failed))
        early = [r for r in results if window.started <= r["t"] < window.ready + SETTLE]
        late = [r for r in results if window.ready + SETTLE <= r["t"] < window.ends - TIMEOUT]
        early_failed = [r for r in early if not good(r)]
        late_failed = [r for r in late if not good(r)]
        summary = (
            f"{len(early_failed)}/{len(early)} failed before Ready+{SETTLE:g}s "
            f"({window.ready - window.started:.1f}s to Ready), "
            f"{len(late_failed)}/{len(late)} after"
        )
        alive = command in window.alive
        if not alive:
            summary += "; the session ended"
        ok = alive and bool(late) and not late_failed
        return Verdict(ok, summary + failures(early_failed + late_failed))


def failures(failed: list[dict[str, Any]]) -> str:
    kinds: dict[str, int] = {}
    for r in failed:
        key = (r.get("err") or f"answered by {r.get('pod')}")[:60]
        kinds[key] = kinds.get(key, 0) + 1
    return f" {kinds}" if kinds else ""


def owned_by(name: str, service: str) -> bool:
    """Whether an object is the command's Service or one made for it (``<svc>-kt-...``)."""
    return name == service or name.startswith(f"{service}-kt-")


def shadow_of(session: RunningKtpy) -> str:
    line = session.line_with("Shadow pod ")
    return line.split()[2]


def selected_commands(request: pytest.FixtureRequest) -> tuple[str, ...]:
    wanted = {
        item.callspec.params["command"]
        for item in request.session.items
        if item.module is request.module and hasattr(item, "callspec")
    }
    return tuple(c for c in (*DEFAULT_COMMANDS, *FULL_COMMANDS) if c in wanted)


@pytest.fixture(scope="module")
def matrix(bed: Bed, request: pytest.FixtureRequest) -> Iterator[MatrixRun]:
    started = time.monotonic()
    namespace = f"t-faults-{os.getpid()}"
    bed.kubectl("create", "namespace", namespace)
    a, b = _new_laptop("plain"), _new_laptop("plain")
    run = MatrixRun(bed, namespace, a, b, selected_commands(request))
    try:
        deadline = time.monotonic() + 120  # a busy shared bed's controllers are slow
        while bed.kubectl("-n", namespace, "get", "sa", "default", check=False).returncode:
            assert time.monotonic() < deadline
            time.sleep(0.3)
        run.workloads()
        before_cluster, before_host = run.cluster_snapshot(), run.host_snapshot()
        run.start_sessions()
        run.start_loads()
        run.timings["setup"] = time.monotonic() - started
        run.timed("eviction", run.evict_all)
        run.timed("apiserver", run.restart("apiserver"))
        run.timed("kubelet", run.restart("kubelet"))
        run.timed("coredns", run.restart("coredns"))
        run.timed("link-cut", run.cut_link)
        run.two_developers()
        for load in run.loads.values():
            load.read(bed, namespace)
        run.kill_and_clean(before_cluster, before_host)
        run.timings["total"] = time.monotonic() - started
        report(run)
        yield run
    finally:
        for command, session in run.sessions.items():
            session.stop(signal.SIGINT, timeout=120)
            log = REPORT.with_name(f"ktpy-fault-matrix-{command}.log")
            log.write_text("\n".join(session.output + session.errors) + "\n")
        for load in run.loads.values():
            if load.proc is not None and load.proc.poll() is None:
                load.proc.kill()
        for server in run.servers:
            server.kill()
        for laptop in (a, b):
            _release_laptop(laptop)
        bed.kubectl("delete", "namespace", namespace, "--wait=false", check=False)


def report(run: MatrixRun) -> None:
    lines = [f"fault matrix, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}"]
    lines += [f"  {name}: {seconds:.0f}s" for name, seconds in run.timings.items()]
    lines += [f"  pods after {name}: {states}" for name, states in run.pods.items()]
    for command in run.commands:
        for fault in FAULTS:
            verdict = run.verdict(command, fault)
            lines.append(
                f"{'PASS' if verdict.ok else 'FAIL'} {command} x {fault}: {verdict.summary}"
            )
    text = "\n".join(lines)
    print(text)
    REPORT.write_text(text + "\n")


CELLS = [
    pytest.param(
        command,
        fault,
        id=f"{command}-{fault}",
        marks=[pytest.mark.fault_matrix_full] if command in FULL_COMMANDS else [],
    )
    for command in (*DEFAULT_COMMANDS, *FULL_COMMANDS)
    for fault in FAULTS
]


@pytest.mark.parametrize(("command", "fault"), CELLS)
def test_cell(matrix: MatrixRun, command: str, fault: str) -> None:
    verdict = matrix.verdict(command, fault)
    assert verdict.ok, f"{command} x {fault}: {verdict.summary}"
