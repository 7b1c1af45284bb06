"""ForwardServer on real loopback sockets (no root needed)."""

from __future__ import annotations

import errno
import socket
import threading
from collections.abc import Iterator

import pytest

from ktpy.net.forwarding import ForwardServer
from ktpy.net.relay import Flow, SocketFlow

pytestmark = pytest.mark.integration


def _echo_server(family: socket.AddressFamily, host: str) -> tuple[socket.socket, int]:
    listener = socket.socket(family, socket.SOCK_STREAM)
    listener.bind((host, 0))
    listener.listen()

    def serve() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with conn:
                while data := conn.recv(65536):
                    conn.sendall(data.upper())

    threading.Thread(target=serve, daemon=True).start()
    return listener, listener.getsockname()[1]


@pytest.fixture
def upstream() -> Iterator[int]:
    listener, port = _echo_server(socket.AF_INET, "127.0.0.1")
    yield port
    listener.close()


def test_each_connection_goes_to_the_target_by_open_flow(upstream: int) -> None:
    opened: list[tuple[str, int]] = []

    def open_flow(host: str, port: int) -> Flow:
        opened.append((host, port))
        return SocketFlow(socket.create_connection(("127.0.0.1", upstream)))

    server = ForwardServer(open_flow, "10.96.0.20", 80).start()
    try:
        for text in (b"one", b"two"):
            with socket.create_connection(server.address) as client:
                client.sendall(text)
                client.shutdown(socket.SHUT_WR)  # the half-close reaches the target
                assert client.recv(10) == text.upper()
        assert opened == [("10.96.0.20", 80)] * 2
        assert server.connections == 2
    finally:
        server.stop()


def test_a_failed_open_is_retried_then_reset_promptly(upstream: int) -> None:
    attempts: list[int] = []

    def refuse(host: str, port: int) -> Flow:
        attempts.append(port)
        raise ConnectionRefusedError(errno.ECONNREFUSED, "refused")

    server = ForwardServer(refuse, "10.96.0.20", 80).start()
    try:
        with socket.create_connection(server.address, timeout=5) as client:
            client.sendall(b"x")
            with pytest.raises(ConnectionResetError):
                client.recv(10)
        assert len(attempts) == 4
        assert server.failures == 1
    finally:
        server.stop()


def test_a_busy_port_fails_at_construction(upstream: int) -> None:
    with pytest.raises(OSError, match="in use"):
        ForwardServer(lambda h, p: SocketFlow(socket.socket()), "h", 1, listen_port=upstream)
