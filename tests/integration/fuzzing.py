"""What the fuzz tests share: hypothesis settings and a loopback echo server
standing in for the cluster behind each target.

At least 2,000 examples per target (issue 15). Under CI the run is
derandomized, so a landing never depends on the draw; by hand it explores
anew each time. A failing example found once stays as an ``@example``."""

from __future__ import annotations

import contextlib
import os
import socket
import threading

from hypothesis import HealthCheck, settings

from tests.integration.support import IN_CI

EXAMPLES = int(os.environ.get("KTPY_FUZZ_EXAMPLES", "2000"))

FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=IN_CI,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


class EchoServer:
    """Echoes each connection's bytes back until its client closes; counts connections."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0), backlog=512)
        self.port: int = self.listener.getsockname()[1]
        self.accepted = 0
        self._conns: set[socket.socket] = set()
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, name="fuzz-echo", daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            with self._lock:
                self.accepted += 1
                self._conns.add(conn)
            threading.Thread(target=self._echo, args=(conn,), daemon=True).start()

    def _echo(self, conn: socket.socket) -> None:
        with conn, contextlib.suppress(OSError):
            while data := conn.recv(65536):
                conn.sendall(data)
        with self._lock:
            self._conns.discard(conn)

    def open_connections(self) -> int:
        with self._lock:
            return len(self._conns)

    def close(self) -> None:
        self.listener.close()
        with self._lock:
            conns = list(self._conns)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)


def closed_port() -> int:
    """A loopback port nothing listens on (refused at once)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
