"""TCP flows between a TUN device and flow openers: the TUN device, the pure
TCP core (ktpy.net.tcp), and the threads that relay each flow to an app-side
Flow. TCP only.

    stack = TunStack("ktpy0", open_flow)      # or an open TUN fd / TunTapDevice
    stack.start()
    ...
    stack.stop()                              # resets every flow, joins threads

Threads, and why:

- one packet loop reads the TUN fd in batches (non-blocking reads until the
  queue is empty), feeds them to ``TcpStack``, then flushes the ACKs for the
  whole batch and fires due timers;
- a small pool runs ``open_flow(host, port)``: it blocks (an SSH channel
  open), and a slow target must not stall other flows. Its OSError becomes
  the client's answer: ConnectionRefusedError a RST, ENETUNREACH or
  EHOSTUNREACH (or a timeout) an ICMP unreachable, anything else a RST;
- per flow, a reader (``Flow.recv`` -> the stack, only as much as the send
  buffer has room for) and, once needed, a writer (the stack's deliveries ->
  ``Flow.sendall``, reporting what was written so the receive window reopens).
  A Flow that can send without blocking (``send_nowait``: a socket, as the TUN
  child's flows are) gets its deliveries written at once by the thread that
  made them, as long as its socket takes them whole; its writer starts only
  when the socket is full once. Most flows (requests, answers) never need one:
  a thread less per flow (its start, its stack) and no hand-off per request.

One lock serializes the TcpStack and every write to the TUN fd, so segments
of a flow leave in the order the stack made them.

Offloads: on a device made with IFF_VNET_HDR (TunStack makes its own that
way) each packet carries a virtio-net header. TunStack then asks the kernel
for TSO and partial checksums (TUNSETOFFLOAD): the kernel hands over segments
of up to 64 KiB whatever the MTU, marked when their checksum was never
computed, and takes ours the same way. Python then never sums a payload and
pays its per-packet cost once per 64 KiB instead of once per MTU. Memory per flow is bounded
both ways by the TcpConfig buffers: a slow client closes its window and the
reader stops reading the Flow; a slow Flow keeps deliveries unconsumed and the
stack closes the client's window. All flows together stay within
``TcpConfig.max_buffered``: a reader first waits until its Flow has bytes, then
reserves the read in the stack's pool (``reserve_send``) and reads no more.

Only IPv4 TCP is carried; IPv6 and UDP packets are read and dropped (DNS is
served elsewhere).
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import functools
import math
import os
import select
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from queue import Empty, SimpleQueue
from typing import Protocol

from ktpy.config import TUN_MTU
from ktpy.logs import get_logger
from ktpy.net.relay import Flow, FlowOpener
from ktpy.net.tcp import (
    CloseFlow,
    Deliver,
    Delivered,
    DeliverEnd,
    FlowData,
    FlowEnd,
    FlowFailed,
    FlowOpened,
    FlowOpenFailed,
    OpenFailure,
    OpenFlow,
    ResumeReading,
    Send,
    TcpAction,
    TcpConfig,
    TcpStack,
)

log = get_logger(__name__)

CHUNK = 256 * 1024  # largest read from a Flow
BATCH = 64  # packets read from the TUN fd before the stack flushes ACKs
READ_SIZE = 65536 + 64  # any IPv4 packet, after a virtio-net header

_TUNGETIFF = 0x800454D2
_TUNSETOFFLOAD = 0x400454D0
_TUNGETVNETHDRSZ = 0x800454D7
_SIOCGIFMTU = 0x8921
_SIOCSIFTXQLEN = 0x8943
IFF_VNET_HDR = 0x4000
_TUN_F_CSUM = 0x01
_TUN_F_TSO4 = 0x02
_VNET_NEEDS_CSUM = 0x01  # virtio_net_hdr flags: the checksum is left to finish
_VNET_DATA_VALID = 0x02  # ... or it was checked already
_VNET_GSO_TCPV4 = 0x01
_VNET = struct.Struct("<BBHHHH")  # flags, gso_type, hdr_len, gso_size, csum_start, csum_offset


# How often a reader waiting for its Flow's bytes looks whether the flow was released.
RELEASE_CHECK_MS = 1000


class TunDevice(Protocol):
    """What TunStack uses of a python-pytun TunTapDevice."""

    @property
    def mtu(self) -> int: ...
    def fileno(self) -> int: ...


@dataclasses.dataclass(frozen=True)
class PacketSocket:
    """A message-preserving socket (``SOCK_SEQPACKET``) carrying one IP packet
    per message, in place of a TUN device: plain framing, no offloads. The
    fuzz tests drive the stack's real packet loop through one."""

    fd: int
    mtu: int
    name: str = "packets"


def open_failure_for(exc: OSError) -> OpenFailure:
    """How the kernel client learns why its target could not be opened."""
    if isinstance(exc, ConnectionRefusedError):
        return OpenFailure.REFUSED
    if exc.errno == errno.ENETUNREACH:
        return OpenFailure.NET_UNREACHABLE
    if exc.errno in (errno.EHOSTUNREACH, errno.ETIMEDOUT) or isinstance(exc, TimeoutError):
        return OpenFailure.HOST_UNREACHABLE
    return OpenFailure.FAILED


def device_info(fd: int) -> tuple[str, int]:
    """The interface name and IFF_* flags of an open TUN fd."""
    ifr = fcntl.ioctl(fd, _TUNGETIFF, bytes(40))
    return ifr[:16].rstrip(b"\0").decode(), int(struct.unpack_from("H", ifr, 16)[0])


def enable_offloads(fd: int) -> int:
    """Ask for TSO and partial checksums on a IFF_VNET_HDR device; returns
    the virtio-net header size. OSError if the kernel refuses."""
    fcntl.ioctl(fd, _TUNSETOFFLOAD, _TUN_F_CSUM | _TUN_F_TSO4)
    size = fcntl.ioctl(fd, _TUNGETVNETHDRSZ, bytes(4))
    return int(struct.unpack("i", size)[0])


def interface_mtu(name: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        ifr = fcntl.ioctl(s.fileno(), _SIOCGIFMTU, struct.pack("16si20x", name.encode(), 0))
    return int(struct.unpack_from("i", ifr, 16)[0])


def set_txqueuelen(name: str, length: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        fcntl.ioctl(s.fileno(), _SIOCSIFTXQLEN, struct.pack("16si20x", name.encode(), length))


class _Marker:
    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


_EOF = _Marker("EOF")  # the client sent FIN: half-close the Flow
_CLOSE = _Marker("CLOSE")  # done both ways: close the Flow after what is queued
_ABORT = _Marker("ABORT")  # reset: stop at once, the Flow is being closed


class _Handle:
    """One relayed flow's app side."""

    __slots__ = (
        "conn",
        "flow",
        "queue",
        "reader",
        "released",
        "running",
        "send_nowait",
        "space",
        "target",
        "writer",
    )

    def __init__(self, conn: int, flow: Flow, target: str) -> None:
        self.conn = conn
        self.flow = flow
        self.target = target
        self.queue: SimpleQueue[bytes | _Marker] = SimpleQueue()
        self.space = threading.Event()
        self.released = False
        # Written to without a thread while the socket takes it all (see the module).
        self.send_nowait: Callable[[bytes], int] | None = getattr(flow, "send_nowait", None)
        self.running = 2 if self.send_nowait is None else 1  # relay threads not yet finished
        self.reader: threading.Thread | None = None
        self.writer: threading.Thread | None = None

    @property
    def inline(self) -> bool:
        """Its client bytes go straight to its socket: no writer thread (yet)."""
        return self.writer is None and self.send_nowait is not None

    def new_writer(self, target: Callable[[_Handle], None]) -> threading.Thread:
        return threading.Thread(
            target=target, args=(self,), name=f"tun-{self.conn}-down", daemon=True
        )


class _Workers:
    """A few daemon threads for blocking calls (open_flow, Flow.close): daemon,
    so a connect that never returns cannot hold up the interpreter's exit."""

    def __init__(self, size: int, name: str) -> None:
        self._size = size
        self._name = name
        self._tasks: SimpleQueue[Callable[[], None] | None] = SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._idle = 0
        self._lock = threading.Lock()

    def submit(self, task: Callable[[], None]) -> None:
        with self._lock:
            if self._idle <= 0 and len(self._threads) < self._size:
                t = threading.Thread(
                    target=self._run, name=f"{self._name}-{len(self._threads)}", daemon=True
                )
                self._threads.append(t)
                self._idle += 1
                t.start()
            self._idle -= 1
        self._tasks.put(task)

    def _run(self) -> None:
        while (task := self._tasks.get()) is not None:
            try:
                task()
            except Exception:  # a task's own failure must not kill the worker
                log.exception("tun worker task failed")
            finally:
                with self._lock:
                    self._idle += 1

    def stop(self, timeout: float) -> None:
        for _ in self._threads:
            self._tasks.put(None)
        deadline = time.monotonic() + timeout
        for t in self._threads:
            t.join(max(deadline - time.monotonic(), 0))

    @property
    def threads(self) -> int:
        return sum(t.is_alive() for t in self._threads)


@dataclass
class TunCounters:
    packets_read: int = 0
    packets_written: int = 0
    write_errors: int = 0
    open_failures: int = 0
    packet_errors: int = 0  # packets the TCP core raised on (a bug: logged)


class TunStack:
    """Terminates the TCP flows the kernel routes into a TUN device and relays
    each to a Flow from ``open_flow``."""

    def __init__(
        self,
        tun: int | str | TunDevice | PacketSocket,
        open_flow: FlowOpener,
        *,
        mtu: int | None = None,
        config: TcpConfig | None = None,
        connect_workers: int = 32,
        clock: Callable[[], float] = time.monotonic,
        offload: bool = True,
    ) -> None:
        """tun: a device name (made here, up, with offloads unless offload is
        False, closed by stop()), or an open TUN fd or TunTapDevice (IFF_TUN |
        IFF_NO_PI, plus IFF_VNET_HDR for offloads) or a PacketSocket, left open. mtu: the
        device's, when it cannot be read here (a device in another network
        namespace)."""
        self._device: object | None = None  # a TunTapDevice we made and must close
        try:
            self._open_device(tun, mtu, offload)
        except BaseException:
            self._close_device()
            raise
        self.config = dataclasses.replace(config or TcpConfig(), mtu=self.mtu, offload=self.offload)
        self.open_flow = open_flow
        self.counters = TunCounters()
        self._clock = clock
        self._stack = TcpStack(self.config)
        self._lock = threading.Lock()
        self._handles: dict[int, _Handle] = {}  # flows whose app side is live
        self._live: set[_Handle] = set()  # handles whose threads may still run
        self._workers = _Workers(connect_workers, "tun-open")
        # Apart, so that slow opens filling the pool cannot hold a reset flow open.
        self._closers = _Workers(4, "tun-close")
        self._wake = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._sleep_until = -math.inf  # the loop's wake-up time while it waits
        self._stopping = False
        self._started = False
        self._closed = False
        self._fd_usable = True  # False once stopping: the fd may be closed and its number reused
        self.error: str | None = None  # why the packet loop died, if it did
        self._loop_thread = threading.Thread(target=self._loop, name="tun-loop", daemon=True)

    def _open_device(
        self, tun: int | str | TunDevice | PacketSocket, mtu: int | None, offload: bool
    ) -> None:
        self.fd: int
        self.name: str
        self.mtu: int
        if isinstance(tun, PacketSocket):
            self.fd, self.name, self.mtu = tun.fd, tun.name, tun.mtu
            self.vnet_header, self.offload = 0, False
            self._partial_header = self._plain_header = b""
            return
        if isinstance(tun, str):
            import pytun  # only needed when we make the device

            flags = pytun.IFF_TUN | pytun.IFF_NO_PI | (IFF_VNET_HDR if offload else 0)
            dev = pytun.TunTapDevice(name=tun, flags=flags)
            dev.mtu = mtu or TUN_MTU
            dev.up()
            self._device = dev
            self.fd = dev.fileno()
            self.name = dev.name
            self.mtu = dev.mtu
        elif isinstance(tun, int):
            self.fd = tun
            self.name = device_info(tun)[0]
            self.mtu = mtu or interface_mtu(self.name)
        else:
            self.fd = tun.fileno()
            self.name = device_info(self.fd)[0]
            self.mtu = mtu or tun.mtu
        # The framing follows the device; offloads only if the kernel agrees.
        self.vnet_header = 0  # bytes of virtio-net header before each packet
        if device_info(self.fd)[1] & IFF_VNET_HDR:
            try:
                self.vnet_header = enable_offloads(self.fd)
            except OSError as exc:
                raise OSError(exc.errno, f"TUN offloads refused on {self.name}: {exc}") from exc
        self.offload = self.vnet_header > 0
        self._partial_header = _VNET.pack(_VNET_NEEDS_CSUM, 0, 0, 0, 20, 16).ljust(
            self.vnet_header, b"\0"
        )
        self._plain_header = bytes(self.vnet_header)

    # -- lifecycle ------------------------------------------------------------------

    def start(self) -> TunStack:
        os.set_blocking(self.fd, False)
        self._started = True
        self._loop_thread.start()
        log.debug("tun stack started", device=self.name, mtu=self.mtu)
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Reset every flow, close every Flow, join the threads. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        deadline = time.monotonic() + timeout
        self._stopping = True
        self._poke()
        if self._started:
            self._loop_thread.join(timeout)
        with self._lock:
            self._carry_out(self._stack.abort_all("the TUN stack stopped"))
            self._fd_usable = False
            handles = list(self._live)
        for h in handles:
            self._close_flow(h)
        self._workers.stop(max(deadline - time.monotonic(), 0.1))
        self._closers.stop(max(deadline - time.monotonic(), 0.1))
        for h in handles:
            for t in (h.reader, h.writer):
                if t is not None:
                    t.join(max(deadline - time.monotonic(), 0))
        with self._lock:
            os.close(self._wake)
            self._close_device()
        log.debug("tun stack stopped", device=self.name)

    def _close_device(self) -> None:
        if self._device is not None:
            with contextlib.suppress(Exception):
                self._device.close()  # type: ignore[attr-defined]
            self._device = None

    def __enter__(self) -> TunStack:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- introspection -----------------------------------------------------------------

    def buffered_bytes(self) -> int:
        """Bytes held for all flows: the bound a slow reader on either side hits."""
        with self._lock:
            return self._stack.buffered_bytes()

    def flows(self) -> int:
        with self._lock:
            return len(self._stack)

    def relaying(self) -> int:
        """Flows whose app-side threads are still running."""
        with self._lock:
            return len(self._live)

    @property
    def stats(self) -> dict[str, int]:
        with self._lock:
            s = self._stack.stats
            return {
                **self.counters.__dict__,
                "flows": len(self._stack),
                "relaying": len(self._live),
                "buffered_bytes": self._stack.buffered_bytes(),
                "committed_bytes": self._stack.committed_bytes(),
                "committed_peak": s.committed_peak,
                "max_buffered": self.config.max_buffered,
                "pool_waits": s.pool_waits,
                "malformed": s.malformed,
                "ignored": s.ignored,
                "retransmits": s.retransmits,
                "resets_sent": s.resets_sent,
                "resets_received": s.resets_received,
                "out_of_order": s.out_of_order,
                "workers": self._workers.threads + self._closers.threads,
            }

    # -- the packet loop ---------------------------------------------------------------

    def _loop(self) -> None:
        fd, stack, lock, clock, counters = (
            self.fd,
            self._stack,
            self._lock,
            self._clock,
            self.counters,
        )
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        poller.register(self._wake, select.POLLIN)
        read = os.read
        header = self.vnet_header
        trusted_flags = _VNET_NEEDS_CSUM | _VNET_DATA_VALID
        with lock:
            deadline = stack.next_deadline()
            self._sleep_until = math.inf if deadline is None else deadline
        try:
            while not self._stopping:
                timeout = None
                if deadline is not None:
                    timeout = max(math.ceil((deadline - clock()) * 1000), 0)
                events = poller.poll(timeout)
                if any(efd == self._wake for efd, _ in events):
                    with contextlib.suppress(BlockingIOError):
                        os.eventfd_read(self._wake)
                packets = []
                for _ in range(BATCH):
                    try:
                        packets.append(read(fd, READ_SIZE))
                    except BlockingIOError:
                        break
                counters.packets_read += len(packets)
                now = clock()
                with lock:
                    self._sleep_until = -math.inf  # awake: no need to poke it
                    actions: list[TcpAction] = []
                    for packet in packets:
                        try:
                            if header:
                                trusted = bool(packet[0] & trusted_flags)
                                actions += stack.receive(packet, now, trusted, header)
                            else:
                                actions += stack.receive(packet, now)
                        except Exception:
                            # A bug on one packet must not stop every flow: drop it, say so.
                            counters.packet_errors += 1
                            log.exception("tun stack failed on a packet", device=self.name)
                    actions += stack.expire(now)
                    actions += stack.flush(now)
                    self._carry_out(actions)
                    # Set while the lock is held: a timer armed by another thread
                    # from now on pokes the loop if it is earlier.
                    deadline = stack.next_deadline()
                    self._sleep_until = math.inf if deadline is None else deadline
        except OSError as exc:
            if not self._stopping:
                self.error = str(exc)
                log.exception("tun device read failed: stack stopped", device=self.name)
                self._stopping = True

    def _poke(self) -> None:
        with contextlib.suppress(OSError):
            os.eventfd_write(self._wake, 1)

    def _after_event(self) -> None:
        """Wake the loop if an event from another thread set an earlier timer. Lock held."""
        deadline = self._stack.next_deadline()
        if deadline is not None and deadline < self._sleep_until:
            self._poke()

    def _carry_out(self, actions: list[TcpAction]) -> None:
        """Lock held: writes to the fd are serialized and in the stack's order."""
        for action in actions:
            if type(action) is Send:
                self._write(action)
            elif type(action) is Deliver:
                h = self._handles.get(action.conn)
                if h is not None:
                    self._deliver(h, action.data, actions)
            elif type(action) is ResumeReading:
                h = self._handles.get(action.conn)
                if h is not None:
                    h.space.set()
            elif type(action) is DeliverEnd:
                h = self._handles.get(action.conn)
                if h is not None:
                    if h.inline:
                        with contextlib.suppress(OSError, EOFError):
                            h.flow.shutdown_write()
                    else:
                        h.queue.put(_EOF)
            elif type(action) is OpenFlow:
                if not self._stopping:
                    self._workers.submit(functools.partial(self._open, action))
            elif type(action) is CloseFlow:
                self._release(action)

    def _deliver(self, h: _Handle, data: bytes, actions: list[TcpAction]) -> None:
        """Lock held: client bytes for h's Flow. Written here if it has no writer and
        its socket takes them whole (what was written reopens the window: the actions
        that follow are carried out by the same loop); else the writer gets the rest."""
        send = h.send_nowait if h.inline else None
        if send is not None:
            try:
                sent = send(data)
            except OSError:
                sent = 0  # the writer meets the error again and fails the flow
            if sent:
                actions += self._stack.handle(Delivered(h.conn, sent), self._clock())
            if sent == len(data):
                return
            data = data[sent:]
            self._start_writer(h)
        h.queue.put(data)

    def _start_writer(self, h: _Handle) -> None:
        """Lock held: h's writer thread, once its Flow's socket was full."""
        writer = h.new_writer(self._write_app)
        h.writer = writer
        h.running += 1
        self._live.add(h)  # its reader may be done already
        writer.start()

    def _write(self, action: Send) -> None:
        if not self._fd_usable:
            return
        packet, payload = action.packet, action.payload
        try:
            if not self.vnet_header:
                os.writev(self.fd, (packet, payload))
            elif packet[9] != 6:  # not TCP (an ICMP error): checksummed in full
                os.writev(self.fd, (self._plain_header, packet, payload))
            elif action.gso:
                vnet = _VNET.pack(
                    _VNET_NEEDS_CSUM, _VNET_GSO_TCPV4, len(packet), action.gso, 20, 16
                )
                os.writev(self.fd, (vnet.ljust(self.vnet_header, b"\0"), packet, payload))
            else:
                os.writev(self.fd, (self._partial_header, packet, payload))
            self.counters.packets_written += 1
        except OSError as exc:
            # A dropped packet is what the TCP core recovers from; a dead
            # device shows up in the read loop.
            self.counters.write_errors += 1
            if self.counters.write_errors == 1:
                log.warning("tun write failed", device=self.name, error=str(exc))

    # -- opening flows ---------------------------------------------------------------

    def _open(self, action: OpenFlow) -> None:
        target = f"{action.host}:{action.port}"
        try:
            flow = self.open_flow(action.host, action.port)
        except OSError as exc:
            failure = open_failure_for(exc)
            log.info("tun flow failed", conn=action.conn, target=target, reason=str(exc))
            self.counters.open_failures += 1
            with self._lock:
                event = FlowOpenFailed(action.conn, failure)
                self._carry_out(self._stack.handle(event, self._clock()))
                self._after_event()
            return
        except Exception:
            log.exception("open_flow raised", conn=action.conn, target=target)
            self.counters.open_failures += 1
            with self._lock:
                event = FlowOpenFailed(action.conn, OpenFailure.FAILED)
                self._carry_out(self._stack.handle(event, self._clock()))
            return
        h = _Handle(action.conn, flow, target)
        reader = threading.Thread(
            target=self._read_app, args=(h,), name=f"tun-{h.conn}-up", daemon=True
        )
        writer = h.new_writer(self._write_app) if h.send_nowait is None else None
        h.reader, h.writer = reader, writer
        with self._lock:
            actions = self._stack.handle(FlowOpened(action.conn), self._clock())
            gone = self._stopping or any(type(a) is CloseFlow for a in actions)
            if not gone:
                self._handles[h.conn] = h
                self._live.add(h)
            self._carry_out(actions)
            self._after_event()
        if gone:
            with contextlib.suppress(OSError, EOFError):
                flow.close()
            return
        log.debug("tun flow opened", conn=h.conn, target=target, client=action.client)
        reader.start()
        if writer is not None:
            writer.start()

    # -- relaying ------------------------------------------------------------------------

    @contextlib.contextmanager
    def _relaying(self, h: _Handle) -> Iterator[None]:
        """Around a flow's relay thread: a failure of the flow is told to the client,
        and the thread is accounted for however it ends."""
        try:
            yield
        except (OSError, EOFError) as exc:
            self._app_failed(h, exc)
        except Exception as exc:  # a Flow's own error type: the client must still hear
            log.exception("tun flow relay failed", conn=h.conn, target=h.target)
            self._app_failed(h, exc)
        finally:
            self._thread_done(h)

    def _read_app(self, h: _Handle) -> None:
        """Flow -> client, as fast as the client's window drains our send buffer.

        The read's size is set aside in the stack's pool before it is made
        (``reserve_send``), so that readers of many flows cannot together take more
        than the pool; and a Flow with a file descriptor is first waited on until it
        has bytes, so that an idle flow holds no reservation."""
        stack, lock, clock = self._stack, self._lock, self._clock
        fileno = getattr(h.flow, "fileno", None)
        poller: select.poll | None = None
        with self._relaying(h):
            if fileno is not None:
                fd = fileno()
                if fd < 0:  # closed before this thread ran (a reset, usually)
                    raise OSError(errno.EBADF, "the flow was closed before it was read")
                poller = select.poll()
                poller.register(fd, select.POLLIN)
            while True:
                if poller is not None:
                    # Bytes, EOF or an error: recv says which. Never without end: once
                    # the writer closed the Flow its fd number may belong to another
                    # socket already, whose silence would hold this thread for good.
                    ready = poller.poll(RELEASE_CHECK_MS)
                    if h.released:
                        return
                    if not ready:
                        continue
                h.space.clear()
                with lock:
                    space = stack.reserve_send(h.conn, CHUNK)
                if space is None:
                    return
                if space == 0:
                    h.space.wait()
                    continue
                try:
                    data = h.flow.recv(space)
                except TimeoutError:
                    # A Flow with a timeout set: an idle flow is no failure, and
                    # a recv that timed out took nothing, so asking again is safe.
                    with lock:
                        self._carry_out(stack.release_send(h.conn))
                    if h.released:
                        return
                    continue
                with lock:
                    if data:
                        self._carry_out(stack.handle(FlowData(h.conn, data), clock()))
                    else:
                        self._carry_out(stack.handle(FlowEnd(h.conn), clock()))
                    self._after_event()
                if not data:
                    return

    def _write_app(self, h: _Handle) -> None:
        """Client -> Flow; what was written reopens the client's window."""
        stack, lock, clock, queue = self._stack, self._lock, self._clock, h.queue
        with self._relaying(h):
            while True:
                item = queue.get()
                chunks: list[bytes] = []
                marker: _Marker | None = None
                while True:  # take everything queued: one sendall for a burst
                    if isinstance(item, _Marker):
                        marker = item
                        break
                    chunks.append(item)
                    try:
                        item = queue.get_nowait()
                    except Empty:
                        break
                if chunks:
                    data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
                    h.flow.sendall(data)
                    with lock:
                        self._carry_out(stack.handle(Delivered(h.conn, len(data)), clock()))
                        self._after_event()
                if marker is _EOF:
                    with contextlib.suppress(OSError, EOFError):
                        h.flow.shutdown_write()
                elif marker is _CLOSE:
                    with contextlib.suppress(Exception):
                        h.flow.close()
                    return
                elif marker is _ABORT:
                    return

    def _app_failed(self, h: _Handle, exc: BaseException) -> None:
        if h.released:
            return  # closing the Flow ourselves is what broke it
        reason = str(exc) or type(exc).__name__
        with self._lock:
            self._carry_out(self._stack.handle(FlowFailed(h.conn, reason), self._clock()))

    def _release(self, action: CloseFlow) -> None:
        """Lock held. The flow is over: the app side goes, cleanly or not."""
        h = self._handles.pop(action.conn, None)
        if h is None:
            return
        h.released = True
        h.space.set()  # a reader waiting for room finds the flow gone
        if action.reset:
            log.debug("tun flow reset", conn=h.conn, target=h.target, reason=action.reason)
            h.queue.put(_ABORT)
            # Closing is what interrupts a blocked recv or sendall; it may
            # block itself (an SSH channel close), so not on this thread.
            self._closers.submit(lambda: self._close_flow(h))
        else:
            log.debug("tun flow closed", conn=h.conn, target=h.target)
            if h.inline:
                with contextlib.suppress(Exception):  # nothing queued: close it now
                    h.flow.close()
            else:
                h.queue.put(_CLOSE)

    def _close_flow(self, h: _Handle) -> None:
        h.released = True
        h.space.set()
        h.queue.put(_ABORT)
        with contextlib.suppress(Exception):
            h.flow.close()

    def _thread_done(self, h: _Handle) -> None:
        with self._lock:
            h.running -= 1
            if h.running == 0:
                self._live.discard(h)
