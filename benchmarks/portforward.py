"""Port-forward throughput on the test bed: ktpy's own WebSocket client against
the official Python client's `portforward` and kubectl (WebSocket and SPDY),
all to the same echo pod, in one run. Not a test: run it as root with the bed up:

    sudo .venv/bin/python -m benchmarks.portforward [--mib 200] [--runs 3]

Writes benchmarks/results/portforward.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from ktpy.cluster.api import KubernetesApi
from ktpy.tunnel import portforward
from tests.e2e.conftest import echo_manifest
from tests.e2e.testbed import config

RESULTS = Path(__file__).parent / "results" / "portforward.json"
NAMESPACE = "bench-portforward"
KUBECTL = str(config.BIN_DIR / "kubectl")
KUBECONFIG = str(config.KUBECONFIG_DIR / "admin.yaml")


def kubectl(*args: str) -> str:
    return subprocess.run(
        [KUBECTL, f"--kubeconfig={KUBECONFIG}", *args], check=True, capture_output=True, text=True
    ).stdout


def request(n: int) -> bytes:
    return f"GET /bytes?n={n} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n".encode()


def read_body(recv: Callable[[int], bytes], n: int) -> int:
    """Read the response until n body bytes came; return the body bytes seen."""
    head = b""
    while b"\r\n\r\n" not in head:
        head += recv(65536)
    got = len(head.split(b"\r\n\r\n", 1)[1])
    while got < n:
        chunk = recv(1 << 20)
        if not chunk:
            break
        got += len(chunk)
    return got


def ktpy_stream(api: KubernetesApi, pod: str, n: int) -> float:
    stream = portforward.open_stream(api.open_websocket, portforward.Target(NAMESPACE, pod, 8080))
    try:
        started = time.perf_counter()
        stream.sendall(request(n))
        assert read_body(stream.recv, n) >= n
        return time.perf_counter() - started
    finally:
        stream.close()


def official_client(pod: str, n: int) -> float:
    from kubernetes import client
    from kubernetes import config as kube_config
    from kubernetes.stream import portforward as official_portforward

    api = client.CoreV1Api(kube_config.new_client_from_config(config_file=KUBECONFIG))
    forward = official_portforward(
        api.connect_get_namespaced_pod_portforward, pod, NAMESPACE, ports="8080"
    )
    sock = forward.socket(8080)
    sock.setblocking(True)
    try:
        started = time.perf_counter()
        sock.sendall(request(n))
        assert read_body(sock.recv, n) >= n
        return time.perf_counter() - started
    finally:
        sock.close()
        forward.close()


def kubectl_forward(pod: str, n: int, websockets: bool) -> float:
    env = {**os.environ, "PORT_FORWARD_WEBSOCKETS": "true" if websockets else "false"}
    proc = subprocess.Popen(
        [KUBECTL, f"--kubeconfig={KUBECONFIG}", "-n", NAMESPACE, "port-forward", f"pod/{pod}",
         "18099:8080"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        proc.stdout.readline()  # "Forwarding from ..."
        with socket.create_connection(("127.0.0.1", 18099)) as sock:
            started = time.perf_counter()
            sock.sendall(request(n))
            assert read_body(sock.recv, n) >= n
            return time.perf_counter() - started
    finally:
        proc.terminate()
        proc.wait(10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--mib", type=int, default=200)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    n = args.mib << 20
    kubectl("delete", "namespace", NAMESPACE, "--ignore-not-found", "--wait=true")
    kubectl("create", "namespace", NAMESPACE)
    try:
        subprocess.run(
            [KUBECTL, f"--kubeconfig={KUBECONFIG}", "-n", NAMESPACE, "apply", "-f", "-"],
            input=echo_manifest(replicas=1), check=True, capture_output=True, text=True,
        )  # fmt: skip
        kubectl("-n", NAMESPACE, "rollout", "status", "deployment/echo", "--timeout=90s")
        pod = kubectl("-n", NAMESPACE, "get", "pods", "-l", "app=echo", "-o",
                      "jsonpath={.items[0].metadata.name}")  # fmt: skip
        api = KubernetesApi.from_kubeconfig([KUBECONFIG])
        # The official client's buffer handling is quadratic in what is pending:
        # it gets a smaller transfer, or one run would take minutes.
        small = min(n, 32 << 20)
        contenders: dict[str, tuple[int, Callable[[int], float]]] = {
            "kubectl_websocket": (n, lambda size: kubectl_forward(pod, size, True)),
            "kubectl_spdy": (n, lambda size: kubectl_forward(pod, size, False)),
            "ktpy_websocket": (n, lambda size: ktpy_stream(api, pod, size)),
            "python_client_portforward": (small, lambda size: official_client(pod, size)),
        }
        runs: dict[str, list[float]] = {name: [] for name in contenders}
        for _ in range(args.runs):  # interleaved, so drift hits every contender alike
            for name, (size, measure) in contenders.items():
                runs[name].append(size * 8 / measure(size) / 1e9)
        results = {
            name: {"gbit_s": values, "median_gbit_s": statistics.median(values)}
            for name, values in runs.items()
        }
        baseline = statistics.median(runs["kubectl_websocket"])
        summary = {
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "machine": f"{platform.node()} {os.cpu_count()} cpu {platform.machine()}",
            "bytes": {name: size for name, (size, _) in contenders.items()},
            "results": results,
            "ratios_vs_kubectl_websocket": {
                name: statistics.median(values) / baseline for name, values in runs.items()
            },
        }
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(summary, indent=2) + "\n")
        print(json.dumps(summary, indent=2))
    finally:
        kubectl("delete", "namespace", NAMESPACE, "--wait=false")


if __name__ == "__main__":
    main()
