"""The SSH connection to a shadow pod, over any socket-like stream.

The host key is pinned: the client made it and handed it to the pod, so the
server must present exactly that key before any authentication is attempted.
Only modern algorithms are offered; AES-GCM first, as paramiko moves it fastest.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import paramiko
import structlog

from ktpy.errors import HostKeyMismatch
from ktpy.tunnel.keys import check_host_key

log = structlog.get_logger(__name__)

USER = "kt"  # a non-root sshd accepts logins only as the user it runs as
CIPHERS = ("aes128-gcm@openssh.com", "aes256-gcm@openssh.com", "aes128-ctr", "aes256-ctr")
KEX = ("curve25519-sha256", "curve25519-sha256@libssh.org")
MACS = ("hmac-sha2-256-etm@openssh.com", "hmac-sha2-512-etm@openssh.com")
KEY_TYPES = ("ssh-ed25519",)
# paramiko's default 2 MiB window stalls bulk transfers on a path with latency
# (paramiko #175); a larger one keeps the pipe full.
WINDOW_SIZE = 16 * 1024 * 1024
MAX_PACKET = 32768
KEEPALIVE_SECONDS = 15


class SshError(Exception):
    """The SSH connection could not be made or was refused."""


@dataclass(frozen=True)
class SshCredentials:
    client_key: paramiko.PKey
    pinned_host_public: str  # "ssh-ed25519 AAAA..." as handed to the pod


def _restrict_algorithms(transport: paramiko.Transport) -> None:
    options = transport.get_security_options()
    options.ciphers = tuple(c for c in CIPHERS if c in options.ciphers)
    options.kex = tuple(k for k in KEX if k in options.kex)
    options.digests = tuple(m for m in MACS if m in options.digests)
    options.key_types = KEY_TYPES


def connect(
    sock: Any, credentials: SshCredentials, where: str, timeout: float = 15.0
) -> paramiko.Transport:
    """Handshake, check the pinned host key, authenticate with the session key."""
    transport = paramiko.Transport(
        sock, default_window_size=WINDOW_SIZE, default_max_packet_size=MAX_PACKET
    )
    _restrict_algorithms(transport)
    try:
        transport.start_client(timeout=timeout)
        check_host_key(transport.get_remote_server_key(), credentials.pinned_host_public, where)
        transport.auth_publickey(USER, credentials.client_key)
    except (paramiko.SSHException, OSError, EOFError) as exc:
        transport.close()
        raise SshError(f"SSH to {where} failed: {exc}") from exc
    except HostKeyMismatch:
        transport.close()
        raise
    transport.set_keepalive(KEEPALIVE_SECONDS)
    log.debug("ssh connected", where=where)
    return transport


def open_channel(
    transport: paramiko.Transport, host: str, port: int, timeout: float = 10.0
) -> paramiko.Channel:
    """A direct-tcpip channel: the shadow pod dials host:port on our behalf."""
    try:
        return transport.open_channel(
            "direct-tcpip", (host, port), ("127.0.0.1", 0), timeout=timeout
        )
    except paramiko.ChannelException as exc:
        # code 2 is "connect failed": refused or unreachable on the cluster side
        raise ConnectionRefusedError(f"{host}:{port}: {exc.text}") from exc
    except (paramiko.SSHException, EOFError) as exc:
        raise ConnectionError(f"{host}:{port}: tunnel unavailable: {exc}") from exc


RemoteHandler = Callable[[paramiko.Channel, tuple[str, int], tuple[str, int]], None]


def request_remote_forward(
    transport: paramiko.Transport,
    port: int,
    handler: RemoteHandler,
    address: str = "0.0.0.0",  # noqa: S104 - in the pod: cluster callers must reach it
) -> int:
    """Ask the shadow's sshd to listen on address:port and hand each connection to handler."""
    bound = transport.request_port_forward(address, port, handler=handler)
    if bound is None:
        raise SshError(f"the shadow pod refused to listen on port {port}")
    return int(bound)


def pump(channel: paramiko.Channel, sock: socket.socket, name: str) -> None:
    """Copy both ways between a channel and a socket until both sides finish.

    One thread per direction; each half-closes its peer on EOF so protocols
    that rely on a half-close (HTTP/1.0 uploads, rsync) keep working.
    """

    def channel_to_socket() -> None:
        try:
            while data := channel.recv(256 * 1024):
                sock.sendall(data)
        except OSError:
            pass
        finally:
            _quiet(sock.shutdown, socket.SHUT_WR)

    def socket_to_channel() -> None:
        try:
            while data := sock.recv(256 * 1024):
                channel.sendall(data)
        except OSError:
            pass
        finally:
            _quiet(channel.shutdown_write)

    threads = [
        threading.Thread(target=channel_to_socket, name=f"{name}-in", daemon=True),
        threading.Thread(target=socket_to_channel, name=f"{name}-out", daemon=True),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    _quiet(channel.close)
    _quiet(sock.close)


def _quiet(fn: Callable[..., object], *args: object) -> None:
    with contextlib.suppress(OSError, EOFError, paramiko.SSHException):
        fn(*args)
