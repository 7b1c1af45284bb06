"""Tiny servers the tests talk to through the shadow pod: a TCP echo and a
DNS server that records every query it gets (to prove dnsmasq's cache)."""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from dnslib import QTYPE, RCODE, RR, A, DNSError, DNSRecord
from dnslib.buffer import BufferError as DnsBufferError


class TcpServer:
    """Serves each connection with reply(chunk) until EOF, one thread each."""

    def __init__(self, sock: socket.socket, reply: Callable[[bytes], bytes] = bytes) -> None:
        self.sock = sock
        self.reply = reply
        self.port: int = sock.getsockname()[1]
        self.connections = 0
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn, contextlib.suppress(OSError):
            while chunk := conn.recv(65536):
                conn.sendall(self.reply(chunk))

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()


ANSWER = "10.96.7.7"  # what the test DNS server says for every name
TTL = 300


@dataclass
class DnsServer:
    """Answers A queries with ANSWER (NXDOMAIN for names starting "nx"),
    over UDP and TCP, and records (proto, name, type) for each query."""

    udp: socket.socket
    tcp: socket.socket
    queries: list[tuple[str, str, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._closed = False
        threading.Thread(target=self._serve_udp, daemon=True).start()
        threading.Thread(target=self._accept_tcp, daemon=True).start()

    def seen(self, name: str) -> int:
        with self._lock:
            return sum(1 for _, n, _ in self.queries if n == name)

    def _answer(self, proto: str, data: bytes) -> bytes:
        query = DNSRecord.parse(data)
        name = str(query.q.qname)
        with self._lock:
            self.queries.append((proto, name, QTYPE[query.q.qtype]))
        reply = query.reply()
        if name.startswith("nx"):
            reply.header.rcode = RCODE.NXDOMAIN
        elif query.q.qtype == QTYPE.A:
            reply.add_answer(RR(name, QTYPE.A, rdata=A(ANSWER), ttl=TTL))
        return bytes(reply.pack())

    def _serve_udp(self) -> None:
        while not self._closed:
            try:
                data, peer = self.udp.recvfrom(4096)
            except OSError:
                return
            # Garbage (or the empty read a shutdown causes) gets no answer.
            with contextlib.suppress(DNSError, DnsBufferError, OSError):
                self.udp.sendto(self._answer("udp", data), peer)

    def _accept_tcp(self) -> None:
        while True:
            try:
                conn, _ = self.tcp.accept()
            except OSError:
                return
            threading.Thread(target=self._serve_tcp, args=(conn,), daemon=True).start()

    def _serve_tcp(self, conn: socket.socket) -> None:
        with conn, contextlib.suppress(OSError, struct.error, DNSError, DnsBufferError):
            while header := _recv_exact(conn, 2):
                data = _recv_exact(conn, struct.unpack("!H", header)[0])
                out = self._answer("tcp", data)
                conn.sendall(struct.pack("!H", len(out)) + out)

    def close(self) -> None:
        self._closed = True
        for s in (self.udp, self.tcp):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()


def _recv_exact(conn: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = conn.recv(n - len(buf))
        if not chunk:
            return b""
        buf += chunk
    return buf
