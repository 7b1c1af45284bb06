"""ktpy's DNS server without a cluster: latency and rate for cluster names,
cached and uncached, against asking dnsmasq (the shadow pod's resolver)
directly, plus a laptop name passed through to its resolver. Everything on
127.0.0.1; the server runs in its own process so the load generator does not
share its GIL. Not a test:

    .venv/bin/python -m benchmarks.dns [--queries 2000] [--seconds 3] [--clients 4]

Writes benchmarks/results/dns.json.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from multiprocessing.connection import Connection
from pathlib import Path

import dnslib
from dnslib import RCODE, DNSRecord

from ktpy.net.dns import ClusterNames
from ktpy.net.dns_server import DnsServer, tcp_exchange_over
from ktpy.net.relay import SocketFlow

RESULTS = Path(__file__).parent / "results" / "dns.json"
CLUSTER_IP = "10.96.7.7"
LAPTOP_IP = "192.0.2.1"


def free_port() -> int:
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


DNSMASQ = shutil.which("dnsmasq") or "/usr/sbin/dnsmasq"


def start_dnsmasq(port: int, log: Path) -> subprocess.Popen[bytes]:
    """dnsmasq answering every cluster.local name (and laptop.test, standing in
    for the laptop's resolver) from its configuration; queries not logged."""
    with log.open("wb") as err:
        proc = subprocess.Popen(
            [
                DNSMASQ, "--keep-in-foreground", "--conf-file=/dev/null", "--no-resolv",
                "--no-hosts", "--listen-address=127.0.0.1", "--bind-interfaces", f"--port={port}",
                f"--address=/cluster.local/{CLUSTER_IP}", f"--address=/laptop.test/{LAPTOP_IP}",
                "--local-ttl=30", "--log-facility=-", "--pid-file",
            ],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
            start_new_session=True,  # its per-connection children go with it
        )  # fmt: skip
    deadline = time.monotonic() + 10
    while True:
        try:
            DNSRecord.question("probe.cluster.local").send("127.0.0.1", port, timeout=0.5)
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"dnsmasq did not start: {log.read_text()}") from None
            time.sleep(0.05)
        else:
            return proc


def serve(dnsmasq_port: int, laptop_port: int, pipe: Connection) -> None:
    """The server process: ktpy's DnsServer until the pipe says stop."""
    names = ClusterNames("cluster.local", "default", services=frozenset({"echo"}))

    def open_flow(host: str, port: int) -> SocketFlow:
        return SocketFlow(socket.create_connection((host, port), timeout=5))

    exchange = tcp_exchange_over(open_flow, "127.0.0.1", dnsmasq_port)
    server = DnsServer(names, exchange, [("127.0.0.1", laptop_port)], host="127.0.0.1", port=0)
    with server:
        pipe.send(server.address)
        pipe.recv()
        pipe.send(server.stats().__dict__)
    exchange.close()


# --- clients ----------------------------------------------------------------------


def udp_asker(address: tuple[str, int]) -> tuple[Callable[[bytes], bytes], Callable[[], None]]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.connect(address)
    sock.settimeout(2)

    def ask(wire: bytes) -> bytes:
        sock.send(wire)
        while True:
            reply = sock.recv(4096)
            if reply[:2] == wire[:2]:
                return reply

    return ask, sock.close


def tcp_asker(address: tuple[str, int]) -> tuple[Callable[[bytes], bytes], Callable[[], None]]:
    """One connection, reopened when the server closes it (dnsmasq does after
    100 queries), as TcpExchange does."""
    conn: list[socket.socket] = [socket.create_connection(address, timeout=2)]

    def ask(wire: bytes) -> bytes:
        for _ in range(2):
            sock = conn[0]
            sock.sendall(struct.pack("!H", len(wire)) + wire)
            head = sock.recv(2, socket.MSG_WAITALL)
            if len(head) == 2:
                return sock.recv(struct.unpack("!H", head)[0], socket.MSG_WAITALL)
            sock.close()
            conn[0] = socket.create_connection(address, timeout=2)
        raise RuntimeError("the server closed two connections in a row")

    return ask, lambda: conn[0].close()


Asker = Callable[[tuple[str, int]], tuple[Callable[[bytes], bytes], Callable[[], None]]]


class Names:
    """Query packets: the same name each time (cached) or a new one (uncached)."""

    def __init__(self, template: str, fixed: bool) -> None:
        self.template = template
        self.fixed = fixed
        self._n = 0
        self._lock = threading.Lock()

    def next(self) -> bytes:
        with self._lock:
            self._n += 1
            n = self._n
        record = DNSRecord.question(self.template.format(0 if self.fixed else n))
        record.header.id = n & 0xFFFF
        wire: bytes = record.pack()
        return wire


def check(reply: bytes, expected: str) -> None:
    record = DNSRecord.parse(reply)
    if record.header.rcode != RCODE.NOERROR or str(record.rr[-1].rdata) != expected:
        raise RuntimeError(f"unexpected answer:\n{record}")


def latency(
    asker: Asker, address: tuple[str, int], names: Names, expected: str, count: int
) -> dict[str, float]:
    """Sequential queries, one at a time: the latency a single client sees."""
    ask, close = asker(address)
    try:
        for _ in range(50):  # warm-up (and, for cached names, the one miss)
            check(ask(names.next()), expected)
        samples = []
        for _ in range(count):
            wire = names.next()
            started = time.perf_counter_ns()
            reply = ask(wire)
            samples.append((time.perf_counter_ns() - started) / 1e6)
        check(reply, expected)
    finally:
        close()
    samples.sort()
    return {
        "p50_ms": round(statistics.median(samples), 4),
        "p99_ms": round(samples[int(len(samples) * 0.99) - 1], 4),
        "mean_ms": round(statistics.fmean(samples), 4),
        "queries": count,
    }


def rate(
    asker: Asker, address: tuple[str, int], names: Names, clients: int, seconds: float
) -> float:
    """Queries per second with ``clients`` closed-loop clients for ``seconds``."""
    counts = [0] * clients
    deadline = time.perf_counter() + seconds
    errors: list[BaseException] = []

    def client(i: int) -> None:
        ask, close = asker(address)
        try:
            while time.perf_counter() < deadline:
                ask(names.next())
                counts[i] += 1
        except (OSError, RuntimeError) as exc:
            errors.append(exc)
        finally:
            close()

    started = time.perf_counter()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise RuntimeError(f"{len(errors)} clients failed: {errors[0]!r}")
    return round(sum(counts) / (time.perf_counter() - started), 1)


def machine() -> str:
    model = ""
    with open("/proc/cpuinfo") as cpuinfo:  # noqa: PTH123 - one read
        for line in cpuinfo:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    python = platform.python_version()
    return f"{model}, {os.cpu_count()} cpu, Linux {platform.release()}, Python {python}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--queries", type=int, default=2000, help="per latency run")
    parser.add_argument("--seconds", type=float, default=3.0, help="per rate run")
    parser.add_argument("--clients", type=int, default=4, help="concurrent clients per rate run")
    args = parser.parse_args()
    load_at_start = os.getloadavg()[0]

    dnsmasq_port = free_port()
    workdir = Path(tempfile.mkdtemp(prefix="ktpy-bench-dns-"))
    dnsmasq = start_dnsmasq(dnsmasq_port, workdir / "dnsmasq.log")
    ours, theirs = multiprocessing.Pipe()
    # The laptop's resolver is the same dnsmasq (it answers laptop.test).
    server = multiprocessing.Process(target=serve, args=(dnsmasq_port, dnsmasq_port, theirs))
    server.start()
    try:
        ktpy = ours.recv()
        direct = ("127.0.0.1", dnsmasq_port)
        scenarios: dict[str, tuple[Asker, tuple[str, int], Callable[[], Names], str]] = {
            "dnsmasq_direct_udp": (
                udp_asker, direct, lambda: Names("echo.default.svc.cluster.local", True), CLUSTER_IP
            ),
            "dnsmasq_direct_tcp": (
                tcp_asker, direct, lambda: Names("echo.default.svc.cluster.local", True), CLUSTER_IP
            ),
            "ktpy_cluster_cached_udp": (
                udp_asker, ktpy, lambda: Names("echo", True), CLUSTER_IP
            ),
            "ktpy_cluster_cached_tcp": (
                tcp_asker, ktpy, lambda: Names("echo", True), CLUSTER_IP
            ),
            "ktpy_cluster_uncached_udp": (
                udp_asker, ktpy, lambda: Names("s{}.default", False), CLUSTER_IP
            ),
            "ktpy_laptop_name_udp": (
                udp_asker, ktpy, lambda: Names("www.laptop.test", True), LAPTOP_IP
            ),
            "dnsmasq_direct_laptop_name_udp": (
                udp_asker, direct, lambda: Names("www.laptop.test", True), LAPTOP_IP
            ),
        }  # fmt: skip
        results: dict[str, dict[str, float]] = {}
        for name, (asker, address, make_names, expected) in scenarios.items():
            result = latency(asker, address, make_names(), expected, args.queries)
            result["qps"] = rate(asker, address, make_names(), args.clients, args.seconds)
            results[name] = result
            print(f"{name:32} {result}", flush=True)
        ours.send("stop")
        stats = ours.recv()
    finally:
        server.join(10)
        if server.is_alive():
            server.kill()
        os.killpg(dnsmasq.pid, signal.SIGTERM)
        dnsmasq.wait(5)
        shutil.rmtree(workdir, ignore_errors=True)

    summary = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "dnslib": dnslib.version,
        "dnsmasq": subprocess.run(
            [DNSMASQ, "--version"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.split("\n", 1)[0],
        "load_average_at_start": load_at_start,
        "settings": {"queries": args.queries, "seconds": args.seconds, "clients": args.clients},
        "results": results,
        "server_stats": stats,
        "notes": "loopback only; load generator and server are Python processes on the same "
        "cores, so absolute rates are bounded by the client too",
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps({k: v for k, v in summary.items() if k != "results"}, indent=2))


if __name__ == "__main__":
    main()
