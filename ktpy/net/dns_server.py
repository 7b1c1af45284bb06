"""The DNS server's I/O: UDP and TCP listeners around the pure ``DnsCore``.

Cluster names are exchanged through an injected ``cluster_exchange(wire) ->
wire`` (connect passes ``tcp_exchange_over(ssh direct-tcpip, pod dnsmasq)``);
the server knows nothing about SSH. Every other name goes to the laptop's
original nameservers, byte for byte, over UDP (TCP when a TCP client's answer
came back truncated), each tried in order with a short timeout.

Threads: one loop receives UDP and accepts TCP and never waits on a resolver:
cache hits and synthesised answers go out at once, the rest is handed to one
of two bounded pools, one for cluster DNS and one for the upstreams, so a slow
upstream cannot hold cluster answers back. A cluster-first name the cluster
does not have moves on from the cluster pool to the upstream pool. Each TCP
client has its own thread (bounded); it handles its queries one after the
other, every step in that thread.
"""

from __future__ import annotations

import contextlib
import ipaddress
import selectors
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from types import TracebackType

from ktpy.logs import get_logger
from ktpy.net.dns import (
    AskCluster,
    AskUpstream,
    ClusterAnswered,
    ClusterFailed,
    ClusterNames,
    ClusterPending,
    Collision,
    DnsAction,
    DnsCore,
    DnsStats,
    Ignore,
    Send,
    UpstreamAnswered,
    UpstreamFailed,
    UpstreamPending,
)
from ktpy.net.relay import Flow, FlowOpener, recv_exact

log = get_logger(__name__)

ClusterExchange = Callable[[bytes], bytes]
Nameserver = tuple[str, int]
Respond = Callable[[bytes], None]

UPSTREAM_TIMEOUT = 2.0
CLUSTER_TIMEOUT = 5.0
TCP_IDLE_TIMEOUT = 10.0
MAX_MESSAGE = 65535


class DnsExchangeError(OSError):
    """A DNS peer answered something that is not the answer to our query."""


# --- plain DNS transports ------------------------------------------------------


def parse_nameserver(spec: str | Nameserver) -> Nameserver:
    """``"192.0.2.1"``, ``"192.0.2.1:5353"``, ``"[fd00::1]:53"``, ``"fd00::1"`` or a pair."""
    if isinstance(spec, tuple):
        host, port = spec
        return str(ipaddress.ip_address(host)), int(port)
    text = spec.strip()
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = int(rest[1:]) if rest.startswith(":") else 53
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
        port = int(port_text)
    else:
        host, port = text, 53
    return str(ipaddress.ip_address(host)), port


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET


def _read_framed(recv: Callable[[int], bytes]) -> bytes:
    (size,) = struct.unpack("!H", recv_exact(recv, 2))
    return recv_exact(recv, size)


def _framed(wire: bytes) -> bytes:
    return struct.pack("!H", len(wire)) + wire


def _check_reply(query: bytes, reply: bytes) -> bytes:
    if len(reply) < 12 or reply[:2] != query[:2] or not reply[2] & 0x80:
        raise DnsExchangeError("the reply does not answer the query (id or QR bit)")
    return reply


def udp_query(wire: bytes, server: Nameserver, timeout: float) -> bytes:
    """One UDP exchange; replies with another id are skipped until the deadline."""
    deadline = time.monotonic() + timeout
    with socket.socket(_family(server[0]), socket.SOCK_DGRAM) as sock:
        # connect(): the kernel drops datagrams from anyone but this server.
        sock.connect(server)
        sock.send(wire)
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no answer from {server[0]}:{server[1]} in {timeout}s")
            sock.settimeout(left)
            reply = sock.recv(MAX_MESSAGE)
            with contextlib.suppress(DnsExchangeError):
                return _check_reply(wire, reply)


def tcp_query(wire: bytes, server: Nameserver, timeout: float) -> bytes:
    """One exchange on a fresh TCP connection."""
    with socket.create_connection(server, timeout=timeout) as sock:
        sock.sendall(_framed(wire))
        return _check_reply(wire, _read_framed(sock.recv))


def _truncated(reply: bytes) -> bool:
    return len(reply) > 2 and bool(reply[2] & 0x02)


def ask_upstreams(
    wire: bytes, servers: Sequence[Nameserver], timeout: float, *, tcp: bool
) -> bytes:
    """Ask each server in order until one answers.

    UDP first; a truncated answer is retried over TCP when ``tcp`` (the client
    is on TCP and can take the full answer). A UDP client gets the truncated
    answer as its resolver sent it and retries over TCP itself, as it did
    before ktpy.
    """
    errors: list[str] = []
    for server in servers:
        try:
            reply = udp_query(wire, server, timeout)
            if tcp and _truncated(reply):
                reply = tcp_query(wire, server, timeout)
        except (OSError, EOFError) as exc:
            errors.append(f"{server[0]}:{server[1]}: {str(exc) or type(exc).__name__}")
            continue
        return reply
    raise OSError("no upstream nameserver answered: " + ("; ".join(errors) or "none configured"))


# --- DNS over a Flow -----------------------------------------------------------


def _set_flow_timeout(flow: Flow, timeout: float) -> None:
    # Flow has no timeout in its protocol; a paramiko Channel has settimeout,
    # a SocketFlow its socket's.
    for target in (flow, getattr(flow, "sock", None)):
        settimeout = getattr(target, "settimeout", None)
        if callable(settimeout):
            settimeout(timeout)
            return


class TcpExchange:
    """DNS over TCP (RFC 7766 framing) on one reused flow; a callable
    ``wire -> wire``. Queries take turns on a lock; a broken reused flow is
    replaced and the query asked once more on the new one."""

    def __init__(
        self, open_flow: FlowOpener, host: str, port: int, *, timeout: float = CLUSTER_TIMEOUT
    ) -> None:
        self.open_flow = open_flow
        self.host = host
        self.port = port
        self.timeout = timeout
        self.connections = 0
        self._flow: Flow | None = None
        self._lock = threading.Lock()

    def __call__(self, wire: bytes) -> bytes:
        with self._lock:
            while True:
                fresh = self._flow is None
                flow = self._flow if self._flow is not None else self._open()
                try:
                    flow.sendall(_framed(wire))
                    return _check_reply(wire, _read_framed(flow.recv))
                except (OSError, EOFError):
                    # The stream is out of step or gone; never reuse it.
                    self._drop()
                    if fresh:
                        raise

    def _open(self) -> Flow:
        flow = self.open_flow(self.host, self.port)
        _set_flow_timeout(flow, self.timeout)
        self._flow = flow
        self.connections += 1
        return flow

    def _drop(self) -> None:
        flow, self._flow = self._flow, None
        if flow is not None:
            with contextlib.suppress(OSError, EOFError):
                flow.close()

    def close(self) -> None:
        with self._lock:
            self._drop()


def tcp_exchange_over(
    open_flow: FlowOpener, host: str, port: int, *, timeout: float = CLUSTER_TIMEOUT
) -> TcpExchange:
    """A ``cluster_exchange`` that asks ``host:port`` through flows from
    ``open_flow`` (connect: SSH direct-tcpip to the shadow pod's dnsmasq)."""
    return TcpExchange(open_flow, host, port, timeout=timeout)


# --- the server ------------------------------------------------------------------


class _BoundedPool:
    """A thread pool that refuses work instead of queueing without end."""

    def __init__(self, name: str, workers: int, queue: int) -> None:
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix=name)
        self._slots = threading.BoundedSemaphore(workers + queue)

    def submit(self, job: Callable[[], None]) -> bool:
        if not self._slots.acquire(blocking=False):
            return False

        def run() -> None:
            try:
                job()
            except Exception:  # the pool would swallow it silently
                log.exception("dns worker error")
            finally:
                self._slots.release()

        try:
            self._executor.submit(run)
        except RuntimeError:  # shut down meanwhile
            self._slots.release()
            return False
        return True

    def shutdown(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


class DnsServer:
    """Listens on ``host:port`` (UDP and TCP; port 0 picks a free one).

    ``cluster_exchange`` must time out by itself (``tcp_exchange_over`` does).
    ``on_collision`` hears of each public-looking name the cluster answers
    (once per name, from a worker thread); it must not block.
    """

    def __init__(
        self,
        names: ClusterNames,
        cluster_exchange: ClusterExchange,
        upstreams: Iterable[str | Nameserver],
        *,
        host: str = "127.0.0.1",
        port: int = 53,
        upstream_timeout: float = UPSTREAM_TIMEOUT,
        cluster_workers: int = 4,
        upstream_workers: int = 16,
        queue: int = 256,
        max_tcp_clients: int = 64,
        tcp_idle_timeout: float = TCP_IDLE_TIMEOUT,
        clock: Callable[[], float] = time.monotonic,
        on_collision: Callable[[Collision], None] = lambda _collision: None,
        sockets: tuple[socket.socket, socket.socket] | None = None,
    ) -> None:
        """sockets: UDP and TCP listeners bound already (``bind_listeners``; port 53
        needs root, the server need not), in place of host and port."""
        self.cluster_exchange = cluster_exchange
        self.on_collision = on_collision
        self.upstreams = [parse_nameserver(u) for u in upstreams]
        self.upstream_timeout = upstream_timeout
        self.tcp_idle_timeout = tcp_idle_timeout
        self.max_tcp_clients = max_tcp_clients
        self.clock = clock
        self._core = DnsCore(names)
        self._core_lock = threading.Lock()
        self._udp, self._tcp = sockets or self.bind_listeners(host, port)
        for sock in (self._udp, self._tcp):
            # The loop reads only after select() says so; never block it anyway.
            sock.setblocking(False)
        self.address: tuple[str, int] = self._udp.getsockname()[:2]
        if self.address in self.upstreams:
            self._close_listeners()
            raise ValueError(f"upstream {self.address[0]}:{self.address[1]} is this server")
        self._cluster_pool = _BoundedPool("dns-cluster", cluster_workers, queue)
        self._upstream_pool = _BoundedPool("dns-upstream", upstream_workers, queue)
        self._wake_r, self._wake_w = socket.socketpair()
        self._stopping = threading.Event()
        self._loop = threading.Thread(target=self._run, name="dns-loop", daemon=True)
        self._tcp_clients: set[socket.socket] = set()
        self._tcp_lock = threading.Lock()

    @staticmethod
    def bind_listeners(host: str, port: int) -> tuple[socket.socket, socket.socket]:
        """UDP and TCP sockets listening on host:port (port 0: one free for both)."""
        family = _family(host)
        for _ in range(20 if port == 0 else 1):
            udp = socket.socket(family, socket.SOCK_DGRAM)
            try:
                udp.bind((host, port))
                bound = udp.getsockname()[1]
                tcp = socket.create_server((host, bound), family=family, backlog=128)
            except OSError:
                udp.close()
                if port != 0:
                    raise
                continue  # the TCP side of a free UDP port was taken; try another
            return udp, tcp
        raise OSError(f"no port free for both UDP and TCP on {host}")

    # -- lifecycle -------------------------------------------------------

    def start(self) -> DnsServer:
        self._loop.start()
        log.debug("dns server listening", address=f"{self.address[0]}:{self.address[1]}")
        return self

    def stop(self) -> None:
        """Stop listening and drop TCP clients; safe to call twice."""
        if self._stopping.is_set():
            return
        self._stopping.set()
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")
        if self._loop.is_alive():
            self._loop.join(timeout=5)
        self._close_listeners()
        with self._tcp_lock:
            clients = list(self._tcp_clients)
        for client in clients:
            with contextlib.suppress(OSError):
                client.shutdown(socket.SHUT_RDWR)
        self._cluster_pool.shutdown()
        self._upstream_pool.shutdown()
        for sock in (self._wake_r, self._wake_w):
            sock.close()

    def _close_listeners(self) -> None:
        for sock in (self._udp, self._tcp):
            with contextlib.suppress(OSError):
                sock.close()

    def __enter__(self) -> DnsServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- knowledge and counters ------------------------------------------

    @property
    def names(self) -> ClusterNames:
        return self._core.names

    def update_names(self, names: ClusterNames) -> None:
        with self._core_lock:
            self._core.update_names(names)

    def set_known(
        self, *, namespaces: Iterable[str] | None = None, services: Iterable[str] | None = None
    ) -> None:
        """Replace the known namespaces and/or connect-namespace Services (watches)."""
        with self._core_lock:
            names = self._core.names.with_known(namespaces=namespaces, services=services)
            self._core.update_names(names)

    def stats(self) -> DnsStats:
        with self._core_lock:
            return self._core.stats()

    # -- the loop ----------------------------------------------------------

    def _run(self) -> None:
        with selectors.DefaultSelector() as selector:
            selector.register(self._udp, selectors.EVENT_READ, "udp")
            selector.register(self._tcp, selectors.EVENT_READ, "tcp")
            selector.register(self._wake_r, selectors.EVENT_READ, "wake")
            while not self._stopping.is_set():
                for key, _ in selector.select():
                    try:
                        if key.data == "udp":
                            self._receive_udp()
                        elif key.data == "tcp":
                            self._accept_tcp()
                    except Exception:  # one bad packet must not end DNS
                        log.exception("dns loop error")

    def _receive_udp(self) -> None:
        try:
            wire, client = self._udp.recvfrom(MAX_MESSAGE)
        except OSError:
            return

        def respond(reply: bytes) -> None:
            with contextlib.suppress(OSError):
                self._udp.sendto(reply, client)

        self._carry_out(self._decide(wire, udp=True), respond, tcp=False, pooled=True)

    def _dropped(self, reason: str) -> None:
        # A UDP client asks again; better than an unbounded queue.
        log.debug("dns query dropped", reason=reason)
        with self._core_lock:
            self._core.note_dropped()

    def _accept_tcp(self) -> None:
        try:
            client, _ = self._tcp.accept()
        except OSError:
            return
        with self._tcp_lock:
            if len(self._tcp_clients) >= self.max_tcp_clients:
                client.close()
                return
            self._tcp_clients.add(client)
        threading.Thread(
            target=self._serve_tcp, args=(client,), name="dns-tcp", daemon=True
        ).start()

    def _serve_tcp(self, client: socket.socket) -> None:
        client.settimeout(self.tcp_idle_timeout)
        try:
            while not self._stopping.is_set():
                wire = _read_framed(client.recv)
                reply = self.resolve(wire, udp=False)
                if reply is not None:
                    client.sendall(_framed(reply))
        except (OSError, EOFError):
            pass  # client gone, idle or the server stopping
        except Exception:  # only this client's connection ends
            log.exception("dns tcp client error")
        finally:
            with self._tcp_lock:
                self._tcp_clients.discard(client)
            client.close()

    # -- one query -----------------------------------------------------------

    def _decide(self, wire: bytes, *, udp: bool) -> list[DnsAction]:
        with self._core_lock:
            return self._core.receive(wire, self.clock(), udp=udp)

    def resolve(self, wire: bytes, *, udp: bool) -> bytes | None:
        """Answer one query in the calling thread (TCP clients, tests)."""
        result: list[bytes] = []
        self._carry_out(self._decide(wire, udp=udp), result.append, tcp=not udp, pooled=False)
        return result[0] if result else None

    def _carry_out(
        self, actions: list[DnsAction], respond: Respond, *, tcp: bool, pooled: bool
    ) -> None:
        """Do what the core asked, in order. ``pooled``: exchanges go to the pools
        (the UDP loop must not wait); else they run in this thread."""
        for action in actions:
            match action:
                case Send(reply):
                    respond(reply)
                case Collision():
                    self._collided(action)
                case AskCluster():
                    job = self._cluster_job(action, respond, tcp=tcp, pooled=pooled)
                    if not pooled:
                        job()
                    elif not self._cluster_pool.submit(job):
                        self._dropped("cluster queue full")
                case AskUpstream():
                    job = self._upstream_job(action, respond, tcp=tcp)
                    if not pooled:
                        job()
                    elif not self._upstream_pool.submit(job):
                        self._dropped("upstream queue full")
                case Ignore():
                    pass

    def _collided(self, collision: Collision) -> None:
        try:
            self.on_collision(collision)
        except Exception:  # a report must not cost the answer
            log.exception("collision report failed")

    def _cluster_job(
        self, action: AskCluster, respond: Respond, *, tcp: bool, pooled: bool
    ) -> Callable[[], None]:
        def job() -> None:
            # A second cluster question is asked right here; from a pool worker,
            # a fallback to the laptop's resolvers waits in their pool instead,
            # so this worker is free for the next cluster name.
            for step in self._ask_cluster(action):
                to_pool = pooled and isinstance(step, AskUpstream)
                self._carry_out([step], respond, tcp=tcp, pooled=to_pool)

        return job

    def _ask_cluster(self, action: AskCluster) -> list[DnsAction]:
        pending: ClusterPending = action.pending
        try:
            reply = self.cluster_exchange(action.wire)
        except Exception as exc:  # noqa: BLE001 - injected; any failure is a SERVFAIL
            log.info("cluster dns failed", name=pending.ask, reason=str(exc) or type(exc).__name__)
            with self._core_lock:
                return self._core.handle(ClusterFailed(pending), self.clock())
        with self._core_lock:
            return self._core.handle(ClusterAnswered(pending, reply), self.clock())

    def _upstream_job(
        self, action: AskUpstream, respond: Respond, *, tcp: bool
    ) -> Callable[[], None]:
        pending: UpstreamPending = action.pending

        def job() -> None:
            outcome: list[DnsAction]
            try:
                reply = ask_upstreams(action.wire, self.upstreams, self.upstream_timeout, tcp=tcp)
            except OSError as exc:
                log.info("upstream dns failed", reason=str(exc))
                with self._core_lock:
                    outcome = self._core.handle(UpstreamFailed(pending), self.clock())
            else:
                with self._core_lock:
                    outcome = self._core.handle(UpstreamAnswered(pending, reply), self.clock())
            self._carry_out(outcome, respond, tcp=tcp, pooled=False)

        return job
