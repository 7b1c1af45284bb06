"""Inbound: a forwarded channel (here one end of a socket pair) handed to a local port on
the loopback, IPv4 then IPv6; closed at once when nothing listens."""

import contextlib
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from ktpy.net import inbound
from ktpy.net.inbound import Inbound
from ktpy.net.relay import SocketFlow


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextlib.contextmanager
def upper_server(host: str = "127.0.0.1") -> Iterator[int]:
    """Answers each connection with its input upper-cased, after the peer's half-close."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    server = socket.socket(family)
    server.bind((host, 0))
    server.listen()
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                return
            with conn:
                data = b""
                while chunk := conn.recv(1024):
                    data += chunk
                conn.sendall(data.upper())

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield int(server.getsockname()[1])
    finally:
        stop.set()
        server.close()


def call(handler: Inbound, remote_port: int, payload: bytes) -> bytes:
    """What a cluster caller would see through the shadow's remote port."""
    caller, channel = socket.socketpair()
    with caller:
        handler(SocketFlow(channel), ("10.244.0.7", 40000), ("0.0.0.0", remote_port))
        caller.settimeout(5)
        answer = b""
        try:
            caller.sendall(payload)
            caller.shutdown(socket.SHUT_WR)
            while chunk := caller.recv(1024):
                answer += chunk
        except (ConnectionResetError, BrokenPipeError):
            pass  # closed before or with our bytes unread: a prompt reset, as intended
        return answer


def test_a_connection_reaches_the_local_port_of_its_remote_port() -> None:
    with upper_server() as first, upper_server() as second:
        handler = Inbound({80: first, 9090: second})
        assert call(handler, 80, b"hello") == b"HELLO"
        assert call(handler, 9090, b"alt") == b"ALT"
        assert handler.wait_quiet(0.05, timeout=5)
        stats = handler.snapshot()
        assert stats.accepted == 2
        assert stats.active == 0
        assert stats.refused == 0


def ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not ipv6_loopback(), reason="no IPv6 loopback")
def test_a_server_on_ipv6_loopback_only_is_reached_after_ipv4_is_refused() -> None:
    with upper_server("::1") as port:
        assert call(Inbound({80: port}), 80, b"six") == b"SIX"
        assert inbound.listening(port)


def test_nothing_listening_closes_the_callers_connection_at_once() -> None:
    handler = Inbound({80: free_port()})
    started = time.monotonic()
    assert call(handler, 80, b"anyone?") == b""
    assert time.monotonic() - started < 1
    assert handler.wait_quiet(0.05, timeout=5)
    assert handler.snapshot().refused == 1


def test_an_unknown_remote_port_is_closed_too() -> None:
    handler = Inbound({80: free_port()})
    assert call(handler, 81, b"x") == b""
    assert handler.wait_quiet(0.05, timeout=5)
    assert handler.snapshot().refused == 1


def test_listening_tells_a_bound_port_from_a_free_one() -> None:
    with upper_server() as port:
        assert inbound.listening(port)
    assert not inbound.listening(free_port())


def test_wait_arrival_and_quiet() -> None:
    with upper_server() as port:
        handler = Inbound({80: port})
        mark = time.monotonic()
        assert not handler.wait_arrival(mark, timeout=0.05)
        threading.Timer(0.05, call, args=(handler, 80, b"x")).start()
        assert handler.wait_arrival(mark, timeout=5)
        assert handler.wait_quiet(0.1, timeout=5)
        # Not quiet while connections keep coming.
        caller, channel = socket.socketpair()
        with caller:
            handler(SocketFlow(channel), ("10.244.0.7", 1), ("0.0.0.0", 80))
            assert not handler.wait_quiet(0.2, timeout=0.1)
            caller.shutdown(socket.SHUT_WR)
            caller.settimeout(5)
            while caller.recv(1024):
                pass
        assert handler.wait_quiet(0.05, timeout=5)
