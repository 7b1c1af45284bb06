"""TunProcess: the TUN stack in a child process, carrying flows through a real
SocksServer in this process to loopback servers (the kernel in a namespace of
our own is the TCP client; see _tun_env)."""

from __future__ import annotations

import errno
import hashlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from dnslib import QTYPE, DNSRecord

from ktpy.net.dns_server import DnsServer
from ktpy.net.listener import unix_listener
from ktpy.net.socks_server import SocksServer
from ktpy.net.tun_process import DnsSpec, TunProcess
from tests.integration.support import wait_for

from . import _tun_env as te
from . import test_dns_server
from ._tun_env import UNREACHABLE, TunEnv
from .test_dns_server import CLUSTER_HOSTS, NAMES, Dnsmasq, Upstream, open_socket_flow

pytestmark = [pytest.mark.integration, pytest.mark.root, pytest.mark.timeout(120)]


@pytest.fixture
def socks(env: TunEnv) -> Iterator[SocksServer]:
    server = SocksServer(env.open_flow, "127.0.0.1", 0).start()
    yield server
    server.stop()


def _gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return True
    return state == "Z"


def test_a_flow_goes_through_the_socks_proxy(env: TunEnv, socks: SocksServer) -> None:
    server = env.server(te.pong)
    proc = TunProcess(env.device.fileno(), socks.address, mtu=env.mtu).start()
    try:
        with env.connect(server.port) as client:
            client.sendall(b"ping\n")
            assert client.recv(100) == b"pong ping\n"
            assert client.recv(100) == b""
        assert socks.connections == 1  # it came through the proxy, not some other way
    finally:
        proc.stop()


def test_a_large_download_is_byte_exact(env: TunEnv, socks: SocksServer) -> None:
    server = env.server(te.download)
    proc = TunProcess(env.device.fileno(), socks.address, mtu=env.mtu).start()
    size = 64 << 20
    try:
        with env.connect(server.port, timeout=60) as client:
            client.sendall(b"%d\n" % size)
            received = 0
            digest = hashlib.sha256()
            while chunk := client.recv(1 << 20):
                digest.update(chunk)
                received += len(chunk)
        wait_for(lambda: len(server.results) == 1, 5, "the server's record")
        assert received == size
        assert (received, digest.hexdigest()) == server.results[0]
    finally:
        proc.stop()


def _status_uid(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text().splitlines()
    return int(next(line for line in status if line.startswith("Uid:")).split()[1])


@pytest.fixture
def private_dir() -> Iterator[Path]:
    """A 0700 directory nobody owns, where nobody can reach it (pytest's tmp_path is
    under root's 0700 directory)."""
    path = Path(tempfile.mkdtemp(prefix="ktpy-it-"))
    nobody = pwd.getpwnam("nobody")
    os.chown(path, nobody.pw_uid, nobody.pw_gid)
    yield path
    shutil.rmtree(path)


def test_as_another_user_through_a_unix_socket_only_that_user_may_open(
    env: TunEnv, private_dir: Path
) -> None:
    """The child drops to the user it is given before it reads a packet; its proxy is
    a 0600 unix socket of that user's, in a 0700 directory: refused to anyone else."""
    nobody = pwd.getpwnam("nobody")
    owner = (nobody.pw_uid, nobody.pw_gid)
    path = private_dir / "socks.sock"
    socks = SocksServer(env.open_flow, listener=unix_listener(path, owner)).start()
    server = env.server(te.pong)
    proc = TunProcess(env.device.fileno(), path, mtu=env.mtu, user=owner).start()
    try:
        assert proc.pid is not None
        assert _status_uid(proc.pid) == nobody.pw_uid
        with env.connect(server.port) as client:
            client.sendall(b"ping\n")
            assert client.recv(100) == b"pong ping\n"
        assert socks.connections == 1
        other = subprocess.run(
            [sys.executable, "-c",
             "import os, socket, sys\n"
             "os.setgroups([]); os.setresgid(1, 1, 1); os.setresuid(1, 1, 1)  # daemon\n"
             "s = socket.socket(socket.AF_UNIX)\n"
             "try:\n"
             "    s.connect(sys.argv[1]); print('connected')\n"
             "except OSError as exc:\n"
             "    print(type(exc).__name__)\n",
             str(path)],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        assert other.stdout.split() == ["PermissionError"]
    finally:
        proc.stop()
        socks.stop()


@pytest.mark.parametrize("transport", ["tcp", "unix"])
def test_refused_and_unreachable_targets_answer_at_once(
    env: TunEnv, socks: SocksServer, private_dir: Path, transport: str
) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = int(s.getsockname()[1])
    address: tuple[str, int] | Path = socks.address
    if transport == "unix":  # the unix socket's client is ktpy's own, not pysocks
        unix = SocksServer(env.open_flow, listener=unix_listener(private_dir / "s.sock")).start()
        address = unix.socket_path
    proc = TunProcess(env.device.fileno(), address, mtu=env.mtu).start()
    try:
        started = time.monotonic()
        with pytest.raises(ConnectionRefusedError):
            env.connect(closed, timeout=10)
        with pytest.raises(OSError, match="No route to host") as unreachable:
            env.connect(80, host=UNREACHABLE, timeout=10)
        assert unreachable.value.errno == errno.EHOSTUNREACH
        assert time.monotonic() - started < 3
    finally:
        proc.stop()
        if transport == "unix":
            unix.stop()


def test_stop_resets_open_flows_and_ends_the_child(env: TunEnv, socks: SocksServer) -> None:
    server = env.server(te.hold)
    proc = TunProcess(env.device.fileno(), socks.address, mtu=env.mtu).start()
    pid = proc.pid
    assert pid is not None
    client = env.connect(server.port)
    try:
        client.sendall(b"1\n")
        wait_for(lambda: server.active == 1, 10, "the held connection at the server")
        proc.stop()
        assert _gone(pid)
        client.settimeout(5)
        with pytest.raises(ConnectionResetError):
            client.recv(100)  # nothing was sent yet: the first read meets the RST
    finally:
        client.close()
        server.release.set()


def test_the_child_ends_when_its_parent_is_killed(env: TunEnv, socks: SocksServer) -> None:
    fd = env.device.fileno()
    host, port = socks.address
    parent = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\n"
            "from ktpy.logs import configure\n"
            "from ktpy.net.tun_process import TunProcess\n"
            "configure()  # logs to stderr: stdout carries the pid\n"
            f"p = TunProcess({fd}, ({host!r}, {port}), mtu={env.mtu}).start()\n"
            "print(p.pid, flush=True)\n"
            "time.sleep(600)\n",
        ],
        stdout=subprocess.PIPE,
        text=True,
        pass_fds=(fd,),
    )
    assert parent.stdout is not None
    child = int(parent.stdout.readline())
    assert not _gone(child)
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    wait_for(lambda: _gone(child), 5, "the child to end after its parent")


def test_a_child_that_dies_is_reported(env: TunEnv, socks: SocksServer) -> None:
    reasons: list[str] = []
    reported = threading.Event()

    def on_exit(reason: str) -> None:
        reasons.append(reason)
        reported.set()

    proc = TunProcess(env.device.fileno(), socks.address, mtu=env.mtu, on_exit=on_exit).start()
    assert proc.pid is not None
    os.kill(proc.pid, signal.SIGKILL)
    assert reported.wait(5)
    assert "ended on its own" in reasons[0]
    proc.stop()
    assert len(reasons) == 1


@pytest.fixture
def cluster_dns(tmp_path: Path) -> Iterator[Dnsmasq]:
    """test_dns_server's dnsmasq, standing in for the shadow pod's."""
    if test_dns_server.DNSMASQ is None:
        test_dns_server._unavailable("dnsmasq is not installed (Debian: dnsmasq-base)")
    proc = Dnsmasq(tmp_path)
    yield proc
    proc.stop()


@pytest.fixture
def laptop_dns() -> Iterator[Upstream]:
    server = Upstream()
    yield server
    server.stop()


def test_the_dns_server_runs_unprivileged_in_the_child_and_outlives_the_stack(
    env: TunEnv, cluster_dns: Dnsmasq, laptop_dns: Upstream, private_dir: Path
) -> None:
    """connect's DNS server in the child: on listeners bound here, as nobody, asking
    the cluster's dnsmasq through the unix-socket proxy; it learns namespaces from
    the parent's lines and answers on after stop_stack (until the resolver is back)."""
    nobody = pwd.getpwnam("nobody")
    owner = (nobody.pw_uid, nobody.pw_gid)
    socks = SocksServer(
        open_socket_flow, listener=unix_listener(private_dir / "s.sock", owner)
    ).start()
    udp, tcp = DnsServer.bind_listeners("127.0.0.1", 0)
    address = udp.getsockname()
    dnsmasq, upstream = cluster_dns, laptop_dns
    spec = DnsSpec(NAMES, (f"127.0.0.1:{upstream.port}",), ("127.0.0.1", dnsmasq.port), udp, tcp)
    proc = TunProcess(
        env.device.fileno(), socks.socket_path, mtu=env.mtu, user=owner, dns=spec
    ).start()
    udp.close()
    tcp.close()

    def ask(name: str) -> list[str]:
        raw = DNSRecord.question(name).send(*address, timeout=3.0)
        return [str(rr.rdata) for rr in DNSRecord.parse(raw).rr if rr.rtype == QTYPE.A]

    try:
        assert proc.pid is not None
        assert _status_uid(proc.pid) == nobody.pw_uid
        assert ask("echo.team.svc.cluster.local") == [CLUSTER_HOSTS["echo.team.svc.cluster.local"]]
        ask("web-0.nginx")  # `nginx` is no namespace yet: the laptop's name
        assert upstream.resolver.seen("web-0.nginx") == 1
        proc.set_known(namespaces={"team", "nginx"})
        deadline = time.monotonic() + 5  # the line reaches the child within moments
        while True:
            ask("web-0.nginx")
            try:
                dnsmasq.wait_seen("web-0.nginx.svc.cluster.local", timeout=0.2)
                break
            except AssertionError:
                assert time.monotonic() < deadline, "the child never learnt namespace nginx"
        proc.stop_stack()
        assert ask("echo.team.svc.cluster.local") == [CLUSTER_HOSTS["echo.team.svc.cluster.local"]]
    finally:
        proc.stop()
        socks.stop()
