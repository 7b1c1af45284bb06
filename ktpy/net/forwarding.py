"""Plain TCP forwarding through the tunnel, both ways, around injected openers.

- `ForwardServer` (``ktpy forward``): a loopback listener; each connection is
  carried to one host:port by the injected `open_flow` (an SSH direct-tcpip
  channel from the shadow pod, wired by the command). Opening is retried when
  the target refuses, is unreachable or does not answer in time: nothing has
  been read from the client yet, so a retry is invisible to it, and during a
  rolling restart the next try usually lands on a pod that is still serving.
- `ReverseForwarder` (``ktpy preview``): connections that arrive through remote
  forwards, each relayed to a local port (127.0.0.1, then ::1).

Neither knows SSH: a paramiko channel is a `Flow` as it is.
"""

from __future__ import annotations

import contextlib
import errno
import socket
import struct
import threading
import time
from collections.abc import Callable, Mapping

import structlog

from ktpy.net.relay import Flow, SocketFlow, relay

log = structlog.get_logger(__name__)

OpenFlow = Callable[[str, int], Flow]
Dial = Callable[[int], socket.socket]

LOCAL_HOSTS = ("127.0.0.1", "::1")
DIAL_TIMEOUT = 3.0
# Refused, unreachable or silent: worth another try, the Service may pick another
# endpoint (during a rollout, kube-proxy still sends some connections to a pod that
# has stopped listening, or whose address is already gone).
# ECONNABORTED: the tunnel dropped while opening; the next try waits for its reconnect.
RETRY_ERRNOS = frozenset(
    {errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH, errno.ETIMEDOUT, errno.ECONNABORTED}
)
OPEN_ATTEMPTS = 4
RETRY_DELAY = 0.2


def dial_local(port: int, timeout: float = DIAL_TIMEOUT) -> socket.socket:
    """A connection to localhost:port: IPv4 loopback first, then IPv6 (a server may
    listen on ``localhost`` resolved to ::1 only)."""
    last: OSError | None = None
    for host in LOCAL_HOSTS:
        try:
            sock = socket.create_connection((host, port), timeout=timeout)
        except OSError as exc:
            # ::1 may be missing altogether (IPv6 off): that is a refusal too.
            last = exc
            continue
        sock.settimeout(None)
        return sock
    raise ConnectionRefusedError(
        errno.ECONNREFUSED, f"nothing listens on localhost port {port} ({last})"
    )


def listens_locally(port: int, dial: Dial = dial_local) -> bool:
    """Whether a local server accepts on port (a connection is made and closed at once)."""
    try:
        sock = dial(port)
    except OSError:
        return False
    sock.close()
    return True


def open_with_retries(
    open_flow: OpenFlow,
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


class ForwardServer:
    """127.0.0.1:listen_port, each connection carried to host:port by open_flow."""

    def __init__(
        self,
        open_flow: OpenFlow,
        host: str,
        port: int,
        *,
        listen_host: str = "127.0.0.1",
        listen_port: int = 0,
        name: str = "forward",
    ) -> None:
        self.open_flow = open_flow
        self.target = (host, port)
        self.name = name
        self._listener = socket.create_server((listen_host, listen_port), backlog=256)
        self.address: tuple[str, int] = self._listener.getsockname()[:2]
        self._stopping = threading.Event()
        self._thread = threading.Thread(
            target=self._accept_loop, name=f"{name}-accept", daemon=True
        )
        self.connections = 0
        self.failures = 0

    def start(self) -> ForwardServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError):
            self._listener.close()

    def _accept_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                if self._stopping.is_set():
                    return
                continue
            self.connections += 1
            threading.Thread(
                target=self._serve,
                args=(client, self.connections),
                name=f"{self.name}-{self.connections}",
                daemon=True,
            ).start()

    def _serve(self, client: socket.socket, conn: int) -> None:
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


class ReverseForwarder:
    """Connections arriving through remote forwards, relayed to local ports.

    paramiko keeps one handler per transport for all its remote forwards (the
    last one registered), and calls it on its reader thread: so one object
    serves every port, dispatching on the port the connection arrived at, and
    gives each connection a thread of its own. Nothing listening locally closes
    the connection at once, so the caller in the cluster fails fast.
    """

    def __init__(self, ports: Mapping[int, int], dial: Dial = dial_local) -> None:
        self.ports = dict(ports)  # remote (in the pod) -> local
        self.dial = dial
        self.connections = 0
        self._warned: set[int] = set()
        self._lock = threading.Lock()

    def __call__(self, channel: Flow, origin: tuple[str, int], server: tuple[str, int]) -> None:
        local = self.ports.get(server[1])
        if local is None:
            with contextlib.suppress(OSError, EOFError):
                channel.close()
            return
        with self._lock:
            self.connections += 1
            conn = self.connections
        threading.Thread(
            target=self._serve,
            args=(channel, local, server[1], conn, origin),
            name=f"reverse-{conn}",
            daemon=True,
        ).start()

    def _serve(
        self, channel: Flow, local: int, remote: int, conn: int, origin: tuple[str, int]
    ) -> None:
        try:
            sock = self.dial(local)
        except OSError as exc:
            with self._lock:
                first = local not in self._warned
                self._warned.add(local)
            # Once per outage, not once per connection.
            (log.warning if first else log.debug)(
                "nothing listens locally; connection closed",
                port=remote,
                local=local,
                origin=f"{origin[0]}:{origin[1]}",
                reason=str(exc),
            )
            with contextlib.suppress(OSError, EOFError):
                channel.close()
            return
        with self._lock:
            self._warned.discard(local)
        relay(channel, SocketFlow(sock), name=f"reverse-{conn}")
