"""A session's tunnel: SSH over the API server's port-forward to the shadow pod,
watched for a silent path, reconnected after a drop, with the remote forwards
asked again on every reconnect. Flows (direct-tcpip channels) open over
whichever transport is current.

The supervisor thread is the only one that judges the path and reconnects; it
never writes data, and what it does to a stuck connection (a ping only if the
stream is free, a close that does not wait for a writer) cannot block it, the
data path or teardown."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable

import paramiko

from ktpy.cluster.api import ApiError, ClusterApi
from ktpy.errors import (
    KtpyError,
    PortForwardRefused,
    SshAuthFailed,
    SshHandshakeFailed,
    TunnelProtocolError,
)
from ktpy.logs import Logger
from ktpy.session.shadow import ShadowSpec
from ktpy.tunnel import keys, portforward, ssh
from ktpy.tunnel.health import PathHealth, Verdict

# Seconds between reconnect attempts; an attempt's own duration counts toward its
# wait, so after a path comes back the next try is never more than the larger of
# the attempt's timeout (the handshake's) and the last step away.
RECONNECT_BACKOFF = (0.5, 1.0, 2.0, 4.0)
FLOW_WAIT_SECONDS = 10.0  # how long a new flow waits for a tunnel that is reconnecting
CHECK_EVERY = 0.5
FORWARD_ATTEMPTS = 10  # a remote forward's port may take a moment to be freed

RemoteHandler = Callable[[paramiko.Channel, tuple[str, int], tuple[str, int]], None]
Lose = Callable[[str, type[KtpyError]], None]


def ssh_failure(exc: ssh.SshError, refused: str | None, target: portforward.Target) -> KtpyError:
    """What an SSH connect through the port-forward failed on: the kubelet refused the
    forward (its error channel says why), sshd refused the key, or nothing that speaks
    SSH answered."""
    pod = f"pod {target.pod} port {target.port}"
    if refused:
        return PortForwardRefused(f"the port-forward to {pod} was refused: {refused.strip()}")
    if isinstance(exc.__cause__, paramiko.AuthenticationException):
        return SshAuthFailed(f"the SSH server of {pod} refused this session's key: {exc}")
    return SshHandshakeFailed(f"no SSH server answered through the port-forward to {pod}: {exc}")


class TunnelLink:
    def __init__(
        self,
        api: ClusterApi,
        spec: ShadowSpec,
        session_keys: keys.SessionKeys,
        log: Logger,
        lost: threading.Event,
    ) -> None:
        self.api = api
        self.spec = spec
        self.keys = session_keys
        self.log = log
        self._lost = lost
        self._transport: paramiko.Transport | None = None
        self._stream: portforward.Stream | None = None
        self._transport_ready = threading.Condition()
        self._remote_forwards: dict[int, RemoteHandler] = {}
        self._wake = threading.Event()  # cuts a backoff short
        self._renew = threading.Event()
        # time.monotonic() of the last connect's steps (start-up timings, benchmarks)
        self.stream_opened_at = 0.0
        self.ssh_up_at = 0.0

    def connect(self, *, again: bool = False) -> None:
        """Port-forward, then SSH; a failure is the KtpyError of its cause (the first
        connect's error ends the command; a reconnect's is logged and tried again)."""
        target = portforward.Target(self.spec.namespace, self.spec.pod_name, self.spec.ssh_port)
        try:
            stream = portforward.open_stream(self.api.open_websocket, target)
        except portforward.PortForwardError as exc:
            raise PortForwardRefused(str(exc)) from exc
        except ApiError as exc:  # the upgrade answered 404 (pod gone), 5xx...
            raise PortForwardRefused(
                f"the API server refused the port-forward to pod {target.pod} "
                f"(HTTP {exc.status}): {exc.message}"
            ) from exc
        self.stream_opened_at = time.monotonic()
        credentials = ssh.SshCredentials(self.keys.client.pkey(), self.keys.host.public)
        try:
            transport = ssh.connect(stream, credentials, where=f"pod/{self.spec.pod_name}")
        except ssh.SshError as exc:
            raise ssh_failure(exc, stream.error, target) from exc
        self.ssh_up_at = time.monotonic()
        try:
            if again and self._remote_forwards:
                # The previous connection may still hold the ports in the pod.
                ended = ssh.drop_other_connections(transport)
                if ended:
                    self.log.info("ended the previous SSH connection in the pod", processes=ended)
            for port, handler in self._remote_forwards.items():
                self._forward(transport, port, handler)
        except BaseException:
            transport.close()
            raise
        with self._transport_ready:
            self._transport = transport
            self._stream = stream
            self._transport_ready.notify_all()
        self.log.info("tunnel up")

    def _forward(self, transport: paramiko.Transport, port: int, handler: RemoteHandler) -> None:
        for _ in range(FORWARD_ATTEMPTS - 1):
            with contextlib.suppress(ssh.SshError):
                ssh.request_remote_forward(transport, port, handler)
                return
            if not transport.is_active():
                break
            time.sleep(0.2)
        ssh.request_remote_forward(transport, port, handler)  # the last try says why

    def supervise(self, stop: threading.Event, lose: Lose) -> None:
        """Judge the path, reconnect port-forward and SSH after a drop (with backoff),
        log each event. Gives up (``lose``) when the server broke the WebSocket
        protocol (a reconnect would not mend that); whether the shadow pod's end ends
        the session is the keeper's judgement (``session.eviction``), not this loop's:
        it goes on trying until the session stops, and ``renew`` moves it to a new pod at once."""
        attempt = 0
        health = PathHealth()
        while not stop.wait(CHECK_EVERY):
            transport, stream = self._transport, self._stream
            if stream is not None and stream.violation is not None:
                lose(
                    f"the port-forward to pod {self.spec.pod_name} broke the WebSocket "
                    f"protocol: {stream.violation}",
                    TunnelProtocolError,
                )
                return
            renew = self._renew.is_set()
            if renew:
                self._renew.clear()
                self.log.info("a new shadow pod serves; reconnecting to it")
            elif transport is not None and transport.is_active() and stream is not None:
                verdict = health.judge(time.monotonic(), stream.last_received)
                if verdict is Verdict.PROBE:
                    stream.ping()
                if verdict is not Verdict.DEAD:
                    attempt = 0
                    continue
                self.log.warning(
                    "tunnel silent; reconnecting",
                    silent_for=f"{time.monotonic() - stream.last_received:.1f}s",
                )
            elif transport is not None:
                self.log.warning("tunnel dropped; reconnecting")
            if renew:
                attempt = 0
            if transport is not None:
                self._drop(transport)
                health = PathHealth()
            delay = RECONNECT_BACKOFF[min(attempt, len(RECONNECT_BACKOFF) - 1)]
            attempt += 1
            started = time.monotonic()
            try:
                self.connect(again=True)
                self.log.info("tunnel reconnected", attempts=attempt)
                continue
            except (
                ApiError,  # 404 or 500 while the pod is replaced or a kubelet restarts
                KtpyError,
                portforward.PortForwardError,
                ssh.SshError,
                OSError,
            ) as exc:
                self.log.warning("reconnect failed", attempt=attempt, reason=str(exc))
            if self._wake.wait(max(0.0, delay - (time.monotonic() - started))):
                self._wake.clear()
                attempt = 0
            if stop.is_set():
                return

    def renew(self) -> None:
        """A new shadow pod serves under the name: connect to it now, whatever the state
        of the current connection (which may still reach the old pod while it dies)."""
        self._renew.set()
        self._wake.set()

    def _drop(self, transport: paramiko.Transport) -> None:
        with self._transport_ready:
            if self._transport is transport:
                self._transport = None
                self._stream = None
        with contextlib.suppress(Exception):
            transport.close()  # the stream's close does not wait for a writer

    def transport(self, wait: float = FLOW_WAIT_SECONDS) -> paramiko.Transport:
        """The current transport; waits up to ``wait`` for a reconnect in progress."""
        deadline = time.monotonic() + wait
        with self._transport_ready:
            while self._transport is None or not self._transport.is_active():
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._lost.is_set():
                    raise ConnectionError("the tunnel to the shadow pod is down")
                self._transport_ready.wait(remaining)
            return self._transport

    def add_remote_forward(self, port: int, handler: RemoteHandler) -> None:
        """Listen on the pod's port and hand connections to handler; kept across reconnects."""
        self._remote_forwards[port] = handler
        ssh.request_remote_forward(self.transport(), port, handler)

    def close(self) -> None:
        self._wake.set()  # a supervisor in its backoff sees the stop at once
        transport, self._transport, self._stream = self._transport, None, None
        if transport is not None:
            with contextlib.suppress(Exception):
                transport.close()
