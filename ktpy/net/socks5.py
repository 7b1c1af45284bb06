"""The SOCKS5 server handshake (RFC 1928) as a pure state machine: bytes and
events in, actions out (the vocabulary of ktpy.sansio).

Scope, and why: no authentication (method 0x00; the proxy listens on
loopback only), CONNECT only (UDP other than DNS is not carried, BIND has no
use here), addresses IPv4, IPv6 or a domain name; a domain name is passed on
as it is, to be resolved on the cluster side (what ``curl --socks5-hostname``
relies on).

The I/O wrapper feeds client bytes to ``receive`` and carries out the
actions it gets back, in order:

- ``Send(data)``: write to the client;
- ``OpenFlow(host, port)``: open the flow (an SSH direct-tcpip channel),
  then ``handle`` ``FlowOpened`` or ``FlowOpenFailed(code)``;
- ``StartRelay(early_data)``: from now on copy bytes both ways, starting with
  ``early_data`` (what the client sent before the reply, if anything);
- ``Close(reason)``: close the client connection.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass
from enum import Enum, IntEnum
from typing import assert_never

from ktpy.sansio import Action, Event

VERSION = 5
NO_AUTHENTICATION = 0x00
NO_ACCEPTABLE_METHODS = 0xFF
CMD_CONNECT = 0x01


class AddressType(IntEnum):
    IPV4 = 0x01
    DOMAIN = 0x03
    IPV6 = 0x04


class ReplyCode(IntEnum):
    SUCCEEDED = 0x00
    GENERAL_FAILURE = 0x01
    NOT_ALLOWED = 0x02
    NETWORK_UNREACHABLE = 0x03
    HOST_UNREACHABLE = 0x04
    CONNECTION_REFUSED = 0x05
    TTL_EXPIRED = 0x06
    COMMAND_NOT_SUPPORTED = 0x07
    ADDRESS_TYPE_NOT_SUPPORTED = 0x08


@dataclass(frozen=True, slots=True)
class Send(Action):
    """Write to the client."""

    data: bytes


@dataclass(frozen=True, slots=True)
class OpenFlow(Action):
    """Open the flow to the target, then handle FlowOpened or FlowOpenFailed."""

    host: str
    port: int
    address_type: AddressType


@dataclass(frozen=True, slots=True)
class StartRelay(Action):
    """Copy bytes both ways from now on, starting with early_data for the flow."""

    early_data: bytes


@dataclass(frozen=True, slots=True)
class Close(Action):
    """Close the client connection."""

    reason: str


SocksAction = Send | OpenFlow | StartRelay | Close


@dataclass(frozen=True, slots=True)
class FlowOpened(Event):
    """The flow is open; the reply names the address it is bound to."""

    bound_host: str = "0.0.0.0"  # noqa: S104
    bound_port: int = 0


@dataclass(frozen=True, slots=True)
class FlowOpenFailed(Event):
    code: ReplyCode


SocksEvent = FlowOpened | FlowOpenFailed


class State(Enum):
    GREETING = "greeting"
    REQUEST = "request"
    CONNECTING = "connecting"
    RELAYING = "relaying"
    CLOSED = "closed"


def reply(code: ReplyCode, host: str = "0.0.0.0", port: int = 0) -> bytes:  # noqa: S104
    """A reply with the bound address (an IP; failures carry 0.0.0.0:0)."""
    address = ipaddress.ip_address(host)
    address_type = AddressType.IPV4 if address.version == 4 else AddressType.IPV6
    return bytes([VERSION, code, 0x00, address_type]) + address.packed + struct.pack("!H", port)


class Socks5Handshake:
    """One client connection's handshake, from greeting to relay (or refusal)."""

    def __init__(self) -> None:
        self.state = State.GREETING
        self._buffer = bytearray()
        self.target: OpenFlow | None = None

    def receive(self, data: bytes) -> list[SocksAction]:
        """Bytes from the client, until the relay starts."""
        if self.state in (State.RELAYING, State.CLOSED):
            raise RuntimeError(f"no handshake data expected in state {self.state.value}")
        self._buffer += data
        actions: list[SocksAction] = []
        while True:
            if self.state is State.GREETING:
                step = self._greeting()
            elif self.state is State.REQUEST:
                step = self._request()
            else:
                # CONNECTING: bytes sent ahead of our reply wait for the relay.
                return actions
            if step is None:
                return actions
            actions += step
            if any(isinstance(action, Close) for action in step):
                return actions

    def handle(self, event: SocksEvent) -> list[SocksAction]:
        """The outcome of OpenFlow."""
        self._expect(State.CONNECTING)
        match event:
            case FlowOpened(bound_host, bound_port):
                self.state = State.RELAYING
                early = bytes(self._buffer)
                self._buffer.clear()
                return [Send(reply(ReplyCode.SUCCEEDED, bound_host, bound_port)), StartRelay(early)]
            case FlowOpenFailed(code):
                if code is ReplyCode.SUCCEEDED:
                    raise ValueError("a failure needs a failure code")
                return self._refuse(code, f"connect to target failed: {code.name.lower()}")
            case _:
                assert_never(event)

    def _expect(self, state: State) -> None:
        if self.state is not state:
            raise RuntimeError(f"expected state {state.value}, in {self.state.value}")

    def _refuse(self, code: ReplyCode, reason: str) -> list[SocksAction]:
        self.state = State.CLOSED
        self._buffer.clear()
        return [Send(reply(code)), Close(reason)]

    def _close(self, reason: str) -> list[SocksAction]:
        self.state = State.CLOSED
        self._buffer.clear()
        return [Close(reason)]

    def _greeting(self) -> list[SocksAction] | None:
        buffer = self._buffer
        if not buffer:
            return None
        if buffer[0] != VERSION:
            what = "SOCKS4" if buffer[0] == 4 else f"version {buffer[0]}"
            return self._close(f"not a SOCKS5 client ({what})")
        if len(buffer) < 2:
            return None
        count = buffer[1]
        if len(buffer) < 2 + count:
            return None
        methods = bytes(buffer[2 : 2 + count])
        del buffer[: 2 + count]
        if NO_AUTHENTICATION not in methods:
            self.state = State.CLOSED
            buffer.clear()
            return [
                Send(bytes([VERSION, NO_ACCEPTABLE_METHODS])),
                Close("client offers no method without authentication"),
            ]
        self.state = State.REQUEST
        return [Send(bytes([VERSION, NO_AUTHENTICATION]))]

    def _request(self) -> list[SocksAction] | None:
        buffer = self._buffer
        if len(buffer) < 4:
            return None
        version, command, _reserved, address_type = buffer[:4]
        if version != VERSION:
            return self._refuse(ReplyCode.GENERAL_FAILURE, f"request version {version}")
        if address_type == AddressType.IPV4:
            length = 4
            start = 4
        elif address_type == AddressType.IPV6:
            length = 16
            start = 4
        elif address_type == AddressType.DOMAIN:
            if len(buffer) < 5:
                return None
            length = buffer[4]
            start = 5
        else:
            return self._refuse(
                ReplyCode.ADDRESS_TYPE_NOT_SUPPORTED, f"address type {address_type}"
            )
        end = start + length + 2
        if len(buffer) < end:
            return None
        raw_address = bytes(buffer[start : start + length])
        (port,) = struct.unpack("!H", buffer[start + length : end])
        del buffer[:end]
        if command != CMD_CONNECT:
            return self._refuse(ReplyCode.COMMAND_NOT_SUPPORTED, f"command {command}")
        if address_type == AddressType.DOMAIN:
            host = _domain(raw_address)
            if host is None:
                return self._refuse(ReplyCode.HOST_UNREACHABLE, "bad domain name")
        else:
            host = str(ipaddress.ip_address(raw_address))
        if port == 0:
            return self._refuse(ReplyCode.GENERAL_FAILURE, "port 0")
        self.state = State.CONNECTING
        self.target = OpenFlow(host, port, AddressType(address_type))
        return [self.target]


def _domain(raw: bytes) -> str | None:
    """The name as sent, if it is plain printable ASCII (IDNs arrive already punycoded)."""
    if not raw:
        return None
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError:
        return None
    if not all(33 <= ord(char) < 127 for char in text):
        return None
    return text
