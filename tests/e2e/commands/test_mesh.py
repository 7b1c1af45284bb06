"""`ktpy mesh` end to end (issue 12): only requests carrying a developer's header
reach that developer's laptop; everyone else still reaches the Service's pods.

A client pod calls the echo Service (port 80, named target port ``http``) with
and without the header; each laptop runs a local server answering with its
own name."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable

from tests.e2e.commands.test_connect_tun import ECHO_BINARY
from tests.e2e.commands.test_exchange import Load, _kubectl, service_text
from tests.e2e.conftest import ECHO_IMAGE, Bed, Laptop, RunningKtpy, local_server, run_ktpy

READY = "Now you can access your service by header"


def curl(bed: Bed, namespace: str, url: str, *headers: str) -> subprocess.CompletedProcess[str]:
    args = [a for h in headers for a in ("-H", h)]
    return bed.kubectl(
        "-n", namespace, "exec", "client", "--",
        "curl", "-sS", "--max-time", "5", *args, url,
        check=False,
    )  # fmt: skip


def who(bed: Bed, namespace: str, *headers: str, url: str = "http://echo/") -> str:
    result = curl(bed, namespace, url, *headers)
    assert result.returncode == 0, result.stderr
    return str(json.loads(result.stdout)["pod"])


def answers(bed: Bed, namespace: str, prefix: str, *headers: str) -> bool:
    """Whether a request (with ``headers``) is answered by a pod named ``prefix...``."""
    result = curl(bed, namespace, "http://echo/", *headers)
    return result.returncode == 0 and str(json.loads(result.stdout)["pod"]).startswith(prefix)


def mesh(laptop: Laptop, namespace: str, *args: str) -> RunningKtpy:
    return run_ktpy(laptop, "-n", namespace, "mesh", "echo", *args)


def ktpy_objects(bed: Bed, namespace: str) -> list[str]:
    return bed.ktpy_objects(namespace)


def test_the_seed_scenario_header_to_the_laptop_the_rest_to_the_pods(
    bed: Bed, echo: str, laptop: Laptop
) -> None:
    ns = echo
    before = service_text(bed, ns)
    server = local_server(laptop, 3001, "laptop")
    # As a namespace developer without pods/exec: the router is reached over its sshd.
    bed.grant(ns, "dev-noexec")
    session = run_ktpy(
        laptop, "-n", ns, "mesh", "echo", "--expose", "3001:80", "--version-mark", "foobar",
        user="dev-noexec",
    )  # fmt: skip
    try:
        lines = session.wait_for(READY, timeout=180)
        assert "Now you can access your service by header 'VERSION: foobar'" in lines[-1]
        # The header in any case reaches the laptop; no header, or another value, the pods.
        assert who(bed, ns, "VERSION: foobar") == "laptop"
        assert who(bed, ns, "version: foobar") == "laptop"
        for _ in range(5):
            assert who(bed, ns).startswith("echo-")
            assert who(bed, ns, "VERSION: other").startswith("echo-")
        # The Service selects the router; stuntman and router exist beside it.
        spec = bed.get_json("-n", ns, "service", "echo")["spec"]
        assert spec["selector"] == {"ktpy.dev/role": "router", "ktpy.dev/mesh-of": "echo"}
        names = bed.kubectl("-n", ns, "get", "service", "-o", "name").stdout.split()
        assert {"service/echo-kt-stuntman", "service/echo-kt-mesh-foobar"} <= set(names)
    finally:
        code = session.stop(signal.SIGINT, timeout=120)
        server.kill()
    assert code == 130, session.errors
    ending = session.all_errors()[-1]
    assert ending.startswith("Stopped by Ctrl-C after "), session.errors
    assert "removed the route VERSION: foobar" in ending
    assert "restored the selector of service echo" in ending
    # The last one out: the Service as it was, byte for byte, and nothing of ktpy left.
    assert service_text(bed, ns) == before
    assert ktpy_objects(bed, ns) == []
    assert who(bed, ns, "VERSION: foobar").startswith("echo-")


def test_bad_values_and_an_unknown_service_change_nothing(
    bed: Bed, echo: str, laptop: Laptop
) -> None:
    ns = echo
    before = service_text(bed, ns)
    cases = [
        (("mesh", "echo", "--version-mark", "Foo_Bar"), 2, "--version-mark"),
        (("mesh", "echo", "--version-mark", "x" * 40), 2, "--version-mark"),
        (("mesh", "nope", "--version-mark", "a"), 12, "nope"),
        (("mesh", "echo", "--expose", "3001:81"), 13, "81"),
    ]
    for args, code, word in cases:
        result = laptop.run(sys.executable, "-m", "ktpy", "-n", ns, *args, check=False, timeout=60)
        errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
        assert result.returncode == code, (args, result.stderr)
        assert len(errors) == 1, (args, result.stderr)
        assert word in errors[0], (args, errors)
    assert service_text(bed, ns) == before
    assert ktpy_objects(bed, ns) == []


# --- two developers, three protocols, load ------------------------------------------------

MULTI = """
apiVersion: apps/v1
kind: Deployment
metadata: {name: multi}
spec:
  replicas: 2
  selector: {matchLabels: {app: multi}}
  template:
    metadata: {labels: {app: multi}}
    spec:
      containers:
      - name: http
        image: %(image)s
        imagePullPolicy: Never
        args: [http, --listen, ":8080", --quiet]
        env: [{name: POD_NAME, valueFrom: {fieldRef: {fieldPath: metadata.name}}}]
        ports: [{name: http, containerPort: 8080}]
        readinessProbe: {httpGet: {path: /healthz, port: 8080}, periodSeconds: 1}
        securityContext: &sc
          runAsNonRoot: true
          runAsUser: 65532
          allowPrivilegeEscalation: false
          capabilities: {drop: [ALL]}
          seccompProfile: {type: RuntimeDefault}
      - name: grpc
        image: %(image)s
        imagePullPolicy: Never
        args: [grpc, --listen, ":9090"]
        env: [{name: POD_NAME, valueFrom: {fieldRef: {fieldPath: metadata.name}}}]
        ports: [{name: grpc, containerPort: 9090}]
        securityContext: *sc
---
apiVersion: v1
kind: Service
metadata: {name: multi}
spec:
  selector: {app: multi}
  ports:
  - {name: http, port: 80, targetPort: http}
  - {name: grpc, port: 9090, targetPort: 9090, appProtocol: grpc}
"""


def laptop_servers(laptop: Laptop, name: str) -> list[subprocess.Popen[str]]:
    """The developer's own HTTP/1.1+WebSocket and gRPC servers, answering as ``name``."""
    binary = str(ECHO_BINARY[-1])
    env = {"POD_NAME": name}
    servers = [
        laptop.popen(binary, "http", "--listen", "127.0.0.1:3001", "--quiet", env=env),
        laptop.popen(binary, "grpc", "--listen", "127.0.0.1:3002", env=env),
    ]
    for port in (3001, 3002):
        deadline = time.monotonic() + 10
        while laptop.run(
            "bash", "-c", f"exec 3<>/dev/tcp/127.0.0.1/{port}", check=False
        ).returncode:
            assert time.monotonic() < deadline, f"nothing listens on {port} in {laptop.name}"
            time.sleep(0.1)
    return servers


def http_who(bed: Bed, ns: str, *headers: str) -> str:
    return who(bed, ns, *headers, url="http://multi/")


def grpc_who(bed: Bed, ns: str, value: str | None) -> str:
    header = ["--header", f"version={value}"] if value else []
    result = bed.kubectl(
        "-n", ns, "exec", "client", "--",
        "ktbed-echo", "grpc-client", "--addr", "multi:9090", "--timeout", "5s", *header,
        check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return str(json.loads(result.stdout.strip().splitlines()[-1])["pod"])


def ws_who(bed: Bed, ns: str, value: str | None) -> str:
    header = ["--header", f"VERSION={value}"] if value else []
    result = bed.kubectl(
        "-n", ns, "exec", "client", "--",
        "ktbed-echo", "ws-client", "--url", "ws://multi/ws", "--message", "hi", *header,
        check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    greeting, echoed = result.stdout.strip().splitlines()[:2]
    assert echoed == "hi", result.stdout
    return str(json.loads(greeting)["pod"])


def router_info(bed: Bed, ns: str) -> dict[str, str]:
    """HAProxy's `show info` in the router pod (admin's exec: a test's view only)."""
    result = bed.kubectl(
        "-n", ns, "exec", "deploy/multi-kt-router", "--", "bash", "-c",
        "exec 3<>/dev/tcp/127.0.0.1/2225; echo 'show info' >&3; cat <&3",
    )  # fmt: skip
    fields = (line.partition(":") for line in result.stdout.splitlines())
    return {k.strip(): v.strip() for k, _, v in fields if k.strip()}


def until(check: Callable[[], bool], what: str, timeout: float = 10) -> float:
    """Seconds until ``check()`` holds."""
    started = time.monotonic()
    while not check():
        assert time.monotonic() - started < timeout, f"{what}: not within {timeout}s"
        time.sleep(0.1)
    return time.monotonic() - started


def test_two_developers_each_get_their_header_in_http_websocket_and_grpc(
    bed: Bed, echo: str, laptop: Laptop, other_laptop: Laptop
) -> None:
    ns = echo
    bed.apply(MULTI % {"image": ECHO_IMAGE}, ns)
    bed.kubectl("-n", ns, "rollout", "status", "deployment/multi", "--timeout=90s", timeout=100)
    before = service_text(bed, ns, "multi")
    servers = laptop_servers(laptop, "dev-a") + laptop_servers(other_laptop, "dev-b")
    expose = ("--expose", "3001:80,3002:9090")
    a = run_ktpy(laptop, "-n", ns, "mesh", "multi", *expose, "--version-mark", "a")
    b: RunningKtpy | None = None
    load: Load | None = None
    streams: list[subprocess.Popen[str]] = []
    try:
        a.wait_for(READY, timeout=180)
        assert http_who(bed, ns, "VERSION: a") == "dev-a"
        assert http_who(bed, ns).startswith("multi-")
        info_before = router_info(bed, ns)

        # Load without the header (a new connection per request, no retries), and A's
        # open WebSocket and gRPC connection, while B joins and leaves.
        load = Load.start(bed, ns, "http://multi/", 50, 40)
        messages = [x for i in range(40) for x in ("--message", f"m{i}")]
        stream_args = (
            ["ws-client", "--url", "ws://multi/ws", "--header", "version=a",
             "--interval", "500ms", *messages],
            ["grpc-client", "--addr", "multi:9090", "--header", "version=a",
             "--count", "40", "--interval", "500ms"],
        )  # fmt: skip
        streams = [
            subprocess.Popen(
                [*_kubectl(bed), "-n", ns, "exec", "client", "--", "ktbed-echo", *args],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for args in stream_args
        ]
        time.sleep(3)  # load and streams running before B joins
        b = run_ktpy(other_laptop, "-n", ns, "mesh", "multi", *expose, "--version-mark", "b")
        b.wait_for(READY, timeout=120)
        joined = until(lambda: http_who(bed, ns, "VERSION: b") == "dev-b", "B's route")
        for value, dev in (("a", "dev-a"), ("b", "dev-b")):
            assert http_who(bed, ns, f"version: {value}") == dev
            assert ws_who(bed, ns, value) == dev
            assert grpc_who(bed, ns, value) == dev
        assert ws_who(bed, ns, None).startswith("multi-")
        assert grpc_who(bed, ns, None).startswith("multi-")
        assert b.stop(signal.SIGINT, timeout=60) == 130
        left = until(lambda: http_who(bed, ns, "VERSION: b").startswith("multi-"), "B gone")
        print(f"\nB's route: in effect {joined:.2f}s after ready, gone {left:.2f}s after exit")
        assert http_who(bed, ns, "VERSION: a") == "dev-a"
        info_after = router_info(bed, ns)
        assert info_after["Pid"] == info_before["Pid"]
        assert int(info_after["Uptime_sec"]) >= int(info_before["Uptime_sec"])
        for stream in streams:
            out, err = stream.communicate(timeout=60)
            assert stream.returncode == 0, err
            pods = {
                json.loads(line).get("pod") for line in out.splitlines() if line.startswith("{")
            }
            assert pods == {"dev-a"}, out
        load.wait(timeout=90)
        failed = [r for r in load.results if not r["ok"]]
        wrong = [r for r in load.results if r["ok"] and not r["pod"].startswith("multi-")]
        print(f"load without the header: {len(load.results)} requests, {len(failed)} failed")
        assert len(load.results) >= 1000
        assert failed == []
        assert wrong == []
    finally:
        for proc in (a, b):
            if proc is not None:
                proc.stop(signal.SIGINT, timeout=120)
        for proc in [*servers, *streams]:
            proc.kill()
        if load is not None and load.proc.poll() is None:
            load.proc.kill()
    assert service_text(bed, ns, "multi") == before
    assert ktpy_objects(bed, ns) == []


# --- faults, sharing, manual mode ----------------------------------------------------------

FAST = {"KTPY_HEARTBEAT_INTERVAL": "2s", "KTPY_STALE_AFTER": "6s"}


def test_a_deleted_router_pod_comes_back_with_the_routes(
    bed: Bed, echo: str, laptop: Laptop
) -> None:
    ns = echo
    server = local_server(laptop, 3001, "laptop")
    session = mesh(laptop, ns, "--expose", "3001:80", "--version-mark", "foo")
    try:
        session.wait_for(READY, timeout=180)
        assert who(bed, ns, "VERSION: foo") == "laptop"
        old = bed.kubectl(
            "-n", ns, "get", "pod", "-l", "ktpy.dev/role=router", "-o", "name"
        ).stdout.split()
        assert len(old) == 1, old
        deleted_at = time.monotonic()
        bed.kubectl("-n", ns, "delete", old[0], "--wait=false")
        bed.kubectl("-n", ns, "wait", "--for=delete", old[0], "--timeout=60s", timeout=70)
        gone_at = time.monotonic()
        failed = 0
        while True:  # the old pod is gone: only the new one can answer now
            result = curl(bed, ns, "http://echo/", "VERSION: foo")
            if result.returncode == 0 and json.loads(result.stdout)["pod"] == "laptop":
                break
            failed += 1
            assert time.monotonic() - deleted_at < 10, f"routes not back within 10 s: {result}"
            time.sleep(0.2)
        back = time.monotonic() - deleted_at
        print(f"\nrouter pod deleted: old one gone after {gone_at - deleted_at:.1f}s, routes back "
              f"after {back:.1f}s, {failed} failed requests after it was gone")  # fmt: skip
        until(lambda: answers(bed, ns, "echo-"), "the default route", 10)
    finally:
        session.stop(signal.SIGINT, timeout=120)
        server.kill()
    assert ktpy_objects(bed, ns) == []


def state_of(laptop: Laptop, ns: str, session_target: str) -> str:
    result = laptop.run(
        sys.executable, "-m", "ktpy", "-n", ns, "status", "-o", "json", env=FAST, check=False
    )
    rows = json.loads(result.stdout or "[]")
    found = [r["state"] for r in rows if session_target in str(r["target"])]
    return found[0] if found else "gone"


def test_kill_9_of_one_member_leaves_the_other_and_clean_removes_only_its_parts(
    bed: Bed, echo: str, laptop: Laptop, other_laptop: Laptop
) -> None:
    ns = echo
    before = service_text(bed, ns)
    servers = [local_server(laptop, 3001, "dev-a"), local_server(other_laptop, 3001, "dev-b")]
    a = run_ktpy(laptop, "-n", ns, "mesh", "echo", "--expose", "3001:80",
                 "--version-mark", "a", env=FAST)  # fmt: skip
    b = run_ktpy(other_laptop, "-n", ns, "mesh", "echo", "--expose", "3001:80",
                 "--version-mark", "b", env=FAST)  # fmt: skip
    try:
        a.wait_for(READY, timeout=180)
        b.wait_for(READY, timeout=180)
        assert who(bed, ns, "VERSION: a") == "dev-a"
        # status shows both members with their values.
        assert state_of(other_laptop, ns, "(VERSION: a)") == "live"
        assert state_of(other_laptop, ns, "(VERSION: b)") == "live"
        a.stop(signal.SIGKILL)
        # A's session goes stale by its heartbeat alone; only then does clean take it.
        until(lambda: state_of(other_laptop, ns, "(VERSION: a)") != "live", "A stale", 30)
        cleaned = ktpy_run(other_laptop, ns, "clean")
        assert cleaned.returncode == 0, cleaned.stderr
        assert "removed the route VERSION: a" in cleaned.stdout
        # B's heartbeat takes A's route out of the running router too.
        until(lambda: answers(bed, ns, "echo-", "VERSION: a"), "A's route gone")
        assert who(bed, ns, "VERSION: b") == "dev-b"
        assert who(bed, ns).startswith("echo-")
        names = bed.kubectl("-n", ns, "get", "service", "-o", "name").stdout.split()
        assert "service/echo-kt-mesh-a" not in names
        assert "service/echo-kt-mesh-b" in names
        # And after B crashes too, clean puts everything back.
        b.stop(signal.SIGKILL)
        until(lambda: state_of(laptop, ns, "(VERSION: b)") != "live", "B stale", 30)
        until(lambda: ktpy_run(laptop, ns, "clean").returncode == 0
              and ktpy_objects(bed, ns) == [], "everything cleaned", 30)  # fmt: skip
    finally:
        for proc in (a, b):
            proc.stop(signal.SIGKILL)
        for server in servers:
            server.kill()
    assert service_text(bed, ns) == before
    assert ktpy_objects(bed, ns) == []


def ktpy_run(laptop: Laptop, ns: str, *args: str) -> subprocess.CompletedProcess[str]:
    return laptop.run(
        sys.executable, "-m", "ktpy", "-n", ns, *args, env=FAST, check=False, timeout=120
    )


def test_manual_mode_adds_only_a_labelled_shadow_and_exchange_and_mesh_refuse_each_other(
    bed: Bed, echo: str, laptop: Laptop, other_laptop: Laptop
) -> None:
    ns = echo
    before = service_text(bed, ns)
    manual = mesh(laptop, ns, "--expose", "3001:80", "--version-mark", "m1", "--mode", "manual")
    try:
        manual.wait_for(READY, timeout=120)
        # Only the shadow pod (and its Secret), carrying the Service's labels and the mark.
        pods = bed.get_json("-n", ns, "pods", "-l", "app=echo,version=m1")["items"]
        assert len(pods) == 1
        assert pods[0]["metadata"]["name"] == "echo-kt-mesh-m1"
        assert service_text(bed, ns) == before
        kinds = {o.split("/")[0] for o in ktpy_objects(bed, ns)}
        assert kinds <= {"pod", "secret"}, ktpy_objects(bed, ns)
    finally:
        assert manual.stop(signal.SIGINT, timeout=60) == 130
    assert ktpy_objects(bed, ns) == []

    meshed = mesh(laptop, ns, "--expose", "3001:80", "--version-mark", "m2")
    try:
        meshed.wait_for(READY, timeout=180)
        meshed_text = service_text(bed, ns)
        # (No short stale-after here: the meshed session above beats every 30 s.)
        refused = other_laptop.run(
            sys.executable, "-m", "ktpy", "-n", ns, "exchange", "echo", "--expose", "3001:80",
            check=False, timeout=60,
        )  # fmt: skip
        assert refused.returncode == 20, refused.stderr
        errors = [line for line in refused.stderr.splitlines() if line.startswith("Error:")]
        assert len(errors) == 1
        assert "meshed" in errors[0], errors
        taken = other_laptop.run(
            sys.executable, "-m", "ktpy", "-n", ns, "mesh", "echo", "--version-mark", "m2",
            check=False, timeout=60,
        )  # fmt: skip
        assert taken.returncode == 21, taken.stderr
        assert "m2" in taken.stderr
        assert service_text(bed, ns) == meshed_text
    finally:
        meshed.stop(signal.SIGINT, timeout=120)
    assert service_text(bed, ns) == before
    assert ktpy_objects(bed, ns) == []

    # And a Service under exchange is refused by mesh, naming that session.
    server = local_server(laptop, 3001, "laptop")
    exchanged = run_ktpy(laptop, "-n", ns, "exchange", "echo", "--expose", "3001:80")
    try:
        exchanged.wait_for("All looks good", timeout=120)
        exchanged_text = service_text(bed, ns)
        refused = other_laptop.run(
            sys.executable, "-m", "ktpy", "-n", ns, "mesh", "echo", "--version-mark", "m3",
            check=False, timeout=60,
        )  # fmt: skip
        assert refused.returncode == 20, refused.stderr
        errors = [line for line in refused.stderr.splitlines() if line.startswith("Error:")]
        assert len(errors) == 1
        assert "exchanged" in errors[0]
        assert "session" in errors[0]
        assert service_text(bed, ns) == exchanged_text
    finally:
        exchanged.stop(signal.SIGINT, timeout=120)
        server.kill()
    assert service_text(bed, ns) == before
    assert ktpy_objects(bed, ns) == []


def test_recover_puts_a_meshed_service_back(bed: Bed, echo: str, laptop: Laptop) -> None:
    ns = echo
    before = service_text(bed, ns)
    session = mesh(laptop, ns, "--expose", "3001:80", "--version-mark", "r1")
    try:
        session.wait_for(READY, timeout=180)
        session.stop(signal.SIGKILL)
        # The mesh still looks live (its heartbeat is fresh): recover says so, and --force
        # puts the Service back and removes router and stuntman.
        refused = laptop.run(
            sys.executable, "-m", "ktpy", "-n", ns, "recover", "echo", check=False, timeout=60
        )
        assert refused.returncode == 20, refused.stderr
        forced = laptop.run(
            sys.executable, "-m", "ktpy", "-n", ns, "recover", "echo", "--force", timeout=120
        )
        assert "recovered" in forced.stdout
        assert service_text(bed, ns) == before
        names = bed.kubectl("-n", ns, "get", "deploy,service", "-o", "name").stdout.split()
        assert not [n for n in names if "kt-router" in n or "kt-stuntman" in n]
        assert who(bed, ns, "VERSION: r1").startswith("echo-")
    finally:
        session.stop(signal.SIGKILL)
