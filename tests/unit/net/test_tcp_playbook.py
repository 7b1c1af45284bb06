"""The Playbook (tests/unit/playbook.py) extended for the TUN stack's TCP
(ktpy.net.tcp), and tests of the Playbook itself.

    pb = TcpPlaybook(TcpStack(config, isn=lambda: SERVER_ISN))
    client = pb.client()
    pb >> client.syn() << OpenFlow(1, TARGET, 80, ...) >> FlowOpened(1) << Seg("S.", seq=0, ack=1)

``>>`` feeds an input: a packet from the client (bytes, read from the TUN
device, followed by ``flush`` as the I/O wrapper does after each read batch),
a ``Batch`` of packets, an app-side event (``FlowOpened``, ``FlowData``...),
``Tick`` (time passes, timers fire) or ``AbortAll``. ``<<`` states the next
action the stack must emit: an action itself (``Deliver``, ``OpenFlow``,
``CloseFlow``...) or a ``Seg``/``Icmp`` matcher for a sent packet. The script
runs as it is written; an action not expected before the next input, or left
over at the end (``assert pb``), fails.

Sequence numbers in ``Seg`` are relative, like tcpdump's: ``seq`` counts from
the stack's ISN, ``ack`` from the client's. The scripted ``Client`` sees every
matched segment (unless ``lost=True``) and acks what arrived in order.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from ktpy.net import ip
from ktpy.net.ip import ACK, FIN, PSH, RST, SYN
from ktpy.net.tcp import (
    MASK,
    FlowOpened,
    OpenFlow,
    Send,
    TcpAction,
    TcpConfig,
    TcpEvent,
    TcpStack,
    describe,
)
from tests.unit.playbook import Playbook

SERVER_ISN = 1_000_000
CLIENT_ISN = 5_000
CLIENT = "198.18.0.1"
TARGET = "10.96.0.10"

_FLAGS = {"S": SYN, "F": FIN, "R": RST, "P": PSH, ".": ACK}


def flags_of(text: str) -> int:
    value = 0
    for letter in text:
        value |= _FLAGS[letter]
    return value


# -- inputs ------------------------------------------------------------------


@dataclass(frozen=True)
class Batch:
    packets: tuple[bytes, ...]

    def __init__(self, *packets: bytes) -> None:
        object.__setattr__(self, "packets", packets)


@dataclass(frozen=True)
class Tick:
    """Let time pass (seconds), then fire due timers."""

    seconds: float


@dataclass(frozen=True)
class AbortAll:
    reason: str = "stopping"


# -- matchers for transmitted packets ------------------------------------------------


@dataclass(frozen=True)
class Seg:
    """A TCP segment the stack must transmit; None means any value."""

    flags: str
    seq: int | None = None  # relative to the stack's ISN
    abs_seq: int | None = None  # as on the wire (a reset to a SYN has seq 0)
    ack: int | None = None  # relative to the client's ISN
    window: int | None = None  # as on the wire
    payload: bytes | None = None
    mss: int | None = None
    wscale: int | None = None
    sack_permitted: bool | None = None
    sack: tuple[tuple[int, int], ...] | None = None  # relative to the client's ISN
    gso: int | None = None  # the Send's GSO size (offloads)
    to: Client | None = field(default=None, repr=False)  # which client; any if None
    lost: bool = False  # the client never sees it

    def __repr__(self) -> str:
        shown = {k: v for k, v in vars(self).items() if v is not None and k != "to"}
        if isinstance(self.payload, bytes) and len(self.payload) > 16:
            shown["payload"] = f"{len(self.payload)} bytes"
        return f"Seg({', '.join(f'{k}={v!r}' for k, v in shown.items())})"

    def mismatch(self, segment: ip.TcpSegment, server_isn: int, client_isn: int) -> str | None:
        got: dict[str, Any] = {
            "flags": segment.flag_names(),
            "seq": (segment.seq - server_isn) & MASK,
            "abs_seq": segment.seq,
            "ack": (segment.ack - client_isn) & MASK,
            "window": segment.window,
            "payload": segment.payload,
            "mss": segment.options.mss,
            "wscale": segment.options.wscale,
            "sack_permitted": segment.options.sack_permitted,
            "sack": tuple(
                ((a - client_isn) & MASK, (b - client_isn) & MASK) for a, b in segment.options.sack
            ),
        }
        want: dict[str, Any] = {
            "flags": "".join(sorted(self.flags)),
            "seq": self.seq,
            "abs_seq": self.abs_seq,
            "ack": self.ack,
            "window": self.window,
            "payload": self.payload,
            "mss": self.mss,
            "wscale": self.wscale,
            "sack_permitted": self.sack_permitted,
            "sack": self.sack,
        }
        got["flags"] = "".join(sorted(got["flags"]))
        if self.to is not None and (segment.dport, segment.src) != (
            self.to.sport,
            ip.ip_bytes(self.to.dst),
        ):
            return f"sent to port {segment.dport}, not {self.to.sport}"
        if "." not in self.flags:  # without ACK the ack field means nothing
            want["ack"] = None
        wrong = [
            f"{k}={got[k]!r} (want {v!r})" for k, v in want.items() if v is not None and got[k] != v
        ]
        return ", ".join(wrong) or None


@dataclass(frozen=True)
class Icmp:
    code: int
    quotes_port: int | None = None  # the client port in the quoted TCP header


# -- the scripted client (the kernel side) ------------------------------------------


@dataclass
class Client:
    src: str = CLIENT
    sport: int = 40000
    dst: str = TARGET
    dport: int = 80
    isn: int = CLIENT_ISN
    server_isn: int = SERVER_ISN
    window: int = 65535
    wscale: int | None = 7
    mss: int | None = 1460
    sack: bool = True
    seq: int = field(init=False)
    rcv_nxt: int = field(init=False)  # the next byte expected from the stack
    received: bytearray = field(default_factory=bytearray)

    def __post_init__(self) -> None:
        self.seq = self.isn
        self.rcv_nxt = self.server_isn

    def packet(
        self,
        flags: int,
        seq: int | None = None,
        ack: int | None = None,
        payload: bytes = b"",
        window: int | None = None,
        options: bytes = b"",
    ) -> bytes:
        """A packet from the client; seq and ack are relative, like Seg's."""
        return ip.build_tcp(
            ip.ip_bytes(self.src),
            ip.ip_bytes(self.dst),
            self.sport,
            self.dport,
            self.seq if seq is None else (self.isn + seq) & MASK,
            self.rcv_nxt if ack is None else (self.server_isn + ack) & MASK,
            flags,
            self.window if window is None else window,
            payload,
            options,
        )

    def syn(self) -> bytes:
        options = ip.encode_options(mss=self.mss, wscale=self.wscale, sack_permitted=self.sack)
        pkt = self.packet(
            SYN, seq=0, ack=0, window=min(self.window << (self.wscale or 0), 65535), options=options
        )
        self.seq = (self.isn + 1) & MASK
        return pkt

    def ack(self, ack: int | None = None, window: int | None = None) -> bytes:
        return self.packet(ACK, ack=ack, window=window)

    def send(
        self, data: bytes, seq: int | None = None, flags: int = ACK | PSH, window: int | None = None
    ) -> bytes:
        """Data; advances the client's seq unless seq (relative) is given."""
        pkt = self.packet(flags, seq=seq, payload=data, window=window)
        if seq is None:
            self.seq = (self.seq + len(data)) & MASK
        return pkt

    def fin(self, data: bytes = b"", ack: int | None = None) -> bytes:
        pkt = self.packet(FIN | ACK, payload=data, ack=ack)
        self.seq = (self.seq + len(data) + 1) & MASK
        return pkt

    def rst(self, seq: int | None = None, ack: bool = True) -> bytes:
        return self.packet(RST | ACK if ack else RST, seq=seq)

    def sees(self, segment: ip.TcpSegment) -> None:
        """The client's kernel receives a segment: in-order bytes move rcv_nxt."""
        if segment.flags & RST:
            return
        if segment.flags & SYN:
            self.rcv_nxt = (segment.seq + 1) & MASK
            return
        if segment.seq == self.rcv_nxt:
            self.received += segment.payload
            self.rcv_nxt = (
                self.rcv_nxt + len(segment.payload) + (1 if segment.flags & FIN else 0)
            ) & MASK

    def connect(self, conn: int) -> OpenFlow:
        return OpenFlow(conn, self.dst, self.dport, f"{self.src}:{self.sport}")


# -- the playbook -------------------------------------------------------------------


Input = bytes | Batch | TcpEvent | Tick | AbortAll
Expected = TcpAction | Seg | Icmp


class TcpPlaybook(Playbook):
    def __init__(self, stack: TcpStack | None = None, now: float = 100.0) -> None:
        if stack is None:
            stack = TcpStack(TcpConfig(mtu=1500), isn=lambda: SERVER_ISN)
        super().__init__(stack, now=now)
        self.clients: list[Client] = []

    @property
    def stack(self) -> TcpStack:
        stack: TcpStack = self.core
        return stack

    def client(self, **kw: Any) -> Client:
        c = Client(server_isn=kw.pop("server_isn", self.stack.isn()), **kw)
        self.clients.append(c)
        return c

    def run(self, item: Input) -> list[Any]:
        s, now = self.stack, self.now
        assert now is not None
        if isinstance(item, bytes):
            return s.receive(item, now) + s.flush(now)
        if isinstance(item, Batch):
            out: list[TcpAction] = []
            for packet in item.packets:
                out += s.receive(packet, now)
            return out + s.flush(now)
        if isinstance(item, Tick):
            self.now = now + item.seconds
            return s.expire(self.now)
        if isinstance(item, AbortAll):
            return s.abort_all(item.reason)
        return s.handle(item, now)

    def show(self, item: Any) -> str:
        return describe(item) if isinstance(item, bytes) else repr(item)

    def mismatch(self, expected: Any, actual: Any) -> str | None:
        if isinstance(expected, Seg):
            if not isinstance(actual, Send):
                return "not a packet"
            try:
                # With offloads the kernel finishes our checksums: nothing to check yet.
                segment = ip.parse_tcp_packet(actual.wire, not self.stack.config.offload)
            except ip.PacketError as exc:
                return f"not a valid TCP packet: {exc}"
            if expected.gso is not None and actual.gso != expected.gso:
                return f"gso={actual.gso} (want {expected.gso})"
            owner = self._owner(segment, expected.to)
            problem = expected.mismatch(
                segment,
                owner.server_isn if owner else SERVER_ISN,
                owner.isn if owner else CLIENT_ISN,
            )
            if problem is None and owner and not expected.lost:
                owner.sees(segment)
            return problem
        if isinstance(expected, Icmp):
            if not isinstance(actual, Send):
                return "not a packet"
            pkt = ip.parse_ipv4(actual.wire)
            kind, code, quoted = ip.parse_icmp(pkt)
            if (kind, code) != (ip.ICMP_UNREACHABLE, expected.code):
                return f"ICMP type {kind} code {code}"
            port = int.from_bytes(quoted[20:22], "big")
            if expected.quotes_port is not None and port != expected.quotes_port:
                return f"quotes port {port}"
            return None
        return super().mismatch(expected, actual)

    def _owner(self, segment: ip.TcpSegment, hint: Client | None) -> Client | None:
        if hint is not None:
            return hint
        for c in self.clients:
            if segment.dport == c.sport and segment.dst == ip.ip_bytes(c.src):
                return c
        return None


def handshake(pb: TcpPlaybook, client: Client, conn: int) -> TcpPlaybook:
    """SYN, open the app flow, SYN-ACK, ACK: the flow is established."""
    return (
        pb
        >> client.syn()
        << client.connect(conn)
        >> FlowOpened(conn)
        << Seg("S.", seq=0, ack=1, to=client)
        >> client.ack()
    )


# -- the playbook's own tests ----------------------------------------------------------


def test_a_met_expectation_passes() -> None:
    pb = TcpPlaybook()
    c = pb.client()
    assert handshake(pb, c, 1)


def test_a_wrong_expectation_fails_with_a_transcript() -> None:
    pb = TcpPlaybook()
    c = pb.client()
    with pytest.raises(AssertionError, match=r"(?s)>> .*S\].*!! emitted instead"):
        pb >> c.syn() << Seg("S.")  # the stack asks for the app flow first


def test_a_left_over_action_fails() -> None:
    pb = TcpPlaybook()
    c = pb.client()
    pb >> c.syn()
    with pytest.raises(AssertionError, match="left over"):
        assert pb


def test_an_unexpected_action_fails_at_the_next_input() -> None:
    pb = TcpPlaybook()
    c = pb.client()
    with pytest.raises(AssertionError, match="unexpected, before the next input"):
        pb >> c.syn() >> FlowOpened(1)


def test_seg_checks_each_given_field() -> None:
    pb = TcpPlaybook()
    c = pb.client()
    pb >> c.syn() << c.connect(1) >> FlowOpened(1)
    with pytest.raises(AssertionError, match="ack=1 \\(want 2\\)"):
        pb << Seg("S.", seq=0, ack=2)
