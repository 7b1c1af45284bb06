"""sshd in the shadow pod: pinned host key, keys only, modern algorithms
only, and the forwards ktpy relies on (direct-tcpip, remote on port 80)."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import paramiko
import pytest
from paramiko.ssh_exception import (
    AuthenticationException,
    BadAuthenticationType,
    IncompatiblePeer,
)

from ktpy.tunnel import ssh

from . import _netns, _pod
from ._pod import ShadowPod
from ._servers import TcpServer
from .conftest import StartPod

pytestmark = [pytest.mark.integration, pytest.mark.root]

ANY = "0.0.0.0"  # remote forwards must bind every address of the pod

MODERN = {
    "kex": {
        "sntrup761x25519-sha512",
        "sntrup761x25519-sha512@openssh.com",
        "curve25519-sha256",
        "curve25519-sha256@libssh.org",
    },
    "hostkey": {"ssh-ed25519"},
    "cipher": {
        "aes128-gcm@openssh.com",
        "aes256-gcm@openssh.com",
        "chacha20-poly1305@openssh.com",
        "aes128-ctr",
        "aes256-ctr",
    },
    "mac": {"hmac-sha2-256-etm@openssh.com", "hmac-sha2-512-etm@openssh.com"},
}


def _server_kexinit(addr: str, port: int) -> dict[str, set[str]]:
    """The algorithm lists the server itself advertises (its KEXINIT)."""
    with socket.create_connection((addr, port), timeout=10) as s:
        s.sendall(b"SSH-2.0-ktpy_test\r\n")
        buf = b""
        while b"\r\n" not in buf:
            buf += s.recv(4096)
        rest = buf.split(b"\r\n", 1)[1]
        while len(rest) < 4 or len(rest) < 4 + struct.unpack("!I", rest[:4])[0]:
            rest += s.recv(4096)
    length, padding = struct.unpack("!IB", rest[:5])
    payload = rest[5 : 4 + length - padding]
    assert payload[0] == 20  # SSH_MSG_KEXINIT
    pos, lists = 17, []
    for _ in range(10):
        (n,) = struct.unpack("!I", payload[pos : pos + 4])
        lists.append(set(payload[pos + 4 : pos + 4 + n].decode().split(",")) - {""})
        pos += 4 + n
    # Markers, not algorithms: strict kex (the Terrapin fix) and ext-info.
    kex = {k for k in lists[0] if not k.startswith(("kex-strict-", "ext-info-"))}
    return {
        "kex": kex,
        "hostkey": lists[1],
        "cipher": lists[2] | lists[3],
        "mac": lists[4] | lists[5],
    }


def test_server_offers_only_modern_algorithms(pod: ShadowPod) -> None:
    assert _server_kexinit(pod.ns.addr, pod.ssh_port) == MODERN


def test_login_with_pinned_host_key_and_client_key(pod: ShadowPod) -> None:
    t = _pod.login(pod)
    try:
        assert t.is_authenticated()
        assert t.get_username() == "kt"
        assert t.get_remote_server_key().get_name() == "ssh-ed25519"
        chan = t.open_session()
        chan.exec_command("id -u; id -g")
        out = chan.makefile("rb").read().decode().split()
        assert out == ["10001", "10001"]
    finally:
        t.close()


def test_pinning_catches_another_host_key(pod: ShadowPod) -> None:
    t = _pod.transport(pod)
    try:
        other = _pod.make_keys().host
        assert t.get_remote_server_key().asbytes() != other.asbytes()
        assert t.get_remote_server_key().asbytes() == pod.keys.host.asbytes()
    finally:
        t.close()


def test_password_and_keyboard_interactive_refused(pod: ShadowPod) -> None:
    t = _pod.transport(pod)
    try:
        with pytest.raises(BadAuthenticationType) as e:
            t.auth_password("kt", "kt")
        assert e.value.allowed_types == ["publickey"]
        with pytest.raises(BadAuthenticationType):
            t.auth_interactive("kt", lambda *_: [])
        assert not t.is_authenticated()
    finally:
        t.close()


@pytest.mark.parametrize("user", ["root", "nobody", "sshd"])
def test_only_kt_can_log_in(pod: ShadowPod, user: str) -> None:
    with pytest.raises(AuthenticationException):
        _pod.login(pod, user=user)


def test_unknown_key_refused(pod: ShadowPod) -> None:
    with pytest.raises(AuthenticationException):
        _pod.login(pod, key=_pod.make_keys().client)


def test_non_ed25519_host_key_algorithm_refused(pod: ShadowPod) -> None:
    with pytest.raises(IncompatiblePeer, match="host key"):
        _pod.transport(pod, disabled={"keys": ["ssh-ed25519"]})


@pytest.mark.parametrize("cipher", ["aes128-cbc", "aes256-cbc", "3des-cbc", "aes192-ctr"])
def test_legacy_cipher_refused(pod: ShadowPod, cipher: str) -> None:
    with pytest.raises(IncompatiblePeer, match="cipher"):
        _pod.transport(pod, ciphers=(cipher,))


@pytest.mark.parametrize(
    "kex",
    [
        "diffie-hellman-group14-sha256",
        "diffie-hellman-group16-sha512",
        "diffie-hellman-group-exchange-sha256",
        "ecdh-sha2-nistp256",
    ],
)
def test_non_curve25519_kex_refused(pod: ShadowPod, kex: str) -> None:
    # paramiko 5 has no SHA-1 kex any more; the OpenSSH client test covers those.
    with pytest.raises(IncompatiblePeer, match="kex"):
        _pod.transport(pod, kex=(kex,))


@pytest.mark.parametrize("mac", ["hmac-sha1", "hmac-md5", "hmac-sha2-256"])
def test_legacy_or_non_etm_mac_refused(pod: ShadowPod, mac: str) -> None:
    with pytest.raises(IncompatiblePeer, match="mac"):
        _pod.transport(pod, ciphers=("aes128-ctr",), macs=(mac,))


@pytest.fixture(scope="module")
def pod_echo(pod: ShadowPod) -> Iterator[TcpServer]:
    """An echo server inside the pod's network, on its loopback."""
    server = TcpServer(_netns.listen_in(pod.ns.name, "127.0.0.1", 0))
    yield server
    server.close()


@pytest.mark.parametrize(
    "cipher",
    ["aes128-gcm@openssh.com", "aes256-gcm@openssh.com", "aes128-ctr", "aes256-ctr"],
)
def test_paramiko_cipher_carries_data(pod: ShadowPod, pod_echo: TcpServer, cipher: str) -> None:
    t = _pod.login(pod, ciphers=(cipher,))
    try:
        assert (t.local_cipher, t.remote_cipher) == (cipher, cipher)
        chan = t.open_channel("direct-tcpip", ("127.0.0.1", pod_echo.port), ("127.0.0.1", 0))
        data = os.urandom(512 * 1024)
        assert _pod.exchange(chan, data) == data
        chan.close()
    finally:
        t.close()


def test_direct_tcpip_reaches_pod_network(pod: ShadowPod, pod_echo: TcpServer) -> None:
    t = _pod.login(pod)
    try:
        chan = t.open_channel("direct-tcpip", ("127.0.0.1", pod_echo.port), ("127.0.0.1", 0))
        assert _pod.exchange(chan, b"hello through the tunnel") == b"hello through the tunnel"
        chan.close()
    finally:
        t.close()


def _pump(a: paramiko.Channel | socket.socket, b: paramiko.Channel | socket.socket) -> None:
    with contextlib.suppress(OSError, EOFError):
        while data := a.recv(65536):
            b.sendall(data)
    with contextlib.suppress(OSError, EOFError):
        if isinstance(b, socket.socket):
            b.shutdown(socket.SHUT_WR)
        else:
            b.shutdown_write()


def _forward_to(port: int):  # type: ignore[no-untyped-def]
    """A paramiko remote-forward handler that connects each channel to 127.0.0.1:port."""

    def handler(chan: paramiko.Channel, origin: object, server: object) -> None:
        local = socket.create_connection(("127.0.0.1", port), timeout=10)
        threading.Thread(target=_pump, args=(chan, local), daemon=True).start()
        threading.Thread(target=_pump, args=(local, chan), daemon=True).start()

    return handler


def _wait_port_closed(addr: str, port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection((addr, port), timeout=1).close()
        except ConnectionRefusedError:
            return
        time.sleep(0.1)
    raise AssertionError(f"{addr}:{port} still open")


def test_remote_forward_binds_port_80_on_all_addresses(pod: ShadowPod) -> None:
    local = TcpServer(socket.create_server(("127.0.0.1", 0)))
    t = _pod.login(pod)
    try:
        assert t.request_port_forward(ANY, 80, handler=_forward_to(local.port)) == 80
        # From outside the pod, to the pod IP (what a Service does) ...
        with socket.create_connection((pod.ns.addr, 80), timeout=10) as s:
            assert _pod.exchange(s, b"GET / HTTP/1.0\r\n\r\n") == b"GET / HTTP/1.0\r\n\r\n"
        # ... and from inside the pod network.
        with _netns.connect_in(pod.ns.name, "127.0.0.1", 80) as s:
            assert _pod.exchange(s, b"from inside") == b"from inside"
        assert local.connections == 2
        t.cancel_port_forward(ANY, 80)
        _wait_port_closed(pod.ns.addr, 80)
    finally:
        t.close()
        local.close()


def test_forwarded_port_is_free_again_after_the_client_leaves(pod: ShadowPod) -> None:
    """kt-connect needed disconnect.sh (lsof + kill) for a stuck -R port."""
    local = TcpServer(socket.create_server(("127.0.0.1", 0)))
    try:
        first = _pod.login(pod)
        first.request_port_forward(ANY, 8080, handler=_forward_to(local.port))
        first.close()
        _wait_port_closed(pod.ns.addr, 8080)
        second = _pod.login(pod)
        try:
            assert second.request_port_forward(ANY, 8080, _forward_to(local.port)) == 8080
            with socket.create_connection((pod.ns.addr, 8080), timeout=10) as s:
                assert _pod.exchange(s, b"again") == b"again"
        finally:
            second.close()
    finally:
        local.close()


def test_daemons_run_as_kt_without_privileges(pod: ShadowPod) -> None:
    t = _pod.login(pod)  # so sshd's per-connection processes are there too
    try:
        procs = pod.processes()
        names = sorted(p.name for p in procs)
        assert "dnsmasq" in names
        assert names.count("sshd") >= 2
        assert "ktpy-shadow-ent" in names  # the entrypoint, PID 1 of the pod
        for p in procs:
            assert p.uids == [10001] * 4, p
            assert p.gids == [10001] * 4, p
            assert p.status["Groups"].split() == ["10001"], p  # the pod's fsGroup
            for cap in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
                assert int(p.status[cap], 16) == 0, (p.name, cap)
            assert p.status["NoNewPrivs"] == "1", p
    finally:
        t.close()


def _rss_anon_kib(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(ln for ln in status.splitlines() if ln.startswith("RssAnon:")).split()[1])


def test_sshd_gives_back_the_memory_of_closed_channels(pod: ShadowPod, pod_echo: TcpServer) -> None:
    # sshd reads each channel into a buffer of its own (32 KiB for the first read),
    # and glibc returns heap only from its top: without the entrypoint's fixed mmap
    # threshold, a session that once held many connections keeps their memory
    # after they close (docs/performance.md, the shadow pod's working set).
    t = _pod.login(pod)
    try:
        chans = [t.open_channel("direct-tcpip", ("127.0.0.1", pod_echo.port), ("127.0.0.1", 0))]
        # The process that serves this login is the sshd whose memory grows with
        # its channels.
        sshds = [p.pid for p in pod.processes() if p.name == "sshd"]
        before = {pid: _rss_anon_kib(pid) for pid in sshds}
        for _ in range(299):
            chans.append(
                t.open_channel("direct-tcpip", ("127.0.0.1", pod_echo.port), ("127.0.0.1", 0))
            )
        for chan in chans:
            assert _pod.exchange(chan, b"x" * 1024) == b"x" * 1024
        grown = {pid: _rss_anon_kib(pid) - before[pid] for pid in sshds}
        session = max(grown, key=lambda pid: grown[pid])
        assert grown[session] > 300 * 16, grown  # the channels' buffers are there
        # One connection opened later and still open: its buffer lies above the
        # others in the heap, as in any long session.
        last = t.open_channel("direct-tcpip", ("127.0.0.1", pod_echo.port), ("127.0.0.1", 0))
        assert _pod.exchange(last, b"y" * 1024) == b"y" * 1024
        for chan in chans:
            chan.close()
        deadline = time.monotonic() + 15
        while _rss_anon_kib(session) > before[session] + grown[session] // 2:
            assert time.monotonic() < deadline, (
                f"sshd kept {_rss_anon_kib(session) - before[session]} KiB of the "
                f"{grown[session]} KiB its 300 channels took, after they closed"
            )
            time.sleep(0.1)
    finally:
        t.close()


def test_sshd_logs_to_stderr(pod: ShadowPod) -> None:
    assert f"Server listening on 0.0.0.0 port {pod.ssh_port}." in pod.log()


# --- the same checks with the OpenSSH client, which still speaks SHA-1 kex ---


@pytest.fixture
def openssh(pod: ShadowPod, tmp_path: Path) -> list[str]:
    if shutil.which("ssh") is None:
        pytest.skip("no OpenSSH client")
    key = tmp_path / "id_ed25519"
    key.touch(mode=0o600)
    key.write_text(pod.keys.client_private)
    known = tmp_path / "known_hosts"
    known.write_text(f"[{pod.ns.addr}]:{pod.ssh_port} {pod.keys.host_line}\n")
    return [
        "ssh", "-F", "/dev/null", "-i", str(key), "-o", "IdentitiesOnly=yes",
        "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes",
        "-o", f"UserKnownHostsFile={known}", "-o", "ConnectTimeout=10",
        "-p", str(pod.ssh_port), f"kt@{pod.ns.addr}",
    ]  # fmt: skip


def _ssh(argv: list[str], *extra: str) -> subprocess.CompletedProcess[str]:
    cmd = [*argv[:-1], *extra, argv[-1], "id", "-u"]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=False)


def test_openssh_client_logs_in_with_hybrid_kex(openssh: list[str]) -> None:
    r = _ssh(openssh, "-v")
    assert (r.returncode, r.stdout.strip()) == (0, "10001"), r.stderr
    assert "kex: algorithm: sntrup761x25519-sha512" in r.stderr


@pytest.mark.parametrize(
    ("option", "error"),
    [
        ("Ciphers=3des-cbc,aes128-cbc,aes256-cbc", "no matching cipher found"),
        (
            "KexAlgorithms=diffie-hellman-group1-sha1,diffie-hellman-group14-sha1",
            "no matching key exchange method found",
        ),
        ("MACs=hmac-sha1,hmac-sha2-256", "no matching MAC found"),
        ("HostKeyAlgorithms=rsa-sha2-512,ecdsa-sha2-nistp256", "no matching host key type found"),
    ],
)
def test_openssh_client_legacy_algorithms_refused(
    openssh: list[str], option: str, error: str
) -> None:
    extra = ["-o", option]
    if option.startswith("MACs"):
        extra += ["-o", "Ciphers=aes128-ctr"]  # GCM has no separate MAC to disagree on
    r = _ssh(openssh, *extra)
    assert r.returncode == 255
    assert error in r.stderr


def test_a_refused_port_is_told_from_an_unreachable_network(pod: ShadowPod) -> None:
    # ktpy's transport keeps sshd's description: refused -> the client's RST,
    # unreachable -> an ICMP error (paramiko alone says "Connect failed" to both).
    sock = socket.create_connection((pod.ns.addr, pod.ssh_port), timeout=10)
    creds = ssh.SshCredentials(pod.keys.client, pod.keys.host_line)
    t = ssh.connect(sock, creds, "the test pod")
    try:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            closed = int(s.getsockname()[1])
        with pytest.raises(ConnectionRefusedError, match="Connection refused"):
            ssh.open_channel(t, "127.0.0.1", closed)
        # TEST-NET-2: the pod has no route there. sshd's connect() fails at once and it
        # sends no text then, so this is "unreachable", never "refused".
        with pytest.raises(OSError, match=r"198\.51\.100\.7:80") as unreachable:
            ssh.open_channel(t, "198.51.100.7", 80)
        assert unreachable.value.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH)
    finally:
        t.close()


def test_ktpys_commands_in_the_pod_run_with_the_images_tools(start_pod: StartPod) -> None:
    """ktpy runs commands in the pod through kt's login shell (the cluster domain
    from resolv.conf, drop_other_connections): the minimal root's bash and
    busybox applets must carry them."""
    pod = start_pod()
    mine, other = _pod.login(pod), _pod.login(pod)
    try:
        resolv = ssh.run_command(mine, "cat /etc/resolv.conf")
        assert "search default.svc.cluster.local" in resolv
        assert ssh.drop_other_connections(mine) >= 1
        deadline = time.monotonic() + 10
        while other.is_active() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not other.is_active()
        assert ssh.run_command(mine, "id -u").strip() == "10001"  # its own survived
    finally:
        mine.close()
        other.close()
