"""benchmarks/probe.py's command line, unchanged, over ktpy's measuring core: a real
HTTP server on loopback serving the echo server's /bytes and /healthz."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pytest

REPO = Path(__file__).resolve().parents[3]


class EchoLike(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    wbufsize = 1 << 16  # one write per response: no Nagle stall per request

    def do_GET(self) -> None:
        url = urlparse(self.path)
        body = b"ok"
        if url.path == "/bytes":
            body = b"\0" * int(parse_qs(url.query)["n"][0])
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[int]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), EchoLike)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield httpd.server_address[1]
    httpd.shutdown()
    httpd.server_close()


def probe(*args: str) -> dict[str, float]:
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.probe", *args],
        cwd=REPO, capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    return json.loads(done.stdout)


def test_bulk_counts_every_byte_of_the_response(server: int) -> None:
    result = probe("bulk", "127.0.0.1", str(server), str(4 << 20))
    assert set(result) == {"bytes", "seconds", "gbit_s"}
    assert result["bytes"] > 4 << 20  # the body and the response head
    assert result["gbit_s"] == pytest.approx(result["bytes"] * 8 / result["seconds"] / 1e9)


def test_latency_reports_count_and_percentiles(server: int) -> None:
    result = probe("latency", "127.0.0.1", str(server), "50")
    assert set(result) == {"count", "p50_ms", "p99_ms"}
    assert result["count"] == 50
    assert 0 < result["p50_ms"] <= result["p99_ms"]
