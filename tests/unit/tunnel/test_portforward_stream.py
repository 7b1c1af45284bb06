"""The port-forward Stream over a socket pair, with the server side scripted:
frames of the v4 channel protocol in, masked client frames out."""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time
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


# --- a stuck path: writes time out, close never waits -----------------------------------


def fill_the_socket(stream: Stream) -> None:
    """Fill the socket pair's buffers under the stream (the server reads nothing)."""
    with contextlib.suppress(BlockingIOError):
        while True:
            stream._raw.send(b"x" * 4096)
    with contextlib.suppress(BlockingIOError):
        while True:
            stream._raw.send(b"x")


def test_a_send_into_a_full_socket_times_out_having_written_nothing(
    pair: tuple[Stream, socket.socket],
) -> None:
    stream, _ = pair
    fill_the_socket(stream)
    stream.settimeout(0.2)
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        stream.send(b"more")
    assert time.monotonic() - started < 1


def test_close_does_not_wait_for_a_writer_stuck_mid_frame(
    pair: tuple[Stream, socket.socket],
) -> None:
    stream, _ = pair
    stream.settimeout(None)  # the writer would wait for the socket forever
    failures: list[BaseException] = []

    def write() -> None:
        try:
            stream.sendall(b"y" * (4 * 1024 * 1024))
        except OSError as exc:
            failures.append(exc)

    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    time.sleep(0.3)  # the writer is now inside a frame the socket cannot take
    assert writer.is_alive()
    started = time.monotonic()
    stream.close()
    assert time.monotonic() - started < 0.5
    writer.join(2)
    assert not writer.is_alive(), "the writer was not woken by close"
    assert failures


def test_a_ping_is_skipped_while_a_writer_holds_the_stream(
    pair: tuple[Stream, socket.socket],
) -> None:
    stream, server = pair
    assert stream.ping(b"health")
    assert read_client_frame(server) == (0x9, b"health")
    with stream._send_lock:  # a writer in the middle of a frame
        assert not stream.ping(b"health")


def test_bytes_from_the_server_move_last_received(pair: tuple[Stream, socket.socket]) -> None:
    stream, server = pair
    before = stream.last_received
    time.sleep(0.05)
    server.sendall(server_frame(b"", opcode=0xA))  # a pong
    server.sendall(server_frame(bytes([DATA_CHANNEL]) + b"z"))
    assert stream.recv(1) == b"z"
    assert stream.last_received > before


def test_a_framing_violation_ends_the_stream_and_is_kept(
    pair: tuple[Stream, socket.socket],
) -> None:
    stream, server = pair
    server.sendall(server_frame(bytes([DATA_CHANNEL]) + b"ok") + struct.pack("!BB", 0xC2, 0))
    assert stream.recv(10) == b"ok"
    assert stream.recv(10) == b""
    assert stream.violation == "the server set RSV bits (0b100) no extension allows"
    opcode, payload = read_client_frame(server)
    assert (opcode, payload[:2]) == (0x8, struct.pack("!H", 1002))
