"""The SSH connection to a shadow pod, over any socket-like stream.

The host key is pinned: the client made it and handed it to the pod, so the
server must present exactly that key before any authentication is attempted.
Only modern algorithms are offered; AES-GCM first, as paramiko moves it fastest.
"""

from __future__ import annotations

import errno
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import paramiko

from ktpy.errors import HostKeyMismatch
from ktpy.logs import get_logger
from ktpy.tunnel.keys import check_host_key

log = get_logger(__name__)

USER = "kt"  # a non-root sshd accepts logins only as the user it runs as
CIPHERS = ("aes128-gcm@openssh.com", "aes256-gcm@openssh.com", "aes128-ctr", "aes256-ctr")
KEX = ("curve25519-sha256", "curve25519-sha256@libssh.org")
MACS = ("hmac-sha2-256-etm@openssh.com", "hmac-sha2-512-etm@openssh.com")
KEY_TYPES = ("ssh-ed25519",)
# The channel window: what the shadow may send before paramiko acknowledges. Not
# larger: paramiko buffers up to a window per channel and each read shifts the rest
# of that buffer (an O(n) `del` in BufferedPipe), so once a consumer falls behind,
# reads slow down and the transfer stalls. Measured on the bed, 256 MiB downloads
# in fresh sessions: 16 MiB stalled for 1-2 s in most sessions (2.3-5.7 s in all),
# 64 MiB stalled in every one (about 10 s), 4 MiB never (1.75-2.4 s). 4 MiB still
# covers the bandwidth-delay product of 1 Gbit/s at 30 ms.
WINDOW_SIZE = 4 * 1024 * 1024
MAX_PACKET = 32768
KEEPALIVE_SECONDS = 15


class SshError(Exception):
    """The SSH connection could not be made or was refused."""


@dataclass(frozen=True)
class SshCredentials:
    client_key: paramiko.PKey
    pinned_host_public: str  # "ssh-ed25519 AAAA..." as handed to the pod


class _Transport(paramiko.Transport):
    """paramiko's Transport, keeping the server's words when it refuses a channel.

    paramiko replaces OpenSSH's description ("Connection refused", "No route to
    host") with the generic text of the reason code ("Connect failed"), and that
    description is the only way to tell a refused port (the client gets an RST)
    from an unreachable host (an ICMP error). Its handler table is built per
    instance from bound methods, so this override is what it dispatches to.
    """

    def _parse_channel_open_failure(self, m: paramiko.Message) -> None:
        chanid = m.get_int()
        reason = m.get_int()
        description = m.get_text()
        m.get_text()  # language tag
        log.debug("channel open refused", channel=chanid, reason=reason, text=description)
        with self.lock:  # as paramiko's own handler does
            self.saved_exception = paramiko.ChannelException(
                reason, description or f"open failed (reason {reason})"
            )
            events = self.channel_events
            if chanid in events:
                self._channels.delete(chanid)  # type: ignore[attr-defined]
                events.pop(chanid).set()


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
    transport = _Transport(
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
    """A direct-tcpip channel: the shadow pod dials host:port on our behalf.

    Failures come back as the OSError a local connect() would raise, so callers
    (SOCKS replies, the TUN stack's RST) need not know SSH.
    """
    try:
        return transport.open_channel(
            "direct-tcpip", (host, port), ("127.0.0.1", 0), timeout=timeout
        )
    except paramiko.ChannelException as exc:
        raise open_failure(exc.code, exc.text, f"{host}:{port}") from exc
    except (paramiko.SSHException, EOFError) as exc:
        raise ConnectionError(f"{host}:{port}: tunnel unavailable: {exc}") from exc


# SSH_MSG_CHANNEL_OPEN_FAILURE reason codes (RFC 4254 section 5.1)
OPEN_ADMINISTRATIVELY_PROHIBITED = 1
OPEN_CONNECT_FAILED = 2


def open_failure(code: int, text: str, target: str) -> OSError:
    """The OSError matching a refused channel. OpenSSH puts the connect error's
    text in the description: that is how a refused port is told from an
    unreachable host."""
    message = f"{target}: {text}"
    lowered = text.lower()
    if code == OPEN_ADMINISTRATIVELY_PROHIBITED:
        return PermissionError(errno.EACCES, message)
    if code == OPEN_CONNECT_FAILED and "refused" in lowered:
        return ConnectionRefusedError(errno.ECONNREFUSED, message)
    if code == OPEN_CONNECT_FAILED and "network is unreachable" in lowered:
        return OSError(errno.ENETUNREACH, message)
    if code == OPEN_CONNECT_FAILED:
        # no route, unknown name, timed out: the target cannot be reached
        return OSError(errno.EHOSTUNREACH, message)
    return OSError(errno.EIO, message)


RemoteHandler = Callable[[paramiko.Channel, tuple[str, int], tuple[str, int]], None]


def request_remote_forward(
    transport: paramiko.Transport,
    port: int,
    handler: RemoteHandler,
    address: str = "0.0.0.0",  # noqa: S104 - in the pod: cluster callers must reach it
    timeout: float = 10.0,
) -> int:
    """Ask the shadow's sshd to listen on address:port and hand each connection to handler.

    paramiko waits for the answer as long as the transport is active, which over a
    silent path is minutes: an answer not back within ``timeout`` closes the
    transport (the path is dead; the tunnel's supervisor reconnects)."""
    timer = threading.Timer(timeout, transport.close)
    timer.daemon = True
    timer.start()
    try:
        bound = transport.request_port_forward(address, port, handler=handler)
    except (paramiko.SSHException, EOFError) as exc:
        raise SshError(f"the shadow pod refused to listen on port {port}: {exc}") from exc
    finally:
        timer.cancel()
    if bound is None:
        raise SshError(f"the shadow pod refused to listen on port {port}")
    return int(bound)


# A shadow pod belongs to one session, so every other SSH connection to it is this
# session's own earlier one: dead on the laptop's side (a silent path, given up
# by the health check) but alive in sshd until its ClientAlive gives up (up to a
# minute), holding the remote-forward ports the new connection needs. Kills every
# sshd process that is not an ancestor of this command (the listener is one).
_DROP_OTHER_CONNECTIONS = r"""
keep=" "; p=$$
while [ "${p:-0}" -gt 1 ]; do
  keep="$keep$p "; p=$(sed -n 's/^PPid:[[:space:]]*//p' /proc/$p/status)
done
for d in /proc/[0-9]*; do
  n=${d#/proc/}
  case "$keep" in *" $n "*) continue ;; esac
  case "$(cat $d/comm 2>/dev/null)" in
    sshd|sshd-session) kill "$n" 2>/dev/null && echo "$n" ;;
  esac
done
true
"""


def drop_other_connections(transport: paramiko.Transport) -> int:
    """End the shadow's other SSH connections (see above); how many were ended."""
    return len(run_command(transport, _DROP_OTHER_CONNECTIONS).split())


def run_command(transport: paramiko.Transport, command: str, timeout: float = 10.0) -> str:
    """Run a command in the shadow pod (its own user, no shell tricks) and return stdout."""
    channel = transport.open_session(timeout=timeout)
    try:
        channel.settimeout(timeout)
        channel.exec_command(command)
        chunks = []
        while data := channel.recv(65536):
            chunks.append(data)
        if channel.recv_exit_status() != 0:
            raise SshError(f"{command!r} failed in the shadow pod")
        return b"".join(chunks).decode(errors="replace")
    finally:
        channel.close()
