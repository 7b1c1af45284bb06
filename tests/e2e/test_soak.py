"""A bounded soak (issue 15): connect, exchange and mesh carry steady requests
for KTPY_SOAK_SECONDS (180 in the default run; 1800 or more by hand), with an
idle minute between the busy phases and one eviction of the exchange's shadow
pod in the middle of the last phase.

Counted: every request, by path. Outside a window of 10 s from the eviction, 0
may fail (inside it, the failures are reported). Measured: the RSS, threads and
open file descriptors of all ktpy processes in the laptops after the first busy
phase (warm) and at the end: within 10% of the warm values."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.commands.test_exchange import Load
from tests.e2e.conftest import (
    Bed,
    Laptop,
    RunningKtpy,
    echo_manifest,
    local_server,
    run_ktpy,
    stop_together,
)
from tests.e2e.session.test_eviction import evict
from tests.e2e.testbed import hostnet

SECONDS = int(os.environ.get("KTPY_SOAK_SECONDS", "180"))
IDLE = min(60.0, SECONDS / 3)  # the gap between the busy phases: a minute
RATE = 5  # requests per second on each path
RESTART_WINDOW = 10.0  # seconds from the eviction in which failures are allowed
GROWTH = 0.10

pytestmark = pytest.mark.timeout(SECONDS + 420)

# Runs in the laptop: GET url every 1/rate s for seconds, a fresh connection each
# (through connect's TUN device and DNS); one JSON line per request.
REQUESTER = r"""
import json, socket, sys, time
host, port, path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
rate, seconds = float(sys.argv[4]), float(sys.argv[5])
start = time.time()
i = 0
while time.time() - start < seconds:
    due = start + i / rate
    time.sleep(max(0.0, due - time.time()))
    i += 1
    t = time.time()
    try:
        with socket.create_connection((host, port), timeout=2) as s:
            s.settimeout(2)
            s.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
            data = b""
            while chunk := s.recv(65536):
                data += chunk
        ok = data.startswith(b"HTTP/1.1 200")
        err = "" if ok else data[:40].decode(errors="replace")
        print(json.dumps({"t": t, "ok": ok, "err": err}), flush=True)
    except OSError as exc:
        print(json.dumps({"t": t, "ok": False, "err": str(exc)}), flush=True)
"""


@dataclass
class Requests:
    """One path's requests, as JSON lines from a process."""

    name: str
    proc: subprocess.Popen[str]
    results: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            data = json.loads(line)
            if not data.get("summary"):
                self.results.append(data)

    def wait(self, timeout: float) -> None:
        self.proc.wait(timeout)
        self._reader.join(10)  # it has taken the last lines once stdout ends
        assert not self._reader.is_alive(), f"{self.name}: the requester's output never ended"


@dataclass(frozen=True)
class Usage:
    rss_kib: int
    threads: int
    fds: int

    def __str__(self) -> str:
        return f"RSS {self.rss_kib / 1024:.1f} MiB, {self.threads} threads, {self.fds} fds"


def ktpy_usage(*laptops: Laptop) -> Usage:
    """All ktpy processes of these laptops together, read from the host's /proc."""
    rss = threads = fds = 0
    namespaces = {hostnet.pid_ns_file(lap.name).stat().st_ino for lap in laptops}
    for entry in Path("/proc").iterdir():
        try:
            if not entry.name.isdigit() or (entry / "ns/pid").stat().st_ino not in namespaces:
                continue
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ")
            if b"-m ktpy" not in cmdline:
                continue
            status = dict(
                line.split(":", 1) for line in (entry / "status").read_text().splitlines()
            )
            rss += int(status["VmRSS"].split()[0])
            threads += int(status["Threads"])
            fds += sum(1 for _ in (entry / "fd").iterdir())
        except (OSError, KeyError):
            continue  # ended meanwhile
    return Usage(rss, threads, fds)


def shadow_of(bed: Bed, namespace: str, role: str) -> str:
    pods = bed.get_json("-n", namespace, "pods", "-l", f"ktpy.dev/role={role}")["items"]
    running = [p["metadata"]["name"] for p in pods if not p["metadata"].get("deletionTimestamp")]
    assert len(running) == 1, running
    return str(running[0])


def phase(bed: Bed, ns: str, laptop: Laptop, seconds: float) -> dict[str, Requests | Load]:
    """One busy phase: each path at RATE for seconds, started together."""
    through_connect = laptop.popen(
        sys.executable, "-c", REQUESTER, f"echo2.{ns}", "80", "/connect", str(RATE), str(seconds)
    )
    return {
        "connect": Requests("connect", through_connect),
        "exchange": Load.start(bed, ns, "http://echo/exchange", RATE, int(seconds)),
        "mesh": Load.start(bed, ns, "http://echo2/mesh", RATE, int(seconds), header="VERSION=soak"),
        "mesh-others": Load.start(bed, ns, "http://echo2/others", RATE, int(seconds)),
    }


def test_soak_loses_nothing_outside_the_eviction_and_holds_its_footprint(
    bed: Bed, echo: str, laptop: Laptop, other_laptop: Laptop
) -> None:
    ns = echo
    marks = [time.monotonic()]  # start, ready, first phase over, second over, stopped
    bed.apply(echo_manifest("echo2"), ns)
    local_server(laptop, 3001, "exchange-laptop")
    local_server(other_laptop, 3002, "mesh-laptop")
    busy = max((SECONDS - IDLE) / 2, 20.0)
    sessions: list[RunningKtpy] = []
    try:
        # connect and exchange do not need echo2: they start while it rolls out.
        connect = run_ktpy(laptop, "-n", ns, "connect")
        exchange = run_ktpy(laptop, "-n", ns, "exchange", "echo", "--expose", "3001:80")
        sessions = [connect, exchange]
        bed.kubectl("-n", ns, "rollout", "status", "deployment/echo2", "--timeout=90s", timeout=100)
        mesh = run_ktpy(
            other_laptop, "-n", ns, "mesh", "echo2", "--expose", "3002:80", "--version-mark", "soak"
        )
        sessions = [connect, exchange, mesh]
        connect.wait_ready(timeout=180)
        exchange.wait_for("All looks good", timeout=180)
        mesh.wait_for("Now you can access your service by header", timeout=180)
        marks.append(time.monotonic())

        first = phase(bed, ns, laptop, busy)
        for path in first.values():
            path.wait(busy + 60)
        marks.append(time.monotonic())
        warm = ktpy_usage(laptop, other_laptop)

        time.sleep(IDLE)  # the idle minute is the point: nothing to wait for

        second = phase(bed, ns, laptop, busy)
        time.sleep(busy / 2)
        evicted_at = time.time()
        evict(bed, ns, shadow_of(bed, ns, "exchange"))
        for path in second.values():
            path.wait(busy + 60)
        marks.append(time.monotonic())
        end = ktpy_usage(laptop, other_laptop)

        for session in sessions:
            assert session.proc.poll() is None, f"a session ended: {session.errors[-5:]}"
    finally:
        codes = stop_together(sessions)
    marks.append(time.monotonic())
    assert codes == [130] * len(sessions)

    took = [b - a for a, b in itertools.pairwise(marks)]
    report = [
        f"soak of {SECONDS} s: warm {warm}; end {end}",
        f"sessions ready after {took[0]:.1f} s; busy {took[1]:.1f} s, idle and busy "
        f"{took[2]:.1f} s; stopped in {took[3]:.1f} s",
    ]
    # What answers each path: the laptops (exchange, mesh with the header), the
    # cluster's pods (mesh without it); connect's requester checks the status only.
    answered_by = {"exchange": {"exchange-laptop"}, "mesh": {"mesh-laptop"}}
    for name in ("connect", "exchange", "mesh", "mesh-others"):
        results = first[name].results + second[name].results
        inside = [r for r in results if evicted_at <= r["t"] <= evicted_at + RESTART_WINDOW]
        outside_failed = [r for r in results if not r["ok"] and r not in inside]
        report.append(
            f"{name}: {len(results)} requests, {sum(not r['ok'] for r in inside)} failed within "
            f"{RESTART_WINDOW:.0f} s of the eviction, {len(outside_failed)} failed outside it"
        )
        assert len(results) >= RATE * busy * 2 * 0.9, (name, len(results))
        assert outside_failed == [], (name, outside_failed[:5])
        pods = {r["pod"] for r in results if r["ok"] and "pod" in r}
        if name in answered_by:
            assert pods == answered_by[name], (name, pods)
        elif name == "mesh-others":
            assert pods, "no answer from the cluster's pods"
            assert not any(pod.endswith("laptop") for pod in pods), pods
    print("\n" + "\n".join(report))
    assert end.rss_kib <= warm.rss_kib * (1 + GROWTH), report[0]
    assert end.threads <= warm.threads * (1 + GROWTH), report[0]
    assert end.fds <= warm.fds * (1 + GROWTH), report[0]
