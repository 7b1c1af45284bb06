"""``ktpy doctor``'s judgement, without I/O: checks and measured hops in, which hop is
the problem (in plain words), the change since the previous run, text and JSON out.

A hop is a problem when it fails, or when its own share is slow: above a fixed
limit, or clearly worse than the previous run against the same cluster and
target (half the throughput; twice the round trip plus 10 ms, or plus a fifth of
the whole path's round trip for a share measured across a longer path). The first
failing hop along the data path is the one named (a broken port-forward also
stops everything above it), else the first slow one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from ktpy.session.hops import Hop, Measured

# A hop's own round trip (ms, median) above which it is called slow whatever it was before.
SLOW_RTT_MS = {Hop.PORT_FORWARD: 150.0, Hop.SSH: 50.0, Hop.TARGET: 100.0, Hop.DNS: 200.0}
SLOW_MBIT_S = 20.0  # the port-forward's throughput below which every download drags
WORSE_FACTOR = 2.0
WORSE_MARGIN_MS = 10.0
# An own share is a difference of two round trips over the whole path: its noise grows
# with that path, so "worse" needs this share of the whole path on top of the margin.
PATH_NOISE = 0.2

_HOP_WORDS = {
    Hop.PORT_FORWARD: "the port-forward (this machine -> API server -> kubelet -> shadow pod)",
    Hop.SSH: "SSH in the shadow pod",
    Hop.TARGET: "the shadow pod's connection to the target Service",
    Hop.DNS: "DNS in the shadow pod (dnsmasq -> the cluster's DNS)",
}
_HOP_HINTS = {
    Hop.PORT_FORWARD: "Everything ktpy carries crosses this hop: check the network between this "
    "machine and the API server (VPN, proxy, a slow link) and the API server's load.",
    Hop.SSH: "See the shadow pod's log ('kubectl logs POD'): sshd's own lines say why.",
    Hop.TARGET: "Check that the Service's selector matches ready pods "
    "('kubectl get endpointslices -l kubernetes.io/service-name=NAME') and its ports.",
    Hop.DNS: "The shadow pod's dnsmasq answers cluster names for connect: a new session "
    "gets a new one; if the cluster's DNS fails too, check CoreDNS.",
}


class Status(StrEnum):
    OK = "ok"
    WARN = "warn"
    FAIL = "fail"
    SKIP = "skip"


@dataclass(frozen=True)
class Check:
    """A check before the hops: this machine, the API server, rights, the image."""

    name: str
    status: Status
    text: str
    hint: str = ""


@dataclass(frozen=True)
class HopVerdict:
    measured: Measured
    status: Status
    figures: str  # the measured figures in words
    change: str = ""  # against the previous run, in words
    problem: str = ""  # why it is a problem, in words


@dataclass
class Report:
    checks: list[Check] = field(default_factory=list)
    hops: list[HopVerdict] = field(default_factory=list)

    @property
    def problem(self) -> tuple[str, str] | None:
        """(what is wrong, what to do) for the first failed check, else the first
        problem hop along the path, else None."""
        for check in self.checks:
            if check.status is Status.FAIL:
                return f"{check.name}: {check.text}", check.hint
        verdict = self.problem_hop
        if verdict is None:
            return None
        hop = verdict.measured.hop
        return f"the problem is {_HOP_WORDS[hop]} ({hop.value}): {verdict.problem}", _HOP_HINTS[hop]

    @property
    def problem_hop(self) -> HopVerdict | None:
        """The first failing hop along the path, else the first slow one: a broken hop
        is the problem even when one beneath it is merely slow."""
        for status in (Status.FAIL, Status.WARN):
            for verdict in self.hops:
                if verdict.status is status:
                    return verdict
        return None


def record(measured: Measured) -> dict[str, float]:
    """What the next run compares against."""
    out: dict[str, float] = {}
    if measured.rtt is not None:
        out["rtt_ms"] = round(measured.rtt.p50_ms, 3)
    if measured.throughput is not None:
        out["mbit_s"] = round(measured.throughput.mbit_s, 1)
    return out


def _ms(value: float) -> str:
    if value < 1:
        return f"{value:.2f} ms"
    return f"{value:.1f} ms" if value < 100 else f"{value:.0f} ms"


def _mbit(value: float) -> str:
    return f"{value:.1f} Mbit/s" if value < 100 else f"{value:.0f} Mbit/s"


def _percent(change: float) -> str:
    # -99.5 % and worse would round to a misleading -100 %.
    return f"{change:+.1f}%" if -100 < change <= -99.5 else f"{change:+.0f}%"


def _words(measured: Measured) -> str:
    parts = []
    if measured.rtt is not None:
        parts.append(f"own round trip {_ms(measured.rtt.p50_ms)} (p99 {_ms(measured.rtt.p99_ms)})")
    if measured.throughput is not None:
        parts.append(f"throughput {_mbit(measured.throughput.mbit_s)}")
    labels = {
        "api_rtt_ms": "API server alone",
        "handshake_ms": "handshake",
        "ready_endpoints": "ready endpoints",
        "cluster_dns": "cluster DNS",
        "whole_path_ms": "whole path",
    }
    for key, value in measured.figures.items():
        label = labels.get(key)
        if label is None:
            continue
        shown = _ms(value) if key.endswith("_ms") and isinstance(value, float | int) else value
        parts.append(f"{label} {shown}")
    return ", ".join(parts)


def judge_hop(measured: Measured, previous: dict[str, float] | None) -> HopVerdict:
    hop = measured.hop
    words = _words(measured)
    if hop is Hop.TARGET and measured.figures.get("ready_endpoints") == 0:
        seen = f" (the pod's connect: {measured.error})" if measured.error else ""
        return HopVerdict(
            measured, Status.FAIL, words, problem=f"the Service has no ready endpoints{seen}"
        )
    if measured.error is not None:
        why = measured.error
        if hop is Hop.DNS and "answers" in str(measured.figures.get("cluster_dns", "")):
            why += f" ({measured.figures['cluster_dns']}, so dnsmasq is the one failing)"
        return HopVerdict(measured, Status.FAIL, words, problem=why)
    problems: list[str] = []
    changes: list[str] = []
    now = record(measured)
    before = previous or {}
    if "rtt_ms" in now:
        rtt = now["rtt_ms"]
        if "rtt_ms" in before:
            changes.append(f"round trip was {_ms(before['rtt_ms'])}")
            whole = measured.figures.get("whole_path_ms", 0.0)
            noise = PATH_NOISE * whole if isinstance(whole, float | int) else 0.0
            if rtt > before["rtt_ms"] * WORSE_FACTOR + max(WORSE_MARGIN_MS, noise):
                problems.append(f"round trip {_ms(rtt)}, up from {_ms(before['rtt_ms'])}")
        if rtt > SLOW_RTT_MS[hop] and not problems:
            problems.append(f"round trip {_ms(rtt)} (slow above {_ms(SLOW_RTT_MS[hop])})")
    if "mbit_s" in now:
        mbit = now["mbit_s"]
        if "mbit_s" in before:
            percent = (mbit / before["mbit_s"] - 1) * 100 if before["mbit_s"] else 0.0
            changes.append(f"throughput was {_mbit(before['mbit_s'])} ({_percent(percent)})")
            if mbit * WORSE_FACTOR < before["mbit_s"]:
                problems.append(
                    f"throughput {_mbit(mbit)}, down from {_mbit(before['mbit_s'])}"
                    f" at the previous run ({_percent(percent)})"
                )
        if mbit < SLOW_MBIT_S and not any("throughput" in p for p in problems):
            problems.append(f"throughput {_mbit(mbit)} (slow below {_mbit(SLOW_MBIT_S)})")
    change = "previous run: " + ", ".join(changes) if changes else ""
    if problems:
        return HopVerdict(measured, Status.WARN, words, change, "; ".join(problems))
    return HopVerdict(measured, Status.OK, words, change)


def render(report: Report) -> list[str]:
    lines = ["Checks:"]
    lines.extend(f"  {c.status.value:<5} {c.name}: {c.text}" for c in report.checks)
    if report.hops:
        lines.append("Hops, along the path from this machine (each one's own share):")
    for verdict in report.hops:
        measured = verdict.measured
        lines.append(f"  {verdict.status.value:<5} {measured.hop.value}: {measured.path}")
        if verdict.figures:
            lines.append(f"        {verdict.figures}")
        if verdict.change:
            lines.append(f"        {verdict.change}")
        if verdict.problem:
            lines.append(f"        {verdict.problem}")
    problem = report.problem
    lines.append(f"Verdict: {problem[0]}" if problem else "Verdict: every hop is healthy.")
    return lines


def to_json(report: Report) -> dict[str, Any]:
    problem = report.problem
    problem_hop = report.problem_hop.measured.hop.value if report.problem_hop else None
    failed_check = next((c.name for c in report.checks if c.status is Status.FAIL), None)
    return {
        "checks": [
            {"name": c.name, "status": c.status.value, "text": c.text, "hint": c.hint}
            for c in report.checks
        ],
        "hops": [
            {
                "hop": v.measured.hop.value,
                "path": v.measured.path,
                "status": v.status.value,
                "rtt": v.measured.rtt.as_dict() if v.measured.rtt else None,
                "throughput": (
                    {**v.measured.throughput.as_dict(), "mbit_s": v.measured.throughput.mbit_s}
                    if v.measured.throughput
                    else None
                ),
                "figures": v.measured.figures,
                "error": v.measured.error,
                "change": v.change or None,
                "problem": v.problem or None,
            }
            for v in report.hops
        ],
        "problem": {
            "check": failed_check,
            "hop": None if failed_check else problem_hop,
            "text": problem[0],
            "hint": problem[1],
        }
        if problem
        else None,
    }
