"""Stand-ins for a meshed Service's pods and developers: the test bed's
ktbed-echo binary (HTTP/1.1 + WebSocket and h2c gRPC servers, a gRPC client)
run in a pod's network namespace, and a minimal cleartext HTTP/2 client that
sends several requests at once on one connection."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import struct
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.integration.support import unavailable


def echo_binary() -> Path:
    """The bed's ktbed-echo, built into its cache by the e2e tier's recipe
    (the same key, so an e2e run and this test share one build)."""
    from tests.e2e.testbed import images

    cache = images.default_cache_dir()
    keys = images._Keys.compute()  # the bed's own cache key, not a copy of it
    path = cache / "bin" / f"ktbed-echo-{keys.echo_bin[:16]}"
    if path.exists():
        return path
    if shutil.which("go") is None:
        unavailable("mesh router", f"{path} is not built and there is no Go toolchain")
    with images._locked(cache):
        builder = images._Builder(cache, keys, {}, threading.Lock())
        return builder.echo_binary()


@dataclass
class Workloads:
    """ktbed-echo servers started in one network namespace, stopped together."""

    binary: Path
    netns: str
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def start(self, command: str, pod: str, listen: str) -> None:
        argv = ["ip", "netns", "exec", self.netns, "env", f"POD_NAME={pod}",
                str(self.binary), command, "--listen", listen]  # fmt: skip
        if command == "http":
            argv.append("--quiet")
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.procs.append(proc)
        host, port = listen.rsplit(":", 1)
        _wait_listening(self.netns, host, int(port), proc)

    def stop(self) -> None:
        for proc in self.procs:
            proc.terminate()
        for proc in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(5)
            if proc.poll() is None:
                proc.kill()


def _wait_listening(netns: str, host: str, port: int, proc: subprocess.Popen[bytes]) -> None:
    from ._netns import connect_in

    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"ktbed-echo on {host}:{port} exited with {proc.returncode}")
        with contextlib.suppress(OSError):
            connect_in(netns, host, port, timeout=1).close()
            return
        time.sleep(0.05)
    raise TimeoutError(f"ktbed-echo on {host}:{port} does not listen")


def grpc_hello(binary: Path, address: str, headers: dict[str, str]) -> dict[str, Any]:
    """One Greeter.SayHello over h2c; the reply says which pod answered and
    which ``version`` metadata it saw."""
    argv = [str(binary), "grpc-client", "--addr", address, "--timeout", "5s"]
    for key, value in headers.items():
        argv += ["--header", f"{key}={value}"]
    # No proxy from the environment: grpc-go would dial through it.
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    out = subprocess.run(
        argv, check=True, capture_output=True, text=True, timeout=15, env=env
    ).stdout
    result: dict[str, Any] = json.loads(out)
    return result


# --- a minimal h2c client: prior knowledge, GETs only, no flow control needed ---

_DATA, _HEADERS, _RST, _SETTINGS, _PING, _GOAWAY = 0x0, 0x1, 0x3, 0x4, 0x6, 0x7
_END_STREAM, _ACK, _END_HEADERS = 0x1, 0x1, 0x4
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def _frame(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    head = struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(">I", stream)
    return head + payload


def _literal(name: str, value: str) -> bytes:
    """An HPACK literal header field without indexing, new name, no Huffman."""
    out = b"\x00"
    for text in (name.encode(), value.encode()):
        if len(text) >= 127:
            raise ValueError("header too long for this client")
        out += bytes([len(text)]) + text
    return out


def h2_get_all(sock: socket.socket, requests: list[dict[str, str]], path: str = "/") -> list[bytes]:
    """Send every request (extra headers each) as its own stream before
    reading any answer, and return the bodies in request order."""
    sock.sendall(PREFACE + _frame(_SETTINGS, 0, 0))
    streams = [2 * i + 1 for i in range(len(requests))]
    for stream, extra in zip(streams, requests, strict=True):
        block = b"".join(
            _literal(k, v)
            for k, v in [(":method", "GET"), (":scheme", "http"), (":path", path),
                         (":authority", "router"), *extra.items()]
        )  # fmt: skip
        sock.sendall(_frame(_HEADERS, _END_HEADERS | _END_STREAM, stream, block))
    bodies = dict.fromkeys(streams, b"")
    open_streams = set(streams)
    buf = b""
    while open_streams:
        while len(buf) < 9 or len(buf) < 9 + int.from_bytes(buf[:3], "big"):
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError(f"connection closed with streams {open_streams} open")
            buf += chunk
        length, kind, flags = int.from_bytes(buf[:3], "big"), buf[3], buf[4]
        stream = int.from_bytes(buf[5:9], "big") & 0x7FFFFFFF
        payload, buf = buf[9 : 9 + length], buf[9 + length :]
        if kind == _SETTINGS and not flags & _ACK:
            sock.sendall(_frame(_SETTINGS, _ACK, 0))
        elif kind == _PING and not flags & _ACK:
            sock.sendall(_frame(_PING, _ACK, 0, payload))
        elif kind in (_RST, _GOAWAY):
            raise ConnectionError(f"stream {stream}: frame type {kind} {payload.hex()}")
        elif kind == _DATA and stream in bodies:
            bodies[stream] += payload
        if kind in (_DATA, _HEADERS) and flags & _END_STREAM:
            open_streams.discard(stream)
    return [bodies[s] for s in streams]
