"""`ktpy connect` against plain `kubectl port-forward`, same pod, same laptop, one run.

Not a test. Run as root with the test bed up:

    sudo .venv/bin/python -m benchmarks.connect [--mib 256] [--runs 3] [--requests 2000]

Measures, from a laptop namespace of the bed: bulk download throughput and
request/response latency (p50, p99 on one held connection) through
kubectl port-forward (WebSocket and SPDY), ktpy connect's TUN mode and its
SOCKS5 proxy; and connect's time to ready after the shadow pod is Running.
Writes benchmarks/results/connect.json and docs/performance-connect.svg.
Superseded by the suite (`python -m benchmarks all`, benchmarks/suite.py), which
holds connect against more baselines and scenarios and writes latest.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tests.e2e.conftest import echo_manifest
from tests.e2e.testbed import config, hostnet

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "connect.json"
CHART = ROOT / "docs" / "performance-connect.svg"
NAMESPACE = "bench-connect"
LAPTOP = config.BENCH_LAPTOPS[-1]
KUBECONFIG = str(config.KUBECONFIG_DIR / "admin.yaml")


def kubectl(*args: str, stdin: str | None = None) -> str:
    return subprocess.run(
        [str(config.BIN_DIR / "kubectl"), f"--kubeconfig={KUBECONFIG}", *args],
        check=True, capture_output=True, text=True, input=stdin,
    ).stdout  # fmt: skip


class Laptop:
    def __init__(self, number: int) -> None:
        hostnet.delete_laptop(config.laptop_name(number))
        self.name = hostnet.create_laptop(number)
        self.env = {**os.environ, "KUBECONFIG": KUBECONFIG, "PYTHONPATH": str(ROOT),
                    "PATH": f"{config.BIN_DIR}:{os.environ['PATH']}"}  # fmt: skip

    def popen(self, *cmd: str, **extra: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [*hostnet.laptop_command(self.name), *cmd], cwd=ROOT, text=True,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**self.env, **extra},
        )  # fmt: skip

    def probe(self, *args: str) -> dict[str, float]:
        done = subprocess.run(
            [*hostnet.laptop_command(self.name), sys.executable, "-m", "benchmarks.probe", *args],
            cwd=ROOT, capture_output=True, text=True, env=self.env, timeout=300,
        )  # fmt: skip
        if done.returncode != 0:
            raise RuntimeError(f"probe {args} failed: {done.stderr.strip()[-800:]}")
        result: dict[str, float] = json.loads(done.stdout)
        return result

    def close(self) -> None:
        hostnet.delete_laptop(self.name)


def wait_line(proc: subprocess.Popen[str], marker: str, timeout: float = 90) -> list[str]:
    assert proc.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError(
                f"exited before {marker!r}: {lines} {proc.stderr.read() if proc.stderr else ''}"
            )
        lines.append(line.rstrip())
        if marker in line:
            return lines
    raise RuntimeError(f"no {marker!r} within {timeout}s")


def port_forward(laptop: Laptop, pod: str, websockets: bool) -> subprocess.Popen[str]:
    proc = laptop.popen(
        "kubectl", "-n", NAMESPACE, "port-forward", f"pod/{pod}", "18100:8080",
        PORT_FORWARD_WEBSOCKETS="true" if websockets else "false",
    )  # fmt: skip
    wait_line(proc, "Forwarding from")
    return proc


def tree_cpu_seconds(pid: int) -> float:
    """User + system CPU of pid and its live descendants (connect's TUN stack runs in
    a child process)."""
    parents: dict[int, int] = {}
    cpu: dict[int, float] = {}
    tick = os.sysconf("SC_CLK_TCK")
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        child = int(stat.parent.name)
        parents[child] = int(fields[1])
        cpu[child] = (int(fields[11]) + int(fields[12])) / tick  # utime, stime

    def descends(candidate: int) -> bool:
        while candidate > 1:
            if candidate == pid:
                return True
            candidate = parents.get(candidate, 0)
        return False

    return sum(seconds for each, seconds in cpu.items() if descends(each))


def stop(proc: subprocess.Popen[Any]) -> None:
    """SIGINT (ktpy tears down, py-spy writes its profile), then a kill after 60 s."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def svg_chart(values: dict[str, float], unit: str, title: str) -> str:
    """A small horizontal bar chart, dependency-free."""
    width, bar_h, left = 640, 26, 250
    top = 40
    biggest = max(values.values()) or 1.0
    rows = []
    for i, (name, value) in enumerate(values.items()):
        y = top + i * (bar_h + 10)
        w = (width - left - 90) * value / biggest
        rows.append(
            f'<text x="{left - 8}" y="{y + 18}" text-anchor="end" font-size="13">{name}</text>'
            f'<rect x="{left}" y="{y}" width="{w:.1f}" height="{bar_h}" fill="#4a7ab5"/>'
            f'<text x="{left + w + 6:.1f}" y="{y + 18}" font-size="13">{value:.2f} {unit}</text>'
        )
    height = top + len(values) * (bar_h + 10) + 10
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'font-family="sans-serif"><text x="10" y="22" font-size="15" font-weight="bold">'
        f"{title}</text>{''.join(rows)}</svg>\n"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--mib", type=int, default=256)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--requests", type=int, default=2000)
    args = parser.parse_args()
    size = args.mib << 20
    kubectl("delete", "namespace", NAMESPACE, "--ignore-not-found", "--wait=true")
    kubectl("create", "namespace", NAMESPACE)
    laptop = Laptop(LAPTOP)
    try:
        kubectl("-n", NAMESPACE, "apply", "-f", "-", stdin=echo_manifest(replicas=1))
        kubectl("-n", NAMESPACE, "rollout", "status", "deployment/echo", "--timeout=90s")
        pod = kubectl("-n", NAMESPACE, "get", "pods", "-l", "app=echo", "-o",
                      "jsonpath={.items[0].metadata.name}")  # fmt: skip
        cluster_ip = kubectl("-n", NAMESPACE, "get", "service", "echo", "-o",
                             "jsonpath={.spec.clusterIP}")  # fmt: skip

        # TUN mode opens the SOCKS5 port only when asked; the benchmark measures both.
        connect = laptop.popen(
            sys.executable, "-m", "ktpy", "-n", NAMESPACE, "connect", "--socks-port", "2223"
        )
        try:
            summary = measure_all(laptop, connect, pod, cluster_ip, size, args)
        finally:
            stop(connect)  # even when a measurement fails: it undoes its changes
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(summary, indent=2) + "\n")
        median = summary["bulk_gbit_s"]["median"]  # type: ignore[index]
        title = f"Bulk download through the tunnel ({args.mib} MiB, median of {args.runs})"
        CHART.write_text(svg_chart(median, "Gbit/s", title))
        print(json.dumps(summary, indent=2))
    finally:
        laptop.close()
        kubectl("delete", "namespace", NAMESPACE, "--wait=false")


def measure_all(
    laptop: Laptop,
    connect: subprocess.Popen[str],
    pod: str,
    cluster_ip: str,
    size: int,
    args: argparse.Namespace,
) -> dict[str, object]:
    ready = wait_line(connect, "All looks good")
    timing = re.search(r"Ready in ([\d.]+)s \(pod Ready after ([\d.]+)s", "\n".join(ready))
    assert timing, ready
    ready_after_pod = float(timing.group(1)) - float(timing.group(2))

    paths: dict[str, tuple[Callable[[], object] | None, list[str]]] = {
        "port_forward_websocket": (
            lambda: port_forward(laptop, pod, True),
            ["127.0.0.1", "18100"],
        ),
        "port_forward_spdy": (lambda: port_forward(laptop, pod, False), ["127.0.0.1", "18100"]),
        "connect_tun": (None, [cluster_ip, "80"]),
        "connect_socks": (None, [f"echo.{NAMESPACE}", "80", "--socks", "2223"]),
    }
    bulk: dict[str, list[float]] = {name: [] for name in paths}
    cpu_per_gib: dict[str, list[float]] = {"connect_tun": [], "connect_socks": []}
    p50: dict[str, list[float]] = {name: [] for name in paths}
    p99: dict[str, list[float]] = {name: [] for name in paths}
    for _ in range(args.runs):  # interleaved: drift hits every path alike
        for name, (start, target) in paths.items():
            helper = start() if start else None
            try:
                extra = target[2:]
                cpu_before = tree_cpu_seconds(connect.pid)
                bulk[name].append(laptop.probe("bulk", *target[:2], str(size), *extra)["gbit_s"])
                if name in cpu_per_gib:
                    spent = tree_cpu_seconds(connect.pid) - cpu_before
                    cpu_per_gib[name].append(spent / (size / (1 << 30)))
                lat = laptop.probe("latency", *target[:2], str(args.requests), *extra)
                p50[name].append(lat["p50_ms"])
                p99[name].append(lat["p99_ms"])
            finally:
                if isinstance(helper, subprocess.Popen):
                    stop(helper)

    median = {name: statistics.median(v) for name, v in bulk.items()}
    p50m = {name: statistics.median(v) for name, v in p50.items()}
    p99m = {name: statistics.median(v) for name, v in p99.items()}
    base = median["port_forward_websocket"]
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.node()}, {os.cpu_count()} cpu, {platform.machine()}, "
        f"Python {platform.python_version()}",
        "bulk_bytes": size,
        "bulk_gbit_s": {"median": median, "runs": bulk},
        "latency_ms": {"p50": p50m, "p99": p99m},
        # ktpy's own CPU (all its processes) per GiB moved: steadier than throughput
        # on a 2-core machine that also runs the cluster.
        "ktpy_cpu_s_per_gib": {
            "median": {name: statistics.median(v) for name, v in cpu_per_gib.items()},
            "runs": cpu_per_gib,
        },
        "connect_ready_after_pod_ready_s": ready_after_pod,
        "ratios": {
            "connect_bulk_vs_port_forward": median["connect_tun"] / base,
            "socks_bulk_vs_port_forward": median["connect_socks"] / base,
            "spdy_bulk_vs_port_forward": median["port_forward_spdy"] / base,
        },
        "latency_added_p50_ms": {
            "connect_tun": p50m["connect_tun"] - p50m["port_forward_websocket"],
            "connect_socks": p50m["connect_socks"] - p50m["port_forward_websocket"],
        },
    }


if __name__ == "__main__":
    main()
