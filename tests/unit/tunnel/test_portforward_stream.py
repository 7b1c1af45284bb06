"""The port-forward Stream over a socket pair, with the server side scripted:
frames of the v4 channel protocol in, masked client frames out."""

from __future__ import annotations

import socket
import struct
import threading
from collections.abc import Iterator

import pytest

from ktpy.net.relay import recv_exact
from ktpy.tunnel.portforward import DATA_CHANNEL, ERROR_CHANNEL, Stream, Target

TARGET = Target("dev", "pod", 2222)


def server_frame(payload: bytes, opcode: int = 0x2) -> bytes:
    """A server-to-client frame: FIN set, not masked."""
    length = len(payload)
    if length < 126:
        return struct.pack("!BB", 0x80 | opcode, length) + payload
    if length < 1 << 16:
        return struct.pack("!BBH", 0x80 | opcode, 126, length) + payload
    return struct.pack("!BBQ", 0x80 | opcode, 127, length) + payload


def port_announcements() -> bytes:
    """Each channel's first frame carries the port number (little-endian) first."""
    port = struct.pack("<H", TARGET.port)
    return server_frame(bytes([DATA_CHANNEL]) + port) + server_frame(bytes([ERROR_CHANNEL]) + port)


def read_client_frame(sock: socket.socket) -> tuple[int, bytes]:
    def exactly(n: int) -> bytes:
        return recv_exact(sock.recv, n)

    first, second = exactly(2)
    assert second & 0x80, "client frames are masked"
    length = second & 0x7F
    if length == 126:
        length = struct.unpack("!H", exactly(2))[0]
    elif length == 127:
        length = struct.unpack("!Q", exactly(8))[0]
    key = exactly(4)
    masked = exactly(length)
    return first & 0x0F, bytes(b ^ key[i % 4] for i, b in enumerate(masked))


@pytest.fixture
def pair() -> Iterator[tuple[Stream, socket.socket]]:
    ours, server = socket.socketpair()
    stream = Stream(ours, TARGET)
    server.sendall(port_announcements())
    yield stream, server
    stream.close()
    server.close()


def test_data_comes_out_in_order_in_any_read_sizes(pair: tuple[Stream, socket.socket]) -> None:
    stream, server = pair
    payload = bytes(range(256)) * 1024  # 256 KiB over several frames
    frames = b"".join(
        server_frame(bytes([DATA_CHANNEL]) + payload[start : start + 40000])
        for start in range(0, len(payload), 40000)
    )
    threading.Thread(target=server.sendall, args=(frames,), daemon=True).start()
    received = b""
    sizes = iter([16, 32768, 7, 100000] * 100)
    while len(received) < len(payload):
        chunk = stream.recv(next(sizes))
        assert chunk
        received += chunk
    assert received == payload


def test_the_end_comes_after_the_last_bytes(pair: tuple[Stream, socket.socket]) -> None:
    stream, server = pair
    server.sendall(server_frame(bytes([DATA_CHANNEL]) + b"last words"))
    server.shutdown(socket.SHUT_WR)
    received = b""
    while chunk := stream.recv(3):
        received += chunk
    assert received == b"last words"
    assert stream.recv(10) == b""


def test_a_read_times_out_as_paramiko_expects(pair: tuple[Stream, socket.socket]) -> None:
    stream, _ = pair
    stream.settimeout(0.1)
    assert stream.gettimeout() == 0.1
    with pytest.raises(TimeoutError):
        stream.recv(10)


def test_errors_are_kept_and_pings_answered(pair: tuple[Stream, socket.socket]) -> None:
    stream, server = pair
    server.sendall(server_frame(bytes([ERROR_CHANNEL]) + b"connection refused"))
    server.sendall(server_frame(b"are you there", opcode=0x9))
    server.sendall(server_frame(bytes([DATA_CHANNEL]) + b"x"))
    assert stream.recv(1) == b"x"
    assert stream.error == "connection refused"
    assert read_client_frame(server) == (0xA, b"are you there")


def test_sent_data_arrives_whole_while_the_peer_reads_slowly(
    pair: tuple[Stream, socket.socket],
) -> None:
    stream, server = pair
    payload = bytes(range(256)) * 4096  # 1 MiB: more than the socket buffers hold
    sender = threading.Thread(target=stream.sendall, args=(payload,))
    sender.start()
    received = b""
    while len(received) < len(payload):
        opcode, frame = read_client_frame(server)
        assert opcode == 0x2
        assert frame[0] == DATA_CHANNEL
        received += frame[1:]
    sender.join(5)
    assert received == payload
