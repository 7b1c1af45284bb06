"""Connections that arrive from the cluster (SSH remote forwards) handed to local ports.

The shadow pod's sshd accepts a cluster caller's connection on a Service's
target port and opens a forwarded channel to ktpy; ``Inbound`` dials the
matching local port on 127.0.0.1, then ::1 if that is refused, and relays.
If nothing listens locally the channel is closed at once, so the caller sees
its connection end promptly instead of hanging.

The SSH library calls the handler on its own transport thread, and keeps one
handler for all remote forwards of a connection: ``Inbound`` dispatches on the
port the server listened on and does the work on a thread of its own.
"""

from __future__ import annotations

import contextlib
import errno
import socket
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass

from ktpy.logs import get_logger
from ktpy.net.relay import Flow, SocketFlow, relay

LOOPBACKS = ("127.0.0.1", "::1")
DIAL_TIMEOUT = 3.0
_REFUSED = (errno.ECONNREFUSED, errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT, errno.ENETUNREACH)


def dial_local(port: int, timeout: float = DIAL_TIMEOUT) -> socket.socket | None:
    """A connection to ``port`` on this machine's loopback (IPv4 first), or None if
    nothing listens there."""
    for host in LOOPBACKS:
        try:
            sock = socket.create_connection((host, port), timeout=timeout)
        except OSError as exc:
            if exc.errno in _REFUSED:
                continue
            raise
        sock.settimeout(None)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock
    return None


def listening(port: int) -> bool:
    """Whether something accepts connections on ``port`` of the loopback (v4 or v6)."""
    try:
        sock = dial_local(port, timeout=1.0)
    except OSError:
        return False
    if sock is None:
        return False
    sock.close()
    return True


@dataclass
class InboundStats:
    accepted: int = 0
    refused: int = 0  # nothing listened locally
    active: int = 0
    last_arrival: float = 0.0  # time.monotonic() of the newest connection, 0 if none


class Inbound:
    """The remote-forward handler: shadow port -> local port."""

    def __init__(self, ports: Mapping[int, int]) -> None:
        self.ports = dict(ports)  # shadow (remote) port -> local port
        self.stats = InboundStats()
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self.log = get_logger("ktpy.inbound")

    def __call__(self, channel: Flow, origin: tuple[str, int], server: tuple[str, int]) -> None:
        with self._lock:
            self.stats.accepted += 1
            self.stats.active += 1
            self.stats.last_arrival = time.monotonic()
            self._idle.notify_all()
        threading.Thread(
            target=self._serve,
            args=(channel, origin, server[1]),
            name=f"inbound-{server[1]}",
            daemon=True,
        ).start()

    def _serve(self, channel: Flow, origin: tuple[str, int], remote_port: int) -> None:
        try:
            local = self.ports.get(remote_port)
            sock = None
            if local is not None:
                try:
                    sock = dial_local(local)
                except OSError as exc:
                    self.log.warning("cannot reach local port", port=local, reason=str(exc))
            if sock is None:
                with self._lock:
                    self.stats.refused += 1
                self.log.debug(
                    "nothing listens locally; closing", port=local, origin=f"{origin[0]}"
                )
                with contextlib.suppress(OSError, EOFError):
                    channel.close()
                return
            relay(channel, SocketFlow(sock), name=f"inbound-{remote_port}")
        finally:
            with self._lock:
                self.stats.active -= 1
                self._idle.notify_all()

    def snapshot(self) -> InboundStats:
        with self._lock:
            return InboundStats(**vars(self.stats))

    def wait_arrival(self, after: float, timeout: float) -> bool:
        """Wait until a connection arrives later than ``after`` (time.monotonic())."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while self.stats.last_arrival <= after:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._idle.wait(remaining)
            return True

    def wait_quiet(self, quiet: float, timeout: float) -> bool:
        """Wait until no connection arrived for ``quiet`` seconds and none is open,
        for at most ``timeout``. True if it got quiet."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while True:
                now = time.monotonic()
                since = now - self.stats.last_arrival if self.stats.last_arrival else quiet
                if since >= quiet and self.stats.active == 0:
                    return True
                if now >= deadline:
                    return False
                wait = quiet - since if since < quiet else 0.1
                self._idle.wait(min(max(wait, 0.02), deadline - now))
