"""Measuring one hop: round-trip times and throughput, shared by ``ktpy doctor`` and
the benchmarks (``benchmarks/probe.py`` is a command line over these).

A measurement is given what to time (a callable doing one round trip, a ``recv``
to drain) and a clock, and returns plain figures; where the bytes go (a socket,
an SSH channel, a DNS query through the tunnel) is the caller's business.
"""

from __future__ import annotations

import socket
import statistics
import struct
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

Clock = Callable[[], float]
CHUNK = 1 << 20


@dataclass(frozen=True)
class RoundTrips:
    """Round-trip times in milliseconds over ``count`` samples."""

    count: int
    p50_ms: float
    p99_ms: float

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


@dataclass(frozen=True)
class Throughput:
    """``bytes`` moved in ``seconds``."""

    bytes: int
    seconds: float

    @property
    def gbit_s(self) -> float:
        return self.bytes * 8 / self.seconds / 1e9 if self.seconds > 0 else 0.0

    @property
    def mbit_s(self) -> float:
        return self.gbit_s * 1000

    def as_dict(self) -> dict[str, float]:
        return {"bytes": self.bytes, "seconds": self.seconds, "gbit_s": self.gbit_s}


def summarize(samples_ms: list[float]) -> RoundTrips:
    """The median and the 99th percentile (the sample below which 99 % fall)."""
    if not samples_ms:
        raise ValueError("no samples")
    ordered = sorted(samples_ms)
    p99_index = max(0, int(len(ordered) * 0.99) - 1)
    return RoundTrips(len(ordered), statistics.median(ordered), ordered[p99_index])


def round_trips(
    once: Callable[[], object], count: int, *, warmup: int = 0, clock: Clock = time.perf_counter
) -> RoundTrips:
    """Time ``count`` calls of ``once`` (after ``warmup`` untimed ones)."""
    for _ in range(warmup):
        once()
    samples = []
    for _ in range(count):
        started = clock()
        once()
        samples.append((clock() - started) * 1000)
    return summarize(samples)


def own_share(
    once: Callable[[], object],
    beneath: Callable[[], object],
    count: int,
    *,
    warmup: int = 0,
    clock: Clock = time.perf_counter,
) -> tuple[RoundTrips, RoundTrips]:
    """A hop's own share of a round trip that also crosses the hops beneath it: ``once``
    and ``beneath`` timed in turn, and the differences of each pair, so the path's
    drift and jitter fall on both sides. Returns (whole round trips, own share)."""
    for _ in range(warmup):
        beneath()
        once()
    whole, own = [], []
    for _ in range(count):
        started = clock()
        beneath()
        middle = clock()
        once()
        ended = clock()
        whole.append((ended - middle) * 1000)
        own.append(max(0.0, (ended - middle) - (middle - started)) * 1000)
    return summarize(whole), summarize(own)


def drain(
    recv: Callable[[int], bytes], *, started: float, clock: Clock = time.perf_counter
) -> Throughput:
    """Read until the end of the stream; the bytes and the seconds since ``started``
    (taken by the caller before it asked for the bytes)."""
    got = 0
    while chunk := recv(CHUNK):
        got += len(chunk)
    return Throughput(got, clock() - started)


# --- HTTP over a socket, directly or through a SOCKS5 proxy (the benchmarks' targets) --------


def open_connection(host: str, port: int, socks_port: int | None) -> socket.socket:
    if socks_port is None:
        sock = socket.create_connection((host, port), timeout=30)
    else:
        sock = socket.create_connection(("127.0.0.1", socks_port), timeout=30)
        sock.sendall(b"\x05\x01\x00")
        if sock.recv(2) != b"\x05\x00":
            raise ConnectionError("the SOCKS5 proxy refused the no-auth method")
        name = host.encode()
        sock.sendall(b"\x05\x01\x00\x03" + bytes([len(name)]) + name + struct.pack("!H", port))
        reply = sock.recv(10)
        if len(reply) < 2 or reply[1] != 0:
            raise ConnectionError(f"SOCKS5 refused: {reply!r}")
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def read_response(sock: socket.socket, buffer: bytearray) -> None:
    """Read one small HTTP response with Content-Length (the echo server's /healthz)."""
    while b"\r\n\r\n" not in buffer:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("connection closed before the response ended")
        buffer += chunk
    head, _, rest = bytes(buffer).partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    while len(rest) < length:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("connection closed inside the response body")
        rest += chunk
    buffer[:] = rest[length:]


def http_bulk(host: str, port: int, size: int, socks_port: int | None) -> Throughput:
    """Download ``size`` bytes from an echo server's ``/bytes``."""
    sock = open_connection(host, port, socks_port)
    try:
        started = time.perf_counter()
        sock.sendall(
            f"GET /bytes?n={size} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode()
        )
        return drain(sock.recv, started=started)
    finally:
        sock.close()


def http_latency(host: str, port: int, count: int, socks_port: int | None) -> RoundTrips:
    """Request/response round trips of ``/healthz`` on one kept-alive connection."""
    sock = open_connection(host, port, socks_port)
    request = f"GET /healthz HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()
    buffer = bytearray()

    def once() -> None:
        sock.sendall(request)
        read_response(sock, buffer)

    try:
        return round_trips(once, count, warmup=20)
    finally:
        sock.close()
