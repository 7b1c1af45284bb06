"""Fixed facts of the test bed: paths, address plan, versions.

Everything the bed writes outside its cache lives under STATE_DIR and RUN_DIR,
so `down` can prove it left nothing by removing exactly those two trees.
"""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path

KUBE_VERSION = "v1.34.4"

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parents[2]

CACHE_DIR = Path(os.environ.get("KTBED_CACHE", "/var/cache/ktpy-testbed"))
STATE_DIR = Path("/var/lib/ktpy-testbed")
RUN_DIR = Path("/run/ktpy-testbed")
LOG_DIR = STATE_DIR / "logs"
PKI_DIR = STATE_DIR / "pki"
KUBECONFIG_DIR = STATE_DIR / "kubeconfigs"
BIN_DIR = RUN_DIR / "bin"  # symlinks named after each component -> cached multi-call binary

# The node lives on an empty bridge of its own: its address does not depend on
# the VM's eth0, and traffic to the cluster's ranges that no rule catches dies
# on this bridge instead of following the default route off the machine.
NODE_NAME = "ktbed"
NODE_BRIDGE = "ktbed0"
NODE_IP = "10.250.0.1"
API_PORT = 6443
API_URL = f"https://{NODE_IP}:{API_PORT}"

SERVICE_CIDR = "10.96.0.0/16"
KUBERNETES_SERVICE_IP = "10.96.0.1"
CLUSTER_DNS_IP = "10.96.0.10"
CLUSTER_DOMAIN = "cluster.local"
CLUSTER_CIDR = "10.244.0.0/16"
NODE_POD_CIDR = "10.244.0.0/24"  # the first /24 the controller-manager hands out
POD_BRIDGE = "cni0"

# Laptop N talks to the host over veth ktlap-N (host end 10.251.N.1, laptop end
# 10.251.N.2) and may reach only the API server and the bed resolver on NODE_IP.
LAPTOP_NET = ipaddress.ip_network("10.251.0.0/16")
LAPTOP_PREFIX = "laptop-"
LAPTOP_VETH_PREFIX = "ktlap-"
MAX_LAPTOPS = 64
# Who uses which laptop numbers, so suites running side by side never share one.
BED_LAPTOPS = range(1, 3)  # made by `up`
BENCH_LAPTOPS = range(3, 10)  # benchmarks/
E2E_LAPTOPS = range(10, 40)  # the pytest `laptop` fixture
INTEGRATION_LAPTOPS = range(40, 64)  # integration tests that need a laptop-like namespace

# The bed's own resolver: answers TEST_DOMAIN, NXDOMAIN for the rest, logs every query.
RESOLVER_IP = NODE_IP
TEST_DOMAIN = "ktbed.test"

IPTABLES_CHAIN = "KTBED-LAPTOPS"

ETCD_CLIENT_URL = "http://127.0.0.1:2379"

CONTAINERD_SOCKET = RUN_DIR / "containerd" / "containerd.sock"
CONTAINERD_ADDRESS = str(CONTAINERD_SOCKET)
# A port on loopback that nothing listens on: every registry points here, so a
# missing image fails at once with ErrImagePull and no pull leaves the machine.
REFUSED_REGISTRY = "http://127.0.0.1:9"

PAUSE_IMAGE = "ktbed.local/pause:3.10"

COMPONENTS = (
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "containerd",
    "kubelet",
    "kube-proxy",
)


def laptop_name(n: int) -> str:
    return f"{LAPTOP_PREFIX}{n}"


def laptop_addresses(n: int) -> tuple[str, str]:
    """(host end, laptop end) of laptop n's veth pair."""
    if not 1 <= n <= MAX_LAPTOPS:
        raise ValueError(f"laptop number must be 1..{MAX_LAPTOPS}, got {n}")
    base = int(LAPTOP_NET.network_address) + (n << 8)
    return str(ipaddress.IPv4Address(base + 1)), str(ipaddress.IPv4Address(base + 2))
