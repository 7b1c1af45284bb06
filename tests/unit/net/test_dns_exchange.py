"""DNS over a Flow (TcpExchange) with scripted flows, and nameserver specs."""

from __future__ import annotations

import struct

import pytest
from dnslib import DNSRecord

from ktpy.net.dns_server import DnsExchangeError, parse_nameserver, tcp_exchange_over


def framed(wire: bytes) -> bytes:
    return struct.pack("!H", len(wire)) + wire


class ScriptedFlow:
    """Answers each framed query with what ``answer`` says; records all."""

    def __init__(self, answer: object = "echo-reply", *, fail_after: int | None = None) -> None:
        self.answer = answer
        self.fail_after = fail_after
        self.sent: list[bytes] = []
        self.inbox = b""
        self.closed = False
        self.timeout: float | None = None

    def settimeout(self, timeout: float) -> None:
        self.timeout = timeout

    def sendall(self, data: bytes, /) -> None:
        if self.closed:
            raise OSError("closed")
        query = data[2:]
        self.sent.append(query)
        if self.fail_after is not None and len(self.sent) > self.fail_after:
            return  # the peer went away: recv sees EOF
        if self.answer == "echo-reply":
            reply = DNSRecord.parse(query).reply().pack()
        elif self.answer == "wrong-id":
            record = DNSRecord.parse(query).reply()
            record.header.id ^= 1
            reply = record.pack()
        else:
            raise AssertionError(self.answer)
        self.inbox += framed(reply)

    def recv(self, size: int, /) -> bytes:
        # One byte at a time: framing must not assume whole messages.
        chunk, self.inbox = self.inbox[:1], self.inbox[1:]
        return chunk

    def shutdown_write(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True


class Opener:
    def __init__(self, *flows: ScriptedFlow | Exception) -> None:
        self.flows = list(flows)
        self.calls: list[tuple[str, int]] = []

    def __call__(self, host: str, port: int) -> ScriptedFlow:
        self.calls.append((host, port))
        flow = self.flows.pop(0)
        if isinstance(flow, Exception):
            raise flow
        return flow


def q(name: str) -> bytes:
    wire: bytes = DNSRecord.question(name).pack()
    return wire


def test_one_flow_carries_many_queries() -> None:
    flow = ScriptedFlow()
    opener = Opener(flow)
    exchange = tcp_exchange_over(opener, "127.0.0.1", 5353, timeout=3.0)
    for name in ("a.example.", "b.example.", "c.example."):
        reply = DNSRecord.parse(exchange(q(name)))
        assert str(reply.q.qname) == name
    assert opener.calls == [("127.0.0.1", 5353)]
    assert len(flow.sent) == 3
    assert flow.timeout == 3.0
    exchange.close()
    assert flow.closed


def test_broken_reused_flow_is_replaced_and_the_query_asked_again() -> None:
    first, second = ScriptedFlow(fail_after=1), ScriptedFlow()
    opener = Opener(first, second)
    exchange = tcp_exchange_over(opener, "127.0.0.1", 5353)
    exchange(q("a.example."))
    reply = DNSRecord.parse(exchange(q("b.example.")))
    assert str(reply.q.qname) == "b.example."
    assert first.closed
    assert len(opener.calls) == 2
    assert exchange.connections == 2


def test_a_fresh_flow_that_fails_raises() -> None:
    exchange = tcp_exchange_over(Opener(ScriptedFlow(fail_after=0)), "127.0.0.1", 5353)
    with pytest.raises(EOFError):
        exchange(q("a.example."))


def test_open_failure_raises_and_the_next_query_opens_again() -> None:
    opener = Opener(ConnectionRefusedError("refused"), ScriptedFlow())
    exchange = tcp_exchange_over(opener, "127.0.0.1", 5353)
    with pytest.raises(ConnectionRefusedError):
        exchange(q("a.example."))
    assert DNSRecord.parse(exchange(q("a.example."))).header.qr == 1


def test_reply_with_another_id_is_refused_and_the_flow_dropped() -> None:
    flow = ScriptedFlow("wrong-id")
    exchange = tcp_exchange_over(Opener(flow), "127.0.0.1", 5353)
    with pytest.raises(DnsExchangeError):
        exchange(q("a.example."))
    assert flow.closed


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("192.0.2.1", ("192.0.2.1", 53)),
        ("192.0.2.1:5353", ("192.0.2.1", 5353)),
        ("fd00::1", ("fd00::1", 53)),
        ("[fd00::1]:5353", ("fd00::1", 5353)),
        ("[fd00::1]", ("fd00::1", 53)),
        (("127.0.0.53", 53), ("127.0.0.53", 53)),
    ],
)
def test_parse_nameserver(spec: str | tuple[str, int], expected: tuple[str, int]) -> None:
    assert parse_nameserver(spec) == expected


@pytest.mark.parametrize("spec", ["dns.example", "192.0.2.1:x", ""])
def test_parse_nameserver_refuses_names(spec: str) -> None:
    with pytest.raises(ValueError, match=r"does not appear to be an IP|invalid literal"):
        parse_nameserver(spec)
