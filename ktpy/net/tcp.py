"""The TUN stack's TCP, as a pure state machine: packets and app events in,
actions out (the vocabulary of ktpy.sansio).

The kernel is always the client here: it sends a SYN to a cluster address
routed into the TUN device, and this module plays the server at that
address. Each flow is relayed to an app-side Flow (an SSH direct-tcpip
channel) by the I/O wrapper, ktpy.net.tun_tcp, which feeds events in and
carries actions out:

- ``receive(packet, now)`` for each packet read from the TUN device, then
  ``flush(now)`` once per batch of reads: ACKs are held until then, so a burst
  of segments is acknowledged once (without delaying any ACK past the batch);
- ``handle(event, now)`` for what happened on the app side of a flow:
  ``FlowOpened`` / ``FlowOpenFailed``, the outcome of an ``OpenFlow`` action
  (only then does the client get its SYN-ACK, or a RST (refused, other
  failures) or an ICMP unreachable: never a hang); ``FlowData``, ``FlowEnd``
  (the app sent EOF), ``FlowFailed`` (the app flow broke: the client gets a
  RST), ``Delivered`` (n delivered bytes were written to the app: the receive
  window reopens);
- ``expire(now)`` when ``next_deadline()`` has passed (retransmission,
  persist probes, TIME_WAIT, connect timeout); ``abort_all`` when stopping.

Actions: ``Send`` (write a packet to the TUN device), ``OpenFlow``,
``Deliver``/``DeliverEnd`` (data and EOF for the app), ``ResumeReading`` (the
send buffer has room again: read the app flow) and ``CloseFlow`` (the flow is
over: close the app side).

Memory is bounded per flow and for all flows together. Per flow: the receive
window only covers what ``receive_buffer`` can hold beyond what the app has not
yet consumed (so a slow app closes the window), and ``send_space`` tells the
app side how much more it may hand over. All flows together hold at most
``max_buffered`` bytes, counted as what each flow has *committed*, half of it
for each direction (so windows the clients leave unused never keep the app
sides from being read, nor the reverse). Toward the app: the data its app has
not consumed and the window it advertised (the client may fill it at any
moment; out-of-order data lies inside it). Toward the client: its unacked and
unsent data and the read the app side reserved (``reserve_send``). A flow its
half cannot serve gets no window (the client's TCP waits, nothing is dropped)
or no read (``send_space`` 0); as the half frees up, the waiting flows get a
window update or ``ResumeReading`` in the order they began to wait.

Scope, and why: IPv4 only; no congestion control (the link is a local
virtual one, so the client's receive window is the only limit; lost segments
are recovered NewReno-style); no timestamps; SACK blocks are sent for
out-of-order data (the kernel recovers faster) but not used from the client;
an in-window RST is accepted as it is (RFC 793; nobody can inject packets
into a local TUN link, so RFC 5961's challenge ACK is only used for SYNs).
"""

from __future__ import annotations

import heapq
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import assert_never

from ktpy.config import TUN_MTU
from ktpy.net import ip
from ktpy.net.ip import ACK, FIN, PSH, RST, SYN, PacketError, TcpSegment
from ktpy.sansio import Action, Event

MASK = 0xFFFFFFFF
HALF = 0x80000000
DEFAULT_MSS = 536  # RFC 1122, when the SYN has no MSS option
HEADERS = ip.IPV4_HEADER + ip.TCP_HEADER
MAX_SACK_BLOCKS = 4  # fits the option space without timestamps


def seq_lt(a: int, b: int) -> bool:
    return 0 < ((b - a) & MASK) < HALF


def seq_le(a: int, b: int) -> bool:
    return ((b - a) & MASK) < HALF


class State(Enum):
    CONNECTING = "connecting"  # SYN received, the app flow is being opened
    SYN_RECEIVED = "syn-received"
    ESTABLISHED = "established"
    CLOSE_WAIT = "close-wait"
    LAST_ACK = "last-ack"
    FIN_WAIT_1 = "fin-wait-1"
    FIN_WAIT_2 = "fin-wait-2"
    CLOSING = "closing"
    TIME_WAIT = "time-wait"
    FAILED = "failed"  # the open failed; answers a retransmitted SYN the same way
    CLOSED = "closed"


SYNCHRONIZED = frozenset(
    {
        State.ESTABLISHED,
        State.CLOSE_WAIT,
        State.LAST_ACK,
        State.FIN_WAIT_1,
        State.FIN_WAIT_2,
        State.CLOSING,
        State.TIME_WAIT,
    }
)
_SENDING = frozenset(
    {State.ESTABLISHED, State.CLOSE_WAIT, State.FIN_WAIT_1, State.CLOSING, State.LAST_ACK}
)
_RECEIVING = frozenset({State.ESTABLISHED, State.FIN_WAIT_1, State.FIN_WAIT_2})
_APP_WRITES = frozenset({State.SYN_RECEIVED, State.ESTABLISHED, State.CLOSE_WAIT})


class OpenFailure(Enum):
    REFUSED = "refused"  # RST: the client sees ECONNREFUSED
    NET_UNREACHABLE = "network unreachable"  # ICMP: ENETUNREACH
    HOST_UNREACHABLE = "host unreachable"  # ICMP: EHOSTUNREACH
    FAILED = "failed"  # anything else: RST


class Timer(Enum):
    RETRANSMIT = "retransmit"
    PERSIST = "persist"
    CONNECT = "connect"
    TIME_WAIT = "time-wait"
    FORGET = "forget"  # drop a FAILED tombstone


def describe(packet: bytes) -> str:
    """A tcpdump-like line for a packet, for logs and test failures."""
    try:
        pkt = ip.parse_ipv4(packet)
        if pkt.proto == ip.PROTO_ICMP:
            kind, code, _ = ip.parse_icmp(pkt)
            return f"ICMP {ip.ip_str(pkt.src)} > {ip.ip_str(pkt.dst)} type {kind} code {code}"
        seg = ip.parse_tcp(pkt, verify=False)
    except PacketError as exc:
        return f"<malformed: {exc}>"
    extra = f" len {len(seg.payload)}" if seg.payload else ""
    return (
        f"{ip.ip_str(seg.src)}:{seg.sport} > {ip.ip_str(seg.dst)}:{seg.dport} "
        f"[{seg.flag_names()}] seq {seg.seq} ack {seg.ack} win {seg.window}{extra}"
    )


# -- actions ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Send(Action):
    """A packet for the TUN device: packet, then payload (kept apart so that
    the write can gather them without copying the payload once more)."""

    packet: bytes
    gso: int = 0  # > 0: a segment larger than the client's MSS, for the kernel to cut (GSO)
    payload: bytes = b""

    @property
    def wire(self) -> bytes:
        return self.packet + self.payload

    def __repr__(self) -> str:
        return f"Send({describe(self.wire)})"


@dataclass(frozen=True, slots=True)
class OpenFlow(Action):
    """Open the app side of a new flow, then handle FlowOpened or FlowOpenFailed."""

    conn: int
    host: str
    port: int
    client: str  # "ip:port" of the kernel side, for logs


@dataclass(frozen=True, slots=True)
class Deliver(Action):
    """Write the client's bytes to the app flow, then handle Delivered."""

    conn: int
    data: bytes

    def __repr__(self) -> str:
        shown = self.data if len(self.data) <= 32 else self.data[:32] + b"..."
        return f"Deliver({self.conn}, {shown!r} ({len(self.data)} bytes))"


@dataclass(frozen=True, slots=True)
class DeliverEnd(Action):
    """The client sent FIN: half-close the app flow after what was delivered."""

    conn: int


@dataclass(frozen=True, slots=True)
class ResumeReading(Action):
    """The send buffer has room again: read the app flow (``send_space``)."""

    conn: int


@dataclass(frozen=True, slots=True)
class CloseFlow(Action):
    """The flow is over: close its app side."""

    conn: int
    reset: bool  # True: abort the app flow; False: it ended cleanly both ways
    reason: str


TcpAction = Send | OpenFlow | Deliver | DeliverEnd | ResumeReading | CloseFlow


# -- events from the app side ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FlowOpened(Event):
    conn: int


@dataclass(frozen=True, slots=True)
class FlowOpenFailed(Event):
    conn: int
    failure: OpenFailure


@dataclass(frozen=True, slots=True)
class FlowData(Event):
    """Bytes the app sent, for the client (no more than ``send_space``)."""

    conn: int
    data: bytes

    def __repr__(self) -> str:
        return f"FlowData({self.conn}, {len(self.data)} bytes)"


@dataclass(frozen=True, slots=True)
class FlowEnd(Event):
    """The app sent EOF: FIN after the buffered data."""

    conn: int


@dataclass(frozen=True, slots=True)
class Delivered(Event):
    """n bytes of Deliver actions were written to the app: the window reopens."""

    conn: int
    n: int


@dataclass(frozen=True, slots=True)
class FlowFailed(Event):
    """The app flow broke: the client gets a RST."""

    conn: int
    reason: str


TcpEvent = FlowOpened | FlowOpenFailed | FlowData | FlowEnd | Delivered | FlowFailed


@dataclass(frozen=True)
class TcpConfig:
    mtu: int = TUN_MTU
    receive_buffer: int = 1 << 20  # per flow: received, not yet consumed by the app
    send_buffer: int = 1 << 20  # per flow: from the app, not yet acked by the client
    max_flows: int = 4096
    # All flows together (see the module docstring): the backpressure that keeps
    # 4,096 flows from holding 4,096 x 2 MiB.
    max_buffered: int = 64 << 20
    # A flow's window starts here and doubles each time the client fills half of
    # it, up to receive_buffer: an idle or small flow (a keep-alive request) commits
    # little of the pool, a bulk one grows to what it uses.
    initial_window: int = 16 << 10
    max_out_of_order: int = 64  # blocks of out-of-order data held per flow
    rto_initial: float = 0.5
    rto_min: float = 0.2
    rto_max: float = 10.0
    max_retransmits: int = 10  # then the flow is reset
    persist_max: float = 1.0  # zero-window probes back off up to this
    time_wait: float = 1.0  # short: a local virtual link delivers no stray old segments
    connect_timeout: float = 60.0
    verify_checksums: bool = True
    # The TUN device takes segments of any size with unfinished checksums and
    # cuts them itself (a virtio-net header: NEEDS_CSUM and GSO). Saves summing
    # every byte in Python, and a packet per MSS.
    offload: bool = False

    def __post_init__(self) -> None:
        if not 576 <= self.mtu <= 65535:
            raise ValueError(f"MTU {self.mtu} is outside 576..65535")
        if self.receive_buffer < 2 * self.mss or self.send_buffer < 4 * 1024:
            raise ValueError("buffers must hold at least two segments")
        if self.max_buffered < 4 * self.mss:
            raise ValueError("max_buffered must hold at least two segments each way")

    @property
    def mss(self) -> int:
        return self.mtu - HEADERS

    def segment_size(self, client_mss: int) -> int:
        """The largest payload we send in one packet to a client with that MSS."""
        if not self.offload:
            return client_mss
        most = 0xFFFF - HEADERS
        return max(most // client_mss * client_mss, client_mss)

    @property
    def window_scale(self) -> int:
        shift = 0
        while (0xFFFF << shift) < self.receive_buffer and shift < 14:
            shift += 1
        return shift


@dataclass
class Stats:
    packets: int = 0
    malformed: int = 0
    ignored: int = 0  # not IPv4 TCP (IPv6, UDP, ICMP...)
    flows_opened: int = 0
    resets_sent: int = 0
    resets_received: int = 0
    retransmits: int = 0
    out_of_order: int = 0
    out_of_order_dropped: int = 0
    last_malformed: str = ""
    committed_peak: int = 0  # the most all flows together ever committed (<= max_buffered)
    pool_waits: int = 0  # times a flow waited for the shared pool (window or read)


Key = tuple[bytes, int, bytes, int]  # client address, client port, target address, target port


class _Flow:
    __slots__ = (
        "ack_pending",
        "committed_rx",
        "committed_tx",
        "conn",
        "deadline",
        "dupacks",
        "failure",
        "fin_queued",
        "fin_received",
        "hdr",
        "irs",
        "iss",
        "key",
        "ooo",
        "ooo_bytes",
        "ooo_fin",
        "ooo_last",
        "persist_backoff",
        "rcv_adv",
        "rcv_nxt",
        "rcv_target",
        "rcv_wscale",
        "reading",
        "recover",
        "retries",
        "rto",
        "rttvar",
        "sack_ok",
        "snd_max",
        "snd_mss",
        "snd_nxt",
        "snd_seg",
        "snd_una",
        "snd_wl1",
        "snd_wl2",
        "snd_wnd",
        "snd_wscale",
        "sndbuf",
        "srtt",
        "state",
        "syn_packet",
        "timed_at",
        "timed_seq",
        "timer",
        "timer_gen",
        "undelivered",
        "want_writable",
    )

    def __init__(self, conn: int, key: Key, seg: TcpSegment, iss: int, config: TcpConfig) -> None:
        self.conn = conn
        self.key = key
        self.state = State.CONNECTING
        self.syn_packet = b""
        self.failure: OpenFailure | None = None
        # Receive side: what the client sends us.
        self.irs = seg.seq
        self.rcv_nxt = (seg.seq + 1) & MASK
        self.rcv_adv = self.rcv_nxt  # right edge of the window we advertised
        self.rcv_target = min(config.initial_window, config.receive_buffer)  # largest window
        offered = seg.options.wscale is not None
        self.rcv_wscale = config.window_scale if offered else 0
        self.sack_ok = seg.options.sack_permitted
        self.undelivered = 0  # delivered to the app, not yet consumed
        self.ooo: list[tuple[int, bytes]] = []  # (seq, data), sorted, disjoint
        self.ooo_bytes = 0
        self.ooo_fin: int | None = None  # seq of a FIN that came before missing data
        self.ooo_last = 0  # seq of the newest out-of-order segment: its block is SACKed first
        self.fin_received = False
        self.ack_pending = False
        # Send side: what the app sends the client.
        self.iss = iss
        self.snd_una = iss
        self.snd_nxt = iss
        self.snd_max = iss  # highest sequence number sent, plus one
        self.snd_wscale = seg.options.wscale if offered and seg.options.wscale else 0
        self.snd_wnd = seg.window  # a SYN's window is never scaled
        self.snd_wl1 = seg.seq
        self.snd_wl2 = iss
        self.snd_mss = min(seg.options.mss or DEFAULT_MSS, config.mss)
        self.snd_seg = config.segment_size(self.snd_mss)
        self.hdr = ip.TcpHeaders(key[2], key[0], key[3], key[1], partial=config.offload)
        self.sndbuf = bytearray()  # from snd_una: unacked, then unsent bytes
        self.fin_queued = False  # the app ended: FIN after the buffered data
        self.want_writable = False
        self.reading = 0  # bytes the app side reserved for a read in progress
        self.committed_rx = 0  # this flow's share of TcpStack._committed_rx
        self.committed_tx = 0  # ... and of _committed_tx
        self.dupacks = 0
        self.recover: int | None = None  # NewReno: snd_max when loss was detected
        self.retries = 0
        self.rto = config.rto_initial
        self.srtt: float | None = None
        self.rttvar = 0.0
        self.timed_seq: int | None = None  # Karn: one segment timed at a time
        self.timed_at = 0.0
        self.persist_backoff = 0
        self.timer: Timer | None = None
        self.timer_gen = 0
        self.deadline = 0.0  # of the armed timer; its heap entry may be earlier

    @property
    def data_end(self) -> int:
        return (self.snd_una + len(self.sndbuf)) & MASK

    @property
    def fin_sent(self) -> bool:
        return self.fin_queued and (self.snd_max - self.snd_una) & MASK == len(self.sndbuf) + 1


def _random_isn() -> int:
    return int.from_bytes(os.urandom(4), "big")


@dataclass
class TcpStack:
    """The flow table and every flow's state machine. Not thread-safe: the
    I/O wrapper serializes calls."""

    config: TcpConfig = field(default_factory=TcpConfig)
    isn: Callable[[], int] = _random_isn
    stats: Stats = field(default_factory=Stats)

    def __post_init__(self) -> None:
        self._flows: dict[Key, _Flow] = {}
        self._by_conn: dict[int, _Flow] = {}
        self._next_conn = 1
        self._timers: list[tuple[float, int, int]] = []  # (deadline, conn, generation)
        self._pending_acks: dict[int, _Flow] = {}
        self._ident = 0
        self._low_water = max(self.config.send_buffer // 4, 1)
        self._high_water = max(self.config.send_buffer // 2, 1)
        # Every live flow's committed bytes, toward the app and toward the client.
        self._committed_rx = 0
        self._committed_tx = 0
        self._budget_rx = self.config.max_buffered // 2
        self._budget_tx = self.config.max_buffered - self._budget_rx
        # Flows waiting for the pool, oldest first: for a window, for a read.
        self._starved_rx: dict[int, _Flow] = {}
        self._starved_tx: dict[int, _Flow] = {}
        self._min_read = min(self._low_water, 16384)
        self._feeding = False

    # -- introspection -------------------------------------------------------

    def __len__(self) -> int:
        return len(self._flows)

    def state(self, conn: int) -> State:
        f = self._by_conn.get(conn)
        return f.state if f else State.CLOSED

    def send_space(self, conn: int) -> int | None:
        """How many bytes the app may hand over now; 0: wait for ResumeReading;
        None: the flow takes no more data (closed, or the app already ended)."""
        f = self._by_conn.get(conn)
        if f is None or f.state not in _APP_WRITES or f.fin_queued:
            return None
        free = self.config.send_buffer - len(f.sndbuf) - f.reading
        if free < self._low_water:
            return 0
        pool = self._read_room(f)
        if pool < self._min_read:
            if f.conn not in self._starved_tx:
                self.stats.pool_waits += 1
                self._starved_tx[f.conn] = f
            return 0
        return min(free, pool)

    def reserve_send(self, conn: int, most: int) -> int | None:
        """``send_space``, at most ``most``, set aside for a read the app side is about
        to make: the pool counts it until ``FlowData``, ``FlowEnd``, ``FlowFailed``
        or ``release_send``, so readers on many flows cannot overshoot it together."""
        space = self.send_space(conn)
        if not space:
            return space
        f = self._by_conn[conn]
        f.reading = min(space, most)
        self._account(f)
        return f.reading

    def release_send(self, conn: int) -> list[TcpAction]:
        """The reserved read took nothing (it timed out)."""
        f = self._by_conn.get(conn)
        if f is None or not f.reading:
            return []
        f.reading = 0
        self._account(f)
        return self._feed()

    def buffered_bytes(self) -> int:
        """Bytes held for all flows: unacked or unsent data, out-of-order data,
        and data delivered to apps that they have not consumed yet."""
        return sum(len(f.sndbuf) + f.ooo_bytes + f.undelivered for f in self._flows.values())

    def committed_bytes(self) -> int:
        """What all flows together may hold without asking again (>= buffered_bytes,
        <= max_buffered): the sum the pool bounds."""
        return self._committed_rx + self._committed_tx

    # -- the shared pool ----------------------------------------------------------

    def _account(self, f: _Flow) -> None:
        """Bring f's share of the pool up to date (after any change to it)."""
        if f.state is State.CLOSED:
            rx = tx = 0
        else:
            rx = f.undelivered + self._advertised(f)
            tx = len(f.sndbuf) + f.reading
        self._committed_rx += rx - f.committed_rx
        self._committed_tx += tx - f.committed_tx
        f.committed_rx, f.committed_tx = rx, tx
        total = self._committed_rx + self._committed_tx
        if total > self.stats.committed_peak:
            self.stats.committed_peak = total

    def _window_room(self, f: _Flow) -> int:
        """The largest window f may advertise from rcv_nxt: its half of the pool less
        every other flow's share and its own unconsumed data (its current window is
        what is being decided)."""
        others = self._committed_rx - f.committed_rx
        return self._budget_rx - others - f.undelivered

    def _read_room(self, f: _Flow) -> int:
        """The most f's app side may hand over now, by the pool's other half."""
        others = self._committed_tx - f.committed_tx
        return self._budget_tx - others - len(f.sndbuf) - f.reading

    def _feed(self) -> list[TcpAction]:
        """The pool has room again: window updates and ResumeReading for the flows
        waiting for it, oldest first, as long as it lasts."""
        out: list[TcpAction] = []
        threshold = min(self.config.mss, self.config.initial_window // 2)
        self._feeding = True
        try:
            for conn, f in list(self._starved_rx.items()):
                if self._budget_rx - self._committed_rx < threshold:
                    break
                if f.state is State.SYN_RECEIVED and self._by_conn.get(conn) is f:
                    continue  # keeps its place: served once the client's ACK establishes it
                del self._starved_rx[conn]
                if f.state in _RECEIVING and not f.fin_received and self._by_conn.get(conn) is f:
                    before = self._advertised(f)
                    out.append(self._send(f, f.snd_nxt, ACK))
                    if self._advertised(f) <= before and conn in self._starved_rx:
                        break  # nothing given: the pool is too tight for a segment
        finally:
            self._feeding = False
        while self._starved_tx and self._budget_tx - self._committed_tx >= self._min_read:
            conn, f = next(iter(self._starved_tx.items()))
            del self._starved_tx[conn]
            if self._by_conn.get(conn) is f:
                out.append(ResumeReading(conn))
        return out

    # -- events from the TUN device -----------------------------------------

    def receive(
        self, packet: bytes, now: float, trusted: bool = False, offset: int = 0
    ) -> list[TcpAction]:
        """A packet read from the TUN device, from packet[offset:]. trusted: the
        kernel says its checksum needs no checking (it never computed it)."""
        self.stats.packets += 1
        if len(packet) > offset + 9 and (
            packet[offset] >> 4 == 6 or (packet[offset] >> 4 == 4 and packet[offset + 9] != 6)
        ):
            self.stats.ignored += 1  # IPv6 (router solicitations...), UDP, ICMP: not carried
            return []
        try:
            verify = self.config.verify_checksums and not trusted
            seg = ip.parse_tcp_packet(packet, verify, offset)
        except PacketError as exc:
            self.stats.malformed += 1
            self.stats.last_malformed = str(exc)
            return []
        out: list[TcpAction] = []
        key = (seg.src, seg.sport, seg.dst, seg.dport)
        f = self._flows.get(key)
        raw = packet[offset:] if offset and seg.flags & SYN else packet  # quoted by ICMP errors
        if f is None:
            self._no_flow(key, seg, raw, now, out)
            f = self._flows.get(key)
        else:
            self._input(f, seg, raw, now, out)
        if f is not None:
            self._account(f)
        if self._starved_rx or self._starved_tx:
            out += self._feed()
        return out

    def flush(self, now: float) -> list[TcpAction]:
        """ACKs held back while a batch of packets was read."""
        pending, self._pending_acks = self._pending_acks, {}
        return [
            self._send(f, f.snd_nxt, ACK)
            for f in pending.values()
            if f.ack_pending and self._flows.get(f.key) is f
        ]

    # -- events from the app side -------------------------------------------

    def handle(self, event: TcpEvent, now: float) -> list[TcpAction]:
        """What happened on the app side of one flow."""
        out = self._handle(event, now)
        f = self._by_conn.get(event.conn)
        if f is not None:
            self._account(f)
        if self._starved_rx or self._starved_tx:
            out += self._feed()
        return out

    def _handle(self, event: TcpEvent, now: float) -> list[TcpAction]:
        match event:  # the frequent ones first
            case FlowData(conn, data):
                return self._flow_data(conn, data, now)
            case Delivered(conn, n):
                return self._delivered(conn, n)
            case FlowOpened(conn):
                return self._opened(conn, now)
            case FlowOpenFailed(conn, failure):
                return self._open_failed(conn, failure, now)
            case FlowEnd(conn):
                return self._flow_end(conn, now)
            case FlowFailed(conn, reason):
                return self._flow_failed(conn, reason)
            case _:
                assert_never(event)

    def _opened(self, conn: int, now: float) -> list[TcpAction]:
        f = self._by_conn.get(conn)
        if f is None or f.state is not State.CONNECTING:
            return [CloseFlow(conn, True, "the client went away while the flow was opened")]
        f.state = State.SYN_RECEIVED
        f.snd_nxt = f.snd_max = (f.iss + 1) & MASK
        f.syn_packet = b""
        self._arm(f, Timer.RETRANSMIT, now + f.rto)
        return [self._syn_ack(f, now)]

    def _open_failed(self, conn: int, failure: OpenFailure, now: float) -> list[TcpAction]:
        f = self._by_conn.get(conn)
        if f is None or f.state is not State.CONNECTING:
            return []
        out: list[TcpAction] = []
        self._fail(f, failure, now, out)
        return out

    def _flow_data(self, conn: int, data: bytes, now: float) -> list[TcpAction]:
        f = self._by_conn.get(conn)
        if f is not None:
            f.reading = 0  # the reserved read came back: its bytes count from now on
        if f is None or f.state not in _APP_WRITES or f.fin_queued or not data:
            return []
        f.sndbuf += data
        if self.config.send_buffer - len(f.sndbuf) < self._low_water:
            f.want_writable = True
        out: list[TcpAction] = []
        self._output(f, now, out)
        return out

    def _flow_end(self, conn: int, now: float) -> list[TcpAction]:
        f = self._by_conn.get(conn)
        if f is not None:
            f.reading = 0
        if f is None or f.state not in _APP_WRITES or f.fin_queued:
            return []
        f.fin_queued = True
        out: list[TcpAction] = []
        self._output(f, now, out)
        return out

    def _delivered(self, conn: int, n: int) -> list[TcpAction]:
        f = self._by_conn.get(conn)
        if f is None:
            return []
        f.undelivered = max(f.undelivered - n, 0)
        if f.state not in _RECEIVING or f.fin_received:
            return []
        # Announce the reopened window only when it matters: it at least
        # doubled and grew by a segment (receiver-side silly window avoidance).
        free = self._free(f)
        current = self._advertised(f)
        if free - current >= max(self._update_threshold(f), current):
            return [self._send(f, f.snd_nxt, ACK)]
        return []

    def _flow_failed(self, conn: int, reason: str) -> list[TcpAction]:
        f = self._by_conn.get(conn)
        if f is None:
            return []
        f.reading = 0
        out: list[TcpAction] = []
        self._abort(f, f"app flow failed: {reason}", out, send_rst=True)
        return out

    def abort_all(self, reason: str) -> list[TcpAction]:
        """Reset every flow (the stack is stopping)."""
        out: list[TcpAction] = []
        for f in list(self._flows.values()):
            if f.state is State.CONNECTING:
                out.append(self._reply_reset(f.key, 0, f.rcv_nxt, RST | ACK))
                self._forget(f)
            elif f.state in (State.FAILED, State.TIME_WAIT):
                self._forget(f)
            else:
                self._abort(f, reason, out, send_rst=True)
        return out

    # -- timers ---------------------------------------------------------------

    def next_deadline(self) -> float | None:
        timers = self._timers
        while timers:
            deadline, conn, gen = timers[0]
            f = self._by_conn.get(conn)
            if f is not None and f.timer is not None and f.timer_gen == gen:
                return deadline
            heapq.heappop(timers)
        return None

    def expire(self, now: float) -> list[TcpAction]:
        out: list[TcpAction] = []
        timers = self._timers
        while timers and timers[0][0] <= now:
            _, conn, gen = heapq.heappop(timers)
            f = self._by_conn.get(conn)
            if f is None or f.timer is None or f.timer_gen != gen:
                continue
            if f.deadline > now:  # pushed back since this entry was made
                heapq.heappush(timers, (f.deadline, conn, gen))
                continue
            kind, f.timer = f.timer, None
            self._on_timer(f, kind, now, out)
            self._account(f)
        if self._starved_rx or self._starved_tx:
            out += self._feed()
        return out

    def _arm(self, f: _Flow, kind: Timer, deadline: float) -> None:
        if f.timer is kind and deadline >= f.deadline:
            # Pushing the same timer back (every ACK does, for the RTO): keep
            # the heap entry, which re-queues itself when it comes due.
            f.deadline = deadline
            return
        f.timer = kind
        f.timer_gen += 1
        f.deadline = deadline
        heapq.heappush(self._timers, (deadline, f.conn, f.timer_gen))

    def _disarm(self, f: _Flow, kind: Timer) -> None:
        if f.timer is kind:
            f.timer = None

    def _on_timer(self, f: _Flow, kind: Timer, now: float, out: list[TcpAction]) -> None:
        if kind is Timer.CONNECT:
            self._fail(f, OpenFailure.HOST_UNREACHABLE, now, out)
        elif kind in (Timer.TIME_WAIT, Timer.FORGET):
            self._forget(f)
        elif kind is Timer.PERSIST:
            # Zero-window probe: an old sequence number makes the client answer
            # with its current window.
            f.persist_backoff += 1
            out.append(self._send(f, (f.snd_una - 1) & MASK, ACK))
            delay = min(f.rto * (1 << min(f.persist_backoff, 10)), self.config.persist_max)
            self._arm(f, Timer.PERSIST, now + delay)
        elif kind is Timer.RETRANSMIT:
            f.retries += 1
            if f.retries > self.config.max_retransmits:
                self._abort(f, "retransmissions unanswered", out, send_rst=True)
                return
            f.rto = min(f.rto * 2, self.config.rto_max)
            if f.state is State.SYN_RECEIVED:
                out.append(self._syn_ack(f, now))
            elif f.snd_una == f.snd_max:
                return
            else:
                f.recover = f.snd_max
                f.dupacks = 0
                self._retransmit_first(f, now, out)
            self._arm(f, Timer.RETRANSMIT, now + f.rto)

    # -- segment processing ----------------------------------------------------

    def _no_flow(
        self, key: Key, seg: TcpSegment, packet: bytes, now: float, out: list[TcpAction]
    ) -> None:
        flags = seg.flags
        if flags & RST:
            return
        if flags & SYN and not flags & (ACK | FIN):
            if len(self._flows) >= self.config.max_flows:
                out.append(self._reset_for(seg))
                return
            conn = self._next_conn
            self._next_conn += 1
            f = _Flow(conn, key, seg, self.isn() & MASK, self.config)
            f.syn_packet = packet
            self._flows[key] = f
            self._by_conn[conn] = f
            self.stats.flows_opened += 1
            self._arm(f, Timer.CONNECT, now + self.config.connect_timeout)
            out.append(
                OpenFlow(conn, ip.ip_str(seg.dst), seg.dport, f"{ip.ip_str(seg.src)}:{seg.sport}")
            )
            return
        out.append(self._reset_for(seg))

    def _input(
        self, f: _Flow, seg: TcpSegment, packet: bytes, now: float, out: list[TcpAction]
    ) -> None:
        flags = seg.flags
        state = f.state
        is_new_syn = flags & SYN and not flags & ACK
        if state is State.CONNECTING:
            # The answer to the SYN waits for the app flow; a retransmitted SYN changes nothing.
            if flags & RST and seg.seq == f.rcv_nxt:
                self.stats.resets_received += 1
                self._forget(f)  # FlowOpened will then close the app flow
            return
        if state is State.FAILED:
            if is_new_syn and seg.seq == f.irs:
                assert f.failure is not None
                out.append(self._failure_answer(f, f.failure))
            elif is_new_syn:
                self._forget(f)
                self._no_flow(f.key, seg, packet, now, out)
            elif not flags & RST:
                out.append(self._reset_for(seg))
            return
        if state is State.TIME_WAIT and is_new_syn and seg.seq != f.irs:
            self._forget(f)  # the client reuses the port: a new connection
            self._no_flow(f.key, seg, packet, now, out)
            return
        if state is State.SYN_RECEIVED and is_new_syn:
            if seg.seq == f.irs:  # our SYN-ACK was lost or slow
                out.append(self._syn_ack(f, now))
            return

        seq = seg.seq
        payload = seg.payload
        seglen = len(payload) + (1 if flags & FIN else 0) + (1 if flags & SYN else 0)
        wnd = self._advertised(f)
        if not self._acceptable(f, seq, seglen, wnd):
            if flags & RST:
                return
            self._want_ack(f)
            # RFC 793 takes the ACK of such a segment when our window is zero;
            # take it whenever the segment is not an old one: a window update
            # from a client whose data we could not take (our app is slow)
            # must not be lost. Safe: acks are bounded by snd_max, windows by
            # the SND.WL1/WL2 rule.
            if flags & ACK and seq_le(f.rcv_nxt, seq) and state is not State.SYN_RECEIVED:
                self._ack(f, seg, now, out, duplicate_ok=False)
                if f.state is not State.CLOSED:
                    self._output(f, now, out)
            return
        if flags & RST:
            self.stats.resets_received += 1
            self._abort(f, "reset by the client", out, send_rst=False)
            return
        if flags & SYN:
            self._want_ack(f)  # RFC 5961 challenge ACK: a real new SYN makes the client reset
            return
        if not flags & ACK:
            return
        if state is State.SYN_RECEIVED:
            if seg.ack != (f.iss + 1) & MASK:
                out.append(self._reply_reset(f.key, seg.ack, 0, RST))
                return
            self._establish(f, seg, now)
        elif not self._ack(f, seg, now, out) or f.state is State.CLOSED:
            return
        if payload and f.state in _RECEIVING:
            self._data(f, seq, payload, out)
        fin_seq = (seq + len(payload)) & MASK if flags & FIN else f.ooo_fin
        if fin_seq is not None:
            self._fin(f, fin_seq, now, out)
        if f.state is not State.CLOSED:
            self._output(f, now, out)

    @staticmethod
    def _acceptable(f: _Flow, seq: int, seglen: int, wnd: int) -> bool:
        off = (seq - f.rcv_nxt) & MASK
        if seglen == 0:
            return off == 0 if wnd == 0 else off < wnd
        if wnd == 0:
            return False
        return off < wnd or ((seq + seglen - 1 - f.rcv_nxt) & MASK) < wnd

    def _establish(self, f: _Flow, seg: TcpSegment, now: float) -> None:
        f.state = State.ESTABLISHED
        f.snd_una = (f.iss + 1) & MASK
        f.snd_wnd = seg.window << f.snd_wscale
        f.snd_wl1, f.snd_wl2 = seg.seq, seg.ack
        if f.retries == 0:
            self._rtt_sample(f, now - f.timed_at)
        f.retries = 0
        f.timed_seq = None
        self._disarm(f, Timer.RETRANSMIT)

    def _ack(
        self, f: _Flow, seg: TcpSegment, now: float, out: list[TcpAction], duplicate_ok: bool = True
    ) -> bool:
        """Process the ACK field; False if the segment must be dropped."""
        ack = seg.ack
        if seq_lt(f.snd_max, ack):
            self._want_ack(f)  # acks what was never sent
            return False
        window = seg.window << f.snd_wscale
        if seq_lt(f.snd_una, ack):
            self._take_ack(f, ack, now, out)
            if f.state is State.CLOSED:
                return True
        elif (
            duplicate_ok
            and ack == f.snd_una
            and not seg.payload
            and not seg.flags & (SYN | FIN)
            and window == f.snd_wnd
            and f.snd_una != f.snd_max
        ):
            f.dupacks += 1
            if f.dupacks == 3:  # fast retransmit
                f.recover = f.snd_max
                self._retransmit_first(f, now, out)
                self._arm(f, Timer.RETRANSMIT, now + f.rto)
        if seq_lt(f.snd_wl1, seg.seq) or (f.snd_wl1 == seg.seq and seq_le(f.snd_wl2, ack)):
            if window and f.snd_wnd == 0:
                f.persist_backoff = 0
                self._disarm(f, Timer.PERSIST)
            f.snd_wnd = window
            f.snd_wl1, f.snd_wl2 = seg.seq, ack
        return True

    def _take_ack(self, f: _Flow, ack: int, now: float, out: list[TcpAction]) -> None:
        acked = (ack - f.snd_una) & MASK
        buffered = len(f.sndbuf)
        fin_acked = f.fin_sent and acked == buffered + 1
        del f.sndbuf[: min(acked, buffered)]
        f.snd_una = ack
        if seq_lt(f.snd_nxt, ack):
            f.snd_nxt = ack
        f.dupacks = 0
        f.retries = 0
        if f.timed_seq is not None and seq_lt(f.timed_seq, ack):
            self._rtt_sample(f, now - f.timed_at)
            f.timed_seq = None
        if f.recover is not None:
            if seq_lt(ack, f.recover):
                self._retransmit_first(f, now, out)  # NewReno partial ACK: the next hole
            else:
                f.recover = None
        if f.snd_una == f.snd_max:
            self._disarm(f, Timer.RETRANSMIT)
        else:
            self._arm(f, Timer.RETRANSMIT, now + f.rto)
        if f.want_writable and self.config.send_buffer - len(f.sndbuf) >= self._high_water:
            f.want_writable = False
            out.append(ResumeReading(f.conn))
        if fin_acked:
            if f.state is State.FIN_WAIT_1:
                f.state = State.FIN_WAIT_2
            elif f.state is State.CLOSING:
                self._time_wait(f, now, out)
            elif f.state is State.LAST_ACK:
                out.append(CloseFlow(f.conn, False, "closed"))
                self._forget(f)

    def _data(self, f: _Flow, seq: int, payload: bytes, out: list[TcpAction]) -> None:
        off = (seq - f.rcv_nxt) & MASK
        if off >= HALF:  # starts before rcv_nxt: drop the part we already have
            payload = payload[(f.rcv_nxt - seq) & MASK :]
            seq, off = f.rcv_nxt, 0
        wnd = (f.rcv_adv - f.rcv_nxt) & MASK
        if off + len(payload) > wnd:
            payload = payload[: max(wnd - off, 0)]
        self._want_ack(f)
        if not payload:
            return
        if (f.rcv_adv - seq - len(payload)) & MASK < f.rcv_target // 2:
            # The client filled half the window it had: it could use more.
            f.rcv_target = min(f.rcv_target * 2, self.config.receive_buffer)
        if off:
            self._store_out_of_order(f, seq, payload)
            return
        self._deliver(f, payload, out)
        while f.ooo:
            first_seq, first = f.ooo[0]
            start = (first_seq - f.rcv_nxt) & MASK
            if start and start < HALF:
                break
            f.ooo.pop(0)
            f.ooo_bytes -= len(first)
            if start >= HALF:  # overlaps what we now have
                first = first[(f.rcv_nxt - first_seq) & MASK :]
            if first:
                self._deliver(f, first, out)

    def _deliver(self, f: _Flow, data: bytes, out: list[TcpAction]) -> None:
        f.rcv_nxt = (f.rcv_nxt + len(data)) & MASK
        f.undelivered += len(data)
        out.append(Deliver(f.conn, data))

    def _store_out_of_order(self, f: _Flow, seq: int, data: bytes) -> None:
        self.stats.out_of_order += 1
        base = f.rcv_nxt
        blocks = sorted(
            [((s - base) & MASK, d) for s, d in f.ooo] + [((seq - base) & MASK, data)],
            key=lambda b: b[0],
        )
        merged: list[tuple[int, bytes]] = []
        for start, d in blocks:
            if merged and start <= merged[-1][0] + len(merged[-1][1]):
                last_start, last = merged[-1]
                tail = d[last_start + len(last) - start :]
                merged[-1] = (last_start, last + tail)
            else:
                merged.append((start, d))
        held = sum(len(d) for _, d in merged)
        room = self.config.receive_buffer - f.undelivered
        if len(merged) > self.config.max_out_of_order or held > room:
            self.stats.out_of_order_dropped += 1
            return
        f.ooo = [((start + base) & MASK, d) for start, d in merged]
        f.ooo_bytes = held
        f.ooo_last = seq

    def _fin(self, f: _Flow, fin_seq: int, now: float, out: list[TcpAction]) -> None:
        if f.fin_received:
            self._want_ack(f)  # a retransmitted FIN: our ACK was lost
            if f.state is State.TIME_WAIT:
                self._arm(f, Timer.TIME_WAIT, now + self.config.time_wait)
            return
        if f.state not in _RECEIVING and f.state is not State.SYN_RECEIVED:
            return
        if fin_seq != f.rcv_nxt:
            f.ooo_fin = fin_seq  # data before the FIN is missing
            self._want_ack(f)
            return
        f.rcv_nxt = (f.rcv_nxt + 1) & MASK
        if seq_lt(f.rcv_adv, f.rcv_nxt):
            f.rcv_adv = f.rcv_nxt
        f.fin_received = True
        f.ooo_fin = None
        self._want_ack(f)
        out.append(DeliverEnd(f.conn))
        if f.state is State.ESTABLISHED:
            f.state = State.CLOSE_WAIT
        elif f.state is State.FIN_WAIT_1:
            f.state = State.CLOSING
        elif f.state is State.FIN_WAIT_2:
            self._time_wait(f, now, out)

    def _time_wait(self, f: _Flow, now: float, out: list[TcpAction]) -> None:
        f.state = State.TIME_WAIT
        self._arm(f, Timer.TIME_WAIT, now + self.config.time_wait)
        out.append(CloseFlow(f.conn, False, "closed"))

    def _output(self, f: _Flow, now: float, out: list[TcpAction]) -> None:
        """Send what the app gave us, as far as the client's window allows, then the FIN."""
        if f.state not in _SENDING:
            return
        buf = f.sndbuf
        buffered = len(buf)
        window_end = (f.snd_una + f.snd_wnd) & MASK
        window = None  # worked out once per burst (nothing is received meanwhile), if sent
        while True:
            sent = (f.snd_nxt - f.snd_una) & MASK
            unsent = buffered - sent
            if unsent > 0:
                room = (window_end - f.snd_nxt) & MASK
                if room == 0 or room >= HALF:
                    break
                n = min(unsent, room, f.snd_seg)
                flags = ACK | PSH if n == unsent else ACK
                if window is None:
                    window = self._window_field(f)
                with memoryview(buf) as view:  # one copy: a bytearray slice would make two
                    data = bytes(view[sent : sent + n])
                out.append(self._send(f, f.snd_nxt, flags, data, window))
                if f.timed_seq is None:
                    f.timed_seq, f.timed_at = f.snd_nxt, now
                f.snd_nxt = (f.snd_nxt + n) & MASK
                if seq_lt(f.snd_max, f.snd_nxt):
                    f.snd_max = f.snd_nxt
                continue
            if f.fin_queued and unsent == 0:
                # A FIN needs no window (Linux takes a bare FIN at a zero window).
                out.append(self._send(f, f.snd_nxt, FIN | ACK, b"", window))
                f.snd_nxt = (f.snd_nxt + 1) & MASK
                if seq_lt(f.snd_max, f.snd_nxt):
                    f.snd_max = f.snd_nxt
                if f.state is State.ESTABLISHED:
                    f.state = State.FIN_WAIT_1
                elif f.state is State.CLOSE_WAIT:
                    f.state = State.LAST_ACK
            break
        if f.snd_una != f.snd_max:
            if f.timer is not Timer.RETRANSMIT:
                self._arm(f, Timer.RETRANSMIT, now + f.rto)
        elif (
            f.snd_wnd == 0
            and (buffered or (f.fin_queued and not f.fin_sent))
            and f.timer is not Timer.PERSIST
        ):
            self._arm(f, Timer.PERSIST, now + f.rto)

    def _retransmit_first(self, f: _Flow, now: float, out: list[TcpAction]) -> None:
        self.stats.retransmits += 1
        f.timed_seq = None  # Karn: no RTT sample from a retransmitted segment
        in_flight = (f.snd_max - f.snd_una) & MASK
        n = min(f.snd_seg, len(f.sndbuf), in_flight)
        if n:
            out.append(self._send(f, f.snd_una, ACK, bytes(f.sndbuf[:n])))
        elif f.fin_sent:
            out.append(self._send(f, f.snd_una, FIN | ACK))

    # -- endings -----------------------------------------------------------------

    def _fail(self, f: _Flow, failure: OpenFailure, now: float, out: list[TcpAction]) -> None:
        f.state = State.FAILED
        f.failure = failure
        out.append(self._failure_answer(f, failure))
        # Kept a little, so that a retransmitted SYN gets the same answer at once.
        self._arm(f, Timer.FORGET, now + self.config.time_wait)

    def _failure_answer(self, f: _Flow, failure: OpenFailure) -> Send:
        if failure is OpenFailure.NET_UNREACHABLE:
            return Send(ip.build_icmp_unreachable(f.syn_packet, ip.ICMP_NET_UNREACHABLE))
        if failure is OpenFailure.HOST_UNREACHABLE:
            return Send(ip.build_icmp_unreachable(f.syn_packet, ip.ICMP_HOST_UNREACHABLE))
        return self._reply_reset(f.key, 0, f.rcv_nxt, RST | ACK)

    def _abort(self, f: _Flow, reason: str, out: list[TcpAction], send_rst: bool) -> None:
        if send_rst and f.state not in (State.CONNECTING, State.FAILED, State.TIME_WAIT):
            out.append(self._send(f, f.snd_nxt, RST | ACK))
        released = f.state in (State.TIME_WAIT, State.CLOSED)
        self._forget(f)
        if not released:
            out.append(CloseFlow(f.conn, True, reason))

    def _forget(self, f: _Flow) -> None:
        if f.state is State.CLOSED:
            return
        f.state = State.CLOSED
        f.timer = None
        self._flows.pop(f.key, None)
        self._by_conn.pop(f.conn, None)
        self._pending_acks.pop(f.conn, None)
        self._starved_rx.pop(f.conn, None)
        self._starved_tx.pop(f.conn, None)
        self._committed_rx -= f.committed_rx
        self._committed_tx -= f.committed_tx
        f.committed_rx = f.committed_tx = 0

    # -- building segments ---------------------------------------------------------

    @staticmethod
    def _advertised(f: _Flow) -> int:
        """What is left of the window we advertised."""
        return (f.rcv_adv - f.rcv_nxt) & MASK if seq_le(f.rcv_nxt, f.rcv_adv) else 0

    def _free(self, f: _Flow) -> int:
        """The window f may offer from rcv_nxt: its own buffer's room, and the pool's."""
        own = max(min(self.config.receive_buffer - f.undelivered, f.rcv_target) - f.ooo_bytes, 0)
        pool = self._window_room(f)
        current = self._advertised(f)
        if self._starved_rx and not self._feeding:
            pool = min(pool, current)  # flows waiting for the pool are served first
        if pool >= own:
            return own
        threshold = self._update_threshold(f)
        if pool - current < threshold <= own - current and f.conn not in self._starved_rx:
            # It wants a window the pool cannot give now: a window update once it can.
            self.stats.pool_waits += 1
            self._starved_rx[f.conn] = f
        return max(pool, 0)

    def _update_threshold(self, f: _Flow) -> int:
        # RFC 1122's receiver SWS avoidance: a segment, or half the flow's buffer.
        return min(self.config.mss, f.rcv_target // 2)

    def _window_field(self, f: _Flow) -> int:
        """The window to advertise now; remembers its right edge, which never moves left."""
        current = self._advertised(f)
        free = self._free(f)
        shift = f.rcv_wscale
        if free - current >= self._update_threshold(f):
            # A new edge, rounded down: what is advertised stays within the pool.
            value = min(free >> shift, 0xFFFF)
        else:
            # The old edge, rounded up: rounding down could pull it back; unless the
            # pool has not the few bytes that adds (RFC 7323 lets a scaled window
            # seem to shrink by its rounding).
            value = min((current + (1 << shift) - 1) >> shift, 0xFFFF)
            if value << shift > max(self._window_room(f), current):
                value = current >> shift
        edge = (f.rcv_nxt + (value << shift)) & MASK
        if seq_lt(f.rcv_adv, edge):
            f.rcv_adv = edge
            self._account(f)
        return value

    def _want_ack(self, f: _Flow) -> None:
        f.ack_pending = True
        self._pending_acks[f.conn] = f

    def _send(
        self, f: _Flow, seq: int, flags: int, payload: bytes = b"", window: int | None = None
    ) -> Send:
        options = b""
        if f.sack_ok and f.ooo and flags & ACK and not payload:
            options = ip.encode_options(sack=self._sack_blocks(f))
        if window is None:
            window = self._window_field(f)
        f.ack_pending = False
        if flags & RST:
            self.stats.resets_sent += 1
        self._ident = (self._ident + 1) & 0xFFFF
        header = f.hdr.header(seq, f.rcv_nxt, flags, window, payload, options, self._ident)
        return Send(header, f.snd_mss if len(payload) > f.snd_mss else 0, payload)

    @staticmethod
    def _sack_blocks(f: _Flow) -> tuple[tuple[int, int], ...]:
        blocks = [(s, (s + len(d)) & MASK) for s, d in f.ooo]
        # The block holding the newest segment goes first (RFC 2018).
        newest = [b for b in blocks if seq_le(b[0], f.ooo_last) and seq_lt(f.ooo_last, b[1])]
        rest = [b for b in blocks if b not in newest]
        return tuple((newest + rest)[:MAX_SACK_BLOCKS])

    def _syn_ack(self, f: _Flow, now: float) -> Send:
        window = min(self._free(f), 0xFFFF)  # a SYN's window is never scaled
        f.rcv_adv = (f.rcv_nxt + window) & MASK
        self._account(f)
        f.timed_at = now
        options = ip.encode_options(
            mss=self.config.mss,
            wscale=f.rcv_wscale if f.snd_wscale or f.rcv_wscale else None,
            sack_permitted=f.sack_ok,
        )
        return Send(f.hdr.packet(f.iss, f.rcv_nxt, SYN | ACK, window, b"", options))

    def _reply_reset(self, key: Key, seq: int, ack: int, flags: int) -> Send:
        client, cport, target, tport = key
        self.stats.resets_sent += 1
        partial = self.config.offload
        return Send(ip.build_tcp(target, client, tport, cport, seq, ack, flags, 0, partial=partial))

    def _reset_for(self, seg: TcpSegment) -> Send:
        """RFC 793's reply to a segment that belongs to no connection."""
        key = (seg.src, seg.sport, seg.dst, seg.dport)
        if seg.flags & ACK:
            return self._reply_reset(key, seg.ack, 0, RST)
        seglen = len(seg.payload) + (1 if seg.flags & SYN else 0) + (1 if seg.flags & FIN else 0)
        return self._reply_reset(key, 0, (seg.seq + seglen) & MASK, RST | ACK)

    def _rtt_sample(self, f: _Flow, sample: float) -> None:
        if sample < 0:
            return
        if f.srtt is None:
            f.srtt, f.rttvar = sample, sample / 2
        else:
            f.rttvar = 0.75 * f.rttvar + 0.25 * abs(f.srtt - sample)
            f.srtt = 0.875 * f.srtt + 0.125 * sample
        cfg = self.config
        f.rto = min(max(f.srtt + 4 * f.rttvar, cfg.rto_min), cfg.rto_max)
