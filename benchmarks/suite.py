"""The whole tunnel side by side with native tools, every scenario a user meets,
in one bounded run on the test bed:

    sudo .venv/bin/python -m benchmarks all [--smoke] [--out FILE] [--budget SECONDS]

Paths (benchmarks/baselines.py): direct from the node, kubectl port-forward
(WebSocket, SPDY), ktpy's port-forward without SSH, `ssh -D` over a
port-forward, `ssh -D` + redsocks (kt-connect's design from native parts),
ktpy connect's TUN and SOCKS modes; all from the same laptop to the same echo
pod, interleaved round by round. Scenarios: bulk (1 and 8 streams, both
directions) with the CPU-seconds per GiB of each path's laptop processes;
request/response on 1 and 8 held connections; new connections; 1,000 (smoke:
fewer) concurrent connections with the RSS and threads of the processes that
carry them; DNS through the laptop's resolver and straight at ktpy's server
against cluster DNS asked from a pod; cold start split into its steps;
exchange switch-in and switch-out; the shadow pod's memory and image size.

Writes benchmarks/results/latest.json (or --out); `python -m benchmarks.report`
turns it into docs/performance.md's tables and charts.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks import host_stats
from benchmarks.baselines import (
    KUBECONFIG,
    KUBECTL,
    ROOT,
    Helpers,
    Laptop,
    Route,
    describe,
    free_tree_stats,
    kubectl,
    node_load,
    pod_netns_pid,
    stop,
)
from ktpy.commands.connect import READY_LINE as CONNECT_READY
from ktpy.commands.exchange import READY_LINE as EXCHANGE_READY
from tests.e2e.conftest import LOCAL_SERVER, echo_manifest
from tests.e2e.testbed import config

RESULTS = ROOT / "benchmarks" / "results" / "latest.json"
NODE_ENV = {**os.environ, "PYTHONPATH": str(ROOT)}
NAMESPACE = "bench-suite"
GIB = 1 << 30
SOCKS_PORT = 2223  # connect's
PORTS = {
    "ssh_ktpy_port_forward": 18104,
    "ssh_d_ktpy_pf": 1081,
    "kubectl_websocket": 18100,
    "kubectl_spdy": 18102,
    "ktpy_port_forward": 18101,
    "ssh_port_forward": 18103,
    "ssh_d": 1080,
    "redsocks": 12345,
}


@dataclass(frozen=True)
class Sizes:
    bulk_bytes: int
    rounds: int
    rr_requests: int
    churn_connections: int
    hold_connections: int
    dns_queries: int
    cold_starts: int


FULL = Sizes(96 << 20, 3, 2000, 600, 1000, 400, 3)
SMOKE = Sizes(2 << 20, 1, 50, 20, 50, 20, 1)
# The part of the budget kept for what follows the rounds (held connections, DNS,
# exchange); a round after the first that would eat into it is not started.
RESERVE = 0.25
BULK = (("down", 1), ("down", 8), ("up", 1), ("up", 8))


class OutOfTime(RuntimeError):
    pass


class Clock:
    def __init__(self, budget: float) -> None:
        self.deadline = time.monotonic() + budget
        self.budget = budget

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def check(self, what: str) -> None:
        if time.monotonic() > self.deadline:
            raise OutOfTime(f"over the {self.budget:.0f}s budget before {what}")


def git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True).stdout.strip()


def versions() -> dict[str, str]:
    def first_line(*cmd: str) -> str:
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        return (done.stdout or done.stderr).strip().splitlines()[0] if done.returncode == 0 else ""

    import paramiko

    return {
        "python": platform.python_version(),
        "paramiko": paramiko.__version__,
        "kubectl": first_line(*KUBECTL, "version", "--client", "-o", "yaml") or config.KUBE_VERSION,
        "kubernetes": config.KUBE_VERSION,
        "openssh": first_line("ssh", "-V"),
        "redsocks": first_line("dpkg-query", "-W", "-f", "${Version}", "redsocks"),
        "kernel": platform.release(),
    }


def machine() -> str:
    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        "",
    )
    return f"{model}, {os.cpu_count()} cpu, {platform.machine()}, load {os.getloadavg()[0]:.1f}"


# --- ktpy's sessions in the laptop ------------------------------------------------------


class Ktpy:
    """A ktpy command running in the laptop: stdout read line by line in a thread
    (so a late line never blocks it), stderr in a file."""

    def __init__(self, laptop: Laptop, log: str, *args: str) -> None:
        self.started = time.monotonic()
        self.proc = laptop.popen(sys.executable, "-m", "ktpy", *args, log=log)
        self.log = laptop.workdir / log
        self.lines: list[str] = []
        self._seen = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._seen:
                self.lines.append(line.rstrip())
                self._seen.notify_all()
        with self._seen:
            self._seen.notify_all()

    def wait_line(self, marker: str, timeout: float = 120) -> float:
        """time.monotonic() when marker was seen."""
        deadline = time.monotonic() + timeout
        with self._seen:
            while not any(marker in line for line in self.lines):
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        f"no {marker!r}: {self.lines} {self.log.read_text()[-1500:]}"
                    )
                self._seen.wait(0.2)
        return time.monotonic()

    def line(self, pattern: str) -> re.Match[str]:
        for line in self.lines:
            if found := re.search(pattern, line):
                return found
        raise RuntimeError(f"no line matches {pattern!r}: {self.lines}")

    def pid(self) -> int:
        return self.proc.command_pid()

    def stop(self) -> float:
        """SIGINT, then the seconds until it exited."""
        started = time.monotonic()
        stop(self.proc, signal.SIGINT, timeout=90)
        return time.monotonic() - started


# --- the run -------------------------------------------------------------------------------


class Suite:
    def __init__(self, laptop: Laptop, namespace: str, sizes: Sizes, clock: Clock) -> None:
        self.laptop = laptop
        self.ns = namespace
        self.sizes = sizes
        self.clock = clock
        self.out: dict[str, Any] = {}
        self.commands: dict[str, str] = {}

    # setup ---------------------------------------------------------------------------------

    def deploy(self) -> None:
        quiet = lambda name: echo_manifest(name, replicas=1).replace(  # noqa: E731
            'args: [http, --listen, ":8080"]', 'args: [http, --listen, ":8080", --quiet]'
        )
        kubectl("-n", self.ns, "apply", "-f", "-", stdin=quiet("echo") + "---" + quiet("swap"))
        for name in ("echo", "swap"):
            kubectl("-n", self.ns, "rollout", "status", f"deployment/{name}", "--timeout=120s")
        pod = json.loads(kubectl("-n", self.ns, "get", "pods", "-l", "app=echo", "-o", "json"))
        item = pod["items"][0]
        self.pod, self.pod_ip = item["metadata"]["name"], item["status"]["podIP"]
        self.pod_uid = item["metadata"]["uid"]
        self.cluster_ip = kubectl(
            "-n", self.ns, "get", "service", "echo", "-o", "jsonpath={.spec.clusterIP}"
        )
        self.swap_ip = kubectl(
            "-n", self.ns, "get", "service", "swap", "-o", "jsonpath={.spec.clusterIP}"
        )

    # cold start ------------------------------------------------------------------------------

    def cold_start(self) -> dict[str, Any]:
        """Fresh `ktpy connect` runs: from the command to the first successful request
        through the TUN device, split by ktpy's own start-up timings (--debug)."""
        runs = []
        for i in range(self.sizes.cold_starts):
            self.clock.check("a cold start")
            poller = self.laptop.popen(
                sys.executable,
                "-m",
                "benchmarks.load",
                "first",
                self.cluster_ip,
                "80",
                "--timeout",
                "120",
                log=f"first-{i}.log",
            )
            running = RunningWatch(self.ns, "ktpy.dev/role=connect")
            args = ("--debug", "--log-format", "json", "-n", self.ns, "connect")
            self.commands["cold_start"] = "ktpy " + " ".join(args)
            session = Ktpy(self.laptop, f"cold-{i}.log", *args)
            try:
                deadline = time.monotonic() + 150
                while poller.poll() is None:  # the poller ends at its first answer
                    if session.proc.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError(f"no first answer: {session.log.read_text()[-1500:]}")
                    time.sleep(0.1)
                out, _ = poller.communicate()
                if poller.returncode != 0:
                    raise RuntimeError(f"first request: {describe(poller)} {session.lines}")
                first = json.loads(out)["at"]
                session.wait_line(CONNECT_READY)
                timings = next(
                    json.loads(line)
                    for line in session.log.read_text().splitlines()
                    if line.startswith("{") and '"start-up timings"' in line
                )
            finally:
                stop(poller, signal.SIGTERM, timeout=10)
                stopped = session.stop()
                running.stop()
            origin = timings["origin"]  # the session's start on this machine's clock
            steps = {
                "command_to_session": origin - session.started,  # interpreter, imports, checks
                "pod_ready": timings["pod_ready"],
                "port_forward": timings["portforward_open"] - timings["pod_ready"],
                "ssh": timings["ssh_up"] - timings["portforward_open"],
                "tun": timings["tun_up"] - timings["ssh_up"],
                "dns": timings["dns_up"] - timings["tun_up"],
            }
            total = first - session.started
            runs.append(
                {
                    "steps_s": {k: round(v, 3) for k, v in steps.items()},
                    "first_request_s": round(total, 3),
                    "first_request_after_pod_ready_s": round(
                        first - origin - timings["pod_ready"], 3
                    ),
                    "first_request_after_pod_running_s": round(first - running.at(), 3),
                    "ready_line_s": timings["ready"],
                    "stop_s": round(stopped, 3),
                }
            )
        return {"runs": runs, "median": _median_dicts(runs)}

    # the paths ----------------------------------------------------------------------------------

    def routes(self, connect: Ktpy, helpers: Helpers) -> list[Route]:
        ip, port, local = self.cluster_ip, 80, "127.0.0.1"

        def via(*names: str) -> dict[str, Any]:
            return {"helpers": names, "roots": lambda: helpers.tree(*names)}

        ktpy = lambda: [connect.pid()]  # noqa: E731
        return [
            Route("direct", self.pod_ip, 8080, on_node=True),
            Route("kubectl_websocket", local, PORTS["kubectl_websocket"],
                  **via("kubectl_websocket")),
            Route("kubectl_spdy", local, PORTS["kubectl_spdy"], **via("kubectl_spdy")),
            Route("ktpy_port_forward", local, PORTS["ktpy_port_forward"],
                  **via("ktpy_port_forward")),
            Route("ssh_d", ip, port, socks=PORTS["ssh_d"], **via("ssh_port_forward", "ssh_d")),
            Route("ssh_d_ktpy_pf", ip, port, socks=PORTS["ssh_d_ktpy_pf"],
                  **via("ssh_ktpy_port_forward", "ssh_d_ktpy_pf")),
            Route("redsocks", ip, port, use=helpers.redirected,
                  **via("ssh_port_forward", "ssh_d", "redsocks")),
            Route("connect_tun", ip, port, roots=ktpy),
            Route("connect_socks", ip, port, socks=SOCKS_PORT, roots=ktpy),
        ]  # fmt: skip

    @contextlib.contextmanager
    def steps(self, route: Route) -> Iterator[Callable[..., dict[str, Any]]]:
        """One load process for a series of scenarios through route (its start-up paid
        once); yields ask(scenario, *args) -> its result."""
        cmd = (sys.executable, "-m", "benchmarks.load", "steps")
        with route.use():
            proc: subprocess.Popen[str] = (
                subprocess.Popen(cmd, cwd=ROOT, text=True, stdin=subprocess.PIPE,
                                 stdout=subprocess.PIPE, env=NODE_ENV)
                if route.on_node
                else self.laptop.popen(*cmd, stdin=subprocess.PIPE, log=f"load-{route.name}.log")
            )  # fmt: skip
            assert proc.stdin is not None
            assert proc.stdout is not None

            def ask(what: str, *args: str) -> dict[str, Any]:
                assert proc.stdin is not None
                assert proc.stdout is not None
                proc.stdin.write(json.dumps([what, *route.target(), *args]) + "\n")
                proc.stdin.flush()
                line = proc.stdout.readline()
                if not line:
                    log = self.laptop.workdir / f"load-{route.name}.log"
                    why = log.read_text()[-800:] if log.exists() else describe(proc)
                    raise RuntimeError(f"{what} through {route.name} failed: {why}")
                result: dict[str, Any] = json.loads(line)
                return result

            try:
                yield ask
            finally:
                proc.stdin.close()
                stop(proc, signal.SIGTERM, timeout=30)

    def series(self, route: Route) -> list[tuple[str, dict[str, Any]]]:
        """Every path scenario once through route, in one load process."""
        s = self.sizes
        out: list[tuple[str, dict[str, Any]]] = []
        with self.steps(route) as ask:
            for direction, streams in BULK:
                before = free_tree_stats(route.roots()).cpu_seconds
                result = ask("bulk", "--bytes", str(s.bulk_bytes), "--streams", str(streams),
                             "--direction", direction)  # fmt: skip
                spent = free_tree_stats(route.roots()).cpu_seconds - before
                if route.roots():
                    result["cpu_s_per_gib"] = round(spent / (result["bytes"] / GIB), 3)
                out.append((f"bulk_{direction}_{streams}", result))
            for conns in (1, 8):
                result = ask("rr", "--requests", str(s.rr_requests), "--conns", str(conns))
                out.append((f"rr_{conns}", result))
            result = ask("churn", "--connections", str(s.churn_connections), "--workers", "4")
            out.append(("churn", result))
        return out

    def rounds(self, routes: list[Route], helpers: Helpers) -> dict[str, Any]:
        s = self.sizes
        runs: dict[str, dict[str, list[Any]]] = {}
        cpu: dict[str, dict[str, list[float]]] = {r.name: {"down": [], "up": []} for r in routes}

        def keep(scenario: str, route: Route, result: dict[str, Any]) -> None:
            runs.setdefault(scenario, {}).setdefault(route.name, []).append(result)

        last = 0.0  # seconds the last round took
        retried: list[str] = []
        for round_ in range(s.rounds):  # interleaved: drift hits every path alike
            if round_ and self.clock.left() < last + RESERVE * self.clock.budget:
                break  # keep the rounds done and the time for the rest of the suite
            started = time.monotonic()
            for route in routes:
                self.clock.check(f"round {round_ + 1} of {route.name}")
                try:
                    series = self.series(route)
                except RuntimeError as exc:  # a baseline's helper died under it: once more
                    if not helpers.revive(*route.helpers):
                        raise
                    retried.append(f"{route.name}: {str(exc)[-300:]}")
                    series = self.series(route)
                for scenario, result in series:
                    keep(scenario, route, result)
                    if scenario.startswith("bulk") and "cpu_s_per_gib" in result:
                        cpu[route.name][scenario.split("_")[1]].append(result["cpu_s_per_gib"])
                helpers.revive(*route.helpers)  # a churn can end a kubectl port-forward
            last = time.monotonic() - started
        medians: dict[str, dict[str, float]] = {}
        for scenario, by_route in runs.items():
            field = "gbit_s" if scenario.startswith("bulk") else None
            for name, results in by_route.items():
                keys = ["p50_ms", "p99_ms", "p99_9_ms", "per_s"]
                if scenario == "churn":
                    keys += ["connect_p50_ms", "connect_p99_ms"]
                for key in [field] if field else keys:
                    medians.setdefault(f"{scenario}_{key}", {})[name] = round(
                        statistics.median(r[key] for r in results), 4
                    )
        medians["churn_failed"] = {  # all rounds together
            name: sum(r["failed"] for r in results) for name, results in runs["churn"].items()
        }
        cpu_median = {
            name: {d: round(statistics.median(v), 3) for d, v in by_dir.items() if v}
            for name, by_dir in cpu.items()
            if by_dir["down"]
        }
        done = len(runs["churn"]["direct"])
        return {"runs": runs, "rounds_done": done, "medians": medians, "cpu_s_per_gib": cpu_median,
                "retried": retried, "helper_deaths": helpers.deaths}  # fmt: skip

    def hold(self, routes: list[Route], connect: Ktpy) -> dict[str, Any]:
        """N connections open at once through a path; meanwhile the RSS and threads of
        the processes carrying them, and the shadow pod's memory."""
        out: dict[str, Any] = {}
        for route in routes:
            self.clock.check(f"hold through {route.name}")
            idle = free_tree_stats(route.roots())
            with route.use():
                proc = self.laptop.popen(
                    sys.executable,
                    "-m",
                    "benchmarks.load",
                    "hold",
                    *route.target(),
                    "--conns",
                    str(self.sizes.hold_connections),
                    stdin=subprocess.PIPE,
                )
                assert proc.stderr is not None
                assert proc.stdin is not None
                line = proc.stderr.readline()
                if "held" not in line:
                    raise RuntimeError(f"hold via {route.name}: {line} {describe(proc)}")
                busy = free_tree_stats(route.roots())
                shadow = host_stats.pod_memory(self.shadow_uid)
                proc.stdin.write("go\n")
                proc.stdin.close()
                result = json.loads(proc.stdout.read().splitlines()[-1])  # type: ignore[union-attr]
                proc.wait(60)
            out[route.name] = {
                **result,
                "idle": asdict(idle),
                "held": asdict(busy),
                "shadow_pod_memory_held": shadow,
            }
        return out

    def dns(self, connect: Ktpy) -> dict[str, Any]:
        """Cluster names through the laptop's resolver (getaddrinfo) and straight at
        ktpy's DNS server, cached (one name again and again) and uncached (a pod name
        never asked before each time: `pods insecure` answers any), against the same
        questions to cluster DNS from the echo pod's network namespace."""
        server = connect.line(r"DNS (\S+):53 via").group(1)
        cached = f"echo.{self.ns}.svc.cluster.local"
        fresh = f"10-{{}}.{self.ns}.pod.cluster.local"
        n = str(self.sizes.dns_queries)
        pod_pid = pod_netns_pid(self.pod_uid)
        series = {
            "laptop_resolver_cached": lambda: self.laptop.load(
                "dns", cached, "--count", n, "--expect", self.cluster_ip
            ),
            "laptop_resolver_uncached": lambda: self.laptop.load("dns", fresh, "--count", n),
            "ktpy_server_cached": lambda: self.laptop.load(
                "dns", cached, "--via", f"{server}:53", "--count", n, "--expect", self.cluster_ip
            ),
            "ktpy_server_uncached": lambda: self.laptop.load(
                "dns", fresh, "--via", f"{server}:53", "--count", n
            ),
            "cluster_dns_from_pod_cached": lambda: node_load(
                "dns",
                cached,
                "--via",
                f"{config.CLUSTER_DNS_IP}:53",
                "--count",
                n,
                "--expect",
                self.cluster_ip,
                netns_of=pod_pid,
            ),
            "cluster_dns_from_pod_uncached": lambda: node_load(
                "dns", fresh, "--via", f"{config.CLUSTER_DNS_IP}:53", "--count", n, netns_of=pod_pid
            ),
        }
        out = {}
        for name, run in series.items():
            self.clock.check(f"DNS {name}")
            out[name] = run()
        return out

    def exchange(self) -> dict[str, Any]:
        """`ktpy exchange swap`: from the command to the first request answered by the
        laptop, and from Ctrl-C to the first answered by the pods again; requests that
        failed meanwhile. The caller stands on the node, a new connection each 20 ms."""
        self.clock.check("exchange")
        server = self.laptop.popen(
            sys.executable,
            "-c",
            LOCAL_SERVER,
            "127.0.0.1",
            "3001",
            "laptop",
            log="local-server.log",
        )
        watcher = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.switch_watch", self.swap_ip, "80"],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        try:
            time.sleep(0.5)  # some answers from the pods first: the baseline of the series
            args = ("-n", self.ns, "exchange", "swap", "--expose", "3001:80")
            self.commands["exchange"] = "ktpy " + " ".join(args)
            session = Ktpy(self.laptop, "exchange.log", *args)
            try:
                ready = session.wait_line(EXCHANGE_READY, timeout=120)
                _wait_answers(watcher, "laptop", 30)
                time.sleep(0.5)
            finally:
                interrupted = time.monotonic()
                stopped = session.stop()
            _wait_answers(watcher, "pod", 60)
            time.sleep(0.3)
        finally:
            out, _ = watcher.communicate("stop\n", timeout=30)
            stop(server)
        seen = [json.loads(line) for line in out.splitlines() if line.startswith('{"at"')]
        first_laptop = next(s["at"] for s in seen if s["who"] == "laptop")
        back = next(s["at"] for s in seen if s["who"] == "pod" and s["at"] > interrupted)
        during_in = [s for s in seen if session.started <= s["at"] < first_laptop]
        during_out = [s for s in seen if interrupted <= s["at"] < back]
        return {
            "switch_in_s": round(first_laptop - session.started, 3),
            "ready_line_s": round(ready - session.started, 3),
            "switch_out_s": round(back - interrupted, 3),
            "stop_s": round(stopped, 3),
            "failed_during_switch_in": sum(1 for s in during_in if s["who"] == "error"),
            "failed_during_switch_out": sum(1 for s in during_out if s["who"] == "error"),
            "requests": len(seen),
        }

    # all -------------------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        out = self.out
        out["cold_start"] = self.cold_start()
        # TUN mode opens its SOCKS5 port for other programs only when asked.
        args = ("-n", self.ns, "connect", "--socks-port", str(SOCKS_PORT))
        self.commands["connect"] = "ktpy " + " ".join(args)
        connect = Ktpy(self.laptop, "connect.log", *args)
        helpers = Helpers(self.laptop, self.ns)
        try:
            connect.wait_line(CONNECT_READY)
            shadow = connect.line(r"Shadow pod (\S+) in namespace").group(1)
            self.shadow_uid = kubectl(
                "-n", self.ns, "get", "pod", shadow, "-o", "jsonpath={.metadata.uid}"
            )
            memory = {"idle": host_stats.pod_memory(self.shadow_uid)}
            helpers.port_forward(
                "kubectl_websocket", self.pod, PORTS["kubectl_websocket"], 8080, True
            )
            helpers.port_forward("kubectl_spdy", self.pod, PORTS["kubectl_spdy"], 8080, False)
            helpers.start(
                "ktpy_port_forward",
                PORTS["ktpy_port_forward"],
                sys.executable,
                "-m",
                "benchmarks.raw_forward",
                self.ns,
                self.pod,
                "8080",
                "--listen",
                str(PORTS["ktpy_port_forward"]),
            )
            key, host_key = helpers.authorize(shadow)
            helpers.port_forward("ssh_port_forward", shadow, PORTS["ssh_port_forward"], 2222, True)
            helpers.ssh_socks("ssh_d", key, host_key, PORTS["ssh_port_forward"], PORTS["ssh_d"])
            helpers.start("ssh_ktpy_port_forward", PORTS["ssh_ktpy_port_forward"],
                          sys.executable, "-m", "benchmarks.raw_forward", self.ns, shadow, "2222",
                          "--listen", str(PORTS["ssh_ktpy_port_forward"]))  # fmt: skip
            helpers.ssh_socks("ssh_d_ktpy_pf", key, host_key, PORTS["ssh_ktpy_port_forward"],
                              PORTS["ssh_d_ktpy_pf"])  # fmt: skip
            helpers.redsocks(
                PORTS["ssh_d"], PORTS["redsocks"], (config.SERVICE_CIDR, config.CLUSTER_CIDR)
            )
            routes = self.routes(connect, helpers)
            out.update(self.rounds(routes, helpers))
            memory["after_load"] = host_stats.pod_memory(self.shadow_uid)
            held = [
                r for r in routes if r.name in ("connect_tun", "connect_socks", "ssh_d", "redsocks")
            ]
            out["hold"] = self.hold(held, connect)
            out["dns"] = self.dns(connect)
            out["shadow_pod_memory"] = memory
        finally:
            helpers.stop_all()
            connect.stop()
        out["exchange"] = self.exchange()
        out["shadow_image"] = host_stats.image_size(_shadow_image())
        return out


class RunningWatch:
    """When the first new pod matching a label is seen Running (a watch from the node,
    started before the command: the session's own timings stop at Ready)."""

    def __init__(self, namespace: str, selector: str) -> None:
        from kubernetes import client, watch
        from kubernetes import config as kube_config

        self.api = client.CoreV1Api(kube_config.new_client_from_config(config_file=KUBECONFIG))
        listed = self.api.list_namespaced_pod(namespace, label_selector=selector)
        self.known = {pod.metadata.name for pod in listed.items}
        self.seen: float | None = None
        self.watch = watch.Watch()
        self.thread = threading.Thread(
            target=self._run,
            args=(namespace, selector, listed.metadata.resource_version),
            daemon=True,
        )
        self.thread.start()

    def _run(self, namespace: str, selector: str, version: str) -> None:
        for event in self.watch.stream(
            self.api.list_namespaced_pod,
            namespace,
            label_selector=selector,
            resource_version=version,
            timeout_seconds=180,
        ):
            pod = event["object"]
            if pod.metadata.name in self.known or pod.metadata.deletion_timestamp:
                continue
            if pod.status.phase == "Running":
                self.seen = time.monotonic()
                self.watch.stop()
                return

    def at(self) -> float:
        self.thread.join(10)
        if self.seen is None:
            raise RuntimeError("the shadow pod was never seen Running")
        return self.seen

    def stop(self) -> None:
        self.watch.stop()


def _shadow_image() -> str:
    from ktpy.config import DEFAULT_IMAGE

    return DEFAULT_IMAGE


def _wait_answers(watcher: subprocess.Popen[str], who: str, timeout: float) -> None:
    """Until the watcher reports an answer from `who` (it prints each change of who answers)."""
    assert watcher.stdout is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = watcher.stdout.readline()
        if not line:
            break
        if json.loads(line).get("now") == who:
            return
    raise RuntimeError(f"no answer from the {who} within {timeout}s")


def _median_dicts(runs: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in runs[0].items():
        if isinstance(value, dict):
            out[key] = _median_dicts([r[key] for r in runs])
        else:
            out[key] = round(statistics.median(r[key] for r in runs), 3)
    return out


def ratios(out: dict[str, Any]) -> dict[str, float]:
    """Each ktpy figure over the baseline it is held against (issue 17's targets)."""
    m = out["medians"]
    r: dict[str, float] = {}

    def ratio(name: str, key: str, a: str, b: str) -> None:
        if key in m and m[key].get(b):
            r[name] = round(m[key][a] / m[key][b], 3)

    for d, n in BULK:
        suffix = f"_{d}_{n}"
        key = f"bulk{suffix}_gbit_s"
        for base in ("ssh_d", "ssh_d_ktpy_pf", "redsocks", "ktpy_port_forward",
                     "kubectl_websocket", "direct"):  # fmt: skip
            ratio(f"connect_bulk{suffix}_vs_{base}", key, "connect_tun", base)
        ratio(f"socks_bulk{suffix}_vs_ssh_d", key, "connect_socks", "ssh_d")
        ratio(f"socks_bulk{suffix}_vs_ssh_d_ktpy_pf", key, "connect_socks", "ssh_d_ktpy_pf")
        ratio(f"socks_bulk{suffix}_vs_kubectl_websocket", key, "connect_socks", "kubectl_websocket")
    # the headline names: one download stream
    for base in ("ssh_d", "ssh_d_ktpy_pf", "redsocks", "ktpy_port_forward", "kubectl_websocket"):
        r[f"connect_bulk_vs_{base}"] = r[f"connect_bulk_down_1_vs_{base}"]
    r["socks_bulk_vs_ssh_d"] = r["socks_bulk_down_1_vs_ssh_d"]
    r["socks_bulk_vs_ssh_d_ktpy_pf"] = r["socks_bulk_down_1_vs_ssh_d_ktpy_pf"]
    for conns in (1, 8):
        for q in ("p50", "p99", "p99_9"):
            key = f"rr_{conns}_{q}_ms"
            for base in ("ssh_d", "ssh_d_ktpy_pf", "redsocks", "kubectl_websocket"):
                ratio(f"connect_rr_{conns}_{q}_vs_{base}", key, "connect_tun", base)
    for base in ("ssh_d", "ssh_d_ktpy_pf", "redsocks", "ktpy_port_forward", "kubectl_websocket"):
        ratio(f"connect_churn_per_s_vs_{base}", "churn_per_s", "connect_tun", base)
    return r


def added_latency(out: dict[str, Any]) -> dict[str, dict[str, float]]:
    """ms added over kubectl port-forward (WebSocket), per held-connection series."""
    m = out["medians"]
    added: dict[str, dict[str, float]] = {}
    for path in ("connect_tun", "connect_socks", "ssh_d", "ssh_d_ktpy_pf", "redsocks"):
        for conns in (1, 8):
            for q in ("p50", "p99", "p99_9"):
                key = f"rr_{conns}_{q}_ms"
                added.setdefault(path, {})[f"rr_{conns}_{q}"] = round(
                    m[key][path] - m[key]["kubectl_websocket"], 4
                )
    return added


def checks(out: dict[str, Any]) -> list[str]:
    """What did not move what it was asked to (empty: everything did)."""
    wrong = []
    for scenario, by_route in out["runs"].items():
        for name, results in by_route.items():
            for result in results:
                moved = result.get("bytes", result.get("requests", result.get("connections")))
                moved += result.get("failed", 0)  # a failed new connection is a figure too
                if moved != result["asked"]:
                    wrong.append(f"{scenario} {name}: {moved} of {result['asked']}")
    for name, held in out["hold"].items():
        if held["answered"] + held["errors"] < held["connections"]:
            wrong.append(f"hold {name}: {held}")
    for name, series in out["dns"].items():
        if series["queries"] + series["failed"] != series["asked"]:
            wrong.append(f"dns {name}: {series}")
    return wrong


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks all", description=__doc__)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: every scenario once")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--budget", type=float, default=None, help="seconds [600; smoke 85]")
    parser.add_argument("--rounds", type=int, help="rounds of the path scenarios [3; smoke 1]")
    parser.add_argument("--laptop", type=int, help="an existing laptop of the bed to use")
    parser.add_argument("--namespace", help="an existing namespace to use")
    args = parser.parse_args(argv)
    sizes = SMOKE if args.smoke else FULL
    if args.rounds:
        sizes = dataclasses.replace(sizes, rounds=args.rounds)
    clock = Clock(args.budget or (85 if args.smoke else 600))
    started = time.monotonic()
    namespace = args.namespace or NAMESPACE
    if not args.namespace:
        subprocess.run(
            [*KUBECTL, "delete", "namespace", namespace, "--ignore-not-found", "--wait=true"],
            check=True,
            capture_output=True,
        )
        kubectl("create", "namespace", namespace)
    laptop = Laptop(args.laptop or config.BENCH_LAPTOPS[-1], make=args.laptop is None)
    suite = Suite(laptop, namespace, sizes, clock)
    failed = False
    try:
        suite.deploy()
        out = suite.run()
    except BaseException:
        failed = True
        partial = args.out.with_suffix(".partial.json")
        partial.write_text(json.dumps(suite.out, indent=1) + "\n")
        print(f"failed; what was measured is in {partial}", file=sys.stderr)
        raise
    finally:
        laptop.close(keep_logs=failed)
        if not args.namespace:
            kubectl("delete", "namespace", namespace, "--wait=false")
    summary = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "commit": git("rev-parse", "HEAD") + ("-dirty" if git("status", "--porcelain") else ""),
        "machine": machine(),
        "versions": versions(),
        "commands": {
            "suite": " ".join(["python -m benchmarks all", *(argv or sys.argv[2:])]),
            **suite.commands,
        },
        "sizes": asdict(sizes),
        "seconds": round(time.monotonic() - started, 1),
        **out,
        "ratios": ratios(out),
        "latency_added_ms_over_kubectl_websocket": added_latency(out),
    }
    summary["checks_failed"] = checks(out)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=1) + "\n")
    print(f"wrote {args.out} in {summary['seconds']}s", file=sys.stderr)
    if summary["checks_failed"]:
        raise SystemExit(f"moved other than asked: {summary['checks_failed']}")
