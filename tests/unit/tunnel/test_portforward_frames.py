"""The port-forward's FrameReader, the pure core under Stream: server frames in,
actions out, scripted with the Playbook."""

from __future__ import annotations

import struct

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
