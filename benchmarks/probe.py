"""Runs inside a laptop namespace: bulk download and request/response latency
against one HTTP target, directly or through a SOCKS5 proxy. Prints one JSON object.

    python -m benchmarks.probe bulk HOST PORT BYTES [--socks PORT]
    python -m benchmarks.probe latency HOST PORT COUNT [--socks PORT]
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import struct
import time


def open_connection(host: str, port: int, socks_port: int | None) -> socket.socket:
    if socks_port is None:
        sock = socket.create_connection((host, port), timeout=30)
    else:
        sock = socket.create_connection(("127.0.0.1", socks_port), timeout=30)
        sock.sendall(b"\x05\x01\x00")
        assert sock.recv(2) == b"\x05\x00"
        name = host.encode()
        sock.sendall(b"\x05\x01\x00\x03" + bytes([len(name)]) + name + struct.pack("!H", port))
        reply = sock.recv(10)
        assert reply[1] == 0, f"SOCKS5 refused: {reply!r}"
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def read_response(sock: socket.socket, buffer: bytearray) -> None:
    """Read one small HTTP response with Content-Length (the echo server's /healthz)."""
    while b"\r\n\r\n" not in buffer:
        buffer += sock.recv(65536)
    head, _, rest = bytes(buffer).partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    while len(rest) < length:
        rest += sock.recv(65536)
    buffer[:] = rest[length:]


def bulk(host: str, port: int, size: int, socks_port: int | None) -> dict[str, float]:
    sock = open_connection(host, port, socks_port)
    started = time.perf_counter()
    sock.sendall(
        f"GET /bytes?n={size} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode()
    )
    buf = bytearray(1 << 20)
    got = 0
    while True:
        n = sock.recv_into(buf)
        if not n:
            break
        got += n
    elapsed = time.perf_counter() - started
    sock.close()
    return {"bytes": got, "seconds": elapsed, "gbit_s": got * 8 / elapsed / 1e9}


def latency(host: str, port: int, count: int, socks_port: int | None) -> dict[str, float]:
    sock = open_connection(host, port, socks_port)
    request = f"GET /healthz HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()
    buffer = bytearray()
    for _ in range(20):  # warm-up
        sock.sendall(request)
        read_response(sock, buffer)
    samples = []
    for _ in range(count):
        started = time.perf_counter()
        sock.sendall(request)
        read_response(sock, buffer)
        samples.append((time.perf_counter() - started) * 1000)
    sock.close()
    samples.sort()
    return {
        "count": count,
        "p50_ms": statistics.median(samples),
        "p99_ms": samples[int(len(samples) * 0.99) - 1],
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("what", choices=["bulk", "latency"])
    parser.add_argument("host")
    parser.add_argument("port", type=int)
    parser.add_argument("amount", type=int)
    parser.add_argument("--socks", type=int)
    args = parser.parse_args()
    measure = bulk if args.what == "bulk" else latency
    print(json.dumps(measure(args.host, args.port, args.amount, args.socks)))


if __name__ == "__main__":
    main()
