"""A silent path between the laptop and the API server (issue 11, tunnel health).

The laptop's packets to and from the API server are dropped (not rejected: the
kernel sees nothing) for 30 s while requests run through `ktpy connect`'s SOCKS
port and, from a pod, through a laptop exchange of the echo Service. Each
session must log the loss within 15 s, be back within 10 s of the drop's end,
and serve again; a third session stopped by Ctrl-C during the drop must still
be gone, with everything it made, within 10 s of the drop's end.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from tests.e2e.commands.test_exchange import Load, exchange, service_text, wait_answer
from tests.e2e.conftest import Bed, Laptop, RunningKtpy, local_server, run_ktpy
from tests.e2e.testbed import config

DROP_SECONDS = 30
CTRL_C_AFTER = 25  # into the drop


@contextmanager
def silent_path(laptop: Laptop) -> Iterator[None]:
    """Drop the laptop's TCP to and from the API server, both ways, until the block ends."""
    rules = [
        ["OUTPUT", "-p", "tcp", "-d", config.NODE_IP, "--dport", str(config.API_PORT)],
        ["INPUT", "-p", "tcp", "-s", config.NODE_IP, "--sport", str(config.API_PORT)],
    ]
    added = []
    try:
        for rule in rules:
            laptop.run("iptables", "-w", "-I", *rule, "-j", "DROP")
            added.append(rule)
        yield
    finally:
        for rule in added:
            laptop.run("iptables", "-w", "-D", *rule, "-j", "DROP", check=False)


@dataclass
class Stderr:
    """When each stderr line of a session was first seen."""

    session: RunningKtpy
    seen: list[tuple[float, str]] = field(default_factory=list)

    def poll(self) -> None:
        now = time.monotonic()
        while len(self.seen) < len(self.session.errors):
            self.seen.append((now, self.session.errors[len(self.seen)]))

    def first(self, marker: str, after: float) -> float | None:
        self.poll()
        return next((t for t, line in self.seen if t >= after and marker in line), None)


@dataclass
class SocksProbe:
    """curl through the SOCKS port every 0.5 s (2 s timeout each), outcomes kept."""

    laptop: Laptop
    url: str
    results: list[tuple[float, bool]] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        while not self.stop.is_set():
            started = time.monotonic()
            result = self.laptop.run(
                "curl", "-sf", "--max-time", "2", "--socks5-hostname", "127.0.0.1:2311",
                "-o", "/dev/null", self.url, check=False, timeout=10,
            )  # fmt: skip
            self.results.append((started, result.returncode == 0))
            self.stop.wait(max(0.0, 0.5 - (time.monotonic() - started)))


def wait_marker(logs: Stderr, marker: str, after: float, within: float) -> float:
    deadline = after + within
    while time.monotonic() < deadline + 1:
        found = logs.first(marker, after)
        if found is not None:
            return found - after
        time.sleep(0.1)
    raise AssertionError(f"no {marker!r} within {within}s: {logs.session.errors[-15:]}")


def test_a_silent_path_is_noticed_and_the_tunnel_comes_back(
    bed: Bed, echo: str, laptop: Laptop
) -> None:
    ns = echo
    server = local_server(laptop, 3001)
    wait_answer(bed, ns, f"http://echo.{ns}/", "cluster")
    connect = run_ktpy(laptop, "-n", ns, "connect", "--mode", "socks", "--socks-port", "2311")
    swapped = exchange(laptop, ns, "--expose", "3001:80")
    doomed = run_ktpy(laptop, "-n", ns, "connect", "--mode", "socks", "--socks-port", "2312")
    sessions = (connect, swapped, doomed)
    probe = SocksProbe(laptop, f"http://echo.{ns}/healthz")
    load: Load | None = None
    try:
        for session in sessions:
            session.wait_ready(timeout=90)
        wait_answer(bed, ns, f"http://echo.{ns}/", "laptop")
        logs = [Stderr(s) for s in sessions]
        threading.Thread(target=probe.run, daemon=True).start()
        load = Load.start(bed, ns, f"http://echo.{ns}/", 10, 5 + DROP_SECONDS + 20)
        time.sleep(5)
        with silent_path(laptop):
            drop_start = time.monotonic()
            drop_wall = time.time()
            lost = [wait_marker(log, "tunnel silent", drop_start, 15) for log in logs]
            time.sleep(max(0.0, drop_start + CTRL_C_AFTER - time.monotonic()))
            doomed.proc.send_signal(signal.SIGINT)
            time.sleep(max(0.0, drop_start + DROP_SECONDS - time.monotonic()))
        drop_end = time.monotonic()
        back = [wait_marker(log, "tunnel reconnected", drop_end, 10) for log in logs[:2]]
        code = doomed.proc.wait(timeout=max(1.0, drop_end + 10 - time.monotonic()))
        doomed_gone = time.monotonic() - drop_end
        time.sleep(max(0.0, drop_end + 12 - time.monotonic()))
        probe.stop.set()
        load.wait(timeout=60)
        socks_after = [ok for t, ok in probe.results if t > drop_end + 10]
        pod_after = [r for r in load.results if r["t"] > drop_wall + DROP_SECONDS + 10]
        socks_ok_before = sum(ok for t, ok in probe.results if t < drop_start)
        report = (
            f"[tunnel health] silent path noticed after {', '.join(f'{s:.1f}s' for s in lost)}; "
            f"back {', '.join(f'{s:.1f}s' for s in back)} after the drop; Ctrl-C'd session "
            f"gone {doomed_gone:.1f}s after the drop; SOCKS ok before {socks_ok_before}, "
            f"after {sum(socks_after)}/{len(socks_after)}; exchange after "
            f"{sum(r['ok'] for r in pod_after)}/{len(pod_after)}; the exchange's stale SSH "
            f"connection ended: {any('previous SSH connection' in e for e in swapped.errors)}"
        )
        print(report)
        with open("/tmp/ktpy-tunnel-health.txt", "a") as out:  # noqa: PTH123
            out.write(report + "\n")
        assert code == 130, doomed.errors[-10:]
        assert all(s <= 15 for s in lost)
        assert all(s <= 10 for s in back)
        assert socks_ok_before > 0
        assert socks_after
        assert all(socks_after), probe.results
        assert pod_after
        assert all(r["ok"] and r["pod"] == "laptop" for r in pod_after)
    finally:
        probe.stop.set()
        for session in sessions:
            session.stop(signal.SIGINT, timeout=60)
        server.kill()
        if load is not None and load.proc.poll() is None:
            load.proc.kill()
    assert bed.ktpy_objects(ns) == []
    assert "ktpy.dev" not in service_text(bed, ns)
