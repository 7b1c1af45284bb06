"""The node's daemons: their configuration files, command lines, health checks.

Every component runs as a plain process on the host (the host is the node), in
the order a control plane needs: etcd, API server, controller-manager and
scheduler, containerd, kubelet, kube-proxy.
"""

from __future__ import annotations

import json
import ssl
import subprocess
import urllib.request
from collections.abc import Callable
from pathlib import Path

import yaml

from . import config, procs
from .procs import run

S = config.STATE_DIR
PKI = config.PKI_DIR
KCFG = config.KUBECONFIG_DIR
ETCD_DATA = S / "etcd"
KUBELET_ROOT = S / "kubelet"
CNI_CONF_DIR = S / "cni" / "net.d"
CNI_DATA = S / "cni" / "networks"
CONTAINERD_DIR = S / "containerd"
CONTAINERD_CONFIG = CONTAINERD_DIR / "config.toml"
KUBELET_CONFIG = S / "kubelet.yaml"
PROXY_CONFIG = S / "kube-proxy.yaml"
SCHEDULER_CONFIG = S / "kube-scheduler.yaml"
NODE_RESOLV_CONF = S / "resolv.conf"  # what pods with dnsPolicy Default (CoreDNS) get
POD_LOGS = S / "pod-logs"


def _bin(name: str) -> str:
    return str(config.BIN_DIR / name)


def _dump(path: Path, body: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(body, sort_keys=False))


# --- etcd -------------------------------------------------------------------


def etcd_argv() -> list[str]:
    return [
        _bin("etcd"),
        "--name=ktbed",
        f"--data-dir={ETCD_DATA}",
        f"--listen-client-urls={config.ETCD_CLIENT_URL}",
        f"--advertise-client-urls={config.ETCD_CLIENT_URL}",
        "--listen-peer-urls=http://127.0.0.1:2380",
        "--initial-advertise-peer-urls=http://127.0.0.1:2380",
        "--initial-cluster=ktbed=http://127.0.0.1:2380",
        "--unsafe-no-fsync",  # a throwaway test cluster: durability buys nothing, fsync costs a lot
        "--listen-metrics-urls=http://127.0.0.1:2381",
        "--log-level=warn",
    ]


def prepare_etcd() -> None:
    # etcd's data lives on a tmpfs: fast, and gone with `down`.
    ETCD_DATA.mkdir(parents=True, exist_ok=True)
    if run(["mountpoint", "-q", str(ETCD_DATA)], check=False).returncode != 0:
        run(["mount", "-t", "tmpfs", "-o", "size=1g,mode=0700", "ktbed-etcd", str(ETCD_DATA)])


def etcd_healthy() -> bool:
    with urllib.request.urlopen("http://127.0.0.1:2381/health", timeout=2) as resp:
        return bool(json.load(resp).get("health") == "true")


# --- API server ---------------------------------------------------------------


def apiserver_argv() -> list[str]:
    return [
        _bin("kube-apiserver"),
        f"--etcd-servers={config.ETCD_CLIENT_URL}",
        "--bind-address=0.0.0.0",
        f"--secure-port={config.API_PORT}",
        f"--advertise-address={config.NODE_IP}",
        f"--service-cluster-ip-range={config.SERVICE_CIDR}",
        f"--client-ca-file={PKI / 'ca.crt'}",
        f"--tls-cert-file={PKI / 'apiserver.crt'}",
        f"--tls-private-key-file={PKI / 'apiserver.key'}",
        f"--kubelet-client-certificate={PKI / 'apiserver-kubelet-client.crt'}",
        f"--kubelet-client-key={PKI / 'apiserver-kubelet-client.key'}",
        "--kubelet-preferred-address-types=InternalIP",
        f"--service-account-key-file={PKI / 'sa.pub'}",
        f"--service-account-signing-key-file={PKI / 'sa.key'}",
        f"--service-account-issuer=https://kubernetes.default.svc.{config.CLUSTER_DOMAIN}",
        "--authorization-mode=Node,RBAC",
        "--enable-admission-plugins=NodeRestriction",
        # Privileged pods are allowed by the server, so that a rejection in the
        # restricted namespace is Pod Security admission's doing.
        "--allow-privileged=true",
        f"--cert-dir={S / 'apiserver-certs'}",
        "--profiling=false",
        "--v=1",
    ]


def _admin_ssl() -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(PKI / "ca.crt"))
    ctx.load_cert_chain(str(PKI / "admin.crt"), str(PKI / "admin.key"))
    return ctx


def apiserver_ready() -> bool:
    url = f"https://127.0.0.1:{config.API_PORT}/readyz"
    with urllib.request.urlopen(url, timeout=3, context=_admin_ssl()) as resp:
        return bool(resp.status == 200)


# --- controller-manager and scheduler ------------------------------------------


def controller_manager_argv() -> list[str]:
    kubeconfig = KCFG / "controller-manager.yaml"
    return [
        _bin("kube-controller-manager"),
        f"--kubeconfig={kubeconfig}",
        f"--authentication-kubeconfig={kubeconfig}",
        f"--authorization-kubeconfig={kubeconfig}",
        "--bind-address=127.0.0.1",
        "--leader-elect=false",
        "--use-service-account-credentials=true",
        f"--service-account-private-key-file={PKI / 'sa.key'}",
        f"--root-ca-file={PKI / 'ca.crt'}",
        f"--cluster-signing-cert-file={PKI / 'ca.crt'}",
        f"--cluster-signing-key-file={PKI / 'ca.key'}",
        "--allocate-node-cidrs=true",
        f"--cluster-cidr={config.CLUSTER_CIDR}",
        "--node-cidr-mask-size=24",
        f"--service-cluster-ip-range={config.SERVICE_CIDR}",
        "--controllers=*,-cloud-node-lifecycle,-service-lb-controller,-node-route-controller",
        "--v=1",
    ]


def scheduler_argv() -> list[str]:
    _dump(
        SCHEDULER_CONFIG,
        {
            "apiVersion": "kubescheduler.config.k8s.io/v1",
            "kind": "KubeSchedulerConfiguration",
            "clientConnection": {"kubeconfig": str(KCFG / "scheduler.yaml")},
            "leaderElection": {"leaderElect": False},
        },
    )
    return [
        _bin("kube-scheduler"),
        f"--config={SCHEDULER_CONFIG}",
        "--bind-address=127.0.0.1",
        "--v=1",
    ]


def _https_ok(port: int) -> bool:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with urllib.request.urlopen(
        f"https://127.0.0.1:{port}/healthz", timeout=2, context=ctx
    ) as resp:
        return bool(resp.status == 200)


# --- containerd ---------------------------------------------------------------


def write_containerd_config() -> None:
    certs_d = CONTAINERD_DIR / "certs.d"
    default_hosts = certs_d / "_default" / "hosts.toml"
    default_hosts.parent.mkdir(parents=True, exist_ok=True)
    # Every registry, whatever its name, resolves to a refused local port.
    default_hosts.write_text(
        f'server = "{config.REFUSED_REGISTRY}"\n\n'
        f'[host."{config.REFUSED_REGISTRY}"]\n'
        '  capabilities = ["pull", "resolve"]\n  skip_verify = true\n'
    )
    for registry in ("docker.io", "registry.k8s.io", "ghcr.io", "quay.io", "ktbed.local"):
        hosts = certs_d / registry / "hosts.toml"
        hosts.parent.mkdir(parents=True, exist_ok=True)
        hosts.write_text(default_hosts.read_text())
    CONTAINERD_CONFIG.write_text(
        f"""version = 2
root = "{CONTAINERD_DIR / "root"}"
state = "{config.RUN_DIR / "containerd" / "state"}"
disabled_plugins = [
  "io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper",
]

[grpc]
  address = "{config.CONTAINERD_ADDRESS}"

[ttrpc]
  address = "{config.CONTAINERD_ADDRESS}.ttrpc"

[debug]
  level = "warn"

[plugins."io.containerd.internal.v1.opt"]
  path = "{CONTAINERD_DIR / "opt"}"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{config.PAUSE_IMAGE}"
  # This VM lacks CAP_SYS_RESOURCE: runc may only raise oom_score_adj.
  restrict_oom_score_adj = true
  disable_apparmor = true
  enable_selinux = false
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{CNI_CONF_DIR}"
  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = "{certs_d}"
"""
    )


def containerd_argv() -> list[str]:
    return ["/usr/bin/containerd", f"--config={CONTAINERD_CONFIG}"]


def containerd_ready() -> bool:
    return run(ctr("version"), check=False).returncode == 0


def ctr(*args: str) -> list[str]:
    return ["ctr", f"--address={config.CONTAINERD_ADDRESS}", "-n", "k8s.io", *args]


def image_refs() -> set[str]:
    out = run(ctr("images", "ls", "-q"), check=False).stdout
    return set(out.split())


# --- CNI ----------------------------------------------------------------------


def write_cni_config() -> None:
    CNI_CONF_DIR.mkdir(parents=True, exist_ok=True)
    conflist = {
        "cniVersion": "0.4.0",
        "name": "ktbed",
        "plugins": [
            {
                "type": "bridge",
                "bridge": config.POD_BRIDGE,
                "isGateway": True,
                "ipMasq": True,
                "hairpinMode": True,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": config.NODE_POD_CIDR}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                    "dataDir": str(CNI_DATA),
                },
            },
            {"type": "portmap", "capabilities": {"portMappings": True}},
        ],
    }
    (CNI_CONF_DIR / "10-ktbed.conflist").write_text(json.dumps(conflist, indent=1))


# --- kubelet ------------------------------------------------------------------


def kubelet_argv() -> list[str]:
    NODE_RESOLV_CONF.write_text(f"nameserver {config.RESOLVER_IP}\n")
    _dump(
        KUBELET_CONFIG,
        {
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            "authentication": {
                "anonymous": {"enabled": False},
                "webhook": {"enabled": True},
                "x509": {"clientCAFile": str(PKI / "ca.crt")},
            },
            "authorization": {"mode": "Webhook"},
            "containerRuntimeEndpoint": f"unix://{config.CONTAINERD_ADDRESS}",
            "cgroupDriver": "cgroupfs",
            "failCgroupV1": False,  # this VM has cgroup v1 (hybrid)
            "failSwapOn": False,
            "oomScoreAdj": 0,  # no CAP_SYS_RESOURCE here: kubelet may not lower its score
            "clusterDNS": [config.CLUSTER_DNS_IP],
            "clusterDomain": config.CLUSTER_DOMAIN,
            "resolvConf": str(NODE_RESOLV_CONF),
            "readOnlyPort": 0,
            "healthzBindAddress": "127.0.0.1",
            "healthzPort": 10248,
            "podLogsDir": str(POD_LOGS),
            # The disk may run low in CI: never evict, never collect images
            # (the locally imported pause image cannot be pulled back).
            "evictionHard": {
                "memory.available": "50Mi",
                "nodefs.available": "0%",
                "imagefs.available": "0%",
                "nodefs.inodesFree": "0%",
            },
            "imageGCHighThresholdPercent": 100,
            "imageGCLowThresholdPercent": 99,
            "serializeImagePulls": False,
            "shutdownGracePeriod": "0s",
            "maxPods": 110,
        },
    )
    return [
        _bin("kubelet"),
        f"--config={KUBELET_CONFIG}",
        f"--kubeconfig={KCFG / 'kubelet.yaml'}",
        f"--root-dir={KUBELET_ROOT}",
        f"--node-ip={config.NODE_IP}",
        f"--hostname-override={config.NODE_NAME}",
        "--v=1",
    ]


def kubelet_healthy() -> bool:
    with urllib.request.urlopen("http://127.0.0.1:10248/healthz", timeout=2) as resp:
        return bool(resp.status == 200)


# --- kube-proxy ---------------------------------------------------------------


def proxy_argv() -> list[str]:
    _dump(
        PROXY_CONFIG,
        {
            "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
            "kind": "KubeProxyConfiguration",
            "clientConnection": {"kubeconfig": str(KCFG / "kube-proxy.yaml")},
            "mode": "iptables",
            "clusterCIDR": config.CLUSTER_CIDR,
            "hostnameOverride": config.NODE_NAME,
            "healthzBindAddress": "127.0.0.1:10256",
            "metricsBindAddress": "127.0.0.1:10249",
            "oomScoreAdj": 0,
            # Zeros leave the host's conntrack sysctls alone (some are read-only here).
            "conntrack": {
                "maxPerCore": 0,
                "min": 0,
                "tcpEstablishedTimeout": "0s",
                "tcpCloseWaitTimeout": "0s",
            },
        },
    )
    return [_bin("kube-proxy"), f"--config={PROXY_CONFIG}", "--v=1"]


def proxy_healthy() -> bool:
    with urllib.request.urlopen("http://127.0.0.1:10256/healthz", timeout=2) as resp:
        return bool(resp.status == 200)


# --- the component table ----------------------------------------------------------

ARGV: dict[str, Callable[[], list[str]]] = {
    "etcd": etcd_argv,
    "kube-apiserver": apiserver_argv,
    "kube-controller-manager": controller_manager_argv,
    "kube-scheduler": scheduler_argv,
    "containerd": containerd_argv,
    "kubelet": kubelet_argv,
    "kube-proxy": proxy_argv,
}

HEALTH: dict[str, Callable[[], bool]] = {
    "etcd": etcd_healthy,
    "kube-apiserver": apiserver_ready,
    "kube-controller-manager": lambda: _https_ok(10257),
    "kube-scheduler": lambda: _https_ok(10259),
    "containerd": containerd_ready,
    "kubelet": kubelet_healthy,
    "kube-proxy": proxy_healthy,
}

START_TIMEOUT = {"kube-apiserver": 90.0}


def start(name: str) -> None:
    procs.start(name, ARGV[name]())
    procs.wait_for(
        name, lambda: procs.alive(name) and HEALTH[name](), START_TIMEOUT.get(name, 60.0)
    )


def healthy(name: str) -> bool:
    try:
        return procs.alive(name) and HEALTH[name]()
    except Exception:  # noqa: BLE001 - any failure of a probe means unhealthy
        return False


def stop(name: str) -> None:
    procs.stop(name)


def restart(name: str) -> None:
    procs.stop(name)
    start(name)


def kubectl(
    *args: str,
    kubeconfig: Path | None = None,
    check: bool = True,
    input: str | None = None,
    timeout: float = 120,
) -> subprocess.CompletedProcess[str]:
    cfg = kubeconfig or (KCFG / "admin.yaml")
    return subprocess.run(
        [_bin("kubectl"), f"--kubeconfig={cfg}", *args],
        check=check,
        capture_output=True,
        text=True,
        input=input,
        timeout=timeout,
    )


def node_ready() -> bool:
    out = kubectl("get", "node", config.NODE_NAME, "-o", "json", check=False)
    if out.returncode != 0:
        return False
    conditions = json.loads(out.stdout)["status"].get("conditions", [])
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


def wait_node_ready(timeout: float = 120) -> None:
    procs.wait_for("node Ready", node_ready, timeout, interval=1)
