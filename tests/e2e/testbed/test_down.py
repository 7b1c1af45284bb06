"""`down` leaves nothing behind. Runs last: it takes the bed down."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.conftest import Bed
from tests.e2e.testbed import config


def _sh(*cmd: str) -> str:
    return subprocess.run(cmd, capture_output=True, text=True, check=True).stdout


@pytest.mark.bed_teardown
def test_down_leaves_nothing(bed: Bed) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "tests.e2e.testbed", "down"],
        cwd=config.REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    # Checked from the outside, not with the bed's own inventory.
    # A zombie has exited and holds nothing; it stays listed until its parent reaps it,
    # and once `up` or `restart` has exited that parent is init or the CI harness's
    # subreaper, not the bed.
    processes = "\n".join(
        args
        for stat, _, args in (
            line.strip().partition(" ") for line in _sh("ps", "-eo", "stat=,args=").splitlines()
        )
        if not stat.startswith("Z")
    )
    for marker in (
        "kube-apiserver",
        "kubelet",
        "kube-proxy",
        "kube-controller-manager",
        "kube-scheduler",
        "etcd --name=ktbed",
        str(config.STATE_DIR),
        str(config.RUN_DIR),
        "tests.e2e.testbed.resolver",
    ):
        assert marker not in processes, marker
    links = _sh("ip", "-o", "link", "show")
    for name in (config.NODE_BRIDGE, config.POD_BRIDGE, config.LAPTOP_VETH_PREFIX):
        assert f" {name}" not in links, name
    netns = _sh("ip", "netns", "list")
    assert config.LAPTOP_PREFIX not in netns
    assert "cni-" not in netns
    for tool in ("iptables-save", "ip6tables-save"):
        rules = _sh(tool)
        for prefix in ("KUBE-", "CNI-", "KTBED-"):
            assert prefix not in rules, f"{tool}: {prefix}"
    mounts = Path("/proc/self/mounts").read_text()
    for marker in (str(config.STATE_DIR), str(config.RUN_DIR), "/run/netns/cni-", "/var/lib/cni"):
        assert marker not in mounts, marker
    for path in (config.STATE_DIR, config.RUN_DIR, Path("/var/lib/cni")):
        assert not path.exists(), path
    assert not list(Path("/sys/fs/cgroup").glob("*/kubepods"))
    assert (
        not list(Path("/etc/netns").glob(config.LAPTOP_PREFIX + "*"))
        if Path("/etc/netns").exists()
        else True
    )
