"""The SOCKS5 proxy with a client that does not wait for the greeting's answer (the
TUN child's opener): both answers come in one write, after the flow is open."""

from __future__ import annotations

import select
import socket
import threading
from collections.abc import Iterator

import pytest

from ktpy.net.relay import Flow, SocketFlow
from ktpy.net.socks_server import SocksServer
from ktpy.net.tun_process import socks_connect_request


class HeldOpener:
    """open_flow that says when it was asked and opens only when released: a socket
    pair's one end is the flow, the test keeps the other."""

    def __init__(self) -> None:
        self.asked = threading.Event()
        self.release = threading.Event()
        self.far: socket.socket | None = None

    def __call__(self, host: str, port: int) -> Flow:
        self.asked.set()
        assert self.release.wait(10)
        near, self.far = socket.socketpair()
        return SocketFlow(near)


@pytest.fixture
def opener() -> Iterator[HeldOpener]:
    held = HeldOpener()
    yield held
    held.release.set()
    if held.far is not None:
        held.far.close()


def test_a_pipelined_request_is_answered_once_the_flow_is_open(opener: HeldOpener) -> None:
    server = SocksServer(opener, port=0).start()
    try:
        with socket.create_connection(server.address, timeout=10) as client:
            client.sendall(socks_connect_request("10.96.0.1", 80))
            assert opener.asked.wait(10)
            # The greeting's answer waits for the open: the client wakes once, not twice.
            assert select.select([client], [], [], 0)[0] == []
            opener.release.set()
            answers = client.recv(64)
            assert answers[:2] == b"\x05\x00"  # no authentication
            assert answers[2:4] == b"\x05\x00"  # succeeded
            assert len(answers) == 12  # with an IPv4 address: both answers at once
            client.sendall(b"ping")
            assert opener.far is not None
            opener.far.settimeout(10)
            assert opener.far.recv(4) == b"ping"
    finally:
        server.stop()


def test_a_client_that_waits_for_the_greeting_answer_gets_it_first(opener: HeldOpener) -> None:
    server = SocksServer(opener, port=0).start()
    try:
        with socket.create_connection(server.address, timeout=10) as client:
            client.sendall(b"\x05\x01\x00")
            assert client.recv(2) == b"\x05\x00"
            opener.release.set()
            client.sendall(socks_connect_request("10.96.0.1", 80)[3:])
            assert client.recv(64)[:2] == b"\x05\x00"
    finally:
        server.stop()
