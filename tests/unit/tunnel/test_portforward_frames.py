"""The port-forward's FrameReader, the pure core under Stream: server frames in,
actions out, scripted with the Playbook."""

from __future__ import annotations

import struct

import pytest

from ktpy.tunnel.portforward import (
    DATA_CHANNEL,
    ERROR_CHANNEL,
    OP_CLOSE,
    OP_PING,
    OP_PONG,
    Deliver,
    DeliverEnd,
    FrameReader,
    ReportError,
    Send,
    Violation,
)
from tests.unit.playbook import Playbook
from tests.unit.tunnel.test_portforward_stream import TARGET, port_announcements, server_frame

PORT = struct.pack("<H", TARGET.port)


def announced() -> Playbook:
    """A reader past both channels' port announcements (they deliver nothing)."""
    return Playbook(FrameReader()) >> port_announcements()


def test_the_port_announcement_is_not_data() -> None:
    assert (
        Playbook(FrameReader())
        >> server_frame(bytes([DATA_CHANNEL]) + PORT + b"hi")
        << Deliver(b"hi")
        >> server_frame(bytes([DATA_CHANNEL]) + PORT)
        << Deliver(PORT)  # only a channel's first frame announces
    )


def test_a_frame_is_delivered_in_the_pieces_it_arrives_in() -> None:
    frame = server_frame(bytes([DATA_CHANNEL]) + b"x" * 300)
    assert (
        announced()
        >> frame[:2]  # half a header: nothing yet
        >> frame[2:100]
        << Deliver(b"x" * 95)
        >> frame[100:]
        << Deliver(b"x" * 205)
    )


def test_several_frames_in_one_read() -> None:
    frames = server_frame(bytes([DATA_CHANNEL]) + b"a") + server_frame(bytes([DATA_CHANNEL]) + b"b")
    assert announced() >> frames << Deliver(b"a") << Deliver(b"b")


def test_the_error_channel_is_reported() -> None:
    assert (
        announced()
        >> server_frame(bytes([ERROR_CHANNEL]) + b"connection refused")
        << ReportError("connection refused")
    )


def test_a_ping_is_answered_and_a_close_ends_the_data() -> None:
    assert (
        announced()
        >> server_frame(b"are you there", OP_PING)
        << Send(b"are you there", OP_PONG)
        >> server_frame(struct.pack("!H", 1000), OP_CLOSE)
        << DeliverEnd()
    )


def test_other_channels_and_pongs_are_dropped() -> None:
    assert announced() >> server_frame(bytes([2]) + PORT + b"?") >> server_frame(b"", OP_PONG)


# --- RFC 6455: fragments, and frames a server must not send ---------------------------


def fragment(payload: bytes, opcode: int, *, fin: bool) -> bytes:
    """A server frame with FIN as given (payloads here stay under 126 bytes)."""
    return struct.pack("!BB", (0x80 if fin else 0) | opcode, len(payload)) + payload


def test_a_fragmented_message_is_one_channel_with_pings_between_its_fragments() -> None:
    assert (
        announced()
        >> fragment(bytes([DATA_CHANNEL]) + b"one ", 0x2, fin=False)
        << Deliver(b"one ")
        >> server_frame(b"ping 1", OP_PING)
        << Send(b"ping 1", OP_PONG)
        >> fragment(b"two ", 0x0, fin=False)  # still the data channel: no channel byte
        << Deliver(b"two ")
        >> server_frame(b"", OP_PONG)  # an unasked pong between fragments: dropped
        >> fragment(b"three", 0x0, fin=True)
        << Deliver(b"three")
        >> server_frame(bytes([DATA_CHANNEL]) + b"next")  # a new message: channel byte again
        << Deliver(b"next")
    )


def test_fragments_of_the_error_channel_are_reported_as_such() -> None:
    assert (
        announced()
        >> fragment(bytes([ERROR_CHANNEL]) + b"connection ", 0x2, fin=False)
        << ReportError("connection ")
        >> server_frame(b"", OP_PING)
        << Send(b"", OP_PONG)
        >> fragment(b"refused", 0x0, fin=True)
        << ReportError("refused")
    )


def test_a_control_frame_split_across_reads_mid_message_is_answered_whole() -> None:
    ping = server_frame(b"abc", OP_PING)
    assert (
        announced()
        >> fragment(bytes([DATA_CHANNEL]) + b"a", 0x2, fin=False) + ping[:3]
        << Deliver(b"a")
        >> ping[3:] + fragment(b"b", 0x0, fin=True)
        << Send(b"abc", OP_PONG)
        << Deliver(b"b")
    )


def violation(reason: str) -> list[object]:
    """What the reader emits on a violation: a close frame with 1002 and its reason."""
    return [Send(struct.pack("!H", 1002) + reason.encode(), OP_CLOSE), Violation(reason)]


RSV = "the server set RSV bits ({}) no extension allows"


@pytest.mark.parametrize(
    ("frame", "reason"),
    [
        # the mask bit set, with its 4-byte key
        (struct.pack("!BB", 0x82, 0x83) + bytes(4) + b"\0ab", "the server sent a masked frame"),
        (struct.pack("!BB", 0x80 | 0x40 | 0x2, 2) + b"\0a", RSV.format("0b100")),
        (struct.pack("!BB", 0x80 | 0x10 | 0x9, 0), RSV.format("0b001")),
        (struct.pack("!BB", 0x83, 0), "unknown opcode 0x3"),
        (struct.pack("!BB", 0x8B, 0), "unknown opcode 0xb"),
        (server_frame(b"x" * 126, OP_PING), "control frame of 126 bytes (at most 125)"),
        (struct.pack("!BB", 0x09, 1) + b"x", "fragmented control frame"),
        (struct.pack("!BB", 0x80, 1) + b"x", "a continuation frame outside a message"),
    ],
)  # fmt: skip
def test_a_frame_a_server_must_not_send_ends_the_stream(frame: bytes, reason: str) -> None:
    playbook = announced() >> frame
    for action in violation(reason):
        playbook = playbook << action
    assert playbook
    # Nothing after a violation is read: not even good frames.
    assert playbook >> server_frame(bytes([DATA_CHANNEL]) + b"late")


def test_a_new_message_inside_a_fragmented_one_is_a_violation() -> None:
    reason = "a new message began before the last one's final fragment"
    playbook = (
        announced()
        >> fragment(bytes([DATA_CHANNEL]) + b"a", 0x2, fin=False)
        << Deliver(b"a")
        >> server_frame(bytes([DATA_CHANNEL]) + b"b")
    )
    for action in violation(reason):
        playbook = playbook << action
    assert playbook


def test_a_violation_after_good_bytes_in_the_same_read_delivers_them_first() -> None:
    reason = "unknown opcode 0x3"
    playbook = (
        announced()
        >> server_frame(bytes([DATA_CHANNEL]) + b"ok") + struct.pack("!BB", 0x83, 0)
        << Deliver(b"ok")
    )
    for action in violation(reason):
        playbook = playbook << action
    assert playbook
