"""What the mesh router costs a request: the same in-cluster client calling the
echo Service straight (its pods) and, in the same run, through the router while
a developer meshes it (requests without the header: the stuntman's way, which
every other caller of a meshed Service takes), and with the header (to the
laptop through the router, the mesh Service, the shadow and the tunnel).

Not a test. Run as root with the test bed up:

    sudo .venv/bin/python -m benchmarks.mesh [--rate 50] [--seconds 20]

Open-loop load (`ktbed-echo load`, a new connection per request) from the
client pod; p50/p99 of each request's time and the answered rate, with the
ratio of the router's series to the straight one. Writes benchmarks/results/mesh.json.
"""

from __future__ import annotations

import argparse
import json
import signal
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks.connect import KUBECONFIG, Laptop, kubectl, wait_line
from tests.e2e.conftest import LOCAL_SERVER, client_manifest, echo_manifest
from tests.e2e.testbed import config

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "mesh.json"
NAMESPACE = "bench-mesh"
LAPTOP = config.BENCH_LAPTOPS[1]
KUBECTL = [str(config.BIN_DIR / "kubectl"), f"--kubeconfig={KUBECONFIG}"]


def load(rate: int, seconds: int, *headers: str) -> dict[str, Any]:
    """Latencies (ms) and the answered rate of an open-loop load from the client pod."""
    header_args = [a for h in headers for a in ("--header", h)]
    out = kubectl(
        "-n", NAMESPACE, "exec", "client", "--",
        "ktbed-echo", "load", "--url", "http://echo/", "--rate", str(rate),
        "--duration", f"{seconds}s", "--timeout", "5s", *header_args,
    )  # fmt: skip
    rows = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    done = [r for r in rows if not r.get("summary")]
    times = [r["ms"] for r in done if r["ok"]]
    q = statistics.quantiles(times, n=100)
    return {
        "requests": len(done),
        "failed": sum(1 for r in done if not r["ok"]),
        "p50_ms": round(q[49], 3),
        "p99_ms": round(q[98], 3),
        "answered_per_s": round(len(times) / seconds, 1),
        "pods": sorted({r["pod"].split("-")[0] for r in done if r["ok"]}),
    }


def wait_answers(timeout: float = 60) -> None:
    """Until the new Service answers from the client pod (kube-proxy programs a new
    Service's rules a moment after its pods are Ready): a baseline must not count that."""
    deadline = time.monotonic() + timeout
    while True:
        probe = subprocess.run(
            [*KUBECTL, "-n", NAMESPACE, "exec", "client", "--",
             "curl", "-sf", "--max-time", "2", "-o", "/dev/null", "http://echo/healthz"],
            capture_output=True, check=False,
        )  # fmt: skip
        if probe.returncode == 0:
            return
        if time.monotonic() > deadline:
            raise RuntimeError("the echo Service never answered")
        time.sleep(0.5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rate", type=int, default=50)
    parser.add_argument("--seconds", type=int, default=20)
    args = parser.parse_args()
    kubectl("delete", "namespace", NAMESPACE, "--ignore-not-found", "--wait=true")
    kubectl("create", "namespace", NAMESPACE)
    kubectl("-n", NAMESPACE, "apply", "-f", "-", stdin=echo_manifest() + "---" + client_manifest())
    kubectl("-n", NAMESPACE, "rollout", "status", "deployment/echo", "--timeout=90s")
    kubectl("-n", NAMESPACE, "wait", "pod/client", "--for=condition=Ready", "--timeout=90s")
    wait_answers()
    laptop = Laptop(LAPTOP)
    server = laptop.popen(sys.executable, "-c", LOCAL_SERVER, "127.0.0.1", "3001", "laptop")
    try:
        straight = load(args.rate, args.seconds)
        mesh = laptop.popen(
            sys.executable, "-m", "ktpy", "-n", NAMESPACE, "mesh", "echo",
            "--expose", "3001:80", "--version-mark", "bench",
        )  # fmt: skip
        try:
            wait_line(mesh, "Now you can access your service by header", timeout=180)
            router_default = load(args.rate, args.seconds)
            router_marked = load(args.rate, args.seconds, "version=bench")
        finally:
            mesh.send_signal(signal.SIGINT)
            mesh.wait(120)
    finally:
        server.kill()
        laptop.close()
        kubectl("delete", "namespace", NAMESPACE, "--wait=false")
    summary = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "rate": args.rate,
        "seconds": args.seconds,
        "straight_to_the_pods": straight,
        "through_the_router_no_header": router_default,
        "through_the_router_to_the_laptop": router_marked,
        "router_added_p50_ms": round(router_default["p50_ms"] - straight["p50_ms"], 3),
        "ratios_to_straight": {
            series: {
                k: round(data[k] / straight[k], 2) for k in ("p50_ms", "p99_ms", "answered_per_s")
            }
            for series, data in (
                ("no_header", router_default),
                ("to_the_laptop", router_marked),
            )
        },
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
