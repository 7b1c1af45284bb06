"""Fixtures for end-to-end tests on the real test bed (tests/e2e/testbed).

The bed is brought up once per session (or reused when it is already up). With
CI=true a bed that cannot come up fails the run; elsewhere the e2e tests skip
with the reason, so a developer without root can still run the other tiers.
"""

from __future__ import annotations

import json
import os
import queue
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.testbed import config, hostnet, resolver

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
ECHO_IMAGE = "ktbed.local/echo:0.1.0"
CLIENT_IMAGE = "ktbed.local/client:0.1.0"


def _unavailable(reason: str) -> None:
    if IN_CI:
        pytest.fail(f"test bed unavailable in CI: {reason}", pytrace=False)
    pytest.skip(f"test bed unavailable: {reason}")


MANAGED_BY_KTPY = "app.kubernetes.io/managed-by=ktpy"


@dataclass
class Bed:
    """Handles on the running bed for tests."""

    def kubeconfig(self, user: str = "admin") -> Path:
        return config.KUBECONFIG_DIR / f"{user}.yaml"

    def kubectl(
        self,
        *args: str,
        user: str = "admin",
        check: bool = True,
        input: str | None = None,
        timeout: float = 120,
        env: dict[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        cmd = [str(config.BIN_DIR / "kubectl"), f"--kubeconfig={self.kubeconfig(user)}", *args]
        result = subprocess.run(
            cmd,
            capture_output=True,
            text=True,
            input=input,
            timeout=timeout,
            env={**os.environ, **(env or {})},
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"kubectl {' '.join(args)} failed ({result.returncode}): {result.stderr.strip()}"
            )
        return result

    def ktpy_objects(self, namespace: str) -> list[str]:
        """The pods, Secrets and Services in namespace that carry ktpy's managed-by label."""
        out = self.kubectl(
            "-n", namespace, "get", "pods,secrets,services", "-l", MANAGED_BY_KTPY, "-o", "name"
        )
        return out.stdout.split()

    def get_json(self, *args: str, user: str = "admin") -> Any:
        return json.loads(self.kubectl("get", *args, "-o", "json", user=user).stdout)

    def apply(self, manifest: str, namespace: str) -> None:
        self.kubectl("-n", namespace, "apply", "-f", "-", input=manifest)

    def resolver_queries(self) -> list[dict[str, Any]]:
        return resolver.queries()

    def grant(self, namespace: str, user: str, role: str | None = None) -> None:
        """Bind a developer ClusterRole to `user` in `namespace` only."""
        role = (
            role
            or {
                "dev": "ktbed-developer",
                "dev-noexec": "ktbed-developer-noexec",
                "dev-nosecrets": "ktbed-developer-nosecrets",
            }[user]
        )
        self.kubectl(
            "-n",
            namespace,
            "create",
            "rolebinding",
            f"{user}-binding",
            f"--clusterrole={role}",
            f"--user={user}",
        )


@pytest.fixture(scope="session")
def bed() -> Bed:
    if os.geteuid() != 0:
        _unavailable("the bed needs root")
    up = subprocess.run(
        [sys.executable, "-m", "tests.e2e.testbed", "up"],
        cwd=config.REPO_ROOT,
        stdout=sys.stderr,
        stderr=sys.stderr,
        timeout=5400,
    )
    if up.returncode != 0:
        _unavailable(f"`python -m tests.e2e.testbed up` exited {up.returncode}")
    return Bed()


def new_namespace(bed: Bed, stem: str) -> str:
    """A fresh namespace named after stem, ready for pods; the caller deletes it."""
    stem = "".join(c if c.isalnum() else "-" for c in stem.lower())[:40].strip("-")
    name = f"t-{stem}-{secrets.token_hex(2)}"
    bed.kubectl("create", "namespace", name)
    deadline = time.monotonic() + 30
    # Pods cannot be created before the namespace's default ServiceAccount exists.
    while bed.kubectl("-n", name, "get", "serviceaccount", "default", check=False).returncode != 0:
        assert time.monotonic() < deadline, f"no default ServiceAccount in {name}"
        time.sleep(0.3)
    return name


@pytest.fixture
def namespace(bed: Bed, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace per test, deleted afterwards."""
    name = new_namespace(bed, request.node.name)
    yield name
    bed.kubectl("delete", "namespace", name, "--wait=false", check=False)


@dataclass
class Laptop:
    """A laptop of the bed: a network namespace that reaches only the API server
    and the bed resolver, with its own mount namespace and resolver flavour."""

    number: int
    name: str
    resolver: str

    def _env(self, user: str, env: dict[str, str] | None) -> dict[str, str]:
        return {
            **os.environ,
            "PATH": f"{config.BIN_DIR}:{os.environ['PATH']}",
            "KUBECONFIG": str(config.KUBECONFIG_DIR / f"{user}.yaml"),
            **(env or {}),
        }

    def run(
        self,
        *cmd: str,
        check: bool = True,
        timeout: float = 60,
        user: str = "admin",
        env: dict[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        proc = hostnet.LaptopProcess(
            [*hostnet.laptop_command(self.name), *cmd],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=self._env(user, env),
            cwd=config.REPO_ROOT,
        )
        with proc:
            try:
                stdout, stderr = proc.communicate(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()  # the command itself, not only its runner
                proc.communicate()
                raise
        result = subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)
        if check and result.returncode != 0:
            raise AssertionError(
                f"{' '.join(cmd)} in {self.name} failed ({result.returncode}): "
                f"{result.stdout.strip()} {result.stderr.strip()}"
            )
        return result

    def processes(self, containing: str = "") -> list[str]:
        """The command lines of the laptop's running processes (its pid 1 aside) that
        contain `containing`, read from the host: the processes in its PID namespace."""
        return [line for _, _, line in self.process_table(containing)]

    def process_table(self, containing: str = "") -> list[tuple[int, int, str]]:
        """(host pid, real uid, command line) of each process `processes` lists."""
        pid_ns = hostnet.pid_ns_file(self.name).stat().st_ino
        found = []
        for entry in Path("/proc").iterdir():
            try:
                if not entry.name.isdigit() or (entry / "ns/pid").stat().st_ino != pid_ns:
                    continue
                if (entry / "stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                    continue
                args = (entry / "cmdline").read_bytes().split(b"\0")
                status = (entry / "status").read_text()
            except OSError:
                continue  # ended meanwhile
            line = " ".join(a.decode(errors="replace") for a in args if a)
            if containing in line and hostnet.LAPTOP_EXEC.name + " -- init" not in line:
                uid = next(int(r.split()[1]) for r in status.splitlines() if r.startswith("Uid:"))
                found.append((int(entry.name), uid, line))
        return found

    def popen(
        self, *cmd: str, user: str = "admin", env: dict[str, str] | None = None
    ) -> hostnet.LaptopProcess:
        return hostnet.LaptopProcess(
            [*hostnet.laptop_command(self.name), *cmd],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=self._env(user, env),
            cwd=config.REPO_ROOT,
        )


class RunningKtpy:
    """A ktpy command running in a laptop; stdout lines collected as they come."""

    READY = "All looks good"

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        self.lines: queue.Queue[str] = queue.Queue()
        self.output: list[str] = []
        self.errors: list[str] = []
        threading.Thread(target=self._pump, args=(proc.stdout, self.lines), daemon=True).start()
        self._stderr_reader = threading.Thread(target=self._collect_stderr, daemon=True)
        self._stderr_reader.start()

    @staticmethod
    def _pump(stream: Any, sink: queue.Queue[str]) -> None:
        for line in stream:
            sink.put(line.rstrip("\n"))

    def _collect_stderr(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.errors.append(line.rstrip("\n"))

    def wait_for(self, marker: str, timeout: float = 60) -> list[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.2)
            except queue.Empty:
                if self.proc.poll() is not None and self.lines.empty():
                    break
                continue
            self.output.append(line)
            if marker in line:
                return self.output
        raise AssertionError(
            f"no {marker!r} within {timeout}s; exit {self.proc.poll()}; stdout {self.output}; "
            f"stderr {self.errors[-20:]}"
        )

    def wait_ready(self, timeout: float = 60) -> list[str]:
        return self.wait_for(self.READY, timeout)

    def line_with(self, marker: str) -> str:
        return next(line for line in self.output if marker in line)

    def all_errors(self, timeout: float = 10) -> list[str]:
        """Every stderr line, once the process has exited and its stderr is read to the end."""
        self.proc.wait(timeout)
        self._stderr_reader.join(timeout)
        return self.errors

    def stop(self, sig: int = signal.SIGINT, timeout: float = 60) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout)


def stop_together(sessions: list[RunningKtpy], timeout: float = 60) -> list[int]:
    """Ctrl-C to every session first, then their exit codes: the teardowns run side
    by side, not one after another."""
    for session in sessions:
        if session.proc.poll() is None:
            session.proc.send_signal(signal.SIGINT)
    return [session.proc.wait(timeout) for session in sessions]


def run_ktpy(
    laptop: Laptop, *args: str, user: str = "admin", env: dict[str, str] | None = None
) -> RunningKtpy:
    return RunningKtpy(laptop.popen(sys.executable, "-m", "ktpy", *args, user=user, env=env))


CLAIMS = config.RUN_DIR / "laptop-claims"


def _claim_laptop_number() -> int:
    """A laptop number no other live test process holds (pytest runs side by side
    share the bed): claimed by creating RUN_DIR/laptop-claims/N exclusively."""
    CLAIMS.mkdir(parents=True, exist_ok=True)
    for number in config.E2E_LAPTOPS:
        claim = CLAIMS / str(number)
        try:
            fd = os.open(claim, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            try:
                holder = int(claim.read_text() or "0")
            except (OSError, ValueError):
                continue
            if holder and Path(f"/proc/{holder}").exists():
                continue
            claim.unlink(missing_ok=True)  # its process is gone: take it over
            try:
                fd = os.open(claim, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                continue
        with os.fdopen(fd, "w") as handle:
            handle.write(str(os.getpid()))
        return number
    raise RuntimeError(f"all laptops {config.E2E_LAPTOPS} are claimed")


def _new_laptop(resolver_flavour: str) -> Laptop:
    number = _claim_laptop_number()
    hostnet.delete_laptop(config.laptop_name(number))  # a killed earlier run may have left it
    return Laptop(number, hostnet.create_laptop(number, resolver_flavour), resolver_flavour)


def _release_laptop(made: Laptop) -> None:
    hostnet.delete_laptop(made.name)
    (CLAIMS / str(made.number)).unlink(missing_ok=True)


@pytest.fixture
def other_laptop(bed: Bed) -> Iterator[Laptop]:
    """A second laptop, for another developer."""
    made = _new_laptop("plain")
    yield made
    _release_laptop(made)


@pytest.fixture
def laptop(bed: Bed, request: pytest.FixtureRequest) -> Iterator[Laptop]:
    """A fresh laptop per test; parametrize indirectly with "plain" or "resolved"."""
    resolver_flavour = getattr(request, "param", "plain")
    made = _new_laptop(resolver_flavour)
    yield made
    _release_laptop(made)


# A laptop's local HTTP server (what exchange and preview send cluster traffic to):
# JSON naming itself ("pod" and "server" both carry the marker), the client it saw
# and the path; a big accept queue (loads open a new connection per request).
LOCAL_SERVER = r"""
import json, socket, sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

host, port, marker = sys.argv[1], int(sys.argv[2]), sys.argv[3]

class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"

    def do_GET(self):
        body = json.dumps({"pod": marker, "server": marker, "path": self.path,
                           "client": self.client_address[0]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass

class Server(ThreadingHTTPServer):
    address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
    daemon_threads = True
    request_queue_size = 512

server = Server((host, port), Handler)
print("listening", flush=True)
server.serve_forever()
"""


def local_server(
    laptop: Laptop, port: int, marker: str = "laptop", host: str = "127.0.0.1"
) -> subprocess.Popen[str]:
    """Start LOCAL_SERVER in the laptop and wait until it listens."""
    proc = laptop.popen(sys.executable, "-c", LOCAL_SERVER, host, str(port), marker)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.strip() == "listening", proc.stderr.read() if proc.stderr else line
    return proc


def echo_manifest(name: str = "echo", replicas: int = 2) -> str:
    """The echo Deployment and a Service with one port by target-port name and one by number."""
    return f"""
apiVersion: apps/v1
kind: Deployment
metadata: {{name: {name}}}
spec:
  replicas: {replicas}
  selector: {{matchLabels: {{app: {name}}}}}
  template:
    metadata: {{labels: {{app: {name}}}}}
    spec:
      containers:
      - name: echo
        image: {ECHO_IMAGE}
        imagePullPolicy: Never
        args: [http, --listen, ":8080"]
        env:
        - name: POD_NAME
          valueFrom: {{fieldRef: {{fieldPath: metadata.name}}}}
        - name: POD_NAMESPACE
          valueFrom: {{fieldRef: {{fieldPath: metadata.namespace}}}}
        ports:
        - {{name: http, containerPort: 8080}}
        - {{containerPort: 9090}}
        readinessProbe:
          httpGet: {{path: /healthz, port: 8080}}
          periodSeconds: 1
        securityContext:
          runAsNonRoot: true
          runAsUser: 65532
          allowPrivilegeEscalation: false
          capabilities: {{drop: [ALL]}}
          seccompProfile: {{type: RuntimeDefault}}
---
apiVersion: v1
kind: Service
metadata: {{name: {name}}}
spec:
  selector: {{app: {name}}}
  ports:
  - {{name: http, port: 80, targetPort: http}}
  - {{name: alt, port: 9090, targetPort: 9090}}
"""


def client_manifest(name: str = "client") -> str:
    return f"""
apiVersion: v1
kind: Pod
metadata: {{name: {name}}}
spec:
  terminationGracePeriodSeconds: 0
  containers:
  - name: client
    image: {CLIENT_IMAGE}
    imagePullPolicy: Never
    command: [sleep, infinity]
    securityContext:
      runAsNonRoot: true
      runAsUser: 65532
      allowPrivilegeEscalation: false
      capabilities: {{drop: [ALL]}}
      seccompProfile: {{type: RuntimeDefault}}
"""


@pytest.fixture
def echo(bed: Bed, namespace: str) -> str:
    """The echo workload and a client pod, Ready, in the test's namespace."""
    bed.apply(echo_manifest(), namespace)
    bed.apply(client_manifest(), namespace)
    bed.kubectl(
        "-n", namespace, "rollout", "status", "deployment/echo", "--timeout=90s", timeout=100
    )
    bed.kubectl(
        "-n", namespace, "wait", "pod/client", "--for=condition=Ready", "--timeout=90s", timeout=100
    )
    # Ready pods are not yet a working Service: kube-proxy programs a new Service's
    # rules a moment later. Tests start once the Service answers from inside.
    deadline = time.monotonic() + 60
    while True:
        probe = bed.kubectl(
            "-n", namespace, "exec", "client", "--",
            "curl", "-sf", "--max-time", "2", "-o", "/dev/null", "http://echo/healthz",
            check=False,
        )  # fmt: skip
        if probe.returncode == 0:
            return namespace
        assert time.monotonic() < deadline, f"the echo Service never answered: {probe.stderr}"
        time.sleep(0.5)


FULL_FAULT_MATRIX = os.environ.get("KTPY_FAULT_MATRIX", "").lower() == "full"
_deselected_cells: list[str] = []


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # The fault matrix's cells beyond connect and exchange run with KTPY_FAULT_MATRIX=full
    # only: deselected (not skipped), and the summary says so.
    if not FULL_FAULT_MATRIX:
        chosen = [i for i in items if i.get_closest_marker("fault_matrix_full") is None]
        if len(chosen) != len(items):
            left_out = [i for i in items if i.get_closest_marker("fault_matrix_full")]
            _deselected_cells.extend(i.nodeid for i in left_out)
            config.hook.pytest_deselected(items=left_out)
            items[:] = chosen
    # A test that takes the bed down must run after every test that needs it.
    items.sort(key=lambda item: item.get_closest_marker("bed_teardown") is not None)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if _deselected_cells:
        terminalreporter.write_line(
            f"{len(_deselected_cells)} tests deselected (the fault matrix's cells of mesh, "
            "preview and forward, the other commands' Roles); KTPY_FAULT_MATRIX=full runs them"
        )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "bed_teardown: takes the test bed down; sorted to run last")
    config.addinivalue_line(
        "markers", "fault_matrix_full: a test run only with KTPY_FAULT_MATRIX=full"
    )
