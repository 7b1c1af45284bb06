"""ktpy's TUN stack without a cluster: bulk throughput both ways, 64-byte
request/response latency and new connections per second, through the stack
at several TUN MTUs, against the same client talking to the same server over
plain loopback. Not a test:

    sudo .venv/bin/python -m benchmarks.tun_stack [--seconds 2] [--mtus 1500,9000,16000,65000]
        [--offload-mtus 1500,9000,16000,65000] [--no-verify-mtus 65000]

Each MTU runs twice: on a plain TUN device (IFF_TUN | IFF_NO_PI: a packet per
MTU, checksums summed in Python) and on one with a virtio-net header, where
TunStack turns on TSO and partial checksums (what it does with a device it
makes itself).

Three processes, so that no two share a GIL: this one runs TunStack on a TUN
device in a network namespace of its own (ktpy-bench-tun-*), with open_flow
connecting to a loopback server process; a client process inside the
namespace is the kernel-side TCP client. The direct baseline runs the same
client against the same server on 127.0.0.1. Writes
benchmarks/results/tun_stack.json.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import dataclasses
import json
import os
import platform
import resource
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).parent / "results" / "tun_stack.json"
NAMESPACE_PREFIX = "ktpy-bench-tun-"
DEVICE = "ktbench0"
TARGET = "198.18.0.10"
CLIENT_ADDRESS = "198.18.1.1"
BLOCK = 1 << 20
MESSAGE = 64

# -- the server process (loopback, the test's own namespace) ---------------------------------


def _read_line(conn: socket.socket) -> bytes:
    data = b""
    while not data.endswith(b"\n"):
        chunk = conn.recv(1)
        if not chunk:
            break
        data += chunk
    return data


def _handle(conn: socket.socket) -> None:
    with conn:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        command = _read_line(conn).strip()
        if command == b"down":
            block = os.urandom(BLOCK)
            with contextlib.suppress(OSError):
                while True:
                    conn.sendall(block)
        elif command == b"up":
            buf = bytearray(BLOCK)
            total = 0
            while n := conn.recv_into(buf):
                total += n
            conn.sendall(b"%d\n" % total)
        elif command == b"echo":
            buf = bytearray(MESSAGE)
            view = memoryview(buf)
            while True:
                got = 0
                while got < MESSAGE:
                    n = conn.recv_into(view[got:])
                    if not n:
                        return
                    got += n
                conn.sendall(buf)
        elif command == b"hello":
            conn.sendall(b"hi\n")


def serve() -> None:
    listener = socket.create_server(("127.0.0.1", 0), backlog=1024)
    print(listener.getsockname()[1], flush=True)
    while True:
        conn, _ = listener.accept()
        threading.Thread(target=_handle, args=(conn,), daemon=True).start()


# -- the client process (in the namespace, or on loopback for the baseline) -------------


def _connect(host: str, port: int) -> socket.socket:
    s = socket.create_connection((host, port), timeout=10)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def bulk_down(host: str, port: int, seconds: float) -> dict[str, float]:
    buf = bytearray(BLOCK)
    with _connect(host, port) as s:
        s.sendall(b"down\n")
        warm = time.perf_counter() + 0.3
        while time.perf_counter() < warm:
            s.recv_into(buf)
        total = 0
        start = time.perf_counter()
        end = start + seconds
        while (now := time.perf_counter()) < end:
            total += s.recv_into(buf)
        elapsed = now - start
    return {"bytes": total, "seconds": elapsed, "mb_per_s": total / elapsed / 1e6}


def bulk_up(host: str, port: int, seconds: float) -> dict[str, float]:
    block = os.urandom(BLOCK)
    with _connect(host, port) as s:
        s.sendall(b"up\n")
        start = time.perf_counter()
        end = start + seconds
        while time.perf_counter() < end:
            s.sendall(block)
        s.shutdown(socket.SHUT_WR)
        total = int(_read_line(s))
        elapsed = time.perf_counter() - start
    return {"bytes": total, "seconds": elapsed, "mb_per_s": total / elapsed / 1e6}


def latency(host: str, port: int, seconds: float, most: int = 5000) -> dict[str, float]:
    message = os.urandom(MESSAGE)
    buf = bytearray(MESSAGE)
    view = memoryview(buf)
    samples: list[float] = []
    with _connect(host, port) as s:
        s.sendall(b"echo\n")
        end = time.perf_counter() + seconds
        while len(samples) < most and time.perf_counter() < end:
            t0 = time.perf_counter()
            s.sendall(message)
            got = 0
            while got < MESSAGE:
                got += s.recv_into(view[got:])
            samples.append(time.perf_counter() - t0)
    samples = samples[len(samples) // 10 :]  # the first tenth warms caches up
    cuts = statistics.quantiles(samples, n=100)
    return {
        "round_trips": len(samples),
        "p50_us": round(statistics.median(samples) * 1e6, 1),
        "p99_us": round(cuts[98] * 1e6, 1),
        "mean_us": round(statistics.fmean(samples) * 1e6, 1),
    }


def connections(host: str, port: int, seconds: float) -> dict[str, float]:
    count = 0
    start = time.perf_counter()
    end = start + seconds
    while time.perf_counter() < end:
        with _connect(host, port) as s:
            s.sendall(b"hello\n")
            _read_line(s)
        count += 1
    return {"per_s": round(count / (time.perf_counter() - start), 1)}


def client(host: str, port: int, test: str, seconds: float) -> None:
    run = {"down": bulk_down, "up": bulk_up, "latency": latency, "connections": connections}
    print(json.dumps(run[test](host, port, seconds)), flush=True)


# -- the stack process -------------------------------------------------------------------


def _sh(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True, timeout=30)


def _in_netns(ns: str, fn: Any) -> Any:
    libc = ctypes.CDLL(None, use_errno=True)
    out: list[Any] = []

    def body() -> None:
        fd = os.open(f"/run/netns/{ns}", os.O_RDONLY)
        try:
            if libc.setns(fd, 0x40000000) != 0:
                raise OSError(ctypes.get_errno(), "setns")
        finally:
            os.close(fd)
        out.append(fn())

    t = threading.Thread(target=body)
    t.start()
    t.join()
    return out[0]


@contextlib.contextmanager
def namespace_with_tun(mtu: int, offload: bool) -> Iterator[tuple[str, Any]]:
    import pytun

    ns = f"{NAMESPACE_PREFIX}{os.getpid()}-{mtu}"
    flags = pytun.IFF_TUN | pytun.IFF_NO_PI | (pytun.IFF_VNET_HDR if offload else 0)
    _sh("ip", "netns", "add", ns)
    device = None
    try:
        _sh("ip", "-n", ns, "link", "set", "lo", "up")
        device = _in_netns(ns, lambda: pytun.TunTapDevice(name=DEVICE, flags=flags))
        _sh("ip", "-n", ns, "link", "set", DEVICE, "mtu", str(mtu), "up")
        _sh("ip", "-n", ns, "addr", "add", f"{CLIENT_ADDRESS}/32", "dev", DEVICE)
        _sh("ip", "-n", ns, "route", "add", "198.18.0.0/24", "dev", DEVICE, "src", CLIENT_ADDRESS)
        yield ns, device
    finally:
        if device is not None:
            device.close()
        subprocess.run(["ip", "netns", "del", ns], check=False, capture_output=True)


def run_client(
    test: str, host: str, port: int, seconds: float, ns: str | None = None
) -> dict[str, Any]:
    argv = [sys.executable, "-m", "benchmarks.tun_stack", "client"]
    argv += ["--host", host, "--port", str(port), "--test", test, "--seconds", str(seconds)]
    if ns is not None:
        argv = ["ip", "netns", "exec", ns, *argv]
    before = resource.getrusage(resource.RUSAGE_SELF)
    done = subprocess.run(
        argv, capture_output=True, text=True, timeout=seconds + 60, check=True, cwd=Path.cwd()
    )
    after = resource.getrusage(resource.RUSAGE_SELF)
    result: dict[str, Any] = json.loads(done.stdout)
    # CPU this process (the stack) spent during the run: the per-byte cost.
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    result["stack_cpu_s"] = round(cpu, 2)
    if "bytes" in result:
        result["stack_cpu_s_per_gb"] = round(cpu / (result["bytes"] / 1e9), 2)
    return result


def measure(host: str, port: int, seconds: float, ns: str | None) -> dict[str, Any]:
    return {
        test: run_client(test, host, port, seconds, ns)
        for test in ("down", "up", "latency", "connections")
    }


def machine() -> str:
    model = "unknown CPU"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    python = platform.python_version()
    return f"{model}, {os.cpu_count()} cpu, Linux {platform.release()}, Python {python}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("role", nargs="?", default="bench", choices=["bench", "serve", "client"])
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--mtus", default="1500,9000,16000,65000")
    parser.add_argument("--offload-mtus", default="1500,9000,16000,65000", help="'' for none")
    parser.add_argument(
        "--no-verify-mtus", default="65000", help="plain, without checking checksums ('' for none)"
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--test", default="down")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    if args.role == "serve":
        serve()
        return
    if args.role == "client":
        client(args.host, args.port, args.test, args.seconds)
        return

    from ktpy import logs
    from ktpy.net.relay import SocketFlow
    from ktpy.net.tcp import TcpConfig
    from ktpy.net.tun_tcp import TunStack

    logs.configure()  # INFO and up, on stderr: stdout is the report

    load = os.getloadavg()[0]
    server = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.tun_stack", "serve"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        port = int(server.stdout.readline())

        def open_flow(host: str, target_port: int) -> SocketFlow:
            s = socket.create_connection(("127.0.0.1", target_port), timeout=10)
            s.settimeout(None)  # for connecting only: a relayed flow may idle
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            return SocketFlow(s)

        results: dict[str, Any] = {"direct": measure("127.0.0.1", port, args.seconds, None)}
        print("direct", json.dumps(results["direct"]), flush=True)
        variants = [(int(m), True, False) for m in args.mtus.split(",") if m]
        variants += [(int(m), False, False) for m in args.no_verify_mtus.split(",") if m]
        variants += [(int(m), True, True) for m in args.offload_mtus.split(",") if m]
        for mtu, verify, offload in variants:
            name = f"tun_mtu_{mtu}" + ("" if verify else "_no_verify") + ("_offload" * offload)
            with namespace_with_tun(mtu, offload) as (ns, device):
                config = TcpConfig(mtu=mtu, verify_checksums=verify)
                stack = TunStack(device.fileno(), open_flow, mtu=mtu, config=config).start()
                try:
                    results[name] = measure(TARGET, port, args.seconds, ns)
                    results[name]["stack_stats"] = stack.stats
                finally:
                    stack.stop()
            print(name, json.dumps(results[name]), flush=True)
    finally:
        server.kill()
        server.wait()

    def fastest(names: list[str]) -> int | None:
        if not names:
            return None
        best = max(
            names, key=lambda k: results[k]["down"]["mb_per_s"] + results[k]["up"]["mb_per_s"]
        )
        return int(best.split("_")[2])

    plain = [k for k in results if k.startswith("tun_mtu_") and k.count("_") == 2]
    offloaded = [k for k in results if k.endswith("_offload")]
    summary = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "load_average_at_start": round(load, 2),
        "settings": {"seconds": args.seconds, "tcp_config": dataclasses.asdict(TcpConfig())},
        "fastest_mtu": fastest(plain),
        "fastest_mtu_with_offload": fastest(offloaded),
        "results": results,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(summary, indent=2) + "\n")
    print(
        f"fastest MTU {summary['fastest_mtu']}, with offload {summary['fastest_mtu_with_offload']}"
    )
    print(f"written to {args.output}")


if __name__ == "__main__":
    main()
