"""Port-forward to a pod through the API server, speaking the WebSocket channel
protocol (v4.channel.k8s.io) that kubectl uses by default since 1.31.

Each stream is one WebSocket: the server opens channel 0 (data) and channel 1
(errors) for the port, each announced by a 2-byte little-endian port number.
Data frames carry the channel number as their first byte. websocket-client does
the HTTP upgrade (TLS, proxies); after it, ktpy reads and writes the frames
itself on the raw socket, and hands paramiko a socket-like Stream. The frames
are read by a pure core, FrameReader (frames in, actions out, as every core in
ktpy.sansio); Stream is its I/O.

The official client's `kubernetes.stream.portforward` copies its whole pending
buffer on every frame (quadratic on bulk transfers); here each frame is written
through as it arrives and nothing is buffered beyond the socket pair.
"""

from __future__ import annotations

import _socket
import collections
import contextlib
import errno
import os
import select
import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import websocket

from ktpy.logs import get_logger
from ktpy.sansio import Action

PROTOCOL = "v4.channel.k8s.io"
DATA_CHANNEL = 0
ERROR_CHANNEL = 1
OP_CONTINUATION, OP_TEXT, OP_BINARY = 0x0, 0x1, 0x2
OP_CLOSE, OP_PING, OP_PONG = 0x8, 0x9, 0xA
_DATA_OPCODES = (OP_TEXT, OP_BINARY)
_CONTROL_OPCODES = (OP_CLOSE, OP_PING, OP_PONG)
MAX_CONTROL_PAYLOAD = 125  # RFC 6455 5.5
CLOSE_PROTOCOL_ERROR = 1002
READ_CHUNK = 256 * 1024
# A frame begun and then not taken by the socket for this long: the path is dead
# (the tunnel's health check notices sooner; this is the writer's own backstop).
WRITE_STALL_SECONDS = 15.0

log = get_logger(__name__)
T = TypeVar("T")
# What a non-blocking read or write of a plain or TLS socket raises when it must wait.
_WOULD_BLOCK = (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError)


# The cluster module opens the WebSocket (it owns the API connection and its
# credentials); the tunnel only needs a path and subprotocols.
OpenWebSocket = Callable[[str, Sequence[str]], websocket.WebSocket]


class PortForwardError(Exception):
    """The API server or kubelet refused or broke the port-forward."""


@dataclass(frozen=True)
class Target:
    namespace: str
    pod: str
    port: int

    @property
    def path(self) -> str:
        return f"/api/v1/namespaces/{self.namespace}/pods/{self.pod}/portforward?ports={self.port}"


@dataclass(frozen=True, slots=True)
class Deliver(Action):
    """Bytes of the data channel, for the app (paramiko)."""

    data: bytes


@dataclass(frozen=True, slots=True)
class DeliverEnd(Action):
    """The server closed the WebSocket: the app reads the end after what was delivered."""


@dataclass(frozen=True, slots=True)
class Send(Action):
    """Write a frame to the server (masked by the writer, as every client frame is)."""

    payload: bytes
    opcode: int


@dataclass(frozen=True, slots=True)
class ReportError(Action):
    """Text of the error channel (the kubelet says why the port-forward failed)."""

    text: str


@dataclass(frozen=True, slots=True)
class Violation(Action):
    """The server broke RFC 6455: the stream ends here (after the close frame that
    says so) and the session with it; the reader ignores everything after."""

    reason: str


FrameAction = Deliver | DeliverEnd | Send | ReportError | Violation


class FramingError(Exception):
    """A frame RFC 6455 forbids from a server (masked, RSV bits, unknown opcode,
    oversized or fragmented control frame, a broken fragment sequence)."""


class FrameReader:
    """The server-to-client side of the channel protocol, pure: frames in,
    actions out (the vocabulary of ktpy.sansio).

    receive() takes whatever the socket gave and hands out the data channel's
    bytes as soon as they arrive, without waiting for a frame's end: a 1 MiB
    frame is streamed through in socket-sized pieces. A message may come in
    fragments (RFC 6455 5.4) with control frames between them: the channel
    byte starts the message, not each fragment, and a control frame never
    changes the message it interrupts. Control frames are answered whole: a
    ping with a pong, a close with the end. A frame the RFC forbids from a
    server ends the stream: a close frame with 1002, then ``Violation``.
    """

    def __init__(self) -> None:
        self._header = bytearray()
        self._remaining = 0  # payload bytes still to come in the current frame
        self._frame_opcode = 0  # of the frame being read (control or data)
        self._control = bytearray()
        self._in_message = False  # a data message started and its last fragment not yet read
        self._channel: int | None = None  # channel of the current data message
        self._at_message_start = False
        self._skip_port = 0  # port-number bytes still to drop at a channel's start
        self._broken = False  # after a violation nothing more is read
        self.announced: set[int] = set()

    def receive(self, data: bytes | memoryview) -> list[FrameAction]:
        """Bytes from the server, in any pieces."""
        if self._broken:
            return []
        actions: list[FrameAction] = []
        pieces, violation = self._frames(data)
        for channel, opcode, piece in pieces:
            if channel == DATA_CHANNEL:
                actions.append(Deliver(bytes(piece)))
            elif channel == ERROR_CHANNEL:
                actions.append(ReportError(bytes(piece).decode(errors="replace")))
            elif opcode == OP_PING:
                actions.append(Send(bytes(piece), OP_PONG))
            elif opcode == OP_CLOSE:
                actions.append(DeliverEnd())
        if violation is not None:
            self._broken = True  # what came before it in this read still counts
            reason = str(violation)
            close = struct.pack("!H", CLOSE_PROTOCOL_ERROR) + reason.encode()[:100]
            actions += [Send(close, OP_CLOSE), Violation(reason)]
        return actions

    def _frames(
        self, data: bytes | memoryview
    ) -> tuple[list[tuple[int | None, int, memoryview]], FramingError | None]:
        """(channel, opcode, piece) as they come, control frames whole with channel None;
        and the violation that stopped the parse, if one did."""
        out: list[tuple[int | None, int, memoryview]] = []
        try:
            self._parse(memoryview(data), out)
        except FramingError as exc:
            return out, exc
        return out, None

    def _parse(self, data: memoryview, out: list[tuple[int | None, int, memoryview]]) -> None:
        pos = 0
        while pos < len(data):
            if self._remaining == 0 and not self._header_complete():
                need = self._header_needed() - len(self._header)
                take = min(need, len(data) - pos)
                self._header += data[pos : pos + take]
                pos += take
                if not self._header_complete():
                    continue
                self._start_frame()
                if self._remaining == 0:
                    out.extend(self._end_frame())
                continue
            take = min(self._remaining, len(data) - pos)
            piece = data[pos : pos + take]
            pos += take
            self._remaining -= take
            if self._frame_opcode in _CONTROL_OPCODES:
                self._control += piece
            else:
                out.extend(self._data(piece))
            if self._remaining == 0:
                out.extend(self._end_frame())

    def _header_needed(self) -> int:
        if len(self._header) < 2:
            return 2
        length7 = self._header[1] & 0x7F
        return 2 + (2 if length7 == 126 else 8 if length7 == 127 else 0)

    def _header_complete(self) -> bool:
        return len(self._header) >= 2 and len(self._header) == self._header_needed()

    def _start_frame(self) -> None:
        first, second = self._header[0], self._header[1]
        fin, rsv, opcode = bool(first & 0x80), first & 0x70, first & 0x0F
        length7 = second & 0x7F
        if length7 == 126:
            length = struct.unpack("!H", self._header[2:4])[0]
        elif length7 == 127:
            length = struct.unpack("!Q", self._header[2:10])[0]
        else:
            length = length7
        self._header = bytearray()
        if second & 0x80:
            raise FramingError("the server sent a masked frame")
        if rsv:
            raise FramingError(f"the server set RSV bits ({rsv >> 4:#05b}) no extension allows")
        if opcode in _CONTROL_OPCODES:
            if length > MAX_CONTROL_PAYLOAD:
                raise FramingError(f"control frame of {length} bytes (at most 125)")
            if not fin:
                raise FramingError("fragmented control frame")
        elif opcode in _DATA_OPCODES:
            if self._in_message:
                raise FramingError("a new message began before the last one's final fragment")
            self._in_message = True
            self._at_message_start = True
            self._channel = None
        elif opcode == OP_CONTINUATION:
            if not self._in_message:
                raise FramingError("a continuation frame outside a message")
        else:
            raise FramingError(f"unknown opcode {opcode:#x}")
        if opcode not in _CONTROL_OPCODES and fin:
            self._in_message = False  # this frame ends its message
        self._frame_opcode = opcode
        self._remaining = length

    def _data(self, piece: memoryview) -> list[tuple[int | None, int, memoryview]]:
        if self._at_message_start:
            self._channel = piece[0]
            piece = piece[1:]
            self._at_message_start = False
            if self._channel not in self.announced:
                # the first 2 bytes a channel carries are its port number, not data
                self.announced.add(self._channel)
                self._skip_port = 2
            else:
                self._skip_port = 0
        skip = min(self._skip_port, len(piece))
        if skip:
            piece = piece[skip:]
            self._skip_port -= skip
        return [(self._channel, self._frame_opcode, piece)] if len(piece) else []

    def _end_frame(self) -> list[tuple[int | None, int, memoryview]]:
        if self._frame_opcode in _CONTROL_OPCODES:
            control, self._control = bytes(self._control), bytearray()
            return [(None, self._frame_opcode, memoryview(control))]
        return []


def close_frame(code: int, reason: bytes = b"") -> bytes:
    return mask_frame(struct.pack("!H", code) + reason, OP_CLOSE)


def _socket_shutdown(raw: socket.socket, how: int) -> None:
    _socket.socket.shutdown(raw, how)


def mask_frame(payload: bytes, opcode: int = 0x2) -> bytes:
    """A client-to-server frame: FIN set, masked with a fresh random key (RFC 6455 5.3)."""
    length = len(payload)
    if length < 126:
        header = struct.pack("!BB", 0x80 | opcode, 0x80 | length)
    elif length < 1 << 16:
        header = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, length)
    else:
        header = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, length)
    key = os.urandom(4)
    # One big-integer XOR runs in C: far cheaper than a Python loop per byte.
    repeated = (key * (length // 4 + 1))[:length]
    masked = (int.from_bytes(payload, "little") ^ int.from_bytes(repeated, "little")).to_bytes(
        length, "little"
    )
    return header + key + masked


class Stream:
    """One forwarded connection, as a socket-like object for paramiko.

    Frames are parsed in the caller's thread as it reads: no pump thread and no
    extra copy through a socket pair (measured on the bed, a pump thread and a
    socket pair halved throughput: 0.9 against 1.9 Gbit/s for the raw reads).
    """

    def __init__(self, raw: socket.socket, target: Target) -> None:
        self._raw = raw
        self.target = target
        # Frames are written whole, one at a time (paramiko's packets, our pongs).
        self._send_lock = threading.Lock()
        # One TLS call at a time: OpenSSL's connection object must not be used by two
        # threads at once, and CPython drops the GIL inside SSL_read/SSL_write. A read
        # racing a write corrupted the stream under load (about 80 new SSH channels a
        # second) and the runtime's WebSocket server dropped the port-forward. Waiting
        # for the socket happens outside this lock; only the call itself is inside.
        self._io_lock = threading.Lock()
        self._reader = FrameReader()
        self._buf = bytearray(READ_CHUNK)
        self._view = memoryview(self._buf)
        self._pending: collections.deque[bytes] = collections.deque()
        self._offset = 0  # what recv already handed out of _pending[0]
        self._eof = False
        self._eof_next = False  # the peer closed after the bytes of the last read
        self._closed = False  # paramiko's Transport.stop_thread reads this name
        self.error: str | None = None
        self.violation: str | None = None  # why the server's frames ended the stream
        # When bytes last came from the server: the tunnel's health is judged by it.
        self.last_received = time.monotonic()
        # The socket stays non-blocking and timeouts are ours (poll): switching its
        # mode around every call cost two system calls per read and per write.
        self._timeout = raw.gettimeout()
        raw.setblocking(False)
        # One poll object each way, registered once (one reader thread, paramiko's; one
        # writer at a time, under _send_lock).
        self._poll_in = select.poll()
        self._poll_in.register(raw, select.POLLIN)
        self._poll_out = select.poll()
        self._poll_out.register(raw, select.POLLOUT)

    # --- the socket interface paramiko uses ---------------------------------------

    def recv(self, size: int) -> bytes:
        while not self._pending:
            if self._eof:
                return b""
            self._fill()
        head, start = self._pending[0], self._offset
        end = start + size
        if end < len(head):
            # paramiko reads a packet's first block, then the rest: slice what it asks
            # for and keep an offset, instead of copying the remainder each time.
            self._offset = end
            return head[start:end]
        self._pending.popleft()
        self._offset = 0
        return head[start:] if start else head

    def send(self, data: bytes) -> int:
        # Frames stay under READ_CHUNK so the server's reads stay cheap.
        chunk = bytes(data[: READ_CHUNK - 1])
        self._send(mask_frame(bytes([DATA_CHANNEL]) + chunk))
        return len(chunk)

    def sendall(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[self.send(bytes(view)) :]

    def settimeout(self, timeout: float | None) -> None:
        self._timeout = timeout

    def gettimeout(self) -> float | None:
        return self._timeout

    def fileno(self) -> int:
        return self._raw.fileno()

    def close(self) -> None:
        """Never waits: a close frame only if no writer holds the stream and the socket
        takes it at once; the shutdown wakes any thread waiting on the socket."""
        if self._closed:
            return
        self._closed = True
        self._eof = True
        if self._send_lock.acquire(blocking=False):
            try:
                with contextlib.suppress(OSError, *_WOULD_BLOCK):
                    self._now(self._raw.send, memoryview(close_frame(1000)))
            finally:
                self._send_lock.release()
        with contextlib.suppress(OSError):
            # The OS-level shutdown, not SSLSocket's (which drops its TLS object while
            # another thread may be inside it): wakes every poll on this socket.
            _socket_shutdown(self._raw, socket.SHUT_RDWR)
        with contextlib.suppress(OSError):
            self._raw.close()

    # --- health -------------------------------------------------------------------

    def ping(self, payload: bytes = b"ktpy") -> bool:
        """Send a WebSocket ping if no writer holds the stream now; never waits for
        one. The server's pong (like any bytes from it) moves ``last_received``."""
        if self._closed or not self._send_lock.acquire(blocking=False):
            return False
        try:
            self._write_frame(mask_frame(payload, OP_PING), first_byte_within=0.0)
        except OSError:
            return False
        finally:
            self._send_lock.release()
        return True

    # --- frames -------------------------------------------------------------------

    def _now(self, call: Callable[[memoryview], T], buffer: memoryview) -> T:
        """Run one socket call (the socket never blocks), holding the TLS lock."""
        with self._io_lock:
            return call(buffer)

    def _wait(self, poller: select.poll, timeout: float | None) -> bool:
        if self._closed or self._raw.fileno() < 0:
            raise OSError(errno.EBADF, "port-forward stream closed")
        return bool(poller.poll(None if timeout is None else timeout * 1000))

    def _send(self, frame: bytes) -> None:
        """Write one frame whole, or raise TimeoutError having written none of it
        (paramiko then retries: it checks for its own close between tries)."""
        timeout = self._timeout
        if not self._send_lock.acquire(timeout=-1 if timeout is None else timeout):
            raise TimeoutError("timed out waiting for another writer")
        try:
            self._write_frame(frame, first_byte_within=timeout)
        finally:
            self._send_lock.release()

    def _write_frame(self, frame: bytes, first_byte_within: float | None) -> None:
        """Under the send lock. Never gives up part way through a frame: half a frame
        followed by paramiko's retry of the whole packet (with a new mask) would
        corrupt the stream. A frame that makes no progress for WRITE_STALL_SECONDS
        breaks the stream instead (ConnectionAbortedError: paramiko's transport ends)."""
        view = memoryview(frame)
        started = False
        while view:
            try:
                sent = self._now(self._raw.send, view)
            except _WOULD_BLOCK:
                sent = 0
            view = view[sent:]
            started = started or sent > 0
            if not view or sent:
                continue
            if not started:
                if not self._wait(self._poll_out, first_byte_within):
                    raise TimeoutError("timed out")  # nothing written: a retry is safe
            elif not self._wait(self._poll_out, WRITE_STALL_SECONDS):
                self._closed_by_stall()
                raise ConnectionAbortedError(
                    errno.ECONNABORTED,
                    f"port-forward write stalled for {WRITE_STALL_SECONDS:g}s mid-frame",
                )

    def _closed_by_stall(self) -> None:
        log.warning("port-forward write stalled; closing the stream", pod=self.target.pod)
        with contextlib.suppress(OSError):
            _socket_shutdown(self._raw, socket.SHUT_RDWR)

    def _fill(self) -> None:
        if self._eof_next:
            self._eof = True
            return
        tls = isinstance(self._raw, ssl.SSLSocket)
        while True:
            buffered = False
            if tls and isinstance(self._raw, ssl.SSLSocket):
                with self._io_lock:
                    buffered = self._raw.pending() > 0  # decrypted bytes poll cannot see
            if not buffered and not self._wait(self._poll_in, self._timeout):
                raise TimeoutError("timed out")  # as a read with a timeout: paramiko expects it
            n = self._read_available(tls)
            if n is not None:
                break  # else part of a TLS record only: wait for the rest
        if not n:
            self._eof = True
            return
        self.last_received = time.monotonic()
        for action in self._reader.receive(self._view[:n]):
            if type(action) is Deliver:
                self._pending.append(action.data)
            elif type(action) is ReportError:
                self.error = (self.error or "") + action.text
                log.warning("port-forward error", pod=self.target.pod, error=self.error)
            elif type(action) is Send:
                with contextlib.suppress(TimeoutError):  # a pong lost to a stuck writer
                    self._send(mask_frame(action.payload, action.opcode))
            elif type(action) is DeliverEnd:
                self._eof = True
            elif type(action) is Violation:
                self.violation = action.reason
                log.error("port-forward broke RFC 6455", pod=self.target.pod, reason=action.reason)
                self._eof = True  # what came before it is handed out, then the end

    def _read_available(self, tls: bool) -> int | None:
        """Bytes read into the buffer now (0: the peer closed), None if none were ready.

        TLS hands out one record (at most 16 KiB) per call, so keep reading while
        records are there: one wait and one lock per batch instead of per record.
        """
        filled = 0
        closed = False
        with self._io_lock:
            while filled < READ_CHUNK:
                try:
                    n = self._raw.recv_into(self._view[filled:])
                except _WOULD_BLOCK:
                    break
                if not n:
                    closed = True
                    break
                filled += n
                if not tls:
                    break  # a plain socket gave all it had
        if closed:
            self._eof_next = filled > 0  # hand out these bytes first, then the end
            return filled
        return filled or None


def open_stream(open_ws: OpenWebSocket, target: Target) -> Stream:
    """Open one forwarded connection to the pod's port."""
    try:
        ws = open_ws(target.path, [PROTOCOL])
    except websocket.WebSocketBadStatusException as exc:
        raise PortForwardError(f"API server refused port-forward to {target.pod}: {exc}") from exc
    except (OSError, websocket.WebSocketException) as exc:
        raise PortForwardError(f"port-forward to {target.pod} failed: {exc}") from exc
    raw = ws.sock  # the handshake is done: the frames are ours
    if raw is None:
        raise PortForwardError(f"port-forward to {target.pod}: the WebSocket closed at once")
    return Stream(raw, target)


def port_frame(port: int) -> bytes:
    """The 2-byte little-endian port announcement the server sends first on a channel."""
    return struct.pack("<H", port)
