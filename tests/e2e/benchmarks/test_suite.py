"""The benchmark suite's smoke run (`python -m benchmarks all --smoke`) on the bed:
every scenario through every path produces a figure, and each moved exactly the
bytes, requests, connections and lookups it was asked for. The full run's
figures are in benchmarks/results/latest.json and docs/performance.md."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from benchmarks import suite
from tests.e2e.conftest import Bed, Laptop
from tests.e2e.testbed import config

PATHS = ("direct", "kubectl_websocket", "kubectl_spdy", "ktpy_port_forward", "ssh_d",
         "ssh_d_ktpy_pf", "redsocks", "connect_tun", "connect_socks")  # fmt: skip
SCENARIOS = ("bulk_down_1", "bulk_down_8", "bulk_up_1", "bulk_up_8", "rr_1", "rr_8", "churn")


def test_smoke_run_measures_every_scenario_and_moves_what_it_asked(
    bed: Bed, namespace: str, laptop: Laptop, tmp_path: Path
) -> None:
    out = tmp_path / "smoke.json"
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks", "all", "--smoke", "--out", str(out),
         "--laptop", str(laptop.number), "--namespace", namespace],
        # the suite bounds itself (85 s); about 60 s on an idle bed
        cwd=config.REPO_ROOT, capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    sizes = suite.SMOKE
    assert result["checks_failed"] == []

    asked = {"bulk": sizes.bulk_bytes, "rr": sizes.rr_requests, "churn": sizes.churn_connections}
    for scenario in SCENARIOS:
        assert set(result["runs"][scenario]) == set(PATHS), scenario
        for path in PATHS:
            (run,) = result["runs"][scenario][path]
            moved = run.get("bytes", run.get("requests", run.get("connections")))
            # a new connection a baseline failed is counted (kubectl's port-forward
            # drops some under churn); through ktpy none may fail
            failed = run.get("failed", 0)
            assert moved + failed == run["asked"] == asked[scenario.split("_")[0]], (path, run)
            assert failed == 0 or not path.startswith("connect"), (scenario, path, run)
            figure = run.get("gbit_s", run.get("p50_ms"))
            assert figure, (scenario, path, run)
            assert figure > 0, (scenario, path, run)
    for key, by_path in result["medians"].items():
        assert set(by_path) == set(PATHS), key
    # CPU per GiB for every path that has laptop processes (all but direct)
    assert set(result["cpu_s_per_gib"]) == set(PATHS) - {"direct"}

    for path, held in result["hold"].items():
        assert held["answered"] == held["answered_again"] == sizes.hold_connections, (path, held)
        assert held["held"]["rss_bytes"] > 0
        assert held["held"]["threads"] > 0
    assert set(result["hold"]) == {"connect_tun", "connect_socks", "ssh_d", "redsocks"}

    assert len(result["dns"]) == 6
    for series, dns in result["dns"].items():
        assert dns["queries"] == dns["asked"] == sizes.dns_queries, (series, dns)
        assert dns["p50_ms"] > 0

    cold = result["cold_start"]["median"]
    assert set(cold["steps_s"]) == {"command_to_session", "pod_ready", "port_forward", "ssh",
                                    "tun", "dns"}  # fmt: skip
    assert all(v >= 0 for v in cold["steps_s"].values())
    assert cold["first_request_s"] > cold["steps_s"]["pod_ready"] > 0
    # Running comes before Ready: the time after it is the longer
    assert cold["first_request_after_pod_running_s"] >= cold["first_request_after_pod_ready_s"] > 0
    exchange = result["exchange"]
    assert exchange["switch_in_s"] > 0
    assert exchange["switch_out_s"] > 0
    memory = result["shadow_pod_memory"]["idle"]
    assert memory["working_set_bytes"] > 0
    image = result["shadow_image"]
    assert image["uncompressed_bytes"] > image["pulled_bytes"] > 0
    for name in ("connect_bulk_vs_ssh_d", "connect_bulk_vs_redsocks", "socks_bulk_vs_ssh_d",
                 "connect_bulk_vs_ssh_d_ktpy_pf", "socks_bulk_vs_ssh_d_ktpy_pf",
                 "connect_bulk_vs_ktpy_port_forward"):  # fmt: skip
        assert result["ratios"][name] > 0, name
    # the suite left nothing of its own in the laptop: ktpy, the baselines and their rules
    assert not laptop.processes("ktpy")
    assert not laptop.processes("redsocks")
    rules = laptop.run("iptables", "-w", "-t", "nat", "-S").stdout
    assert "KTPY-BENCH" not in rules
