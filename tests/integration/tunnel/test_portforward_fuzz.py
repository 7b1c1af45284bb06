"""Frames into the port-forward's Stream, drawn by hypothesis, as the API
server would send them: messages on the data, error and other channels, cut
into fragments with pings and pongs between them, a close or none, the bytes
split anywhere; and the same bent (masks, RSV bits, opcodes, lengths that
lie) or replaced by junk.

Stream runs as in production, over a socket pair standing in for the API
server's connection, read as paramiko reads it. Well-formed frames must hand
out exactly the data channel's bytes; any frames must end in an end of stream
once the server closes, never an exception or a hang. Nothing is caught by
the harness."""

from __future__ import annotations

import contextlib
import itertools
import socket
import struct
import threading
from dataclasses import dataclass

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ktpy.tunnel.portforward import (
    DATA_CHANNEL,
    OP_BINARY,
    OP_CLOSE,
    OP_CONTINUATION,
    OP_PING,
    OP_PONG,
    Stream,
    Target,
)
from tests.integration.fuzzing import FUZZ

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

TARGET = Target("ns", "ktpy-shadow", 22)
PORT = struct.pack("<H", TARGET.port)
ENDS_WITHIN = 5.0  # seconds after the server closed; a hang shows


def frame(
    payload: bytes, opcode: int, *, fin: bool = True, rsv: int = 0, masked: bool = False
) -> bytes:
    first = (0x80 if fin else 0) | rsv << 4 | opcode
    mask_bit = 0x80 if masked else 0
    length = len(payload)
    if length < 126:
        header = struct.pack("!BB", first, mask_bit | length)
    elif length < 1 << 16:
        header = struct.pack("!BBH", first, mask_bit | 126, length)
    else:
        header = struct.pack("!BBQ", first, mask_bit | 127, length)
    return header + (b"\0\0\0\0" if masked else b"") + payload


PATTERN = bytes(i * 7 & 0xFF for i in range(70_000))
# Small and drawn byte by byte, or large enough for the 16- and 64-bit lengths.
BODY = st.one_of(
    st.binary(max_size=300),
    st.integers(126, 70_000).map(lambda n: PATTERN[:n]),
)


@dataclass
class Conversation:
    wire: bytes
    data: bytes  # what the data channel carries, port announcement aside


@st.composite
def conversation(draw: st.DrawFn) -> Conversation:
    wire, data = bytearray(), bytearray()
    announced: set[int] = set()
    for _ in range(draw(st.integers(1, 6))):
        channel = draw(st.sampled_from([DATA_CHANNEL, DATA_CHANNEL, 1, 2]))
        body = draw(BODY)
        if channel == DATA_CHANNEL:
            data += body
        if channel not in announced:  # a channel's first bytes are its port number
            body = PORT + body
            announced.add(channel)
        message = bytes([channel]) + body
        cuts = sorted(draw(st.sets(st.integers(1, max(len(message) - 1, 1)), max_size=3)))
        points = [0, *[c for c in cuts if c < len(message)], len(message)]
        for i, (a, b) in enumerate(itertools.pairwise(points)):
            last = i == len(points) - 2
            wire += frame(message[a:b], OP_BINARY if i == 0 else OP_CONTINUATION, fin=last)
            if not last and draw(st.booleans()):
                wire += frame(
                    draw(st.binary(max_size=125)), draw(st.sampled_from([OP_PING, OP_PONG]))
                )
    if draw(st.booleans()):
        wire += frame(struct.pack("!H", 1000), OP_CLOSE)
    return Conversation(bytes(wire), bytes(data))


@st.composite
def bent(draw: st.DrawFn) -> bytes:
    if draw(st.booleans()):
        return draw(st.binary(max_size=2000))
    wire = bytearray(draw(conversation()).wire)
    for _ in range(draw(st.integers(1, 4))):
        choice = draw(st.integers(0, 3))
        if choice == 0 and wire:
            wire[draw(st.integers(0, len(wire) - 1))] = draw(st.integers(0, 255))
        elif choice == 1:
            wire += frame(
                draw(st.binary(max_size=200)),
                draw(st.integers(0, 15)),
                fin=draw(st.booleans()),
                rsv=draw(st.integers(0, 7)),
                masked=draw(st.booleans()),
            )
        elif choice == 2:  # a length that promises more than ever comes
            wire += struct.pack("!BBQ", 0x82, 127, draw(st.integers(0, (1 << 64) - 1)))
        else:
            wire = wire[: draw(st.integers(0, len(wire)))]
    return bytes(wire)


def read_to_end(wire: bytes, cuts: list[int]) -> bytes:
    """Serve wire in pieces from the far end, then close; what Stream hands out."""
    ours, server = socket.socketpair()
    ours.settimeout(ENDS_WITHIN)
    stream = Stream(ours, TARGET)

    def serve() -> None:
        points = sorted({c % (len(wire) + 1) for c in cuts} | {0, len(wire)})
        # Bent frames may make the stream close first: the server meets a reset.
        with server, contextlib.suppress(BrokenPipeError, ConnectionResetError):
            for a, b in itertools.pairwise(points):
                server.sendall(wire[a:b])
            server.shutdown(socket.SHUT_WR)
            while server.recv(65536):  # pongs and close frames from the stream
                pass

    feeder = threading.Thread(target=serve, daemon=True)
    feeder.start()
    received = bytearray()
    try:
        while chunk := stream.recv(65536):
            received += chunk
    finally:
        stream.close()
    feeder.join(ENDS_WITHIN)
    assert not feeder.is_alive(), "the stream never closed its side"
    return bytes(received)


@FUZZ
@given(talk=conversation(), cuts=st.lists(st.integers(0, 5000), max_size=6))
def test_well_formed_frames_hand_out_exactly_the_data(talk: Conversation, cuts: list[int]) -> None:
    assert read_to_end(talk.wire, cuts) == talk.data


@FUZZ
@given(wire=bent(), cuts=st.lists(st.integers(0, 5000), max_size=6))
def test_any_frames_end_in_an_end_of_stream(wire: bytes, cuts: list[int]) -> None:
    read_to_end(wire, cuts)
