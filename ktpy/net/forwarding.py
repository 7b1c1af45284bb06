"""``ktpy forward``'s loopback listener: each connection carried to one host:port.

The injected `open_flow` opens the far end (an SSH direct-tcpip channel from
the shadow pod, wired by the command); this module does not know SSH. Opening
is retried when the target refuses, is unreachable or does not answer in time:
nothing has been read from the client yet, so a retry is invisible to it, and
during a rolling restart the next try usually lands on a pod that is still
serving. (The other direction, remote forwards to local ports, is
`ktpy.net.inbound`.)
"""

from __future__ import annotations

import contextlib
import errno
import socket
import struct
import time
from collections.abc import Callable

from ktpy.logs import get_logger
from ktpy.net.listener import ThreadedListener
from ktpy.net.relay import Flow, FlowOpener, SocketFlow, relay

log = get_logger(__name__)


# Refused, unreachable or silent: worth another try, the Service may pick another
# endpoint (during a rollout, kube-proxy still sends some connections to a pod that
# has stopped listening, or whose address is already gone).
# ECONNABORTED: the tunnel dropped while opening; the next try waits for its reconnect.
RETRY_ERRNOS = frozenset(
    {errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH, errno.ETIMEDOUT, errno.ECONNABORTED}
)
OPEN_ATTEMPTS = 4
RETRY_DELAY = 0.2


def open_with_retries(
    open_flow: FlowOpener,
    host: str,
    port: int,
    *,
    attempts: int = OPEN_ATTEMPTS,
    delay: float = RETRY_DELAY,
    sleep: Callable[[float], None] = time.sleep,
) -> Flow:
    """open_flow(host, port), tried again on a refused or unreachable target."""
    for attempt in range(1, attempts + 1):
        try:
            return open_flow(host, port)
        except OSError as exc:
            if exc.errno not in RETRY_ERRNOS or attempt == attempts:
                raise
            log.debug("target refused; trying again", target=f"{host}:{port}", attempt=attempt)
            sleep(delay)
    raise AssertionError("unreachable")  # pragma: no cover


def _reset(sock: socket.socket) -> None:
    """Close with RST, so the client fails at once instead of seeing a clean end."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        sock.close()


class ForwardServer(ThreadedListener):
    """127.0.0.1:listen_port, each connection carried to host:port by open_flow."""

    def __init__(
        self,
        open_flow: FlowOpener,
        host: str,
        port: int,
        *,
        listen_host: str = "127.0.0.1",
        listen_port: int = 0,
        name: str = "forward",
    ) -> None:
        super().__init__(listen_host, listen_port, name)
        self.open_flow = open_flow
        self.target = (host, port)
        self.failures = 0

    def serve(self, client: socket.socket, conn: int) -> None:
        host, port = self.target
        # Small requests go out at once, not after Nagle's delay.
        with contextlib.suppress(OSError):
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            flow = open_with_retries(self.open_flow, host, port)
        except OSError as exc:
            self.failures += 1
            log.warning(
                "forward target failed", conn=conn, target=f"{host}:{port}", reason=str(exc)
            )
            _reset(client)
            return
        relay(SocketFlow(client), flow, name=f"{self.name}-{conn}")
