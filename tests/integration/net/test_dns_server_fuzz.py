"""DNS messages into the real DnsServer, drawn by hypothesis: queries for
cluster names, public names, reverse names and junk, with any type, flags,
counts and EDNS, bent or cut, over UDP and TCP; and, the other way, answers
from the cluster's DNS (over the TCP exchange ktpy uses through the tunnel)
and from the laptop's own resolver that are bent, cut, mismatched or junk.

The server runs as in production: its select loop, its worker pools, its TCP
clients. Nothing is caught by the harness; the server's own last-resort
handlers log an error with a traceback when something raises, and any such
line fails the example. After each example a fresh public name must still be
answered (the loop did not wedge); after the run a cluster name too."""

from __future__ import annotations

import contextlib
import ipaddress
import itertools
import socket
import struct
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import structlog
from dnslib import QTYPE, RR, A, DNSHeader, DNSQuestion, DNSRecord
from hypothesis import given
from hypothesis import strategies as st

from ktpy.net.dns import ClusterNames
from ktpy.net.dns_server import DnsServer, tcp_exchange_over
from ktpy.net.relay import SocketFlow, recv_exact
from tests.integration.fuzzing import FUZZ

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

NAMES = ClusterNames(
    domain="cluster.local",
    namespace="default",
    namespaces=frozenset({"team", "dev"}),
    services=frozenset({"echo"}),
    cidrs=(ipaddress.ip_network("10.96.0.0/16"), ipaddress.ip_network("10.244.0.0/16")),
    search=("corp.example",),
)
CLUSTER_ANSWER = "10.96.7.7"
PUBLIC_ANSWER = "192.0.2.1"
PROBE_SUFFIX = "ktpy-fuzz.example"
_probes = itertools.count()


def valid_reply(query: bytes, address: str) -> bytes:
    record = DNSRecord.parse(query)
    reply = record.reply()
    if record.q.qtype == QTYPE.A:
        reply.add_answer(RR(record.q.qname, QTYPE.A, rdata=A(address), ttl=30))
    return bytes(reply.pack())


class Hostile:
    """How a responder answers the current example's questions; probe names
    always get a true answer, so the server's health can be asked."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.mode = "valid"
        self.bytes = b""
        self.edits: list[tuple[int, int]] = []

    def answer(self, query: bytes) -> bytes | None:
        try:
            if str(DNSRecord.parse(query).q.qname).rstrip(".").endswith(PROBE_SUFFIX):
                return valid_reply(query, self.address)
        except Exception:  # noqa: BLE001 - dnslib's parse errors; the query is what ktpy sent
            return self.bytes
        if self.mode == "silent":
            return None
        if self.mode == "raw":
            return self.bytes
        reply = bytearray(valid_reply(query, self.address))
        if self.mode == "wrong-id":
            reply[0] ^= 0xFF
        for offset, value in self.edits:
            if offset < len(reply):
                reply[offset] = value
        if self.mode == "cut":
            reply = reply[: len(self.bytes) % (len(reply) + 1)]
        return bytes(reply)


class Upstream:
    """The laptop's own resolver: UDP and TCP on one loopback port."""

    def __init__(self, hostile: Hostile) -> None:
        self.hostile = hostile
        self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.udp.bind(("127.0.0.1", 0))
        self.port: int = self.udp.getsockname()[1]
        self.tcp = socket.create_server(("127.0.0.1", self.port))
        threading.Thread(target=self._serve_udp, daemon=True).start()
        threading.Thread(target=serve_tcp, args=(self.tcp, hostile), daemon=True).start()

    def _serve_udp(self) -> None:
        while True:
            try:
                query, client = self.udp.recvfrom(65535)
            except OSError:
                return
            reply = self.hostile.answer(query)
            if reply is not None:
                with contextlib.suppress(OSError):
                    self.udp.sendto(reply, client)

    def close(self) -> None:
        self.udp.close()
        self.tcp.close()


def serve_tcp(listener: socket.socket, hostile: Hostile) -> None:
    """DNS over TCP (RFC 7766 framing), each connection on a thread."""

    def serve(conn: socket.socket) -> None:
        with conn, contextlib.suppress(OSError, EOFError):
            while True:
                (size,) = struct.unpack("!H", recv_exact(conn.recv, 2))
                reply = hostile.answer(recv_exact(conn.recv, size))
                if reply is None:
                    return  # silent: the asker's timeout is what ends it
                conn.sendall(struct.pack("!H", len(reply) & 0xFFFF) + reply)

    while True:
        try:
            conn, _ = listener.accept()
        except OSError:
            return
        threading.Thread(target=serve, args=(conn,), daemon=True).start()


class Harness:
    def __init__(self, lines: list[dict[str, Any]]) -> None:
        self.lines = lines  # what the server logs, from any thread
        self.cluster = Hostile(CLUSTER_ANSWER)
        self.public = Hostile(PUBLIC_ANSWER)
        self.upstream = Upstream(self.public)
        self.cluster_dns = socket.create_server(("127.0.0.1", 0))
        threading.Thread(
            target=serve_tcp, args=(self.cluster_dns, self.cluster), daemon=True
        ).start()
        port = self.cluster_dns.getsockname()[1]

        def open_flow(host: str, port: int) -> SocketFlow:
            return SocketFlow(socket.create_connection((host, port), timeout=2))

        # As connect wires it, with the tunnel's flow replaced by a loopback one.
        exchange = tcp_exchange_over(open_flow, "127.0.0.1", port, timeout=0.5)
        # Most fuzzed public names meet an upstream that never answers right and
        # hold an upstream worker for the whole timeout: with connect's 16 workers
        # the probes queued behind them (a third of the run's time). The probe
        # asks whether the server still answers, not how long its queue is.
        self.server = DnsServer(
            NAMES,
            exchange,
            [f"127.0.0.1:{self.upstream.port}"],
            port=0,
            upstream_timeout=0.5,
            upstream_workers=64,
        ).start()
        self.client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.client.settimeout(3)
        # Fuzzed queries go from a socket of their own: their answers, sane or
        # not, never reach the probes' socket. Nobody reads it; the kernel drops
        # what its buffer cannot hold.
        self.fuzzer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._ids = itertools.count(1)

    def ask(self, name: str) -> DNSRecord:
        """A query over UDP; its answer (other answers arriving meanwhile are skipped)."""
        query = DNSRecord.question(name, "A")
        query.header.id = next(self._ids) & 0xFFFF
        self.client.sendto(query.pack(), self.server.address)
        while True:
            reply = DNSRecord.parse(self.client.recv(65535))
            if reply.header.id == query.header.id:
                return reply

    def close(self) -> None:
        self.server.stop()
        self.upstream.close()
        self.cluster_dns.close()
        self.client.close()
        self.fuzzer.close()


@pytest.fixture(scope="module")
def harness() -> Iterator[Harness]:
    # The server's log lines are captured once for the module: capture_logs
    # reconfigures structlog, and entering and leaving it around each example
    # raced with worker threads logging meanwhile (a TypeError in the worker,
    # which the server then logged as a worker error: the harness's, not its own).
    with structlog.testing.capture_logs() as lines:
        made = Harness(lines)
        yield made
        made.close()


@contextlib.contextmanager
def errors_logged(harness: Harness) -> Iterator[list[dict[str, Any]]]:
    """The error lines (with tracebacks) the server logs meanwhile, from any thread."""
    start = len(harness.lines)
    errors: list[dict[str, Any]] = []
    yield errors
    errors.extend(
        line for line in harness.lines[start:] if line.get("log_level") in ("error", "critical")
    )


# -- what hypothesis draws ------------------------------------------------------------

NAME = st.one_of(
    st.sampled_from(
        [
            "echo",
            "echo.default",
            "echo.team",
            "echo.default.svc",
            "echo.default.svc.cluster.local",
            "web-0.nginx.team.svc.cluster.local",
            "7.7.96.10.in-addr.arpa",
            "team",
            "pkg.go.dev",
            "example.com",
            "a.b.c.d.e.f.g",
            ".",
            "x" * 63 + ".dev",
        ]
    ),
    st.lists(st.from_regex(r"[a-z0-9-]{1,20}", fullmatch=True), min_size=1, max_size=5).map(
        ".".join
    ),
)
QTYPES = st.sampled_from(["A", "AAAA", "PTR", "SRV", "TXT", "ANY", "MX", "CNAME", "NS", "SOA"])


@st.composite
def query(draw: st.DrawFn) -> bytes:
    if draw(st.integers(0, 4)) == 0:
        return draw(st.binary(max_size=600))
    # A header of our own: DNSRecord.question draws its id from `random`, which
    # hypothesis warns of on every example.
    record = DNSRecord(
        DNSHeader(id=draw(st.integers(0, 65535))),
        q=DNSQuestion(draw(NAME), getattr(QTYPE, draw(QTYPES))),
    )
    wire = bytearray(record.pack())
    wire[2] = draw(st.sampled_from([0x01, 0x01, 0x00, 0x81, 0x29, 0x7F]))  # QR, opcode, RD
    if draw(st.booleans()):  # counts that lie
        struct.pack_into("!HHHH", wire, 4, *(draw(st.integers(0, 3)) for _ in range(4)))
    if draw(st.booleans()):  # an EDNS OPT record, sane or not
        wire += b"\x00\x00\x29" + struct.pack("!HIH", draw(st.integers(0, 65535)), 0, 0)
        struct.pack_into("!H", wire, 10, 1)
    for offset, value in draw(
        st.lists(st.tuples(st.integers(0, 80), st.integers(0, 255)), max_size=3)
    ):
        if offset < len(wire):
            wire[offset] = value
    return bytes(wire[: draw(st.integers(0, len(wire)))] if draw(st.integers(0, 5)) == 0 else wire)


def set_hostile(draw: Callable[[st.SearchStrategy[Any]], Any], hostile: Hostile) -> None:
    hostile.mode = draw(st.sampled_from(["valid", "raw", "wrong-id", "cut", "bent", "silent"]))
    hostile.bytes = draw(st.binary(max_size=300))
    hostile.edits = draw(st.lists(st.tuples(st.integers(0, 120), st.integers(0, 255)), max_size=4))


def ask_over_tcp(address: tuple[str, int], wire: bytes, length_lies: bool) -> None:
    """Sends the query and leaves: the server's TCP client thread carries on
    alone (waiting for its answer would make the run wait on silent upstreams);
    an error it logs later fails a later example."""
    with socket.create_connection(address, timeout=3) as conn, contextlib.suppress(OSError):
        size = len(wire) + (7 if length_lies else 0)
        conn.sendall(struct.pack("!H", size & 0xFFFF) + wire)
        conn.shutdown(socket.SHUT_WR)


@FUZZ
@given(data=st.data(), wire=query(), over_tcp=st.integers(0, 7))
def test_any_message_leaves_the_server_answering(
    harness: Harness, data: st.DataObject, wire: bytes, over_tcp: int
) -> None:
    set_hostile(data.draw, harness.cluster)
    set_hostile(data.draw, harness.public)
    with errors_logged(harness) as errors:
        if over_tcp == 0:
            ask_over_tcp(harness.server.address, wire, length_lies=data.draw(st.booleans()))
        else:
            harness.fuzzer.sendto(wire, harness.server.address)
        probe = f"probe-{next(_probes)}.{PROBE_SUFFIX}"
        answer = harness.ask(probe)
        assert [str(rr.rdata) for rr in answer.rr] == [PUBLIC_ANSWER], str(answer)
    assert errors == [], f"the server logged an error: {errors[0]}"


def test_names_resolve_after_the_fuzz(harness: Harness) -> None:
    """Runs after the fuzz target in the same module: the same server, still serving."""
    assert harness.server.stats().queries > 1000, "the fuzz target ran first"
    harness.cluster.mode = harness.public.mode = "valid"
    with errors_logged(harness) as errors:
        cluster = harness.ask("echo.default.svc.cluster.local")
        public = harness.ask(f"after.{PROBE_SUFFIX}")
    assert [str(rr.rdata) for rr in cluster.rr] == [CLUSTER_ANSWER]
    assert [str(rr.rdata) for rr in public.rr] == [PUBLIC_ANSWER]
    assert errors == []
