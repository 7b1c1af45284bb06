"""What the DNS rule costs a public name: a laptop name under a namespace-named
domain (`www.ktbed.test` with a namespace `test`), asked from a laptop of the
bed without connect and with `ktpy connect` running, in one run.

Not a test. Run as root with the test bed up:

    sudo .venv/bin/python -m benchmarks.dns_rule [--queries 1000]

Three series of UDP queries to the laptop's first nameserver, one at a time:
the same name again and again (ktpy asked the cluster once, then knows it lacks
the name until the negative TTL runs out), and a fresh missing name each time
(every one costs a cluster round trip first: the worst case). Each with connect
is given as its p50/p99 and as a ratio to the same series without connect.
Writes benchmarks/results/dns_rule.json.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from datetime import UTC, datetime
from pathlib import Path

from benchmarks.connect import Laptop, kubectl, wait_line
from tests.e2e.testbed import config

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "dns_rule.json"
NAMESPACE = "bench-dns-rule"
LAPTOP = config.BENCH_LAPTOPS[0]

# Runs in the laptop: latencies (ms) of one query at a time.
ASK = r"""
import json, statistics, sys, time
from dnslib import DNSRecord
server = next(l.split()[1] for l in open("/etc/resolv.conf") if l.startswith("nameserver"))
template, count = sys.argv[1], int(sys.argv[2])
times = []
for i in range(count):
    wire = DNSRecord.question(template.format(i=i)).pack()
    started = time.perf_counter()
    DNSRecord.parse(DNSRecord.parse(wire).send(server, 53, timeout=5))
    times.append((time.perf_counter() - started) * 1000)
q = statistics.quantiles(times, n=100)
print(json.dumps({"p50_ms": round(q[49], 3), "p99_ms": round(q[98], 3)}))
"""
SERIES = {
    "same_public_name": f"www.{config.TEST_DOMAIN}",
    "fresh_missing_name": f"nx{{i}}-{datetime.now(UTC):%H%M%S}.{config.TEST_DOMAIN}",
}


def measure(laptop: Laptop, count: int, tag: str) -> dict[str, dict[str, float]]:
    results = {}
    for series, template in SERIES.items():
        done = laptop.popen(sys.executable, "-c", ASK, template.replace("nx", f"nx{tag}"),
                            str(count))  # fmt: skip
        out, err = done.communicate(timeout=600)
        if done.returncode != 0:
            raise RuntimeError(f"{series}: {err.strip()[-800:]}")
        results[series] = json.loads(out)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--queries", type=int, default=1000)
    args = parser.parse_args()
    kubectl("delete", "namespace", NAMESPACE, "test", "--ignore-not-found", "--wait=true")
    kubectl("create", "namespace", NAMESPACE)
    kubectl("create", "namespace", "test")
    laptop = Laptop(LAPTOP)
    try:
        without = measure(laptop, args.queries, "a")
        connect = laptop.popen(sys.executable, "-m", "ktpy", "-n", NAMESPACE, "connect")
        try:
            wait_line(connect, "All looks good")
            with_connect = measure(laptop, args.queries, "b")
        finally:
            connect.send_signal(signal.SIGINT)
            connect.wait(60)
    finally:
        laptop.close()
        kubectl("delete", "namespace", NAMESPACE, "test", "--wait=false")
    summary = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "queries": args.queries,
        "without_connect": without,
        "with_connect": with_connect,
        "added_ms": {
            s: {k: round(with_connect[s][k] - without[s][k], 3) for k in without[s]} for s in SERIES
        },
        "ratios": {
            s: {k: round(with_connect[s][k] / without[s][k], 2) for k in without[s]} for s in SERIES
        },
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
