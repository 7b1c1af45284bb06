"""TunStack with the kernel as the TCP client: a real TUN device in a network
namespace of our own, a route for 198.18.0.0/24 through it, and loopback
servers behind ``open_flow`` (see _tun_env).

Needs root and /dev/net/tun. Elsewhere these tests skip; under CI=true they
fail instead, so a broken machine cannot pass silently."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import shutil
import socket
import threading
import time
from collections import Counter

import pytest

from ktpy.config import TUN_MTU
from ktpy.net.tcp import TcpConfig
from ktpy.net.tun_tcp import TunStack
from tests.integration.support import unavailable, wait_for

from . import _tun_env as te
from ._tun_env import TARGET, Server, TunEnv

pytestmark = [pytest.mark.integration, pytest.mark.root, pytest.mark.timeout(180)]

GIB = 1 << 30


def _unavailable(reason: str) -> None:
    unavailable("TUN stack", reason)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def assert_clean(stack: TunStack) -> None:
    stats = stack.stats
    assert stats["malformed"] == 0
    assert stats["write_errors"] == 0
    assert stats["packet_errors"] == 0


def receive_all(sock: socket.socket) -> tuple[int, str]:
    digest = hashlib.sha256()
    buf = bytearray(1 << 20)
    view = memoryview(buf)
    count = 0
    while n := sock.recv_into(buf):
        digest.update(view[:n])
        count += n
    return count, digest.hexdigest()


# -- requests and responses -------------------------------------------------------------


# (MTU, offloads): the stack makes its own device with offloads; a device
# made without IFF_VNET_HDR is served packet by packet with checksums.
FRAMINGS = [(m, o) for o in (True, False) for m in (1500, 9000, 16000, 65000)]


def framing_id(spec: tuple[int, bool]) -> str:
    return f"mtu{spec[0]}-{'offload' if spec[1] else 'plain'}"


@pytest.mark.parametrize("env", FRAMINGS, indirect=True, ids=framing_id)
def test_request_and_response(env: TunEnv) -> None:
    server = env.server(te.pong)
    stack = env.start()
    with env.connect(server.port) as client:
        client.sendall(b"ping\n")
        assert client.recv(100) == b"pong ping\n"
        assert client.recv(100) == b""  # the server closed: FIN reached the client
    wait_for(lambda: stack.flows() == 0, 5, "the flow to end")
    assert env.flows.open == 0
    assert_clean(stack)


def test_a_stack_makes_its_own_device_with_offloads(env: TunEnv) -> None:
    server = env.server(te.pong)
    # Made in the namespace: the device lives where the thread making it is.
    stack = te.in_netns(env.ns, lambda: TunStack("ktown0", env.open_flow))
    env.stacks.append(stack)
    assert (stack.name, stack.mtu, stack.offload) == ("ktown0", TUN_MTU, True)
    te.run("ip", "-n", env.ns, "addr", "add", "198.18.2.1/32", "dev", "ktown0")
    te.run(
        "ip", "-n", env.ns, "route", "add", "198.18.3.0/24", "dev", "ktown0", "src", "198.18.2.1"
    )
    stack.start()
    with env.connect(server.port, host="198.18.3.7") as client:
        client.sendall(b"own\n")
        assert client.recv(100) == b"pong own\n"
    stack.stop()
    assert "ktown0" not in te.run("ip", "-n", env.ns, "link", "show")  # closed with the stack


def test_curl_gets_a_page(env: TunEnv) -> None:
    if shutil.which("curl") is None:
        _unavailable("no curl")

    def http(conn: socket.socket, server: Server) -> None:
        request = b""
        while b"\r\n\r\n" not in request:
            request += conn.recv(4096)
        body = b"hello through the TUN stack\n"
        conn.sendall(
            b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s"
            % (len(body), body)
        )

    server = env.server(http)
    env.start()
    done = env.execute("curl", "-sS", "--max-time", "10", f"http://{TARGET}:{server.port}/")
    assert done.returncode == 0, done.stderr
    assert done.stdout == "hello through the TUN stack\n"


def test_200_connections_held_open_all_succeed(env: TunEnv) -> None:
    server = env.server(te.hold)
    stack = env.start()
    clients = [env.connect(server.port) for _ in range(200)]
    try:
        for i, c in enumerate(clients):
            c.sendall(b"%d\n" % i)
        wait_for(lambda: server.active == 200, 30, "200 connections at the server")
        assert stack.flows() == 200
        assert server.max_active == 200
        server.release.set()
        answers = [c.recv(100) for c in clients]
    finally:
        for c in clients:
            c.close()
    assert answers == [b"ok %d\n" % i for i in range(200)]
    wait_for(lambda: stack.relaying() == 0, 10, "every relay to finish")
    assert_clean(stack)


def test_a_slow_open_does_not_stall_other_flows(env: TunEnv) -> None:
    server = env.server(te.pong)
    env.start()
    slow_result: list[bytes] = []

    def slow_client() -> None:
        with env.connect(server.port, host=te.SLOW) as c:
            c.sendall(b"slow\n")
            slow_result.append(c.recv(100))

    t = threading.Thread(target=slow_client)
    t.start()
    time.sleep(0.2)  # the slow open is under way
    started = time.monotonic()
    with env.connect(server.port) as c:
        c.sendall(b"quick\n")
        assert c.recv(100) == b"pong quick\n"
    assert time.monotonic() - started < 1.0
    t.join(10)
    assert slow_result == [b"pong slow\n"]


# -- bulk transfers ---------------------------------------------------------------------


def _download(env: TunEnv, stack: TunStack, size: int) -> float:
    server = env.server(te.download)
    started = time.monotonic()
    with env.connect(server.port, timeout=60) as client:
        client.sendall(b"%d\n" % size)
        count, digest = receive_all(client)
    elapsed = time.monotonic() - started
    wait_for(lambda: bool(server.results), 10, "the server's digest")
    assert (count, digest) == server.results[0]
    assert count == size
    return elapsed


def _upload(env: TunEnv, size: int, host: str = te.TARGET) -> float:
    server = env.server(te.upload)
    digest = hashlib.sha256()
    started = time.monotonic()
    with env.connect(server.port, host=host, timeout=60) as client:
        for chunk in te.pattern_chunks(size):
            client.sendall(chunk)
            digest.update(chunk)
        client.shutdown(socket.SHUT_WR)
        answer = client.recv(200).decode()
    elapsed = time.monotonic() - started
    assert answer == f"{size} {digest.hexdigest()}"
    return elapsed


def test_a_socket_flow_answers_without_a_writer_thread(env: TunEnv) -> None:
    """The TUN child's flows are sockets: a request the socket takes whole is written
    by the thread that received it, so a request/response flow runs one thread."""
    server = env.server(te.hold)
    stack = env.start()
    with env.connect(server.port, host=te.SOCKET) as client:
        client.sendall(b"ping\n")
        wait_for(lambda: server.active == 1, 5, "the request at the server")
        server.release.set()
        assert client.recv(100) == b"ok ping\n"
        writers = [t.name for t in threading.enumerate() if t.name.endswith("-down")]
        assert writers == []
    wait_for(lambda: stack.flows() == 0 and stack.relaying() == 0, 5, "the flow to go")
    assert env.flows.open == 0


def test_an_upload_through_a_socket_flow_is_byte_exact(env: TunEnv) -> None:
    """More than its socket takes at once: the writer thread starts mid-flow and
    carries the rest, in order."""
    stack = env.start()
    _upload(env, 256 << 20, host=te.SOCKET)
    wait_for(lambda: stack.flows() == 0 and stack.relaying() == 0, 5, "the flow to go")
    assert env.flows.open == 0


def test_a_1_gib_download_is_byte_exact(env: TunEnv) -> None:
    stack = env.start()
    elapsed = _download(env, stack, GIB)
    print(f"1 GiB down in {elapsed:.1f} s: {GIB / elapsed / 1e6:.0f} MB/s, {stack.stats}")
    assert_clean(stack)


def test_a_1_gib_upload_is_byte_exact(env: TunEnv) -> None:
    stack = env.start()
    elapsed = _upload(env, GIB)
    print(f"1 GiB up in {elapsed:.1f} s: {GIB / elapsed / 1e6:.0f} MB/s, {stack.stats}")
    assert_clean(stack)


@pytest.mark.parametrize(
    "env",
    [(1500, False), (9000, False), (65000, False), (1500, True)],
    indirect=True,
    ids=framing_id,
)
def test_bulk_both_ways_in_other_framings(env: TunEnv) -> None:
    stack = env.start()
    _download(env, stack, 64 << 20)
    _upload(env, 64 << 20)
    assert_clean(stack)


# -- failures ------------------------------------------------------------------------------


def test_a_refused_target_is_refused_promptly(env: TunEnv) -> None:
    stack = env.start()
    started = time.monotonic()
    with pytest.raises(ConnectionRefusedError):
        env.connect(closed_port())
    assert time.monotonic() - started < 1.0
    assert stack.stats["open_failures"] == 1


@pytest.mark.parametrize(
    ("host", "code"),
    [(te.UNREACHABLE, errno.EHOSTUNREACH), (te.NET_UNREACHABLE, errno.ENETUNREACH)],
    ids=["host", "network"],
)
def test_an_unreachable_target_fails_promptly(env: TunEnv, host: str, code: int) -> None:
    env.start()
    started = time.monotonic()
    with pytest.raises(OSError, match=r"unreachable|No route") as raised:
        env.connect(80, host=host)
    assert raised.value.errno == code
    assert time.monotonic() - started < 1.0


def test_a_server_reset_resets_the_client(env: TunEnv) -> None:
    server = env.server(te.reset_after_request)
    stack = env.start()
    with env.connect(server.port) as client:
        client.sendall(b"hello\n")
        started = time.monotonic()
        with pytest.raises(ConnectionResetError):
            client.recv(100)
        assert time.monotonic() - started < 1.0
    wait_for(lambda: stack.flows() == 0 and stack.relaying() == 0, 5, "the flow to go")
    assert stack.stats["resets_sent"] >= 1


def test_a_flow_failing_in_its_own_way_resets_the_client(env: TunEnv) -> None:
    stack = env.start()
    with env.connect(80, host=te.BROKEN) as client, pytest.raises(ConnectionResetError):
        client.recv(100)
    wait_for(lambda: stack.flows() == 0 and stack.relaying() == 0, 5, "the flow to go")


def test_a_flow_closed_before_its_reader_ran_resets_the_client(env: TunEnv) -> None:
    """Found by the TUN fuzz: the reader of a flow whose Flow was already closed
    died registering fd -1 and was never counted as ended."""
    server = env.server(te.pong)
    stack = env.start()
    # The reset may come while connect() still waits (it then raises) or after it.
    with pytest.raises(ConnectionResetError), env.connect(server.port, host=te.CLOSED) as client:
        client.recv(100)
    wait_for(lambda: stack.flows() == 0 and stack.relaying() == 0, 5, "the flow to go")


def test_an_idle_flow_with_a_timeout_is_not_a_failure(env: TunEnv) -> None:
    server = env.server(te.pong)
    stack = env.start()
    with env.connect(server.port, host=te.IMPATIENT) as client:
        time.sleep(1.0)  # five of the flow's timeouts go by
        client.sendall(b"late\n")
        assert client.recv(100) == b"pong late\n"
    assert stack.stats["resets_sent"] == 0


def test_a_client_closing_early_stops_the_server(env: TunEnv) -> None:
    server = env.server(te.download)
    stack = env.start()
    client = env.connect(server.port)
    client.sendall(b"%d\n" % GIB)
    got = 0
    while got < 4 << 20:
        got += len(client.recv(1 << 20))
    client.close()  # unread data: the kernel resets
    wait_for(lambda: bool(server.results), 5, "the server to give up")
    sent, _ = server.results[0]
    assert sent < GIB
    assert server.errors, "the server's send should have failed"
    wait_for(lambda: stack.flows() == 0 and stack.relaying() == 0, 5, "the flow to go")
    assert env.flows.open == 0
    assert stack.stats["resets_received"] >= 1


def test_stopping_resets_open_connections(env: TunEnv) -> None:
    server = env.server(te.hold)
    stack = env.start()
    with env.connect(server.port) as client:
        client.sendall(b"x\n")
        wait_for(lambda: server.active == 1, 5, "the connection at the server")
        started = time.monotonic()
        stack.stop()
        with pytest.raises(ConnectionResetError):
            client.recv(100)
        assert time.monotonic() - started < 6.0
    assert env.flows.open == 0


# -- bounded resources ----------------------------------------------------------------------


def test_a_slow_reader_keeps_memory_bounded(env: TunEnv) -> None:
    config = TcpConfig()
    progress = {"sent": 0}

    def stream(conn: socket.socket, server: Server) -> None:
        te.read_line(conn)
        for chunk in te.pattern_chunks(GIB):
            conn.sendall(chunk)
            progress["sent"] += len(chunk)

    server = env.server(stream)
    stack = env.start(config)
    rss_before = te.rss_bytes()
    most = 0
    got = 0
    with env.connect(server.port) as client:
        client.sendall(b"go\n")
        until = time.monotonic() + 4.0
        while time.monotonic() < until:
            got += len(client.recv(64 * 1024))
            most = max(most, stack.buffered_bytes())
            time.sleep(0.005)
        in_pipe = progress["sent"] - got
        rss_growth = te.rss_bytes() - rss_before
    print(f"read {got >> 20} MiB, most buffered {most}, in pipes {in_pipe}, RSS +{rss_growth}")
    assert got > 8 << 20  # it did move
    assert most <= config.send_buffer + config.receive_buffer
    assert in_pipe < 64 << 20  # the server was held back, not buffered for
    assert rss_growth < 64 << 20


def test_a_slow_app_side_keeps_memory_bounded(env: TunEnv) -> None:
    config = TcpConfig()
    taken = {"bytes": 0}

    def slow_sink(conn: socket.socket, server: Server) -> None:
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        while data := conn.recv(64 * 1024):
            taken["bytes"] += len(data)
            time.sleep(0.005)

    server = env.server(slow_sink)
    stack = env.start(config)
    most = 0
    sent = 0
    with env.connect(server.port) as client:
        client.settimeout(0.05)
        block = b"u" * (1 << 20)
        until = time.monotonic() + 4.0
        while time.monotonic() < until:
            with contextlib.suppress(TimeoutError):
                sent += client.send(block)
            most = max(most, stack.buffered_bytes())
    print(f"sent {sent >> 20} MiB, server took {taken['bytes'] >> 20} MiB, most buffered {most}")
    assert taken["bytes"] > 8 << 20
    assert most <= config.receive_buffer + config.mtu
    assert sent - taken["bytes"] < 64 << 20


def test_no_thread_or_fd_leak_after_many_flows(env: TunEnv) -> None:
    server = env.server(te.pong)
    stack = env.start()

    def wave(count: int) -> None:
        clients = [env.connect(server.port) for _ in range(count)]
        for i, c in enumerate(clients):
            c.sendall(b"%d\n" % i)
        for i, c in enumerate(clients):
            assert c.recv(100) == b"pong %d\n" % i
            c.close()

    def settled() -> bool:
        return stack.flows() == 0 and stack.relaying() == 0 and server.threads_alive() == 0

    def threads() -> list[str]:
        # The pools grow on demand up to their size: not a leak.
        names = (t.name for t in threading.enumerate())
        return sorted(n for n in names if not n.startswith(("tun-open", "tun-close")))

    wave(30)
    wait_for(settled, 10, "the first wave to end")
    before, fds = threads(), te.open_fds()
    for _ in range(10):
        wave(30)
    wait_for(settled, 10, "every wave to end")
    assert env.flows.open == 0
    assert env.flows.total == 330
    # Nothing new; a thread or fd of an earlier test may still be going away.
    assert not Counter(threads()) - Counter(before)
    assert stack.stats["workers"] <= 32 + 4
    assert te.open_fds() <= fds
    assert_clean(stack)
