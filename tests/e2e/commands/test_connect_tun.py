"""`sudo ktpy connect` (TUN mode) end to end, in a laptop that reaches only the
API server and the bed resolver (issue 4's acceptance)."""

from __future__ import annotations

import json
import os
import pwd
import re
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests.e2e.commands.liveness import session_id
from tests.e2e.conftest import Bed, Laptop, RunningKtpy, run_ktpy
from tests.e2e.testbed import config, images

MANAGED = "app.kubernetes.io/managed-by=ktpy"
ECHO_BINARY = sorted((config.CACHE_DIR / "images" / "bin").glob("ktbed-echo-*"))


def _snapshot(laptop: Laptop) -> dict[str, str]:
    # Settle first: a fresh veth's IPv6 link-local address is "tentative" for a moment.
    deadline = time.monotonic() + 10
    while "tentative" in laptop.run("ip", "-6", "addr").stdout and time.monotonic() < deadline:
        time.sleep(0.2)
    snapshot: dict[str, str] = json.loads(
        laptop.run(sys.executable, "-m", "ktpy.host", "snapshot").stdout
    )
    return snapshot


def _get(laptop: Laptop, url: str, *extra: str) -> dict[str, object]:
    body: dict[str, object] = json.loads(
        laptop.run("curl", "-sf", "--max-time", "10", *extra, url).stdout
    )
    return body


def _shadow_ip(bed: Bed, namespace: str, session: RunningKtpy) -> str:
    pod = re.search(r"Shadow pod (\S+)", "\n".join(session.output))
    assert pod, session.output
    return str(bed.get_json("-n", namespace, "pod", pod.group(1))["status"]["podIP"])


def _coredns_names(bed: Bed, since: datetime) -> list[str]:
    logs = bed.kubectl(
        "-n", "kube-system", "logs", "deployment/coredns",
        f"--since-time={since.isoformat(timespec='seconds').replace('+00:00', 'Z')}",
    ).stdout  # fmt: skip
    # `log` lines: [INFO] 10.244.0.9:41234 - 512 "A IN echo.ns.svc.cluster.local. udp 54 ..."
    return re.findall(r'"\w+ IN (\S+) ', logs)


def _crash(laptop: Laptop, session: RunningKtpy) -> None:
    """A crash of the whole connect (power loss, the OOM killer): its root helper,
    which would otherwise undo the host changes, dies first, then the session."""
    for pid, _, _ in laptop.process_table(" -m ktpy.host.helper"):
        os.kill(pid, signal.SIGKILL)
    session.stop(signal.SIGKILL)


def _connect(laptop: Laptop, namespace: str, *extra: str) -> RunningKtpy:
    session = run_ktpy(laptop, "-n", namespace, "connect", "--socks-port", "2310", *extra)
    session.wait_ready(90)
    return session


@pytest.mark.parametrize("laptop", ["plain", "resolved"], indirect=True)
def test_pods_services_and_names_work_and_other_names_stay_local(
    bed: Bed, echo: str, laptop: Laptop
) -> None:
    ns = echo
    before = _snapshot(laptop)
    since = datetime.now(UTC)
    bed_queries_before = len(bed.resolver_queries())
    session = _connect(laptop, ns)
    try:
        shadow = _shadow_ip(bed, ns, session)
        cluster_ip = bed.get_json("-n", ns, "service", "echo")["spec"]["clusterIP"]
        pod_ip = bed.get_json("-n", ns, "pods", "-l", "app=echo")["items"][0]["status"]["podIP"]
        for url in (
            f"http://{cluster_ip}/",
            f"http://{pod_ip}:8080/",
            "http://echo/",
            f"http://echo.{ns}/",
            f"http://echo.{ns}.svc.{config.CLUSTER_DOMAIN}/",
        ):
            body = _get(laptop, url)
            # The echo server saw the shadow pod: the request went through the tunnel.
            assert str(body["client"]).rsplit(":", 1)[0] == shadow, url
        # A port nothing listens on is refused at once (an RST), as it would be in the
        # cluster, not reported as an unreachable host and not left to hang.
        probe = (
            "import socket, time\n"
            "started = time.monotonic()\n"
            "try:\n"
            f"    socket.create_connection(({pod_ip!r}, 8081), timeout=10)\n"
            "except OSError as exc:\n"
            "    print(type(exc).__name__, round(time.monotonic() - started, 2))\n"
        )
        outcome, seconds = laptop.run(sys.executable, "-c", probe).stdout.split()
        assert outcome == "ConnectionRefusedError"
        assert float(seconds) < 3
        # A Service made while connected answers by its short name within moments
        # (connect watches the namespace's Services).
        bed.kubectl("-n", ns, "create", "service", "clusterip", "late", "--tcp=80:8080")
        created = time.monotonic()
        late_ip = bed.get_json("-n", ns, "service", "late")["spec"]["clusterIP"]
        answer = laptop.run("getent", "hosts", "late", check=False)
        while answer.returncode != 0 and time.monotonic() - created < 3:
            time.sleep(0.1)
            answer = laptop.run("getent", "hosts", "late", check=False)
        assert answer.stdout.split()[:1] == [late_ip], answer
        missing = laptop.run("getent", "hosts", f"missing.{ns}.svc.{config.CLUSTER_DOMAIN}",
                             check=False)  # fmt: skip
        assert missing.returncode == 2  # not found (NXDOMAIN), not a failure to ask
        bed_name = laptop.run("getent", "hosts", f"www.{config.TEST_DOMAIN}").stdout.split()
        assert bed_name[0] == config.NODE_IP
        if laptop.resolver == "resolved":
            # Someone reverts ktpy's link: within 5 s its settings are back.
            link = f"ktpy-{session_id(session)}"
            laptop.run("resolvectl", "revert", link)
            reverted = time.monotonic()
            while config.CLUSTER_DOMAIN not in laptop.run("resolvectl", "domain", link).stdout:
                assert time.monotonic() - reverted < 5, "resolved's link settings not back in 5 s"
                time.sleep(0.1)
            assert laptop.run("getent", "hosts", f"echo.{ns}").stdout.split()[:1] == [cluster_ip]
    finally:
        assert session.stop(signal.SIGINT) == 130
    assert _snapshot(laptop) == before

    _, laptop_address = config.laptop_addresses(laptop.number)
    at_bed = [q["name"] for q in bed.resolver_queries()[bed_queries_before:]
              if q["src"] == laptop_address]  # fmt: skip
    assert f"www.{config.TEST_DOMAIN}." in at_bed
    cluster_like = [n for n in at_bed if config.CLUSTER_DOMAIN in n or n.startswith("echo.")]
    assert cluster_like == [], "cluster names reached the laptop's own resolver"
    at_cluster = _coredns_names(bed, since)
    assert f"echo.{ns}.svc.{config.CLUSTER_DOMAIN}." in at_cluster
    assert [n for n in at_cluster if config.TEST_DOMAIN in n] == [], (
        "a laptop name reached the cluster"
    )


def test_routes_are_the_clusters_ranges_and_a_vpn_route_is_left_alone(
    bed: Bed, echo: str, laptop: Laptop
) -> None:
    ns = echo
    host_end, _ = config.laptop_addresses(laptop.number)
    # A "corporate VPN" route that overlaps the pod range, installed before connect.
    laptop.run("ip", "route", "add", config.CLUSTER_CIDR, "via", host_end)
    before = _snapshot(laptop)
    session = _connect(laptop, ns)
    try:
        text = "\n".join(session.output)
        assert f"Service range {config.SERVICE_CIDR} (from ServiceCIDR objects)" in text
        assert f"Pod range {config.NODE_POD_CIDR} (from the Nodes' spec.podCIDRs)" in text
        routed = re.search(r"Routed through (\S+): (.*)", text)
        assert routed, text
        assert routed.group(2).split(", ") == [config.SERVICE_CIDR]
        skipped = [line for line in session.output if line.startswith("Not routed:")]
        assert len(skipped) == 1
        assert config.NODE_POD_CIDR in skipped[0]
        assert config.CLUSTER_CIDR in skipped[0]
        routes = laptop.run("ip", "route").stdout
        assert f"{config.CLUSTER_CIDR} via {host_end}" in routes
        assert f"{config.SERVICE_CIDR} dev {routed.group(1)}" in routes
    finally:
        assert session.stop(signal.SIGINT) == 130
    assert _snapshot(laptop) == before


@pytest.mark.parametrize("laptop", ["plain", "resolved"], indirect=True)
def test_kill9_then_clean_local_restores_the_laptop(bed: Bed, echo: str, laptop: Laptop) -> None:
    ns = echo
    before = _snapshot(laptop)
    session = _connect(laptop, ns)
    assert _get(laptop, f"http://echo.{ns}/")["pod"]
    _crash(laptop, session)
    if laptop.resolver == "plain":
        # The kernel drops the TUN device and its routes with the killed process (and
        # resolved forgets the device's settings); the edited resolv.conf stays.
        assert _snapshot(laptop)["/etc/resolv.conf"] != before["/etc/resolv.conf"]
    cleaned = laptop.run(sys.executable, "-m", "ktpy", "clean", "--local")
    assert "host changes all undone" in cleaned.stdout
    assert _snapshot(laptop) == before
    laptop.run(sys.executable, "-m", "ktpy", "-n", ns, "clean")
    objects = bed.kubectl("-n", ns, "get", "pods,secrets", "-l", MANAGED, "-o", "name").stdout
    assert objects.split() == []


def test_after_kill9_the_next_connect_puts_the_old_block_back_first_and_keeps_its_own(
    bed: Bed, echo: str, laptop: Laptop
) -> None:
    """Heal before harm: the killed session's resolv.conf block goes before the new
    session changes anything; and a resolv.conf rewritten by another program while
    connected gets ktpy's block back within 5 s."""
    ns = echo
    before = _snapshot(laptop)
    first = _connect(laptop, ns)
    _crash(laptop, first)
    deadline = time.monotonic() + 5  # its TUN stack process ends on its own (stdin EOF)
    while laptop.processes("ktpy") and time.monotonic() < deadline:
        time.sleep(0.1)
    assert laptop.processes("ktpy") == []
    assert _snapshot(laptop)["/etc/resolv.conf"] != before["/etc/resolv.conf"]
    status = laptop.run(sys.executable, "-m", "ktpy", "-n", ns, "status")
    assert re.match(r"Note: A killed ktpy connect left \d+ host change", status.stderr)

    second = _connect(laptop, ns)
    try:
        assert second.output[0].startswith("Put back what a killed ktpy connect left: ")
        assert "Warning" not in "\n".join(second.output)  # no stale block was found
        resolv = laptop.run("cat", "/etc/resolv.conf").stdout
        assert resolv.count(" begin ") == 1  # the new session's block only
        assert resolv.endswith(before["/etc/resolv.conf"])
        assert _get(laptop, f"http://echo.{ns}/")["pod"]

        laptop.run("sh", "-c", f"echo 'nameserver {config.RESOLVER_IP}' > /etc/resolv.conf")
        rewritten = time.monotonic()
        while "# ktpy session" not in laptop.run("cat", "/etc/resolv.conf").stdout:
            assert time.monotonic() - rewritten < 5, "resolv.conf not repaired within 5 s"
            time.sleep(0.1)
        assert _get(laptop, f"http://echo.{ns}/")["pod"]  # names resolve again
    finally:
        assert second.stop(signal.SIGINT) == 130
    assert any("changed by another program" in line for line in second.errors)
    assert _snapshot(laptop) == before
    laptop.run(sys.executable, "-m", "ktpy", "-n", ns, "clean")
    assert bed.ktpy_objects(ns) == []


def test_many_connections_bulk_download_and_a_slow_reader(
    bed: Bed, echo: str, laptop: Laptop
) -> None:
    ns = echo
    session = _connect(laptop, ns)
    try:
        ktpy_pid = session.proc.pid
        held = 200
        pods = bed.get_json("-n", ns, "pods", "-l", "app=echo")["items"]
        pod_ips = [p["status"]["podIP"] for p in pods]
        script = (
            "import json, socket, sys\n"
            f"host = 'echo.{ns}'\n"
            "socks = []\n"
            f"for i in range({held}):\n"
            "    s = socket.create_connection((host, 80), timeout=20)\n"
            "    s.sendall(b'GET /healthz HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n')\n"
            "    head = b''\n"
            "    while b'\\r\\n\\r\\n' not in head:\n"
            "        chunk = s.recv(4096)\n"
            "        assert chunk, f'connection {i} closed before its answer'\n"
            "        head += chunk\n"
            "    assert head.startswith(b'HTTP/1.1 200'), (i, head[:80])\n"
            "    socks.append(s)\n"
            "# every one is held open (keep-alive) while the servers count them\n"
            "pod_open = {}\n"
            f"for pod_ip in {pod_ips!r}:\n"
            "    s = socket.create_connection((pod_ip, 8080), timeout=20)\n"
            "    s.sendall(b'GET /stats HTTP/1.1\\r\\nHost: x\\r\\n'\n"
            "              b'Connection: close\\r\\n\\r\\n')\n"
            "    data = b''\n"
            "    while chunk := s.recv(65536):\n"
            "        data += chunk\n"
            "    body = json.loads(data.split(b'\\r\\n\\r\\n', 1)[1])\n"
            "    pod_open[pod_ip] = body['open'] - 1  # less the one asking\n"
            "print(json.dumps({'held': len(socks), 'open_at_servers': sum(pod_open.values())}))\n"
        )
        counted = json.loads(laptop.run(sys.executable, "-c", script, timeout=120).stdout)
        assert counted["held"] == held
        assert counted["open_at_servers"] >= held

        size = 1 << 30
        digest = laptop.run(
            "sh", "-c",
            f"curl -sf --max-time 300 http://echo.{ns}/bytes?n={size} | sha256sum", timeout=320,
        ).stdout.split()[0]  # fmt: skip
        assert digest == images.echo_bytes_sha256(size)

        rss_before = _rss_kib(ktpy_pid)
        slow = laptop.popen(
            "sh", "-c",
            f"curl -sf --max-time 120 --limit-rate 40M http://echo.{ns}/bytes?n={size} "
            "| sha256sum",
        )  # fmt: skip
        peak = rss_before
        while slow.poll() is None:
            peak = max(peak, _rss_kib(ktpy_pid))
            time.sleep(0.5)
        out, _ = slow.communicate()
        assert out.split()[0] == images.echo_bytes_sha256(size)
        growth_mib = (peak - rss_before) / 1024
        print(
            f"slow reader: ktpy RSS (all its processes) {rss_before / 1024:.0f} MiB"
            f" -> peak {peak / 1024:.0f} MiB"
        )
        assert growth_mib < 64, f"ktpy grew by {growth_mib:.0f} MiB behind a slow reader"
    finally:
        assert session.stop(signal.SIGINT) == 130


SLOW_READER = """
import hashlib, json, selectors, socket, sys, time
host, n, count, rate, expected = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), \\
    int(sys.argv[4]), sys.argv[5]
request = b"GET /bytes?n=%d HTTP/1.1\\r\\nHost: x\\r\\nConnection: close\\r\\n\\r\\n" % n
selector = selectors.DefaultSelector()
received = {}
for i in range(count):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # the slow reader's small window
    s.settimeout(30)
    s.connect((host, 80))
    s.sendall(request)
    s.setblocking(False)
    selector.register(s, selectors.EVENT_READ)
    received[s] = bytearray()
started, total, good, deadline = time.monotonic(), 0, 0, time.monotonic() + 150
while received and time.monotonic() < deadline:
    for key, _ in selector.select(timeout=30):
        data = key.fileobj.recv(4096)  # a little from each, at `rate` bytes/s in all
        total += len(data)
        if data:
            received[key.fileobj] += data
            continue
        selector.unregister(key.fileobj)
        key.fileobj.close()
        head, _, body = bytes(received.pop(key.fileobj)).partition(b"\\r\\n\\r\\n")
        good += head.startswith(b"HTTP/1.1 200") and hashlib.sha256(body).hexdigest() == expected
    time.sleep(max(started + total / rate - time.monotonic(), 0))
print(json.dumps({"good": good, "unfinished": len(received), "bytes": total,
                  "seconds": round(time.monotonic() - started, 1)}))
"""


def test_a_thousand_flows_behind_a_slow_reader_stay_within_the_buffer_bound(
    bed: Bed, echo: str, laptop: Laptop
) -> None:
    """The TUN stack's pool (issue 13): 1,000 downloads read slowly on the laptop hold
    no more than KTPY_TUN_BUFFER in the stack, every byte arrives; and no IPv6 route
    is made, so a connection to an IPv6 address fails at once. (The bed's ranges are
    IPv4 only; a cluster's IPv6 range is left unrouted with one line, unit-tested in
    tests/unit/commands; an IPv6 --include-cidr is refused, in the hostile-input
    battery.)"""
    ns = echo
    bound = 8 << 20
    session = run_ktpy(laptop, "-n", ns, "connect", env={"KTPY_TUN_BUFFER": "8MiB"})
    session.wait_ready(90)
    try:
        # The kernel's own link-local and multicast routes of the device aside.
        ipv6_routes = laptop.run("ip", "-6", "route", "show", "table", "all").stdout
        kernel_own = ("fe80::", "local fe80::", "multicast ff00::")
        assert not [
            line for line in ipv6_routes.splitlines()
            if "dev ktpy-" in line and not line.startswith(kernel_own)
        ], ipv6_routes  # fmt: skip
        probe = (
            "import socket, time\n"
            "started = time.monotonic()\n"
            "try:\n"
            "    socket.create_connection(('fd00:ab::1', 80), timeout=10)\n"
            "except OSError as exc:\n"
            "    print(type(exc).__name__, round(time.monotonic() - started, 2))\n"
        )
        _, seconds = laptop.run(sys.executable, "-c", probe).stdout.split()
        assert float(seconds) < 1

        count, size = 1000, 64 << 10
        cluster_ip = bed.get_json("-n", ns, "service", "echo")["spec"]["clusterIP"]
        done = laptop.run(
            sys.executable, "-c", SLOW_READER, cluster_ip, str(size), str(count),
            str(16 << 20), images.echo_bytes_sha256(size), timeout=200,
        )  # fmt: skip
        result = json.loads(done.stdout)
        stats_file = f"/run/ktpy/{session_id(session)}/tun-stats.json"
        stats = json.loads(laptop.run("cat", stats_file).stdout)
        print(f"slow reader: {result}; TUN stack: {stats}")
        assert result["good"] == count, result  # every byte of every flow, in order
        assert stats["max_buffered"] == bound
        assert stats["committed_peak"] <= bound
        assert stats["pool_waits"] > 0  # flows did wait for the pool: the bound was reached
    finally:
        assert session.stop(signal.SIGINT) == 130


AS_OTHER_USER = """
import os, pwd, socket, sys
other = pwd.getpwnam("nobody")
os.setgroups([])
os.setresgid(other.pw_gid, other.pw_gid, other.pw_gid)
os.setresuid(other.pw_uid, other.pw_uid, other.pw_uid)
s = socket.socket(socket.AF_UNIX)
try:
    s.connect(sys.argv[1])
    print("connected")
except OSError as exc:
    print(type(exc).__name__)
"""


DNS_LISTENER_UIDS = """
import re, subprocess
for proto in ("u", "t"):
    shown = subprocess.run(["ss", "-Hln" + proto + "p", "sport = :53"],
                           capture_output=True, text=True, check=True).stdout
    for line in shown.splitlines():
        if " 169.254.0." in line:
            for pid in re.findall(r"pid=(\\d+)", line):
                status = open(f"/proc/{pid}/status").read().splitlines()
                uid = next(l.split()[1] for l in status if l.startswith("Uid:"))
                print({"u": "udp", "t": "tcp"}[proto] + ":" + uid)
"""


def test_only_the_root_helper_keeps_root_and_it_undoes_everything_when_the_session_dies(
    bed: Bed, echo: str, laptop: Laptop
) -> None:
    """Least privilege (issue 13): under sudo every ktpy process that parses what the
    network sends (the session: SSH, the port-forward's WebSocket, the API's answers;
    the TUN stack and DNS server) runs as SUDO_USER; only the root helper that makes
    the host changes keeps root. The TUN stack's way into the tunnel is a unix socket
    no other local user may open; no SOCKS port opens unasked; a kill -9 of the
    session makes the helper undo everything."""
    ns = echo
    dev = pwd.getpwnam("ktbed-dev")
    before = _snapshot(laptop)
    session = run_ktpy(laptop, "-n", ns, "connect", env={"SUDO_USER": "ktbed-dev"})
    session.wait_ready(90)
    try:
        assert not [line for line in session.output if "SOCKS5 proxy on" in line]
        table = laptop.process_table(" -m ktpy")
        owners = {line.split(" -m ", 1)[1].split()[0]: uid for _, uid, line in table}
        print(f"ktpy processes by uid: {owners}")
        assert owners == {
            "ktpy": dev.pw_uid,
            "ktpy.net.tun_process": dev.pw_uid,
            "ktpy.host.helper": 0,
        }
        assert _get(laptop, f"http://echo.{ns}/")["pod"]  # through the stack, as that user
        # The DNS server's listeners (UDP and TCP port 53 on the TUN address, bound by
        # the helper) belong to that user's process alone.
        listeners = laptop.run(sys.executable, "-c", DNS_LISTENER_UIDS).stdout.split()
        assert listeners == [f"udp:{dev.pw_uid}", f"tcp:{dev.pw_uid}"]

        run_dir = f"/run/ktpy/{session_id(session)}"
        other = laptop.run(sys.executable, "-c", AS_OTHER_USER, f"{run_dir}/socks.sock")
        assert other.stdout.split() == ["PermissionError"]
        refused = laptop.run(
            sys.executable, "-c",
            "import socket\n"
            "try:\n"
            "    socket.create_connection(('127.0.0.1', 2223), timeout=5); print('open')\n"
            "except ConnectionRefusedError:\n"
            "    print('refused')\n",
        ).stdout.split()  # fmt: skip
        assert refused == ["refused"]

        main_pid = next(
            pid for pid, _, line in table if line.split(" -m ", 1)[1].startswith("ktpy ")
        )
        os.kill(main_pid, signal.SIGKILL)
        session.proc.wait(30)
        deadline = time.monotonic() + 30  # the helper undoes, the stack sees its stdin close
        while laptop.processes("ktpy") and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        if session.proc.poll() is None:
            session.stop(signal.SIGINT)
    assert laptop.processes("ktpy") == []
    assert _snapshot(laptop) == before
    assert laptop.run("test", "-e", run_dir, check=False).returncode == 1  # its files too
    laptop.run(sys.executable, "-m", "ktpy", "-n", ns, "clean")
    assert bed.ktpy_objects(ns) == []


def _rss_kib(pid: int) -> int:
    """RSS of ktpy and its descendants (the TUN stack runs in a child process)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    total, todo = 0, [pid]
    while todo:
        current = todo.pop()
        todo += children.get(current, [])
        try:
            status = Path(f"/proc/{current}/status").read_text()
        except OSError:
            continue
        rss = [line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:")]
        total += int(rss[0]) if rss else 0
    return total


GRPC_MANIFEST = """
apiVersion: apps/v1
kind: Deployment
metadata: {name: greeter}
spec:
  replicas: 1
  selector: {matchLabels: {app: greeter}}
  template:
    metadata: {labels: {app: greeter}}
    spec:
      containers:
      - name: greeter
        image: ktbed.local/echo:0.1.0
        imagePullPolicy: Never
        args: [grpc, --listen, ":9090"]
        env:
        - name: POD_NAME
          valueFrom: {fieldRef: {fieldPath: metadata.name}}
        ports: [{containerPort: 9090}]
        securityContext:
          runAsNonRoot: true
          runAsUser: 65532
          allowPrivilegeEscalation: false
          capabilities: {drop: [ALL]}
          seccompProfile: {type: RuntimeDefault}
---
apiVersion: v1
kind: Service
metadata: {name: greeter}
spec:
  selector: {app: greeter}
  ports: [{name: grpc, port: 9090, targetPort: 9090}]
"""


def test_websocket_and_grpc_through_the_tunnel(bed: Bed, echo: str, laptop: Laptop) -> None:
    ns = echo
    assert ECHO_BINARY, "the bed's echo binary is not in the image cache"
    client = str(ECHO_BINARY[-1])
    bed.apply(GRPC_MANIFEST, ns)
    bed.kubectl("-n", ns, "rollout", "status", "deployment/greeter", "--timeout=90s", timeout=100)
    session = _connect(laptop, ns)
    try:
        ws = laptop.run(client, "ws-client", "--url", f"ws://echo.{ns}/ws", "--message", "hello")
        assert "hello" in ws.stdout
        grpc = laptop.run(client, "grpc-client", "--addr", f"greeter.{ns}:9090", "--name", "ktpy")
        assert "ktpy" in grpc.stdout
        assert "greeter-" in grpc.stdout  # the reply names the pod that served it
    finally:
        assert session.stop(signal.SIGINT) == 130


@pytest.fixture(scope="session")
def nonroot_ktpy() -> Path:
    """ktpy installed for an ordinary user: a venv of Debian's python3 outside /root."""
    venv = config.CACHE_DIR / "nonroot-venv"
    if not (venv / "bin" / "ktpy").exists():
        subprocess.run(["/usr/bin/python3", "-m", "venv", str(venv)], check=True)
    subprocess.run(
        [str(venv / "bin" / "pip"), "install", "-q", "--force-reinstall", "--no-deps",
         str(config.REPO_ROOT)],
        check=True, timeout=300,
    )  # fmt: skip
    subprocess.run(
        [str(venv / "bin" / "pip"), "install", "-q", str(config.REPO_ROOT)], check=True, timeout=600
    )
    for path in (config.CACHE_DIR, venv):
        path.chmod(0o755)
    return venv / "bin" / "ktpy"


def test_socks_mode_works_as_a_non_root_user(
    bed: Bed, echo: str, laptop: Laptop, nonroot_ktpy: Path
) -> None:
    ns = echo
    bed.grant(ns, "dev")
    as_nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--"]
    refused = laptop.run(*as_nobody, str(nonroot_ktpy), "-n", ns, "connect", check=False,
                         user="dev", env={"HOME": "/tmp"})  # fmt: skip
    assert refused.returncode == 4  # NeedsRoot, before anything changed
    assert "--mode socks" in refused.stderr
    session = RunningKtpy(
        laptop.popen(
            *as_nobody,
            str(nonroot_ktpy),
            "-n",
            ns,
            "connect",
            "--mode",
            "socks",
            "--socks-port",
            "2311",
            user="dev",
            env={"HOME": "/tmp"},
        )
    )
    try:
        session.wait_ready()
        body = _get(laptop, f"http://echo.{ns}/", "--socks5-hostname", "127.0.0.1:2311")
        assert body["namespace"] == ns
    finally:
        assert session.stop(signal.SIGINT) == 130


def _ktpy_objects(bed: Bed, namespace: str) -> list[str]:
    out = bed.kubectl("-n", namespace, "get", "pods,secrets", "-l", MANAGED, "-o", "name")
    return out.stdout.split()


def test_refusals_come_before_any_change(
    bed: Bed, echo: str, laptop: Laptop, tmp_path: Path
) -> None:
    ns = echo
    before = _snapshot(laptop)
    ktpy = (sys.executable, "-m", "ktpy", "-n", ns, "connect")

    no_tun = laptop.run(
        "unshare", "--mount", "--propagation", "private", "--", "sh", "-c",
        "mount -t tmpfs none /dev/net && exec \"$@\"", "sh", *ktpy, check=False,
    )  # fmt: skip
    assert no_tun.returncode == 5, no_tun.stderr
    assert "/dev/net/tun" in no_tun.stderr

    unreachable = tmp_path / "unreachable.yaml"
    unreachable.write_text(
        bed.kubeconfig().read_text().replace(config.API_URL, f"https://{config.NODE_IP}:1")
    )
    # The laptop reaches only the API server's port: what goes to another is dropped,
    # not refused, so the client's connect times out (ApiTimeout, exit 17).
    unanswered = laptop.run(*ktpy, check=False, env={"KUBECONFIG": str(unreachable)})
    assert unanswered.returncode == 17, unanswered.stderr
    assert [line for line in unanswered.stderr.splitlines() if line.startswith("Error:")]

    first = _connect(laptop, ns)
    try:
        during = _snapshot(laptop)
        second = laptop.run(*ktpy, "--socks-port", "2312", check=False)
        assert second.returncode == 6, second.stderr
        assert "another ktpy connect is running" in second.stderr
        assert _snapshot(laptop) == during
        assert len(_ktpy_objects(bed, ns)) == 2  # the first session's pod and Secret only
    finally:
        assert first.stop(signal.SIGINT) == 130
    assert _snapshot(laptop) == before
    assert _ktpy_objects(bed, ns) == []
