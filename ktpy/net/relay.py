"""Copying bytes both ways between two flows until both directions finish.

A flow is anything with recv/sendall/shutdown_write/close: a paramiko channel
is one as it is, a socket becomes one through SocketFlow. Each direction
half-closes its peer on EOF, so protocols that rely on a half-close (an HTTP/1.0
upload, `nc -N`) keep working through the tunnel.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable
from typing import Protocol

CHUNK = 256 * 1024


class Flow(Protocol):
    def recv(self, size: int, /) -> bytes: ...
    def sendall(self, data: bytes, /) -> object: ...
    def shutdown_write(self) -> None: ...
    def close(self) -> None: ...


# What a server is given to open the app side of a flow to host:port (an SSH
# direct-tcpip channel, wired by the command); OSError when it cannot.
FlowOpener = Callable[[str, int], Flow]


class SocketFlow:
    """A connected socket as a Flow."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def fileno(self) -> int:
        return self.sock.fileno()

    def recv(self, size: int, /) -> bytes:
        return self.sock.recv(size)

    def sendall(self, data: bytes, /) -> None:
        self.sock.sendall(data)

    def send_nowait(self, data: bytes, /) -> int:
        """As much of data as the socket takes at once (0 if it is full), never
        blocking. A socket with a timeout takes nothing here: Python would wait for
        room before sending."""
        if self.sock.gettimeout() is not None:
            return 0
        try:
            return self.sock.send(data, socket.MSG_DONTWAIT)
        except BlockingIOError:
            return 0

    def shutdown_write(self) -> None:
        self.sock.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        # shutdown first: close() alone does not wake a recv blocked in another thread
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()


def recv_exact(recv: Callable[[int], bytes], size: int) -> bytes:
    """Exactly size bytes from recv (a flow's or a socket's); EOFError if it ends first."""
    data = bytearray()
    while len(data) < size:
        chunk = recv(size - len(data))
        if not chunk:
            raise EOFError(f"the peer closed after {len(data)} of {size} bytes")
        data += chunk
    return bytes(data)


def _copy(source: Flow, sink: Flow) -> None:
    try:
        while data := source.recv(CHUNK):
            sink.sendall(data)
    except (OSError, EOFError):
        pass
    finally:
        with contextlib.suppress(OSError, EOFError):
            sink.shutdown_write()


def relay(a: Flow, b: Flow, name: str = "relay") -> None:
    """Copy a->b and b->a until both directions end, then close both. Blocks."""
    other = threading.Thread(target=_copy, args=(b, a), name=f"{name}-back", daemon=True)
    other.start()
    _copy(a, b)
    other.join()
    for flow in (a, b):
        with contextlib.suppress(OSError, EOFError):
            flow.close()
