"""A network namespace with a TUN device routed to a test range, a TunStack in
the test process serving it, and loopback servers standing in for the cluster.

The kernel client lives in the namespace: a route sends 198.18.0.0/24 into
the TUN device (source 198.18.1.1, on the device). The TUN device is made by a
thread that joined the namespace, so the device lives there while its fd
serves the test process anywhere. TunStack's ``open_flow`` connects to
127.0.0.1:<target port> in the test's own namespace, where the servers listen.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytun

from ktpy.net.relay import SocketFlow
from ktpy.net.tcp import TcpConfig
from ktpy.net.tun_tcp import TunStack
from tests.integration.support import in_netns

PREFIX = "ktpy-it-tun-"
DEVICE = "kttun0"
TARGET = "198.18.0.10"  # any address in the range: open_flow goes by port
UNREACHABLE = "198.18.0.66"  # open_flow fails with EHOSTUNREACH
NET_UNREACHABLE = "198.18.0.67"  # ... with ENETUNREACH
SLOW = "198.18.0.68"  # open_flow takes SLOW_SECONDS
BROKEN = "198.18.0.69"  # the flow opens, then its recv raises something not an OSError
IMPATIENT = "198.18.0.70"  # the flow's socket keeps a 0.2 s timeout
CLOSED = "198.18.0.71"  # a socket Flow (with fileno) already closed when it is handed over
SOCKET = "198.18.0.72"  # ktpy's SocketFlow, as the TUN child's flows are (send_nowait)
CLIENT = "198.18.1.1"
SLOW_SECONDS = 3.0


def run(*argv: str) -> str:
    return subprocess.run(argv, check=True, capture_output=True, text=True, timeout=30).stdout


def remove_stale() -> None:
    """Namespaces left by earlier runs whose process is gone."""
    for line in run("ip", "netns", "list").splitlines():
        name = line.split()[0] if line.split() else ""
        if not name.startswith(PREFIX):
            continue
        pid = name[len(PREFIX) :].split("-")[0]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            subprocess.run(["ip", "netns", "del", name], check=False, capture_output=True)


class TestFlow:
    """A loopback socket as the stack's Flow. close() shuts the socket down
    first: a bare close() does not wake a recv blocked in another thread."""

    def __init__(self, sock: socket.socket, tracker: FlowTracker) -> None:
        self.sock = sock
        self.tracker = tracker
        tracker.opened()

    def recv(self, size: int, /) -> bytes:
        return self.sock.recv(size)

    def sendall(self, data: bytes, /) -> None:
        self.sock.sendall(data)

    def shutdown_write(self) -> None:
        self.sock.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        if self.sock.fileno() != -1:
            self.sock.close()
            self.tracker.closed()


class TrackedSocketFlow(SocketFlow):
    """ktpy's own SocketFlow (what the TUN child's flows are: the stack writes to
    it without a thread while its socket takes everything), counted as TestFlow is."""

    def __init__(self, sock: socket.socket, tracker: FlowTracker) -> None:
        super().__init__(sock)
        self.tracker = tracker
        tracker.opened()

    def close(self) -> None:
        if self.sock.fileno() != -1:
            super().close()
            self.tracker.closed()


class BrokenFlow:
    """A Flow that fails the way no socket does (an SSH library's own error)."""

    def recv(self, size: int, /) -> bytes:
        time.sleep(0.2)
        raise RuntimeError("the flow broke in its own way")

    def sendall(self, data: bytes, /) -> None:
        pass

    def shutdown_write(self) -> None:
        pass

    def close(self) -> None:
        pass


@dataclass
class FlowTracker:
    lock: threading.Lock = field(default_factory=threading.Lock)
    open: int = 0
    total: int = 0

    def opened(self) -> None:
        with self.lock:
            self.open += 1
            self.total += 1

    def closed(self) -> None:
        with self.lock:
            self.open -= 1


# -- loopback servers ------------------------------------------------------------------

Handler = Callable[[socket.socket, "Server"], None]


class Server:
    """A threaded TCP server on 127.0.0.1 running handler per connection."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.sock = socket.create_server(("127.0.0.1", 0), backlog=512)
        self.port: int = self.sock.getsockname()[1]
        self.lock = threading.Lock()
        self.active = 0
        self.max_active = 0
        self.accepted = 0
        self.errors: list[BaseException] = []
        self.results: list[Any] = []
        self.release = threading.Event()  # for handlers that hold connections
        self._threads: list[threading.Thread] = []
        self._stopping = False
        self._accepter = threading.Thread(target=self._accept, name="srv-accept", daemon=True)
        self._accepter.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with self.lock:
                self.accepted += 1
            t = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            self._threads.append(t)
            t.start()

    def _serve(self, conn: socket.socket) -> None:
        with self.lock:
            self.active += 1
            self.max_active = max(self.max_active, self.active)
        try:
            self.handler(conn, self)
        except OSError as exc:
            with self.lock:
                self.errors.append(exc)
        finally:
            with self.lock:
                self.active -= 1
            conn.close()

    def threads_alive(self) -> int:
        return sum(t.is_alive() for t in self._threads)

    def close(self) -> None:
        self.release.set()
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()


def read_line(conn: socket.socket) -> bytes:
    data = b""
    while not data.endswith(b"\n"):
        chunk = conn.recv(1)
        if not chunk:
            break
        data += chunk
    return data


def pong(conn: socket.socket, server: Server) -> None:
    """One line in, one line out."""
    line = read_line(conn)
    conn.sendall(b"pong " + line)


def hold(conn: socket.socket, server: Server) -> None:
    """Answer only once the test releases every held connection."""
    line = read_line(conn)
    server.release.wait(60)
    conn.sendall(b"ok " + line)


def pattern_chunks(total: int, size: int = 1 << 20) -> Any:
    """total bytes of data that differs in every chunk (a misplaced chunk shows)."""
    block = bytes(range(256)) * (size // 256)
    sent = 0
    index = 0
    while sent < total:
        n = min(size, total - sent)
        yield (struct.pack("!Q", index) + block[8:])[:n]
        sent += n
        index += 1


def download(conn: socket.socket, server: Server) -> None:
    """'<n>\\n' in: n bytes out, their sha256 recorded, then close."""
    n = int(read_line(conn))
    digest = hashlib.sha256()
    sent = 0
    try:
        for chunk in pattern_chunks(n):
            conn.sendall(chunk)
            digest.update(chunk)
            sent += len(chunk)
    finally:
        with server.lock:
            server.results.append((sent, digest.hexdigest()))


def upload(conn: socket.socket, server: Server) -> None:
    """Everything until EOF in: '<count> <sha256>' out."""
    digest = hashlib.sha256()
    count = 0
    buf = bytearray(1 << 20)
    view = memoryview(buf)
    while n := conn.recv_into(buf):
        digest.update(view[:n])
        count += n
    conn.sendall(f"{count} {digest.hexdigest()}".encode())


def reset_after_request(conn: socket.socket, server: Server) -> None:
    """Read the request, then close with a RST (SO_LINGER 0)."""
    read_line(conn)
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


# -- the environment ---------------------------------------------------------------------


_counter = 0
_counter_lock = threading.Lock()


@dataclass
class TunEnv:
    ns: str
    device: Any  # pytun.TunTapDevice, living in ns
    mtu: int
    flows: FlowTracker = field(default_factory=FlowTracker)
    servers: list[Server] = field(default_factory=list)
    stacks: list[TunStack] = field(default_factory=list)

    def server(self, handler: Handler) -> Server:
        s = Server(handler)
        self.servers.append(s)
        return s

    def open_flow(self, host: str, port: int) -> TestFlow | BrokenFlow | SocketFlow:
        if host == UNREACHABLE:
            raise OSError(errno.EHOSTUNREACH, "No route to host (test)")
        if host == NET_UNREACHABLE:
            raise OSError(errno.ENETUNREACH, "Network is unreachable (test)")
        if host == SLOW:
            time.sleep(SLOW_SECONDS)
        if host == BROKEN:
            return BrokenFlow()
        if host == CLOSED:
            # As when a reset's closer ran before the flow's reader thread (found by the fuzz).
            gone = SocketFlow(socket.create_connection(("127.0.0.1", port), timeout=5))
            gone.close()
            return gone
        sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        sock.settimeout(0.2 if host == IMPATIENT else None)
        if host == SOCKET:
            return TrackedSocketFlow(sock, self.flows)
        return TestFlow(sock, self.flows)

    def start(self, config: TcpConfig | None = None, **kw: Any) -> TunStack:
        stack = TunStack(self.device.fileno(), self.open_flow, mtu=self.mtu, config=config, **kw)
        self.stacks.append(stack)
        return stack.start()

    def connect(self, port: int, host: str = TARGET, timeout: float = 10.0) -> socket.socket:
        """A client socket in the namespace (the kernel is the TCP client)."""
        return in_netns(self.ns, lambda: socket.create_connection((host, port), timeout=timeout))

    def sockets(self, count: int, port: int, host: str = TARGET) -> list[socket.socket]:
        """count unconnected client sockets made in the namespace."""
        return in_netns(
            self.ns,
            lambda: [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(count)],
        )

    def execute(self, *argv: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["ip", "netns", "exec", self.ns, *argv],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def close(self) -> None:
        for stack in self.stacks:
            stack.stop()
        for s in self.servers:
            s.close()
        with contextlib.suppress(Exception):
            self.device.close()
        subprocess.run(["ip", "netns", "del", self.ns], check=False, capture_output=True)


def create(mtu: int, offload: bool = True) -> TunEnv:
    """offload: make the device with IFF_VNET_HDR, as TunStack does its own."""
    global _counter
    with _counter_lock:
        _counter += 1
        name = f"{PREFIX}{os.getpid()}-{_counter}"
    run("ip", "netns", "add", name)
    device = None
    try:
        run("ip", "-n", name, "link", "set", "lo", "up")
        flags = pytun.IFF_TUN | pytun.IFF_NO_PI | (pytun.IFF_VNET_HDR if offload else 0)
        device = in_netns(name, lambda: pytun.TunTapDevice(name=DEVICE, flags=flags))
        run("ip", "-n", name, "link", "set", DEVICE, "mtu", str(mtu), "up")
        run("ip", "-n", name, "addr", "add", f"{CLIENT}/32", "dev", DEVICE)
        run("ip", "-n", name, "route", "add", "198.18.0.0/24", "dev", DEVICE, "src", CLIENT)
    except BaseException:
        if device is not None:
            device.close()
        subprocess.run(["ip", "netns", "del", name], check=False, capture_output=True)
        raise
    return TunEnv(ns=name, device=device, mtu=mtu)


def rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def open_fds() -> int:
    return sum(1 for _ in Path("/proc/self/fd").iterdir())
