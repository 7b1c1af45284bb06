"""The protocol cores speak one vocabulary (ktpy.sansio): every event a core
handles derives from Event, every action it returns from Action, and each is
named in sansio's table."""

from __future__ import annotations

import types
import typing
from collections.abc import Callable
from typing import Any

import pytest

import ktpy.sansio
from ktpy.net.dns import DnsCore
from ktpy.net.socks5 import Socks5Handshake
from ktpy.net.tcp import TcpStack
from ktpy.sansio import Action, Event
from ktpy.tunnel.portforward import FrameReader

# Every entry point of every core: bytes in (receive), events in (handle), and
# the TCP stack's own rhythm.
ENTRY_POINTS: list[Callable[..., Any]] = [
    TcpStack.receive,
    TcpStack.handle,
    TcpStack.flush,
    TcpStack.expire,
    TcpStack.abort_all,
    Socks5Handshake.receive,
    Socks5Handshake.handle,
    DnsCore.receive,
    DnsCore.handle,
    FrameReader.receive,
]


def members(hint: Any) -> tuple[type, ...]:
    """The classes of a union (or the one class)."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        return typing.get_args(hint)
    return (hint,)


def actions_of(entry: Callable[..., Any]) -> tuple[type, ...]:
    returned = typing.get_type_hints(entry)["return"]
    assert typing.get_origin(returned) is list, f"{entry.__qualname__} returns {returned}"
    (item,) = typing.get_args(returned)
    return members(item)


def events_of(entry: Callable[..., Any]) -> tuple[type, ...]:
    hints = typing.get_type_hints(entry)
    return members(hints["event"]) if "event" in hints else ()


def named(entry: Callable[..., Any]) -> str:
    return entry.__qualname__


@pytest.mark.parametrize("entry", ENTRY_POINTS, ids=named)
def test_every_action_derives_from_action(entry: Callable[..., Any]) -> None:
    for kind in actions_of(entry):
        assert issubclass(kind, Action), f"{entry.__qualname__} returns {kind.__name__}"


@pytest.mark.parametrize("entry", [e for e in ENTRY_POINTS if e.__name__ == "handle"], ids=named)
def test_every_event_derives_from_event(entry: Callable[..., Any]) -> None:
    kinds = events_of(entry)
    assert kinds
    for kind in kinds:
        assert issubclass(kind, Event), f"{entry.__qualname__} takes {kind.__name__}"


def test_every_core_takes_bytes_through_receive() -> None:
    for entry in ENTRY_POINTS:
        if entry.__name__ == "receive":
            first = next(iter(typing.get_type_hints(entry).values()))
            assert bytes in members(first), entry.__qualname__


def test_the_vocabulary_table_names_every_event_and_action() -> None:
    table = ktpy.sansio.__doc__ or ""
    for entry in ENTRY_POINTS:
        for kind in actions_of(entry) + events_of(entry):
            assert f"``{kind.__name__}``" in table, f"{kind.__name__} is not in sansio's table"
