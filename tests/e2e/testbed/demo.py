"""The guided demo: the seed article's story told on the bed, from a bed laptop.

A small application (Debian's nginx, Service ``nginx`` port 80, in namespace
``demo-time``) is deployed as the admin; then, inside a laptop (a machine of its
own that reaches only the API server), ktpy connects, reaches the Service by name,
exchanges it to a local server, meshes it with a header and previews the local
server as a Service of its own. Each step prints the command a user would type
and what it answered; every answer is checked, so the demo is also a test (exit 1
at the first step that does not do what it says).

    python -m tests.e2e.testbed demo [--laptop N]      (scripts/demo)
"""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO

from . import config, hostnet, images, node

NAMESPACE = "demo-time"
DEFAULT_LAPTOP = 2
LOCAL_PORT = 3001
LOCAL_ANSWER = "hello from your laptop: the local nginx"
# What a curl through ktpy may take to see a switch that ktpy already reported done
# (kube-proxy programs rules a moment after the endpoints change).
CURL_PATIENCE = 15.0
# A log record (ktpy's structured logs): the demo shows the lines meant for people.
_LOG_RECORD = re.compile(r"^\d{4}-\d\d-\d\dT")

APP = f"""
apiVersion: v1
kind: Namespace
metadata: {{name: {NAMESPACE}}}
---
apiVersion: apps/v1
kind: Deployment
metadata: {{name: nginx, namespace: {NAMESPACE}}}
spec:
  replicas: 1
  selector: {{matchLabels: {{app: nginx}}}}
  template:
    metadata: {{labels: {{app: nginx}}}}
    spec:
      containers:
      - name: nginx
        image: {images.NGINX_REF}
        imagePullPolicy: Never
        ports: [{{name: http, containerPort: 8080}}]
        readinessProbe:
          httpGet: {{path: /, port: 8080}}
          periodSeconds: 1
        securityContext:
          runAsNonRoot: true
          allowPrivilegeEscalation: false
          capabilities: {{drop: [ALL]}}
          seccompProfile: {{type: RuntimeDefault}}
---
apiVersion: v1
kind: Service
metadata: {{name: nginx, namespace: {NAMESPACE}}}
spec:
  selector: {{app: nginx}}
  ports: [{{name: http, port: 80, targetPort: http}}]
"""


class DemoFailed(Exception):
    """A step did not do what the demo says it does."""


def say(text: str = "") -> None:
    print(text, flush=True)


def show(lines: Sequence[str]) -> None:
    for line in lines:
        if line.strip():
            say(f"    {line.rstrip()}")


class Laptop:
    """Runs commands in one bed laptop with this checkout's ktpy."""

    def __init__(self, number: int) -> None:
        self.name = hostnet.create_laptop(number)
        self.env = {
            **os.environ,
            "PATH": f"{config.BIN_DIR}:{os.environ.get('PATH', '')}",
            "KUBECONFIG": str(config.KUBECONFIG_DIR / "admin.yaml"),
            "PYTHONPATH": str(config.REPO_ROOT),
        }

    def argv(self, command: Sequence[str]) -> list[str]:
        if command[0] == "ktpy":
            command = [sys.executable, "-m", "ktpy", *command[1:]]
        return [*hostnet.laptop_command(self.name), *command]

    def run(self, command: Sequence[str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.argv(command),
            capture_output=True,
            text=True,
            timeout=timeout,
            env=self.env,
            cwd=config.REPO_ROOT,
            check=False,
        )

    def start(self, command: Sequence[str]) -> Background:
        proc = hostnet.LaptopProcess(
            self.argv(command),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=self.env,
            cwd=config.REPO_ROOT,
        )
        return Background(" ".join(command), proc)


class Background:
    """A command left running (``cmd &``): its lines shown as they come, Ctrl-C to end."""

    def __init__(self, text: str, proc: hostnet.LaptopProcess) -> None:
        self.text = text
        self.proc = proc
        self.lines: queue.Queue[tuple[str, str]] = queue.Queue()
        for stream, name in ((proc.stdout, "out"), (proc.stderr, "err")):
            threading.Thread(target=self._pump, args=(stream, name), daemon=True).start()

    def _pump(self, stream: IO[str] | None, name: str) -> None:
        assert stream is not None
        for line in stream:
            self.lines.put((name, line.rstrip("\n")))

    def _show_pending(self, until: str | None, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                _, line = self.lines.get(timeout=0.1)
            except queue.Empty:
                if self.proc.poll() is not None and self.lines.empty():
                    return False
                continue
            if not _LOG_RECORD.match(line):
                show([line])
            if until is not None and until in line:
                return True
        return until is None

    def wait_for(self, marker: str, timeout: float = 90) -> None:
        if not self._show_pending(marker, timeout):
            code = self.proc.poll()
            if code is not None:
                raise DemoFailed(f"{self.text}: exited {code} before saying {marker!r}")
            self.interrupt()
            raise DemoFailed(f"{self.text}: no {marker!r} within {timeout:g}s")

    def interrupt(self, timeout: float = 60) -> int:
        """Ctrl-C, then its last lines. The command is stopped before anything is
        printed: a demo whose output went away (a closed pipe) still stops it."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise DemoFailed(f"{self.text}: still running {timeout:g}s after Ctrl-C") from None
        say(f"^C                                       # Ctrl-C ends '{self.text}'")
        self._show_pending(None, 2)
        return code


def curl(laptop: Laptop, url: str, expect: str, *, header: str | None = None) -> None:
    """curl from the laptop, shown as typed; retried briefly until the answer holds `expect`."""
    typed = ["curl", "-s", *(["-H", header] if header else []), url]
    say("$ " + " ".join(f"'{a}'" if " " in a else a for a in typed))
    deadline = time.monotonic() + CURL_PATIENCE
    while True:
        result = laptop.run(["curl", "-sS", "--max-time", "5", *typed[2:]], timeout=10)
        if result.returncode == 0 and expect in result.stdout:
            show(result.stdout.splitlines())
            return
        if time.monotonic() > deadline:
            show((result.stdout + result.stderr).splitlines())
            raise DemoFailed(f"{' '.join(typed)}: expected {expect!r} in the answer")
        time.sleep(0.3)


def deploy_app() -> None:
    say(f"$ kubectl apply -f demo-app.yaml          # nginx in namespace {NAMESPACE}")
    show(node.kubectl("apply", "-f", "-", input=APP).stdout.splitlines())
    say(f"$ kubectl -n {NAMESPACE} rollout status deployment/nginx")
    out = node.kubectl(
        "-n", NAMESPACE, "rollout", "status", "deployment/nginx", "--timeout=90s", timeout=100
    )  # fmt: skip
    show(out.stdout.splitlines()[-1:])


def step(number: int, title: str) -> None:
    say()
    say(f"[{number}/5] {title}")


def run_demo(laptop_number: int) -> None:
    started = time.monotonic()
    laptop = Laptop(laptop_number)
    say(f"ktpy demo on the local test bed: namespace {NAMESPACE}, from {laptop.name}")
    say(f"({laptop.name} is a machine of its own that reaches only the API server)")
    step(1, "The demo application: nginx behind the Service nginx, port 80")
    deploy_app()
    # A demo killed half-way leaves sessions; ktpy clean removes them (never a live one).
    cleaned = laptop.run(["ktpy", "clean", "-n", NAMESPACE])
    if cleaned.returncode != 0:
        raise DemoFailed(f"ktpy clean: {cleaned.stderr.strip()}")

    step(2, "connect: this laptop reaches the cluster's Services by name")
    connect = laptop.start(["ktpy", "connect"])
    say("$ ktpy connect &")
    try:
        connect.wait_for("All looks good")
        curl(laptop, f"http://nginx.{NAMESPACE}", "ktbed nginx")
        with tempfile.TemporaryDirectory(prefix="ktpy-demo-") as site:
            (Path(site) / "index.html").write_text(f"{LOCAL_ANSWER}\n")
            local = laptop.start(
                ["python3", "-m", "http.server", str(LOCAL_PORT), "--bind", "127.0.0.1",
                 "--directory", site]
            )  # fmt: skip
            try:
                _with_local_server(laptop, site)
            finally:
                local.proc.terminate()
                local.proc.wait(10)
    finally:
        connect.interrupt()
    say()
    say(
        f"Demo done in {time.monotonic() - started:.0f}s. nginx stays in namespace "
        f"{NAMESPACE}; 'kubectl delete namespace {NAMESPACE}' removes it."
    )


def _with_local_server(laptop: Laptop, site: str) -> None:
    say(f"$ python3 -m http.server {LOCAL_PORT} --bind 127.0.0.1 --directory {site} &")
    show([f"(serves: {LOCAL_ANSWER})"])
    local_answer = LOCAL_ANSWER

    step(3, "exchange: all of nginx's traffic comes to the local server")
    exchange = laptop.start(["ktpy", "exchange", "nginx", "--expose", "3001:80", "-n", NAMESPACE])
    say(f"$ ktpy exchange nginx --expose 3001:80 -n {NAMESPACE} &")
    try:
        exchange.wait_for("All looks good")
        curl(laptop, f"http://nginx.{NAMESPACE}", local_answer)
    finally:
        exchange.interrupt()
    curl(laptop, f"http://nginx.{NAMESPACE}", "ktbed nginx")

    step(4, "mesh: only the requests with the header VERSION: foobar come here")
    mesh = laptop.start(
        ["ktpy", "mesh", "nginx", "--expose", "3001:80", "--versionMark", "foobar",
         "-n", NAMESPACE]
    )  # fmt: skip
    say(f"$ ktpy mesh nginx --expose 3001:80 --versionMark foobar -n {NAMESPACE} &")
    try:
        mesh.wait_for("Now you can access your service by header 'VERSION: foobar'")
        curl(laptop, f"http://nginx.{NAMESPACE}", local_answer, header="VERSION: foobar")
        curl(laptop, f"http://nginx.{NAMESPACE}", "ktbed nginx")
    finally:
        mesh.interrupt()

    step(5, "preview: the local server becomes the Service nginx-local, port 8080")
    preview = laptop.start(
        ["ktpy", "preview", "nginx-local", "--expose", "3001:8080", "-n", NAMESPACE]
    )
    say(f"$ ktpy preview nginx-local --expose 3001:8080 -n {NAMESPACE} &")
    try:
        preview.wait_for("Now you can access your local service in cluster by name")
        curl(laptop, f"http://nginx-local.{NAMESPACE}:8080", local_answer)
    finally:
        preview.interrupt()


def main(laptop_number: int = DEFAULT_LAPTOP) -> int:
    try:
        run_demo(laptop_number)
    except DemoFailed as exc:
        print(f"demo: FAILED: {exc}", file=sys.stderr, flush=True)
        return 1
    return 0
