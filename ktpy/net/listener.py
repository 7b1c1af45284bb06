"""A listener (loopback TCP, or a unix socket) that serves each accepted connection
on a thread of its own."""

from __future__ import annotations

import contextlib
import os
import socket
import threading
from pathlib import Path
from typing import Self


def unix_listener(path: Path, owner: tuple[int, int] | None = None) -> socket.socket:
    """A unix stream socket listening at path, mode 0600 (and owned by ``owner``,
    uid and gid, when given): only that user, and root, may connect. Its directory
    should be 0700 too: the mode is set just after bind."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(str(path))
        path.chmod(0o600)
        if owner is not None:
            os.chown(path, *owner)
        sock.listen(256)
    except BaseException:
        sock.close()
        raise
    return sock


class ThreadedListener:
    """Subclasses implement `serve(client, conn)`; `conn` numbers the connections from 1."""

    def __init__(
        self, host: str, port: int, name: str, *, listener: socket.socket | None = None
    ) -> None:
        """Listens on host:port, or on ``listener`` if given (a unix socket: its
        address is then (path, 0))."""
        self.name = name
        self._listener = listener or socket.create_server((host, port), backlog=256)
        bound = self._listener.getsockname()
        self.address: tuple[str, int] = (bound, 0) if isinstance(bound, str) else bound[:2]
        self._stopping = threading.Event()
        self._thread = threading.Thread(
            target=self._accept_loop, name=f"{name}-accept", daemon=True
        )
        self.connections = 0

    @property
    def socket_path(self) -> Path:
        """A unix listener's path."""
        if self._listener.family != socket.AF_UNIX:
            raise ValueError(f"{self.name} listens on TCP {self.address}, not a unix socket")
        return Path(self.address[0])

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
