"""SOCKS5 handshakes into the real SocksServer, drawn by hypothesis: greetings
and requests with any version, methods, command, address type, name and port,
bent bytes, raw bytes, cut anywhere and sent in pieces.

The server runs as in production (its accept loop, a thread per client, flows
to a loopback echo server). Nothing is caught by the harness: an exception
escaping a client's thread is recorded by ``threading.excepthook`` and fails
the example; each client must be answered or closed, never left hanging; and
after the run a real SOCKS client gets its bytes echoed."""

from __future__ import annotations

import contextlib
import itertools
import socket
import struct
import threading
import time
from collections.abc import Iterator

import pytest
import socks
from hypothesis import given
from hypothesis import strategies as st

from ktpy.net.relay import SocketFlow
from ktpy.net.socks_server import SocksServer
from tests.integration.fuzzing import FUZZ, EchoServer, closed_port

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

ANSWER_WITHIN = 5.0  # far below the server's handshake timeout: a hang shows


class Harness:
    def __init__(self) -> None:
        self.echo = EchoServer()
        refused = closed_port()

        def open_flow(host: str, port: int) -> SocketFlow:
            target = refused if host.startswith("refused") else self.echo.port
            return SocketFlow(socket.create_connection(("127.0.0.1", target), timeout=5))

        self.server = SocksServer(open_flow, port=0).start()
        self.escaped: list[BaseException] = []
        self._hook = threading.excepthook
        threading.excepthook = self._record

    def _record(self, args: threading.ExceptHookArgs) -> None:
        if args.exc_value is not None:
            self.escaped.append(args.exc_value)
        self._hook(args)

    def close(self) -> None:
        threading.excepthook = self._hook
        self.server.stop()
        self.echo.close()


@pytest.fixture(scope="module")
def harness() -> Iterator[Harness]:
    made = Harness()
    yield made
    made.close()


@st.composite
def handshake(draw: st.DrawFn) -> bytes:
    version = draw(st.sampled_from([5, 5, 5, 4, 0, 255]))
    methods = draw(st.lists(st.sampled_from([0, 0, 1, 2, 0x80, 0xFF]), max_size=5))
    greeting = bytes([version, len(methods) if draw(st.booleans()) else draw(st.integers(0, 255))])
    greeting += bytes(methods)
    atyp = draw(st.sampled_from([1, 3, 4, 0, 2, 255]))
    if atyp == 1:
        address = draw(st.binary(min_size=4, max_size=4))
    elif atyp == 4:
        address = draw(st.binary(min_size=16, max_size=16))
    else:
        name = draw(
            st.one_of(
                st.sampled_from([b"echo.default", b"refused.default", b"", b"a" * 255]),
                st.binary(max_size=260),
                st.text(max_size=40).map(lambda t: t.encode()),
            )
        )
        length = len(name) if draw(st.booleans()) else draw(st.integers(0, 255))
        address = bytes([min(length, 255)]) + name
    request = bytes([draw(st.sampled_from([5, 5, 4])), draw(st.sampled_from([1, 1, 2, 3, 0, 9]))])
    request += bytes([draw(st.sampled_from([0, 0, 1]))]) + bytes([atyp]) + address
    request += struct.pack("!H", draw(st.integers(0, 65535)))
    data = bytearray(greeting + request + draw(st.binary(max_size=64)))  # early data
    for offset, value in draw(
        st.lists(st.tuples(st.integers(0, 300), st.integers(0, 255)), max_size=3)
    ):
        if offset < len(data):
            data[offset] = value
    return bytes(data)


def pieces(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(points) if b > a]


@FUZZ
@given(
    data=st.one_of(handshake(), st.binary(max_size=600)),
    cuts=st.lists(st.integers(0, 700), max_size=4),
)
def test_any_handshake_is_answered_or_closed(
    harness: Harness, data: bytes, cuts: list[int]
) -> None:
    escaped = len(harness.escaped)
    with socket.create_connection(harness.server.address, timeout=ANSWER_WITHIN) as client:
        for piece in pieces(data, cuts):
            try:
                client.sendall(piece)
            except (BrokenPipeError, ConnectionResetError):
                break  # the server closed on an earlier piece: that is an answer
        with contextlib.suppress(OSError):  # ENOTCONN: the server closed already
            client.shutdown(socket.SHUT_WR)
        try:
            # Whatever the server makes of it, it closes: the handshake ends, or the
            # relay carries our end of stream to the echo server, which closes too.
            while client.recv(65536):
                pass
        except ConnectionResetError:
            pass  # closed with unread bytes: closed all the same
        except TimeoutError:
            pytest.fail(f"the server neither answered nor closed within {ANSWER_WITHIN} s")
    assert harness.escaped[escaped:] == [], "an exception escaped a client's thread"


def test_a_real_client_works_after_the_fuzz(harness: Harness) -> None:
    """Runs after the fuzz target in the same module: the same server, still serving."""
    assert harness.server.connections > 1000, "the fuzz target ran first"
    client = socks.socksocket()
    client.set_proxy(socks.SOCKS5, *harness.server.address, rdns=True)
    client.settimeout(5)
    client.connect(("echo.default", 80))
    client.sendall(b"after the storm")
    assert client.recv(100) == b"after the storm"
    client.close()
    assert harness.escaped == []
    # Every fuzzed client's thread ended: nothing wedged.
    deadline = time.monotonic() + 10
    while [
        t.name
        for t in threading.enumerate()
        if t.name.startswith("socks-") and t.name != "socks-accept"
    ]:
        assert time.monotonic() < deadline, "client threads of the SOCKS server still run"
        time.sleep(0.01)
