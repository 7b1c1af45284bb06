"""The load tool of the suite (benchmarks/suite.py): run wherever the client
stands (a laptop of the bed, the node, a pod's network namespace), against one
HTTP target of the bed's echo server, directly or through a SOCKS5 proxy.
Prints one JSON object; every scenario reports what it moved (bytes, requests,
connections) so the caller can check it moved what it was asked to.

    python -m benchmarks.load bulk HOST PORT --bytes N --streams K --direction down|up
    python -m benchmarks.load rr HOST PORT --requests N --conns K
    python -m benchmarks.load churn HOST PORT --connections N --workers K
    python -m benchmarks.load hold HOST PORT --conns N    (then waits for a line on stdin)
    python -m benchmarks.load dns NAME... --via getaddrinfo|SERVER:PORT --count N
    python -m benchmarks.load first HOST PORT --timeout S
    python -m benchmarks.load steps    (then one JSON argv list a line on stdin)
Add --socks PORT to go through a SOCKS5 proxy on 127.0.0.1.

benchmarks/probe.py (bulk download and latency on one connection) stays as it
is: `ktpy doctor` takes its measuring core.
"""

from __future__ import annotations

import argparse
import json
import resource
import secrets
import socket
import statistics
import struct
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

CHUNK = 1 << 20


def open_connection(host: str, port: int, socks: int | None, timeout: float = 30) -> socket.socket:
    """A TCP connection to host:port, through the SOCKS5 proxy on 127.0.0.1:socks if given."""
    if socks is None:
        sock = socket.create_connection((host, port), timeout=timeout)
    else:
        sock = socket.create_connection(("127.0.0.1", socks), timeout=timeout)
        try:
            _socks5_connect(sock, host, port)
        except BaseException:
            sock.close()
            raise
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def _socks5_connect(sock: socket.socket, host: str, port: int) -> None:
    sock.sendall(b"\x05\x01\x00")
    if _exact(sock, 2) != b"\x05\x00":
        raise OSError("SOCKS5: no acceptable method")
    name = host.encode()
    sock.sendall(b"\x05\x01\x00\x03" + bytes([len(name)]) + name + struct.pack("!H", port))
    reply = _exact(sock, 4)
    if reply[1] != 0:
        raise OSError(f"SOCKS5 refused: code {reply[1]}")
    if reply[3] == 3:  # a name: its length first
        _exact(sock, _exact(sock, 1)[0] + 2)
    else:
        _exact(sock, (16 if reply[3] == 4 else 4) + 2)


def _exact(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise OSError(f"closed after {len(data)} of {size} bytes")
        data += chunk
    return data


class Response:
    """Reads HTTP/1.1 responses with a Content-Length off one connection."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = b""
        self.body = b""  # the last body, when it came with the head (a small one)

    def read(self) -> tuple[bytes, int]:
        """(head, body length) of the next response; the body is read and dropped."""
        while b"\r\n\r\n" not in self.buffer:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise OSError("closed before a response")
            self.buffer += chunk
        head, _, rest = self.buffer.partition(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n")[1:]:
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":", 1)[1])
        if not head.startswith(b"HTTP/1.1 200"):
            raise OSError(f"not 200: {head[:60]!r}")
        got = len(rest)
        if got >= length:
            self.body, self.buffer = rest[:length], rest[length:]
            return head, length
        if length <= 65536:  # small: keep it (an upload's JSON answer)
            self.body = rest + _exact(self.sock, length - got)
            self.buffer = b""
            return head, length
        self.buffer = b""
        buf = bytearray(CHUNK)
        while got < length:
            n = self.sock.recv_into(buf, min(CHUNK, length - got))
            if not n:
                raise OSError(f"closed after {got} of {length} body bytes")
            got += n
        return head, length


def _get(host: str, path: str, close: bool = False) -> bytes:
    extra = "Connection: close\r\n" if close else ""
    return f"GET {path} HTTP/1.1\r\nHost: {host}\r\n{extra}\r\n".encode()


def _percentiles(samples_ms: list[float]) -> dict[str, float]:
    ordered = sorted(samples_ms)
    if not ordered:
        return {}

    def at(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(len(ordered) * q))], 4)

    return {
        "p50_ms": round(statistics.median(ordered), 4),
        "p99_ms": at(0.99),
        "p99_9_ms": at(0.999),
    }


def _split(total: int, parts: int) -> list[int]:
    """total in parts that differ by at most one."""
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


def _in_threads(count: int, work: Callable[[int], None]) -> float:
    """Run work(0..count-1) in threads; the wall time; the first error re-raised."""
    errors: list[BaseException] = []

    def guarded(i: int) -> None:
        try:
            work(i)
        except BaseException as exc:  # noqa: BLE001 - handed to the caller
            errors.append(exc)

    threads = [threading.Thread(target=guarded, args=(i,)) for i in range(count)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return time.perf_counter() - started


# --- scenarios ---------------------------------------------------------------------------


def bulk(args: argparse.Namespace) -> dict[str, Any]:
    """args.bytes in total over args.streams connections, downloads or uploads at once."""
    shares = _split(args.bytes, args.streams)
    moved = [0] * args.streams

    def down(i: int) -> None:
        with open_connection(args.host, args.port, args.socks) as sock:
            sock.sendall(_get(args.host, f"/bytes?n={shares[i]}", close=True))
            moved[i] = Response(sock).read()[1]

    def up(i: int) -> None:
        share = shares[i]
        with open_connection(args.host, args.port, args.socks) as sock:
            sock.sendall(
                f"POST /upload HTTP/1.1\r\nHost: {args.host}\r\nContent-Length: {share}\r\n"
                "Connection: close\r\n\r\n".encode()
            )
            block = memoryview(bytes(CHUNK))
            left = share
            while left:
                left -= sock.send(block[: min(left, CHUNK)])
            response = Response(sock)
            response.read()
            moved[i] = int(json.loads(response.body)["bytes"])

    seconds = _in_threads(args.streams, down if args.direction == "down" else up)
    total = sum(moved)
    return {
        "bytes": total,
        "asked": args.bytes,
        "seconds": round(seconds, 4),
        "gbit_s": round(total * 8 / seconds / 1e9, 4),
    }


def rr(args: argparse.Namespace) -> dict[str, Any]:
    """Small request/response pairs, closed loop, on args.conns held connections."""
    counts = _split(args.requests, args.conns)
    samples: list[list[float]] = [[] for _ in range(args.conns)]
    request = _get(args.host, "/healthz")

    def run(i: int) -> None:
        with open_connection(args.host, args.port, args.socks) as sock:
            response = Response(sock)
            for _ in range(20):  # warm-up
                sock.sendall(request)
                response.read()
            mine = samples[i]
            for _ in range(counts[i]):
                started = time.perf_counter_ns()
                sock.sendall(request)
                response.read()
                mine.append((time.perf_counter_ns() - started) / 1e6)

    seconds = _in_threads(args.conns, run)
    every = [s for mine in samples for s in mine]
    return {
        "requests": len(every),
        "asked": args.requests,
        "per_s": round(len(every) / seconds, 1),
        **_percentiles(every),
    }


def churn(args: argparse.Namespace) -> dict[str, Any]:
    """New connections, one request each, closed loop with args.workers workers: the
    time of each from connect() to the response's last byte (the whole path; a TUN
    stack or a SOCKS proxy may accept before the far end is reached), the time until
    connect() (and the SOCKS handshake) returned, and the rate."""
    counts = _split(args.connections, args.workers)
    samples: list[list[float]] = [[] for _ in range(args.workers)]
    connects: list[list[float]] = [[] for _ in range(args.workers)]
    failed = [0] * args.workers
    request = _get(args.host, "/healthz", close=True)

    def run(i: int) -> None:
        for _ in range(counts[i]):
            started = time.perf_counter_ns()
            try:
                with open_connection(args.host, args.port, args.socks, timeout=10) as sock:
                    connected = time.perf_counter_ns()
                    sock.sendall(request)
                    Response(sock).read()
            except OSError:
                failed[i] += 1
                continue
            samples[i].append((time.perf_counter_ns() - started) / 1e6)
            connects[i].append((connected - started) / 1e6)

    seconds = _in_threads(args.workers, run)
    every = [s for mine in samples for s in mine]
    connect_only = _percentiles([s for mine in connects for s in mine])
    return {
        "connections": len(every),
        "asked": args.connections,
        "failed": sum(failed),
        "per_s": round(len(every) / seconds, 1),
        **_percentiles(every),
        **{f"connect_{k}": v for k, v in connect_only.items()},
    }


def hold(args: argparse.Namespace) -> dict[str, Any]:
    """args.conns connections open at once, one request answered on each; then says
    "held" on stderr and keeps them until a line comes on stdin (the caller samples
    the tunnel's processes meanwhile), then one more request on each."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = args.conns + 64
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(max(want, soft), hard), hard))
    socks: list[tuple[socket.socket, Response]] = []
    errors: dict[str, int] = {}
    request = _get(args.host, "/healthz")

    def fail(exc: BaseException) -> None:
        key = type(exc).__name__ + (f" {exc.errno}" if isinstance(exc, OSError) else "")
        errors[key] = errors.get(key, 0) + 1

    started = time.perf_counter()
    for _ in range(args.conns):
        try:
            sock = open_connection(args.host, args.port, args.socks, timeout=20)
            sock.sendall(request)
            socks.append((sock, Response(sock)))
        except OSError as exc:
            fail(exc)
    answered = 0
    kept: list[tuple[socket.socket, Response]] = []
    for sock, response in socks:
        try:
            response.read()
            answered += 1
            kept.append((sock, response))
        except OSError as exc:
            fail(exc)
            sock.close()
    opened = time.perf_counter() - started
    print("held", file=sys.stderr, flush=True)
    sys.stdin.readline()
    again = 0
    for sock, response in kept:
        try:
            sock.sendall(request)
            response.read()
            again += 1
        except OSError as exc:
            fail(exc)
        sock.close()
    return {
        "connections": args.conns,
        "answered": answered,
        "answered_again": again,
        "errors": sum(errors.values()),
        "error_kinds": errors,
        "open_seconds": round(opened, 3),
    }


def dns(args: argparse.Namespace) -> dict[str, Any]:
    """Lookups of args.names in turn (a name with {} gets a fresh token each time:
    never cached anywhere), one at a time, through getaddrinfo (the machine's
    resolver) or straight at a server over UDP (``--tcp``: over one held TCP
    connection, RFC 7766 framing, as ktpy's server asks the shadow pod's dnsmasq;
    through a SOCKS5 proxy with ``--socks``).
    Only the lookup is timed: a query is packed before and its answer checked after
    (dnslib's Python parsing would otherwise add a tenth of a millisecond to every
    server series)."""
    import dnslib  # the suite's own dependency; not needed by the other scenarios

    def names() -> str:  # {} -> "a-b-c": with "10-{}.NS.pod.<domain>", a pod name
        return args.name.replace("{}", "-".join(str(secrets.randbelow(254) + 1) for _ in "abc"))

    def server() -> socket.socket:
        host, _, port = args.via.rpartition(":")
        if args.tcp:
            return open_connection(host, int(port), args.socks, timeout=5)
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        udp.connect((host, int(port)))
        udp.settimeout(5)
        return udp

    sock = (
        server() if args.via != "getaddrinfo" else socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    )

    def prepare(name: str) -> bytes:
        return bytes(dnslib.DNSRecord.question(name).pack()) if args.via != "getaddrinfo" else b""

    def ask(name: str, query: bytes) -> Any:
        if not query:
            return socket.getaddrinfo(name, 80, socket.AF_INET, socket.SOCK_STREAM)
        nonlocal sock
        if args.tcp:
            for fresh in (False, True):  # dnsmasq closes after 100 queries: ask again once
                if fresh:
                    sock.close()
                    sock = server()
                try:
                    sock.sendall(struct.pack("!H", len(query)) + query)
                    (size,) = struct.unpack("!H", _exact(sock, 2))
                    return _exact(sock, size)
                except OSError:
                    if fresh:
                        raise
        sock.send(query)
        while True:
            reply = sock.recv(4096)
            if reply[:2] == query[:2]:
                return reply

    def answer_of(name: str, reply: Any) -> str:
        if isinstance(reply, list):
            return str(reply[0][4][0])
        record = dnslib.DNSRecord.parse(reply)
        found = [r for r in record.rr if r.rtype == dnslib.QTYPE.A]
        if record.header.rcode != dnslib.RCODE.NOERROR or not found:
            raise OSError(f"no A record for {name}: {dnslib.RCODE[record.header.rcode]}")
        return str(found[-1].rdata)

    if "{}" not in args.name:
        name = names()
        answer_of(name, ask(name, prepare(name)))  # the one miss of the cached series
    samples: list[float] = []
    failed = 0
    answer = ""
    for _ in range(args.count):
        name = names()
        query = prepare(name)
        started = time.perf_counter_ns()
        try:
            reply = ask(name, query)
        except OSError:
            failed += 1
            continue
        elapsed = (time.perf_counter_ns() - started) / 1e6
        try:
            answer = answer_of(name, reply)
        except OSError:
            failed += 1
            continue
        samples.append(elapsed)
    sock.close()
    if args.expect and answer != args.expect:
        raise SystemExit(f"{args.name} resolved to {answer!r}, not {args.expect}")
    return {"queries": len(samples), "asked": args.count, "failed": failed, **_percentiles(samples)}


def first(args: argparse.Namespace) -> dict[str, Any]:
    """A new attempt every 20 ms, each its own thread with 1 s to answer (an attempt
    before the route exists hangs on a dropped SYN: one at a time would measure that
    timeout); time.monotonic() when the first one succeeded (CLOCK_MONOTONIC is the
    machine's: the caller compares it with its own)."""
    won = threading.Event()
    at: list[float] = []
    tries = 0

    def attempt() -> None:
        try:
            with open_connection(args.host, args.port, args.socks, timeout=1) as sock:
                sock.sendall(_get(args.host, "/healthz", close=True))
                Response(sock).read()
        except OSError:
            return
        at.append(time.monotonic())
        won.set()

    deadline = time.monotonic() + args.timeout
    while not won.wait(0.02):
        if time.monotonic() > deadline:
            raise SystemExit(f"no answer from {args.host}:{args.port} within {args.timeout}s")
        tries += 1
        threading.Thread(target=attempt, daemon=True).start()
    return {"at": min(at), "tries": tries}


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__)
    sub = parser.add_subparsers(dest="what", required=True)

    def target(name: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name)
        p.add_argument("host")
        p.add_argument("port", type=int)
        p.add_argument("--socks", type=int)
        return p

    p = target("bulk")
    p.add_argument("--bytes", type=int, required=True)
    p.add_argument("--streams", type=int, default=1)
    p.add_argument("--direction", choices=["down", "up"], default="down")
    p = target("rr")
    p.add_argument("--requests", type=int, required=True)
    p.add_argument("--conns", type=int, default=1)
    p = target("churn")
    p.add_argument("--connections", type=int, required=True)
    p.add_argument("--workers", type=int, default=4)
    p = target("hold")
    p.add_argument("--conns", type=int, required=True)
    p = target("first")
    p.add_argument("--timeout", type=float, default=120)
    p = sub.add_parser("dns")
    p.add_argument("name")
    p.add_argument("--via", default="getaddrinfo")
    p.add_argument("--count", type=int, required=True)
    p.add_argument("--expect")
    p.add_argument("--tcp", action="store_true", help="one held TCP connection, not UDP")
    p.add_argument("--socks", type=int, help="with --tcp: through the SOCKS5 proxy on this port")
    sub.add_parser("steps", help="read one JSON argv list a line from stdin, answer each")
    return parser


SCENARIOS: dict[str, Callable[[argparse.Namespace], dict[str, Any]]] = {
    "bulk": bulk, "rr": rr, "churn": churn, "hold": hold, "dns": dns, "first": first,
}  # fmt: skip


def main() -> None:
    parser = make_parser()
    args = parser.parse_args()
    if args.what != "steps":
        print(json.dumps(SCENARIOS[args.what](args)), flush=True)
        return
    # One process for a series of scenarios (its start-up is paid once); the caller
    # samples the tunnel's processes between them.
    for line in sys.stdin:
        step = parser.parse_args(json.loads(line))
        print(json.dumps(SCENARIOS[step.what](step)), flush=True)


if __name__ == "__main__":
    main()
