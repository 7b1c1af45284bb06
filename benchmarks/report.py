"""Rewrite the cluster section of docs/performance.md from the suite's results
(benchmarks/results/latest.json, and portforward.json for the client table), and
draw its charts (benchmarks/charts.py).

    .venv/bin/python -m benchmarks.report
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from benchmarks import charts

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
DOC = ROOT / "docs" / "performance.md"
START = "## Through the cluster (the test bed)"
NEXT = "## DNS (no cluster)"
MB = 1e6
MIB = 1 << 20

PATH_WORDS = {
    "direct": "direct, node to pod (the machine's limit)",
    "kubectl_websocket": "kubectl port-forward, WebSocket",
    "kubectl_spdy": "kubectl port-forward, SPDY",
    "ktpy_port_forward": "ktpy's port-forward, no SSH",
    "ssh_d": "`ssh -D` over kubectl port-forward",
    "ssh_d_ktpy_pf": "`ssh -D` over ktpy's port-forward",
    "redsocks": "`ssh -D` + redsocks (kt-connect's design)",
    "connect_tun": "**ktpy connect, TUN**",
    "connect_socks": "**ktpy connect, SOCKS**",
}
# What each path rides on: a figure above the hop under it needs saying why.
RIDES_ON = {
    "connect_tun": "ktpy_port_forward",
    "connect_socks": "ktpy_port_forward",
    "ssh_d": "kubectl_websocket",
    "ssh_d_ktpy_pf": "ktpy_port_forward",
    "redsocks": "ssh_d",
}


def _f(value: float, digits: int = 2) -> str:
    return f"{value:,.{digits}f}"


def bulk_table(r: dict[str, Any]) -> str:
    m, cpu = r["medians"], r["cpu_s_per_gib"]
    rows = []
    for path in m["bulk_down_1_gbit_s"]:
        cells = [_f(m[f"bulk_{d}_{n}_gbit_s"][path]) for d in ("down", "up") for n in (1, 8)]
        c = cpu.get(path, {})
        cells.append(f"{_f(c['down'], 1)} / {_f(c['up'], 1)}" if c else "-")
        rows.append(f"| {PATH_WORDS[path]} | " + " | ".join(cells) + " |")
    return (
        "| path | down x1 | down x8 | up x1 | up x8 | CPU s per GiB, down / up |\n"
        "|---|---:|---:|---:|---:|---:|\n" + "\n".join(rows)
    )


def latency_table(r: dict[str, Any]) -> str:
    m = r["medians"]
    rows = []
    for path in m["rr_1_p50_ms"]:
        cells = [_f(m[f"rr_{c}_{q}_ms"][path]) for c in (1, 8) for q in ("p50", "p99", "p99_9")] + [
            _f(m["churn_per_s"][path], 0),
            _f(m["churn_p99_ms"][path]),
        ]
        rows.append(f"| {PATH_WORDS[path]} | " + " | ".join(cells) + " |")
    return (
        "| path | 1 conn p50 | p99 | p99.9 | 8 conns p50 | p99 | p99.9 "
        "| new conn/s | p99 of a new conn | p99 of its connect() | failed (all rounds) |\n"
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n" + "\n".join(rows)
    )


def hold_table(r: dict[str, Any]) -> str:
    rows = []
    for path, h in r["hold"].items():
        rows.append(
            f"| {PATH_WORDS[path]} | {h['answered']} of {h['connections']} "
            f"| {h['errors']} {'(' + ', '.join(h['error_kinds']) + ')' if h['errors'] else ''} "
            f"| {h['idle']['rss_bytes'] / MB:.0f} | {h['held']['rss_bytes'] / MB:.0f} "
            f"| {h['idle']['threads']} | {h['held']['threads']} | {h['open_seconds']:.2f} "
            f"| {h['shadow_pod_memory_held']['working_set_bytes'] / MIB:.1f} |"
        )
    return (
        "| path | answered | errors | RSS idle MB | RSS held MB | threads idle | threads held "
        "| s to open all | shadow pod working set held, MiB |\n"
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|\n" + "\n".join(rows)
    )


DNS_WORDS = {
    "laptop_resolver_cached": "laptop's resolver (getaddrinfo), cached name",
    "laptop_resolver_uncached": "laptop's resolver (getaddrinfo), a new pod name each time",
    "ktpy_server_cached": "straight at ktpy's DNS server, cached name",
    "ktpy_server_uncached": "straight at ktpy's DNS server, a new pod name each time",
    "cluster_dns_from_pod_cached": "cluster DNS from the echo pod, same name",
    "cluster_dns_from_pod_uncached": "cluster DNS from the echo pod, a new pod name each time",
}


def dns_table(r: dict[str, Any]) -> str:
    rows = [
        f"| {DNS_WORDS[name]} | {_f(d['p50_ms'], 3)} | {_f(d['p99_ms'], 3)} | {d['queries']} |"
        for name, d in r["dns"].items()
    ]
    return "| lookup | p50 ms | p99 ms | lookups |\n|---|---:|---:|---:|\n" + "\n".join(rows)


def cold_table(r: dict[str, Any]) -> str:
    runs = r["cold_start"]["runs"]
    steps = list(runs[0]["steps_s"])
    head = "| run | " + " | ".join(steps) + " | first answer | after Ready | after Running |"
    rows = [
        f"| {i + 1} | "
        + " | ".join(_f(run["steps_s"][s]) for s in steps)
        + f" | {_f(run['first_request_s'])} | {_f(run['first_request_after_pod_ready_s'])}"
        + f" | {_f(run['first_request_after_pod_running_s'])} |"
        for i, run in enumerate(runs)
    ]
    return head + "\n|---|" + "---:|" * (len(steps) + 3) + "\n" + "\n".join(rows)


def targets(r: dict[str, Any]) -> list[tuple[str, str, str, bool]]:
    """Issue 17's targets: (target, figure, gap, met)."""
    ratio, m = r["ratios"], r["medians"]
    out: list[tuple[str, str, str, bool]] = []

    def at_least(name: str, figure: float, bar: float, unit: str = "x") -> None:
        gap = figure - bar
        out.append((name, f"{figure:.2f}{unit}", f"{gap:+.2f}{unit}", gap >= 0))

    def at_most(name: str, figure: float, bar: float, unit: str) -> None:
        gap = figure - bar
        out.append((name, f"{figure:.2f} {unit}", f"{gap:+.2f} {unit}", gap <= 0))

    at_least("connect bulk >= 0.90x `ssh -D` (over kubectl's port-forward)",
             ratio["connect_bulk_vs_ssh_d"], 0.90)  # fmt: skip
    at_least("connect bulk >= 0.90x `ssh -D` over the same port-forward (ktpy's)",
             ratio["connect_bulk_vs_ssh_d_ktpy_pf"], 0.90)  # fmt: skip
    at_least("connect bulk >= 1.0x redsocks", ratio["connect_bulk_vs_redsocks"], 1.0)
    at_least("SOCKS bulk >= 1.0x `ssh -D` (over kubectl's port-forward)",
             ratio["socks_bulk_vs_ssh_d"], 1.0)  # fmt: skip
    at_least("SOCKS bulk >= 1.0x `ssh -D` over the same port-forward (ktpy's)",
             ratio["socks_bulk_vs_ssh_d_ktpy_pf"], 1.0)  # fmt: skip
    at_least(
        "connect bulk >= 0.75x ktpy's port-forward",
        ratio["connect_bulk_vs_ktpy_port_forward"],
        0.75,
    )
    added = r["latency_added_ms_over_kubectl_websocket"]["connect_tun"]
    at_most("added p50 over kubectl port-forward <= 0.3 ms", added["rr_1_p50"], 0.3, "ms")
    at_most("added p99 over kubectl port-forward <= 2 ms", added["rr_1_p99"], 2.0, "ms")
    at_least(
        "new connections through connect >= 1,000/s", m["churn_per_s"]["connect_tun"], 1000, "/s"
    )
    hold = r["hold"]["connect_tun"]
    out.append(
        (
            f"{hold['connections']:,} concurrent connections, 0 errors",
            f"{hold['errors']} errors",
            f"{hold['errors']:+d}",
            hold["errors"] == 0,
        )
    )
    rss = max(h["held"]["rss_bytes"] for k, h in r["hold"].items() if k.startswith("connect"))
    at_most("RSS of ktpy's laptop processes <= 100 MB (held)", rss / MB, 100, "MB")
    dns = r["dns"]
    at_most(
        "DNS cached p50 <= 0.2 ms (laptop resolver)",
        dns["laptop_resolver_cached"]["p50_ms"],
        0.2,
        "ms",
    )
    above = (
        dns["laptop_resolver_uncached"]["p50_ms"] - dns["cluster_dns_from_pod_uncached"]["p50_ms"]
    )
    at_most("DNS uncached <= 1 ms above cluster DNS from a pod (p50)", above, 1.0, "ms")
    cold = r["cold_start"]["median"]["first_request_after_pod_running_s"]
    at_most("first request <= 2 s after the shadow pod is Running", cold, 2.0, "s")
    mem = r["shadow_pod_memory"]
    ws = max(mem["idle"]["working_set_bytes"], mem["after_load"]["working_set_bytes"])
    at_most("shadow pod working set <= 20 MiB (idle, and after the rounds)", ws / MIB, 20, "MiB")
    held = max(h["shadow_pod_memory_held"]["working_set_bytes"] for h in r["hold"].values())
    at_most(f"... with {hold['connections']:,} connections held", held / MIB, 20, "MiB")
    at_most(
        "shadow image <= 40 MB uncompressed", r["shadow_image"]["uncompressed_bytes"] / MB, 40, "MB"
    )
    return out


def above_the_hop(r: dict[str, Any]) -> list[str]:
    """Every figure of a path above the one it rides on (bulk and new connections)."""
    m = r["medians"]
    lines = []
    for key in [k for k in m if k.startswith("bulk")] + ["churn_per_s"]:
        for path, under in RIDES_ON.items():
            if m[key][path] > m[key][under]:
                lines.append(f"`{key}`: {path} {m[key][path]:.3g} over {under} {m[key][under]:.3g}")
    return lines


def suite_section(r: dict[str, Any]) -> str:
    s = r["sizes"]
    rows = "\n".join(
        f"| {name} | {fig} | {gap} | {'met' if ok else '**missed**'} |"
        for name, fig, gap, ok in targets(r)
    )
    exch = r["exchange"]
    mem, image = r["shadow_pod_memory"], r["shadow_image"]
    above = "\n".join(f"- {line}" for line in above_the_hop(r)) or "- none"
    names = [f"connect_bulk_vs_{b}" for b in ("ssh_d", "ssh_d_ktpy_pf", "redsocks",
             "ktpy_port_forward", "kubectl_websocket")] + ["socks_bulk_vs_ssh_d",
             "socks_bulk_vs_ssh_d_ktpy_pf"]  # fmt: skip
    headline = ", ".join(f"`{k}` {r['ratios'][k]:.2f}" for k in names if k in r["ratios"])
    medians_of = f"median of {r['rounds_done']} interleaved rounds"
    kubectl = r["versions"]["kubectl"]
    if not kubectl.startswith("v"):  # an early run recorded the header of a YAML dump
        kubectl = r["versions"]["kubernetes"]
    deaths = r.get("helper_deaths", {})
    died = (
        "Baseline processes that died during the run and were started again: "
        + "; ".join(f"{name} {len(lines)}x ({lines[-1]!r})" for name, lines in deaths.items())
        + (f"; series run again: {len(r['retried'])}." if r.get("retried") else ".")
        if deaths
        else "No baseline process died during the run."
    )
    return f"""### The suite: ktpy against native tools (`python -m benchmarks all`)

`sudo .venv/bin/python -m benchmarks all` (bounded: 600 s; `--smoke` for the
CI run, 85 s) writes `benchmarks/results/latest.json` (raw runs, medians,
ratios, commit, commands, versions, machine); `python -m benchmarks.report`
turns it into this section and its charts. From one laptop of the bed to one
echo pod, in one run, round by round (drift hits every path alike). The load
tool is the same for every path (`benchmarks/load.py`).

The paths (`benchmarks/baselines.py`):
- **direct**: the load tool on the node (this machine) to the pod's address: the
  ceiling of the machine, no tunnel at all.
- **kubectl port-forward**, WebSocket (the default since 1.31) and SPDY
  (`PORT_FORWARD_WEBSOCKETS=false`), to the echo pod.
- **ktpy's port-forward without SSH**: ktpy's own WebSocket client behind a
  local listener (`benchmarks/raw_forward.py`), a stream per connection: the
  hop under connect's tunnel.
- **`ssh -D`**: OpenSSH's SOCKS proxy over a kubectl port-forward (WebSocket)
  to connect's own shadow pod (a key of the suite's added to its
  authorized_keys; aes128-gcm, the cipher ktpy picks): what the SOCKS mode
  replaces.
- **`ssh -D` over ktpy's port-forward**: the same `ssh -D` through ktpy's
  port-forward client instead of kubectl's, the one connect rides on: against
  it, connect's SSH (paramiko) and TUN stack meet OpenSSH alone on the same hop.
- **`ssh -D` + redsocks**: kt-connect's design built from native parts:
  redsocks (Debian's package, a C transparent TCP-to-SOCKS5 redirector) with an
  iptables REDIRECT of the cluster's ranges in the laptop's network namespace,
  into that `ssh -D`. kt-connect itself cannot be built here: the Go module
  proxy refuses its module; this is its design with C in place of its Go
  tun2socks.
- **ktpy connect**, TUN mode (to the Service's ClusterIP) and its SOCKS proxy.

Date {r["date"]}, commit `{r["commit"][:12]}`, {r["machine"]} (shared with other
work: absolute figures move with the load, the ratios of one run are what the
targets are about). kubectl {kubectl}, {r["versions"]["openssh"]},
redsocks {r["versions"]["redsocks"]}, paramiko {r["versions"]["paramiko"]},
Python {r["versions"]["python"]}. The run took {r["seconds"]:.0f} s. {died}

#### Targets (issue 17)

| target | figure | gap | |
|---|---:|---:|---|
{rows}

Headline ratios (one download stream): {headline}.

#### Bulk ({s["bulk_bytes"] >> 20} MiB per run, in total over 1 or 8 streams; Gbit/s, {medians_of})

CPU is user + system seconds of the path's laptop processes per GiB moved
(ktpy: the connect process and its TUN child; `ssh -D`: kubectl and ssh;
redsocks: those and redsocks); the node's and the pod's work is not counted.

{bulk_table(r)}

![bulk](performance-bulk.svg)

#### Request/response and new connections (ms; {medians_of})

A 3-byte `/healthz` answer, closed loop: {s["rr_requests"]} requests on one held
connection, and as many over 8. New connections: {s["churn_connections"]} in all
by 4 workers, each a connect (with its SOCKS handshake where there is one), one
request and the close; its p99 is the whole of that (a TUN stack or a SOCKS proxy
may accept a connection before the far end is reached: the connect() alone says
little), and the p99 of the connect() alone beside it.

{latency_table(r)}

![latency](performance-latency.svg)
![new connections](performance-churn.svg)

#### {s["hold_connections"]:,} connections at once

Each opened and answered once, all held, then each asked again. RSS and threads
are of the path's laptop processes together, idle (before) and while all are held.

{hold_table(r)}

#### DNS ({s["dns_queries"]} lookups per series, one at a time)

With connect's TUN mode up. Uncached: a pod name (`10-a-b-c.NS.pod.cluster.local`,
which the bed's CoreDNS answers for any address) never asked before, so no cache on
the way has it. The baseline asks cluster DNS (10.96.0.10) from the echo pod's
network namespace on the node.

{dns_table(r)}

#### Cold start (`ktpy --debug connect`, {len(r["cold_start"]["runs"])} runs)

From the command to the first request answered through the TUN device (a
client in the laptop tries every 20 ms), split by connect's own start-up timings
(its `start-up timings` debug line): the command's start until the session
starts (imports, checks), until the shadow pod is Ready, opening the
port-forward, SSH over it, the TUN step (reading the cluster's ranges, the
device, routes, the stack's process), and DNS (the server and the resolver).

{cold_table(r)}

![cold start](performance-cold-start.svg)

#### Exchange, shadow pod, image

- `ktpy exchange` of a second echo Service, asked from the node every 20 ms with
  a new connection: the laptop answered **{exch["switch_in_s"]:.2f} s** after the
  command started (its ready line at {exch["ready_line_s"]:.2f} s); after Ctrl-C
  the pods answered again within **{exch["switch_out_s"]:.2f} s** (the command
  took {exch["stop_s"]:.2f} s to finish). Failed requests: {exch["failed_during_switch_in"]}
  switching in, {exch["failed_during_switch_out"]} switching out, of {exch["requests"]}.
- The shadow pod's memory cgroup on the node (cgroup v1 here: `memory.usage_in_bytes`
  is v2's `memory.current`; the working set is that less inactive file pages, as
  the kubelet counts it): idle {mem["idle"]["usage_bytes"] / MIB:.1f} MiB
  (working set {mem["idle"]["working_set_bytes"] / MIB:.1f}), after the rounds
  {mem["after_load"]["usage_bytes"] / MIB:.1f} MiB (peak
  {mem["after_load"]["peak_bytes"] / MIB:.1f}).
- The shadow image: {image["uncompressed_bytes"] / MB:.1f} MB uncompressed,
  {image["pulled_bytes"] / MB:.1f} MB as pulled ({image["layers"]} layers).

#### Figures above the hop they ride on

connect rides on ktpy's port-forward, `ssh -D` on kubectl's (or ktpy's), redsocks on
`ssh -D`; every figure of a path above the one under it:

{above}
"""


def portforward_section(pf: dict[str, Any]) -> str:
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


# Hand-written notes between these two lines survive a rewrite of the section.
NOTES_START = "<!-- notes: kept by benchmarks.report -->"
NOTES_END = "<!-- end of notes -->"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--results", type=Path, default=RESULTS / "latest.json")
    parser.add_argument("--doc", type=Path, default=DOC)
    args = parser.parse_args()
    latest = json.loads(args.results.read_text())
    pf = json.loads((RESULTS / "portforward.json").read_text())
    charts.write_all(latest)
    text = args.doc.read_text()
    notes = f"{NOTES_START}\n{NOTES_END}\n\n"
    if NOTES_START in text:
        start, end = text.index(NOTES_START), text.index(NOTES_END)
        notes = text[start : end + len(NOTES_END)] + "\n\n"
    section = f"""{START}

Everything here runs on the project's test bed (docs/testing.md): a laptop
network namespace that reaches only the API server, echo pods. Absolute
numbers move with the load on the 2 shared cores; the ratios to the baselines
measured in the same run are what the targets are about.

{suite_section(latest)}
{notes}{portforward_section(pf)}
"""
    if START in text:
        text = text[: text.index(START)] + text[text.index(NEXT) :]
    args.doc.write_text(text.replace(NEXT, section + NEXT, 1))


if __name__ == "__main__":
    main()
