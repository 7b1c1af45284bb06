"""Rewrite the cluster section of docs/performance.md from the latest results
(benchmarks/results/latest.json and portforward.json).

    .venv/bin/python -m benchmarks.report
"""

from __future__ import annotations

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
DOC = ROOT / "docs" / "performance.md"
START = "## Through the cluster (the test bed)"
NEXT = "## DNS (no cluster)"


def connect_section(latest: dict) -> str:  # type: ignore[type-arg]
    median = latest["bulk_gbit_s"]["median"]
    p50, p99 = latest["latency_ms"]["p50"], latest["latency_ms"]["p99"]
    base = median["port_forward_websocket"]
    rows = "\n".join(
        f"| {k} | {v:.2f} | {v / base:.2f} | {p50[k]:.2f} | {p99[k]:.2f} |"
        for k, v in median.items()
    )
    ratios, added = latest["ratios"], latest["latency_added_p50_ms"]
    bulk_ratio = ratios["connect_bulk_vs_port_forward"]
    socks_ratio = ratios["socks_bulk_vs_port_forward"]
    ready = latest["connect_ready_after_pod_ready_s"]
    mib, runs = latest["bulk_bytes"] >> 20, len(latest["bulk_gbit_s"]["runs"]["connect_tun"])
    cpu = latest.get("ktpy_cpu_s_per_gib", {}).get("median", {})
    cpu_line = (
        f"- ktpy's own CPU per GiB moved (all its processes, median): TUN "
        f"**{cpu['connect_tun']:.1f} s**, SOCKS **{cpu['connect_socks']:.1f} s**.\n"
        if cpu
        else ""
    )
    return f"""### ktpy connect vs kubectl port-forward

`sudo .venv/bin/python -m benchmarks.connect --mib {mib} --runs {runs}` (results:
`benchmarks/results/latest.json`, chart: `docs/performance-connect.svg`). Bulk is
one {latest["bulk_bytes"] >> 20} MiB download per run; latency is a small request/response
on one held connection. The baselines are kubectl port-forward to the same pod
from the same laptop, in the same run, interleaved.

Date {latest["date"]}, {latest["machine"]}.

| path | bulk Gbit/s | vs port-forward (WebSocket) | p50 ms | p99 ms |
|---|---:|---:|---:|---:|
{rows}

- `connect_bulk_vs_port_forward` = **{bulk_ratio:.2f}** (bar: at least 0.70);
  `socks_bulk_vs_port_forward` = **{socks_ratio:.2f}**.
- Added p50 latency of connect over port-forward: **{added["connect_tun"]:.2f} ms**
  (bar: within 1 ms).
- connect is ready **{ready:.1f} s** after its shadow pod is Ready
  (bar: 3 s after Running).
{cpu_line}
![bulk throughput](performance-connect.svg)
"""


def portforward_section(pf: dict) -> str:  # type: ignore[type-arg]
    ratios = pf["ratios_vs_kubectl_websocket"]
    rows = "\n".join(
        f"| {k} | {v['median_gbit_s']:.2f} | {ratios[k]:.2f} | {pf['bytes'][k] >> 20} |"
        for k, v in pf["results"].items()
    )
    return f"""### Port-forward clients

`sudo .venv/bin/python -m benchmarks.portforward --mib 200 --runs 3` (results:
`benchmarks/results/portforward.json`): the raw port-forward to the echo pod,
without SSH. ktpy's own WebSocket client (frames parsed in the reading thread,
no socket pair) against kubectl and the official Python client's
`kubernetes.stream.portforward`, whose buffer handling copies everything
pending on every frame: it gets a smaller transfer, or one run takes minutes.

Date {pf["date"]}, {pf["machine"]}.

| client | Gbit/s (median) | vs kubectl WebSocket | MiB per run |
|---|---:|---:|---:|
{rows}
"""


def main() -> None:
    latest = json.loads((RESULTS / "latest.json").read_text())
    pf = json.loads((RESULTS / "portforward.json").read_text())
    section = f"""{START}

Everything here runs on the project's test bed (docs/testing.md): a laptop
network namespace that reaches only the API server, one echo pod. Absolute
numbers move with the load on the 2 shared cores; the ratios to the baselines
measured in the same run are what the bars are about.

{connect_section(latest)}
{portforward_section(pf)}
"""
    text = DOC.read_text()
    if START in text:
        text = text[: text.index(START)] + text[text.index(NEXT) :]
    DOC.write_text(text.replace(NEXT, section + NEXT, 1))


if __name__ == "__main__":
    main()
