"""A loopback TCP listener that serves each accepted connection on a thread of its own."""

from __future__ import annotations

import contextlib
import socket
import threading
from typing import Self


class ThreadedListener:
    """Subclasses implement `serve(client, conn)`; `conn` numbers the connections from 1."""

    def __init__(self, host: str, port: int, name: str) -> None:
        self.name = name
        self._listener = socket.create_server((host, port), backlog=256)
        self.address: tuple[str, int] = self._listener.getsockname()[:2]
        self._stopping = threading.Event()
        self._thread = threading.Thread(
            target=self._accept_loop, name=f"{name}-accept", daemon=True
        )
        self.connections = 0

    def start(self) -> Self:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError):
            self._listener.close()

    def serve(self, client: socket.socket, conn: int) -> None:
        raise NotImplementedError

    def _accept_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                if self._stopping.is_set():
                    return
                continue
            self.connections += 1
            conn = self.connections
            threading.Thread(
                target=self.serve, args=(client, conn), name=f"{self.name}-{conn}", daemon=True
            ).start()
