"""DnsServer against a real dnsmasq (standing in for the shadow pod's) and a
counting dnslib server (standing in for the laptop's original resolver), all
on 127.0.0.1 high ports. The counts prove where each name went."""

from __future__ import annotations

import contextlib
import grp
import ipaddress
import itertools
import os
import pwd
import re
import shutil
import signal
import socket
import struct
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from dnslib import QTYPE, RCODE, RR, A, DNSRecord
from dnslib.server import BaseResolver, DNSHandler, DNSLogger
from dnslib.server import DNSServer as DnslibServer

from ktpy.net.dns import ClusterNames, Collision
from ktpy.net.dns_server import DnsServer, TcpExchange, tcp_exchange_over
from ktpy.net.relay import SocketFlow, recv_exact
from tests.integration.support import unavailable

pytestmark = pytest.mark.integration

DNSMASQ = shutil.which("dnsmasq") or next(
    (p for p in ("/usr/sbin/dnsmasq", "/sbin/dnsmasq") if Path(p).exists()), None
)

CLUSTER_HOSTS = {
    "echo.default.svc.cluster.local": "10.96.7.7",
    "echo.team.svc.cluster.local": "10.96.1.1",
    "web-0.nginx.team.svc.cluster.local": "10.244.0.7",
}
NAMES = ClusterNames(
    domain="cluster.local",
    namespace="default",
    namespaces=frozenset({"team"}),
    services=frozenset({"echo"}),
    cidrs=(ipaddress.ip_network("10.96.0.0/16"), ipaddress.ip_network("10.244.0.0/16")),
    search=("corp.example",),
)
LAPTOP_ANSWER = "192.0.2.1"
SLOW_SECONDS = 1.0
QUERY_LINE = re.compile(r"query\[(\w+)\] (\S+) from")


# --- stand-ins ----------------------------------------------------------------


def free_port() -> int:
    """A loopback port free for both UDP and TCP right now."""
    while True:
        with (
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp,
            socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp,
        ):
            udp.bind(("127.0.0.1", 0))
            port: int = udp.getsockname()[1]
            try:
                tcp.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port


class Dnsmasq:
    """dnsmasq answering cluster.local from a hosts file (NXDOMAIN for the
    rest of the domain), logging every query it gets."""

    def __init__(self, workdir: Path, port: int | None = None) -> None:
        if DNSMASQ is None:
            raise RuntimeError("dnsmasq not installed")
        hosts = workdir / "cluster.hosts"
        hosts.write_text("".join(f"{ip} {name}\n" for name, ip in CLUSTER_HOSTS.items()))
        self.port = port or free_port()
        self.queries: Counter[tuple[str, str]] = Counter()
        self.log_tail: list[str] = []
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self.proc = subprocess.Popen(
            [
                DNSMASQ,
                "--keep-in-foreground",
                "--conf-file=/dev/null",
                "--no-resolv",
                "--no-hosts",
                f"--addn-hosts={hosts}",
                "--listen-address=127.0.0.1",
                "--bind-interfaces",
                f"--port={self.port}",
                "--local=/cluster.local/",
                "--local-ttl=30",
                "--cname=ext.team.svc.cluster.local,echo.default.svc.cluster.local",
                "--log-queries",
                "--log-facility=-",
                "--pid-file",
                # Stay who we are: the hosts file sits in pytest's private
                # tmp directory, which dnsmasq's default user cannot read.
                f"--user={pwd.getpwuid(os.geteuid()).pw_name}",
                f"--group={grp.getgrgid(os.getegid()).gr_name}",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            # Its own process group: stop() also ends the children it forks
            # per TCP connection, which outlive the parent otherwise.
            start_new_session=True,
        )
        threading.Thread(target=self._read_log, daemon=True).start()
        self._wait_ready()

    def _read_log(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.log_tail = [*self.log_tail[-19:], line.rstrip()]
            match = QUERY_LINE.search(line)
            if match:
                with self._cond:
                    self.queries[(match[2].lower().rstrip("."), match[1])] += 1
                    self._cond.notify_all()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + 10
        probe = DNSRecord.question("ready.probe.cluster.local.")
        while True:
            try:
                probe.send("127.0.0.1", self.port, tcp=True, timeout=1)
                break
            except OSError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    self.stop()
                    raise RuntimeError(
                        f"dnsmasq did not start (exit {self.proc.poll()}): {self.log_tail}"
                    ) from None
                time.sleep(0.05)
        self.wait_seen("ready.probe.cluster.local")

    def seen(self, name: str, qtype: str | None = None) -> int:
        name = name.lower().rstrip(".")
        with self._lock:
            return sum(
                n for (qn, qt), n in self.queries.items() if qn == name and qtype in (None, qt)
            )

    def total(self) -> int:
        with self._lock:
            return sum(self.queries.values())

    def wait_seen(self, name: str, count: int = 1, timeout: float = 5.0) -> None:
        with self._cond:
            if not self._cond.wait_for(lambda: self._seen_locked(name) >= count, timeout):
                raise AssertionError(f"dnsmasq never logged {name}")

    def _seen_locked(self, name: str) -> int:
        name = name.lower().rstrip(".")
        return sum(n for (qn, _), n in self.queries.items() if qn == name)

    def stop(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


class LaptopResolver(BaseResolver):  # type: ignore[misc]
    """The laptop's original resolver: *.laptop.test exists, slow*.laptop.test
    answers late, big.laptop.test does not fit 512 bytes, the rest NXDOMAIN."""

    def __init__(self) -> None:
        self.queries: Counter[tuple[str, str, str]] = Counter()
        self._lock = threading.Lock()

    def resolve(self, request: DNSRecord, handler: DNSHandler) -> DNSRecord:
        name = str(request.q.qname).lower().rstrip(".")
        with self._lock:
            self.queries[(name, QTYPE[request.q.qtype], handler.protocol)] += 1
        reply = request.reply()
        if not name.endswith(".laptop.test"):
            reply.header.rcode = RCODE.NXDOMAIN
            return reply
        if name.startswith("slow"):
            time.sleep(SLOW_SECONDS)
        if request.q.qtype == QTYPE.A:
            count = 60 if name == "big.laptop.test" else 1
            for i in range(count):
                address = LAPTOP_ANSWER if count == 1 else f"192.0.2.{i + 1}"
                reply.add_answer(RR(request.q.qname, QTYPE.A, rdata=A(address), ttl=300))
        return reply

    def seen(self, name: str, *, protocol: str | None = None) -> int:
        name = name.lower().rstrip(".")
        with self._lock:
            return sum(
                n
                for (qn, _, proto), n in self.queries.items()
                if qn == name and protocol in (None, proto)
            )

    def total(self) -> int:
        with self._lock:
            return sum(self.queries.values())


class TruncatingHandler(DNSHandler):  # type: ignore[misc]
    udplen = 512


class Upstream:
    def __init__(self) -> None:
        self.resolver = LaptopResolver()
        quiet = DNSLogger(log="-request,-reply,-truncated,-error,-recv,-send,-data", prefix=False)
        self.port = free_port()
        self.servers = [
            DnslibServer(
                self.resolver,
                address="127.0.0.1",
                port=self.port,
                tcp=tcp,
                logger=quiet,
                handler=TruncatingHandler,
            )
            for tcp in (False, True)
        ]
        for server in self.servers:
            threading.Thread(
                target=server.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
            ).start()

    def stop(self) -> None:
        for server in self.servers:
            server.stop()
            server.server.server_close()


def _unavailable(reason: str) -> None:
    unavailable("DNS server", reason)


@pytest.fixture
def dnsmasq(tmp_path: Path) -> Iterator[Dnsmasq]:
    if DNSMASQ is None:
        _unavailable("dnsmasq is not installed (Debian: dnsmasq-base)")
    proc = Dnsmasq(tmp_path)
    yield proc
    proc.stop()


@pytest.fixture
def upstream() -> Iterator[Upstream]:
    server = Upstream()
    yield server
    server.stop()


def open_socket_flow(host: str, port: int) -> SocketFlow:
    return SocketFlow(socket.create_connection((host, port), timeout=5))


@pytest.fixture
def exchange(dnsmasq: Dnsmasq) -> Iterator[TcpExchange]:
    ex = tcp_exchange_over(open_socket_flow, "127.0.0.1", dnsmasq.port, timeout=3.0)
    yield ex
    ex.close()


MakeServer = Callable[..., DnsServer]


@pytest.fixture
def make_server(exchange: TcpExchange, upstream: Upstream) -> Iterator[MakeServer]:
    servers: list[DnsServer] = []

    def make(**kw: Any) -> DnsServer:
        kw.setdefault("upstreams", [("127.0.0.1", upstream.port)])
        kw.setdefault("upstream_timeout", 1.0)
        names = kw.pop("names", NAMES)
        cluster = kw.pop("cluster_exchange", exchange)
        server = DnsServer(names, cluster, host="127.0.0.1", port=0, **kw).start()
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.stop()


@pytest.fixture
def server(make_server: MakeServer) -> DnsServer:
    return make_server()


# --- helpers -------------------------------------------------------------------


def ask(
    server: DnsServer, name: str, qtype: str = "A", *, tcp: bool = False, timeout: float = 3.0
) -> DNSRecord:
    raw = DNSRecord.question(name, qtype).send(*server.address, tcp=tcp, timeout=timeout)
    return DNSRecord.parse(raw)


def addresses(reply: DNSRecord) -> list[str]:
    return [str(rr.rdata) for rr in reply.rr if rr.rtype == QTYPE.A]


_barriers = itertools.count(1)


def settle(server: DnsServer, dnsmasq: Dnsmasq) -> None:
    """Wait until dnsmasq has logged everything asked so far: a fresh name down
    the same reused connection shows up in its log after all earlier ones."""
    name = f"barrier-{next(_barriers)}.cluster.local"
    ask(server, name)
    dnsmasq.wait_seen(name)


# --- where names go ---------------------------------------------------------


@pytest.mark.parametrize("tcp", [False, True], ids=["udp", "tcp"])
def test_cluster_names_reach_only_dnsmasq_and_others_only_the_laptop_resolver(
    server: DnsServer, dnsmasq: Dnsmasq, upstream: Upstream, tcp: bool
) -> None:
    cluster = {
        "echo": ("echo.default.svc.cluster.local", "10.96.7.7"),
        "echo.team": ("echo.team.svc.cluster.local", "10.96.1.1"),
        "web-0.nginx.team": ("web-0.nginx.team.svc.cluster.local", "10.244.0.7"),
        "echo.default.svc.cluster.local": ("echo.default.svc.cluster.local", "10.96.7.7"),
    }
    for short, (_, ip) in cluster.items():
        reply = ask(server, short, tcp=tcp)
        assert reply.header.rcode == RCODE.NOERROR, short
        assert addresses(reply) == [ip], short
        assert [str(rr.rname) for rr in reply.rr] == [short + "."], "renamed back"

    laptop = ["www.laptop.test", "echo.corp.example", "echo.team.corp.example", "nosuch"]
    assert addresses(ask(server, "www.laptop.test", tcp=tcp)) == [LAPTOP_ANSWER]
    for name in laptop[1:]:
        assert ask(server, name, tcp=tcp).header.rcode == RCODE.NXDOMAIN, name
    settle(server, dnsmasq)

    for fqdn in {fqdn for fqdn, _ in cluster.values()}:
        assert upstream.resolver.seen(fqdn) == 0
    for short in cluster:
        assert upstream.resolver.seen(short) == 0
    assert dnsmasq.seen("echo.default.svc.cluster.local") == 1, "second ask was a cache hit"
    assert dnsmasq.seen("echo.team.svc.cluster.local") == 1
    assert dnsmasq.seen("web-0.nginx.team.svc.cluster.local") == 1
    for name in laptop:
        assert upstream.resolver.seen(name) == 1, name
        assert dnsmasq.seen(name) == 0, name
    # Nothing else reached either side (the barrier and readiness probes aside).
    assert upstream.resolver.total() == len(laptop)
    assert dnsmasq.total() == 3 + 2

    stats = server.stats()
    assert (stats.cluster, stats.upstream, stats.cluster_asked) == (5, 4, 4)


def test_nxdomain_for_a_missing_service(
    server: DnsServer, dnsmasq: Dnsmasq, upstream: Upstream
) -> None:
    for tcp in (False, True):
        reply = ask(server, "missing.default.svc.cluster.local", tcp=tcp)
        assert reply.header.rcode == RCODE.NXDOMAIN
    dnsmasq.wait_seen("missing.default.svc.cluster.local")
    assert upstream.resolver.total() == 0


@pytest.mark.parametrize("tcp", [False, True], ids=["udp", "tcp"])
def test_a_namespace_shaped_name_the_cluster_lacks_gets_the_laptops_answer(
    make_server: MakeServer, dnsmasq: Dnsmasq, upstream: Upstream, tcp: bool
) -> None:
    collisions: list[Collision] = []
    server = make_server(names=NAMES.with_known(namespaces={"team", "test"}),
                         on_collision=collisions.append)  # fmt: skip
    missing = ask(server, "missing.team", tcp=tcp)
    assert missing.header.rcode == RCODE.NXDOMAIN
    dnsmasq.wait_seen("missing.team.svc.cluster.local")
    assert upstream.resolver.seen("missing.team") == 1
    # A laptop name whose last label is a namespace: the cluster first, then the
    # laptop's answer, unchanged.
    assert addresses(ask(server, "www.laptop.test", tcp=tcp)) == [LAPTOP_ANSWER]
    dnsmasq.wait_seen("www.laptop.test.svc.cluster.local")
    assert upstream.resolver.seen("www.laptop.test") == 1
    # A name the cluster has is the cluster's, reported once.
    assert addresses(ask(server, "echo.team", tcp=tcp)) == ["10.96.1.1"]
    assert addresses(ask(server, "echo.team", "A", tcp=tcp)) == ["10.96.1.1"]
    assert upstream.resolver.seen("echo.team") == 0
    assert collisions == [Collision("echo.team", "echo.team.svc.cluster.local.")]


def test_answers_are_cached(server: DnsServer, dnsmasq: Dnsmasq) -> None:
    first = ask(server, "echo.team")
    second = ask(server, "echo.team.svc")
    third = ask(server, "echo.team", tcp=True)
    assert addresses(first) == addresses(second) == addresses(third) == ["10.96.1.1"]
    assert third.rr[0].ttl <= 30
    settle(server, dnsmasq)
    assert dnsmasq.seen("echo.team.svc.cluster.local") == 1
    assert server.stats().cache_hits == 2


def test_cache_expires_with_the_clock(make_server: MakeServer, dnsmasq: Dnsmasq) -> None:
    now = [1000.0]
    server = make_server(clock=lambda: now[0])
    ask(server, "echo")
    now[0] += 29
    assert ask(server, "echo").rr[0].ttl == 1
    now[0] += 1
    ask(server, "echo")
    settle(server, dnsmasq)
    assert dnsmasq.seen("echo.default.svc.cluster.local") == 2


@pytest.mark.parametrize("tcp", [False, True], ids=["udp", "tcp"])
def test_aaaa_of_a_cluster_name_sends_nothing(
    server: DnsServer, dnsmasq: Dnsmasq, upstream: Upstream, tcp: bool
) -> None:
    reply = ask(server, "echo", "AAAA", tcp=tcp)
    assert reply.header.rcode == RCODE.NOERROR
    assert reply.rr == []
    settle(server, dnsmasq)
    assert dnsmasq.seen("echo.default.svc.cluster.local") == 0
    assert upstream.resolver.total() == 0
    assert server.stats().synthesized == 1
    # A namespace-shaped name: the cluster is asked once whether it has it (A).
    for _ in range(2):
        reply = ask(server, "echo.team", "AAAA", tcp=tcp)
        assert (reply.header.rcode, reply.rr) == (RCODE.NOERROR, [])
    settle(server, dnsmasq)
    assert dnsmasq.seen("echo.team.svc.cluster.local") == 1
    assert dnsmasq.seen("echo.team.svc.cluster.local", "A") == 1
    assert upstream.resolver.total() == 0
    # Other names' AAAA still goes where it always went.
    ask(server, "www.laptop.test", "AAAA", tcp=tcp)
    assert upstream.resolver.seen("www.laptop.test") == 1


def test_external_name_cname_chain(server: DnsServer) -> None:
    reply = ask(server, "ext.team")
    assert [(str(rr.rname), QTYPE[rr.rtype], str(rr.rdata)) for rr in reply.rr] == [
        ("ext.team.", "CNAME", "echo.default.svc.cluster.local."),
        ("echo.default.svc.cluster.local.", "A", "10.96.7.7"),
    ]


def test_reverse_lookups(server: DnsServer, dnsmasq: Dnsmasq, upstream: Upstream) -> None:
    inside = ask(server, "7.7.96.10.in-addr.arpa", "PTR")
    assert [str(rr.rdata) for rr in inside.rr] == ["echo.default.svc.cluster.local."]
    outside = ask(server, "1.2.0.192.in-addr.arpa", "PTR")
    assert outside.header.rcode == RCODE.NXDOMAIN
    settle(server, dnsmasq)
    assert dnsmasq.seen("7.7.96.10.in-addr.arpa") == 1
    assert dnsmasq.seen("1.2.0.192.in-addr.arpa") == 0
    assert upstream.resolver.seen("1.2.0.192.in-addr.arpa") == 1
    assert upstream.resolver.seen("7.7.96.10.in-addr.arpa") == 0


def test_known_services_change_at_run_time(
    server: DnsServer, dnsmasq: Dnsmasq, upstream: Upstream
) -> None:
    ask(server, "web-0.nginx")  # `nginx` is no namespace: the laptop's name
    assert upstream.resolver.seen("web-0.nginx") == 1
    server.set_known(namespaces={"team", "nginx"})
    ask(server, "web-0.nginx")
    dnsmasq.wait_seen("web-0.nginx.svc.cluster.local")
    # The cluster has no such name: the laptop's answer, asked once more.
    assert upstream.resolver.seen("web-0.nginx") == 2
    assert server.names.namespaces == {"team", "nginx", "default"}


# --- transports, failures, concurrency -------------------------------------------


def test_udp_and_tcp_clients_on_the_same_port(server: DnsServer) -> None:
    udp = ask(server, "echo", tcp=False)
    tcp = ask(server, "echo", tcp=True)
    assert addresses(udp) == addresses(tcp) == ["10.96.7.7"]


def test_several_queries_on_one_tcp_connection(server: DnsServer) -> None:
    names = ["echo", "www.laptop.test", "echo.team", "missing.team"]
    with socket.create_connection(server.address, timeout=5) as sock:
        queries = [DNSRecord.question(n) for n in names]
        for i, q in enumerate(queries):
            q.header.id = 100 + i
        # All at once: the server answers them in turn.
        sock.sendall(b"".join(struct.pack("!H", len(w)) + w for w in (q.pack() for q in queries)))
        replies = []
        for _ in names:
            (size,) = struct.unpack("!H", recv_exact(sock.recv, 2))
            replies.append(DNSRecord.parse(recv_exact(sock.recv, size)))
    assert [r.header.id for r in replies] == [100, 101, 102, 103]
    assert [r.header.rcode for r in replies] == [0, 0, 0, RCODE.NXDOMAIN]


def test_one_connection_to_dnsmasq_survives_its_restart(
    server: DnsServer, exchange: TcpExchange, dnsmasq: Dnsmasq, tmp_path: Path
) -> None:
    for name in ("echo", "echo.team", "web-0.nginx.team", "missing.team"):
        ask(server, name)
    assert exchange.connections == 1
    dnsmasq.stop()
    restarted = Dnsmasq(tmp_path, port=dnsmasq.port)
    try:
        # Not cached yet, so it must go down the (now broken) connection.
        assert addresses(ask(server, "ext.team"))[-1:] == ["10.96.7.7"]
        assert exchange.connections == 2
    finally:
        restarted.stop()


def test_cluster_dns_unreachable_is_servfail(make_server: MakeServer) -> None:
    dead = tcp_exchange_over(open_socket_flow, "127.0.0.1", free_port(), timeout=1.0)
    server = make_server(cluster_exchange=dead)
    started = time.monotonic()
    reply = ask(server, "echo")
    assert reply.header.rcode == RCODE.SERVFAIL
    assert time.monotonic() - started < 1.0
    assert server.stats().cluster_failures == 1
    assert ask(server, "www.laptop.test").header.rcode == RCODE.NOERROR, "the laptop is unaffected"


def test_slow_upstream_does_not_block_cluster_answers(
    make_server: MakeServer, upstream: Upstream
) -> None:
    server = make_server(upstream_workers=2, upstream_timeout=5.0)
    clients = []
    for i in range(4):
        client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        client.sendto(DNSRecord.question(f"slow{i}.laptop.test").pack(), server.address)
        clients.append(client)
    time.sleep(0.1)  # the slow ones now hold both upstream workers
    for name, tcp in (("echo", False), ("echo.team", True), ("web-0.nginx.team", False)):
        started = time.monotonic()
        assert addresses(ask(server, name, tcp=tcp))
        assert time.monotonic() - started < 0.5, f"{name} waited behind the slow upstream"
    # The slow ones are still answered, two rounds of two workers later.
    for client in clients:
        client.settimeout(4 * SLOW_SECONDS + 2)
        assert addresses(DNSRecord.parse(client.recv(4096))) == [LAPTOP_ANSWER]
        client.close()


def test_upstreams_are_tried_in_order(make_server: MakeServer, upstream: Upstream) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as blackhole:
        blackhole.bind(("127.0.0.1", 0))  # bound, never answers
        refused = ("127.0.0.1", free_port())  # nothing bound: ICMP port unreachable
        server = make_server(
            upstreams=[refused, blackhole.getsockname(), ("127.0.0.1", upstream.port)],
            upstream_timeout=0.3,
        )
        started = time.monotonic()
        assert addresses(ask(server, "www.laptop.test")) == [LAPTOP_ANSWER]
        assert 0.3 <= time.monotonic() - started < 1.5
    assert upstream.resolver.seen("www.laptop.test") == 1


def test_no_upstream_answering_is_servfail(make_server: MakeServer) -> None:
    server = make_server(upstreams=[("127.0.0.1", free_port())], upstream_timeout=0.3)
    assert ask(server, "www.laptop.test").header.rcode == RCODE.SERVFAIL
    assert server.stats().upstream_failures == 1


def test_truncated_upstream_answer(server: DnsServer, upstream: Upstream) -> None:
    # A UDP client gets the truncated answer as its resolver sent it ...
    udp = ask(server, "big.laptop.test")
    assert udp.header.tc == 1
    # ... and over TCP the server retries over TCP itself.
    tcp = ask(server, "big.laptop.test", tcp=True)
    assert tcp.header.tc == 0
    assert len(addresses(tcp)) == 60
    assert upstream.resolver.seen("big.laptop.test", protocol="udp") == 2
    assert upstream.resolver.seen("big.laptop.test", protocol="tcp") == 1


def test_stop_frees_the_port_and_threads(make_server: MakeServer) -> None:
    server = make_server()
    ask(server, "echo")
    with socket.create_connection(server.address, timeout=5):
        pass
    host, port = server.address
    server.stop()
    server.stop()  # twice is fine
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        udp.bind((host, port))
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
        tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        tcp.bind((host, port))
    deadline = time.monotonic() + 5
    while any(t.name in ("dns-loop", "dns-tcp") for t in threading.enumerate()):
        assert time.monotonic() < deadline, [t.name for t in threading.enumerate()]
        time.sleep(0.05)


def test_refuses_itself_as_upstream() -> None:
    port = free_port()
    with pytest.raises(ValueError, match="is this server"):
        DnsServer(NAMES, lambda w: w, [("127.0.0.1", port)], host="127.0.0.1", port=port)


def test_many_concurrent_clients(server: DnsServer, dnsmasq: Dnsmasq) -> None:
    errors: list[BaseException] = []

    def client(i: int) -> None:
        try:
            name = ("echo", "echo.team", "www.laptop.test", "web-0.nginx.team")[i % 4]
            for _ in range(10):
                assert addresses(ask(server, name, tcp=i % 2 == 1))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors, errors[:3]
    with contextlib.suppress(AssertionError):
        settle(server, dnsmasq)
    assert server.stats().failures == 0
