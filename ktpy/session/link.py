"""A session's tunnel: SSH over the API server's port-forward to the shadow pod,
reconnected with backoff after a drop, with the remote forwards asked again on
every reconnect. Flows (direct-tcpip channels) open over whichever transport is
current."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable

import paramiko

from ktpy.cluster.api import ClusterApi
from ktpy.errors import KtpyError
from ktpy.logs import Logger
from ktpy.session.shadow import ShadowSpec
from ktpy.tunnel import keys, portforward, ssh

RECONNECT_BACKOFF = (0.5, 1.0, 2.0, 4.0, 8.0)
FLOW_WAIT_SECONDS = 10.0  # how long a new flow waits for a tunnel that is reconnecting

RemoteHandler = Callable[[paramiko.Channel, tuple[str, int], tuple[str, int]], None]


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
        self._transport_ready = threading.Condition()
        self._remote_forwards: dict[int, RemoteHandler] = {}

    def connect(self) -> None:
        target = portforward.Target(self.spec.namespace, self.spec.pod_name, self.spec.ssh_port)
        stream = portforward.open_stream(self.api.open_websocket, target)
        credentials = ssh.SshCredentials(self.keys.client.pkey(), self.keys.host.public)
        transport = ssh.connect(stream, credentials, where=f"pod/{self.spec.pod_name}")
        for port, handler in self._remote_forwards.items():
            ssh.request_remote_forward(transport, port, handler)
        with self._transport_ready:
            self._transport = transport
            self._transport_ready.notify_all()
        self.log.info("tunnel up")

    def supervise(
        self, stop: threading.Event, pod_gone: Callable[[], bool], lose: Callable[[str], None]
    ) -> None:
        """Reconnect port-forward and SSH after a drop, with backoff; log each event.
        Gives up (``lose``) once the shadow pod is gone."""
        attempt = 0
        while not stop.wait(0.5):
            transport = self._transport
            if transport is not None and transport.is_active():
                attempt = 0
                continue
            if transport is not None:
                self.log.warning("tunnel dropped; reconnecting")
                with self._transport_ready:
                    self._transport = None
                with contextlib.suppress(Exception):
                    transport.close()
            delay = RECONNECT_BACKOFF[min(attempt, len(RECONNECT_BACKOFF) - 1)]
            attempt += 1
            if stop.wait(delay):
                return
            try:
                self.connect()
                self.log.info("tunnel reconnected", attempts=attempt)
            except (KtpyError, portforward.PortForwardError, ssh.SshError, OSError) as exc:
                self.log.warning("reconnect failed", attempt=attempt, reason=str(exc))
                if pod_gone():
                    lose(f"shadow pod {self.spec.pod_name} is gone")
                    return

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
        transport, self._transport = self._transport, None
        if transport is not None:
            with contextlib.suppress(Exception):
                transport.close()
