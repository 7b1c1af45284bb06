"""Packets into the TUN stack's real packet loop, drawn by hypothesis: TCP
segments of a live flow with any flags, sequence and acknowledgement numbers,
windows, options and payloads; IPv4 headers bent out of shape; raw bytes; IPv6.

A SOCK_SEQPACKET socket pair stands in for the device (one packet a message,
as a TUN fd reads), so the stack runs as in production: its poll loop, its
worker threads, its flows to a loopback echo server. Nothing is caught by the
harness: after each example the loop must still run and no packet may have
raised in the TCP core (the loop counts those, ``packet_errors``); after the
run a fresh flow must carry bytes both ways."""

from __future__ import annotations

import contextlib
import itertools
import socket
import struct
import threading
import time
from collections import deque
from collections.abc import Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ktpy.net import ip
from ktpy.net.ip import ACK, PSH, RST, SYN
from ktpy.net.relay import SocketFlow
from ktpy.net.tcp import MASK, TcpConfig
from ktpy.net.tun_tcp import PacketSocket, TunStack
from tests.integration.fuzzing import EXAMPLES, FUZZ, EchoServer, closed_port
from tests.integration.support import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

CLIENT = "198.18.1.1"
ECHO_TARGET = "198.18.0.10"  # open_flow connects to the echo server
REFUSED_TARGET = "198.18.0.11"  # ... to a closed port: the client gets a RST
MTU = 1500
_ports = itertools.count(20000)


class Device:
    """The far end of the socket pair: what the kernel would be. Collects the
    TCP segments the stack writes, so the stack never waits on a full socket."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        # Parsed once, as they come: the waits below look at each segment once.
        self.segments: deque[ip.TcpSegment] = deque(maxlen=4096)
        self.written = 0
        self._changed = threading.Condition()
        threading.Thread(target=self._read, name="fuzz-device", daemon=True).start()

    def _read(self) -> None:
        while True:
            try:
                packet = self.sock.recv(65536)
            except OSError:
                return
            if not packet:
                return
            with self._changed:
                with contextlib.suppress(ip.PacketError):
                    self.segments.append(ip.parse_tcp_packet(packet))
                self.written += 1
                self._changed.notify_all()

    def send(self, packet: bytes) -> None:
        self.sock.send(packet)

    def segment_to(self, sport: int, want: int, timeout: float = 5.0) -> ip.TcpSegment:
        """The first segment to the client's port sport with all flags of want.
        Segments to other ports are dropped on the way: each Peer has a port of its
        own and asks only for its own segments, so those are earlier peers' leftovers."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                kept: deque[ip.TcpSegment] = deque(maxlen=4096)
                found = None
                while self.segments:
                    seg = self.segments.popleft()
                    if seg.dport != sport:
                        continue
                    if found is None and seg.flags & want == want:
                        found = seg
                    else:
                        kept.append(seg)
                self.segments = kept
                if found is not None:
                    return found
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"no segment with flags {want:#x} to port {sport}")
                self._changed.wait(left)


class Harness:
    def __init__(self) -> None:
        self.echo = EchoServer()
        refused = closed_port()

        def open_flow(host: str, port: int) -> SocketFlow:
            target = ("127.0.0.1", self.echo.port if host == ECHO_TARGET else refused)
            return SocketFlow(socket.create_connection(target, timeout=5))

        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self._socks = (ours, theirs)
        # Short retransmission limits: a flow the fuzz left half-open goes soon.
        config = TcpConfig(rto_max=1.0, max_retransmits=3, time_wait=0.2, connect_timeout=5.0)
        self.stack = TunStack(PacketSocket(ours.fileno(), MTU), open_flow, config=config).start()
        self.device = Device(theirs)
        self.sent = 0
        self.errors_before = 0

    def send(self, packets: list[bytes]) -> None:
        for packet in packets:
            self.device.send(packet)
        self.sent += len(packets)
        # Processed, not just queued: the loop counts every packet it read.
        deadline = time.monotonic() + 10
        while self.stack.counters.packets_read < self.sent:
            assert time.monotonic() < deadline, "the stack stopped reading packets"
            time.sleep(0.0002)

    def begin(self) -> None:
        """Counted per example, so that hypothesis shrinks the example that failed."""
        self.errors_before = self.stack.stats["packet_errors"]

    def assert_healthy(self) -> None:
        assert self.stack.error is None, "the packet loop died"
        stats = self.stack.stats
        assert stats["packet_errors"] == self.errors_before, "a packet raised in the TCP core"
        assert stats["write_errors"] == 0

    def close(self) -> None:
        self.stack.stop()
        for sock in self._socks:
            sock.close()
        self.echo.close()


@pytest.fixture(scope="module")
def harness() -> Iterator[Harness]:
    made = Harness()
    yield made
    made.close()


class Peer:
    """A TCP client speaking raw segments to the stack."""

    def __init__(self, harness: Harness, target: str = ECHO_TARGET) -> None:
        self.h = harness
        self.src, self.dst = ip.ip_bytes(CLIENT), ip.ip_bytes(target)
        self.sport = next(_ports) % 40000 + 20000
        self.isn = 7000
        self.seq = self.isn + 1
        self.server_next = 0

    def segment(
        self,
        flags: int,
        seq: int,
        ack: int,
        window: int = 65535,
        payload: bytes = b"",
        options: bytes = b"",
    ) -> bytes:
        return ip.build_tcp(
            self.src,
            self.dst,
            self.sport,
            80,
            seq & MASK,
            ack & MASK,
            flags,
            window,
            payload,
            options,
        )

    def connect(self) -> None:
        options = ip.encode_options(mss=1460, wscale=7, sack_permitted=True)
        self.h.send([self.segment(SYN, self.isn, 0, options=options)])
        synack = self.h.device.segment_to(self.sport, SYN | ACK)
        self.server_next = (synack.seq + 1) & MASK
        self.h.send([self.segment(ACK, self.seq, self.server_next)])


# -- what hypothesis draws ------------------------------------------------------------

FLAGS = st.integers(0, 0x3F)  # FIN SYN RST PSH ACK URG in any mix
# Mostly right at or near what the stack expects, sometimes anywhere.
NEAR = st.one_of(
    st.just(0), st.integers(-3000, 3000), st.integers(-(1 << 20), 1 << 20), st.integers(0, MASK)
)


@st.composite
def options(draw: st.DrawFn) -> bytes:
    raw = draw(st.binary(max_size=40))
    return raw + b"\x00" * (-len(raw) % 4)  # the data offset counts 32-bit words


SEGMENT = st.tuples(FLAGS, NEAR, NEAR, st.integers(0, 65535), options(), st.binary(max_size=1500))
# The next bytes in order, acknowledging what the stack sent: moves the flow along.
IN_ORDER = st.builds(bytes, st.binary(min_size=1, max_size=3000))


@st.composite
def bent_ipv4(draw: st.DrawFn) -> bytes:
    """A valid packet with header bytes overwritten; the IP checksum fixed again
    half of the time, so the bent fields get past the first check."""
    packet = bytearray(
        ip.build_tcp(
            ip.ip_bytes(CLIENT),
            ip.ip_bytes(ECHO_TARGET),
            9,
            80,
            1,
            0,
            SYN,
            1000,
            draw(st.binary(max_size=64)),
        )
    )
    for offset, value in draw(
        st.lists(st.tuples(st.integers(0, 39), st.integers(0, 255)), max_size=6)
    ):
        packet[offset] = value
    if draw(st.booleans()) and 20 <= (packet[0] & 0x0F) * 4 <= len(packet):
        header_length = (packet[0] & 0x0F) * 4
        packet[10:12] = b"\0\0"
        packet[10:12] = struct.pack("!H", ip.checksum(packet[:header_length]))
    cut = draw(st.integers(0, len(packet)))
    return bytes(packet[: cut or len(packet)])


@st.composite
def ipv6(draw: st.DrawFn) -> bytes:
    header = (
        struct.pack("!IHBB", 6 << 28, 20, 6, 64)
        + bytes(15)
        + b"\x01"
        + bytes(12)
        + b"\x0a\x60\x00\x0a"
    )
    return header + draw(st.binary(min_size=0, max_size=40))


STRAY = st.one_of(st.binary(max_size=1600), bent_ipv4(), ipv6())


# -- the target -----------------------------------------------------------------------


@FUZZ
@given(
    target=st.sampled_from([ECHO_TARGET, REFUSED_TARGET]),
    steps=st.lists(st.one_of(SEGMENT, STRAY, IN_ORDER.map(bytearray)), max_size=12),
)
def test_any_packets_leave_the_stack_serving(
    harness: Harness, target: str, steps: list[object]
) -> None:
    harness.begin()
    peer = Peer(harness, target)
    if target == ECHO_TARGET:
        peer.connect()
    else:
        # A refused open: the SYN is answered with a RST, the flow is gone.
        harness.send([peer.segment(SYN, peer.isn, 0)])
    ends = {peer.seq}
    packets = []
    for step in steps:
        if isinstance(step, bytes):
            packets.append(step)
            continue
        if isinstance(step, bytearray):
            for start in range(0, len(step), 1460):
                chunk = bytes(step[start : start + 1460])
                packets.append(peer.segment(ACK | PSH, peer.seq, peer.server_next, payload=chunk))
                peer.seq = (peer.seq + len(chunk)) & MASK
                ends.add(peer.seq)
            continue
        flags, seq_delta, ack_delta, window, opts, payload = step  # type: ignore[misc]
        seq = peer.seq + seq_delta
        ends.update({seq & MASK, (seq + len(payload)) & MASK, (seq + len(payload) + 1) & MASK})
        packets.append(
            peer.segment(flags, seq, peer.server_next + ack_delta, window, payload, opts)
        )
    harness.send(packets)
    harness.assert_healthy()
    # Whatever state the fuzz left the flow in, an in-window RST ends it (RFC 793).
    harness.send([peer.segment(RST, end, 0) for end in sorted(ends)])
    harness.assert_healthy()


def test_a_flow_works_after_the_fuzz(harness: Harness) -> None:
    """Runs after the fuzz target in the same module: the same stack, still serving."""
    harness.begin()
    assert harness.sent >= EXAMPLES, "the fuzz target ran first"
    peer = Peer(harness)
    peer.connect()
    harness.send([peer.segment(ACK | PSH, peer.seq, peer.server_next, payload=b"after the storm")])
    reply = harness.device.segment_to(peer.sport, ACK | PSH)
    assert reply.payload == b"after the storm"
    harness.send([peer.segment(RST, peer.seq + len(b"after the storm"), 0)])
    harness.assert_healthy()
    wait_for(lambda: harness.stack.flows() == 0, 30, "every fuzzed flow to end")


def test_every_relay_thread_ends_after_the_fuzz(harness: Harness) -> None:
    """Runs after the fuzz target and the fresh flow, in the same module. It found a
    reader that died before it was counted (a Flow closed by a reset before the reader
    ran); test_tun_tcp keeps that case as a regression test."""
    wait_for(lambda: harness.stack.relaying() == 0, 30, "every relay thread to end")
