"""One shadow pod and its tunnel: start, keep alive, tear down in order.

A session creates its Secret (the client's public key and the host key it will
pin) and its shadow pod, watches the pod until it is Ready (failing within
seconds, with the reason, on an image or admission problem), opens SSH through
a port-forward, keeps both alive (reconnecting with backoff after a drop), and
refreshes its heartbeat. ``close()`` undoes everything it made, in order.

Its parts change for different reasons, so each has a module: ``shadow`` (the
objects in the cluster), ``link`` (the tunnel), ``owner`` (who owns a session
on this machine). ``Session`` composes them.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import paramiko

from ktpy.cluster import names
from ktpy.cluster.api import ApiError, ClusterApi, Kind, NotFound
from ktpy.cluster.bodies import JsonObject
from ktpy.cluster.manifests import SessionMeta
from ktpy.config import Settings
from ktpy.errors import KtpyError, SessionLost
from ktpy.logs import get_logger
from ktpy.session.link import RemoteHandler, TunnelLink
from ktpy.session.owner import check_local_process, judge_holder, local_owner_identity
from ktpy.session.shadow import Created, ShadowObjects, ShadowSpec, pod_is_ready
from ktpy.tunnel import keys, ssh

__all__ = [
    "Created",
    "RemoteHandler",
    "Session",
    "ShadowSpec",
    "Timings",
    "check_local_process",
    "judge_holder",
    "local_owner_identity",
    "pod_is_ready",
]


@dataclass
class Timings:
    """Seconds from the session's start to each step, for the ready line and benchmarks."""

    pod_created: float = 0.0
    pod_ready: float = 0.0
    portforward_open: float = 0.0  # the first port-forward stream to sshd
    ssh_up: float = 0.0  # SSH authenticated over it
    tunnel_up: float = 0.0  # remote forwards asked too: the tunnel serves
    origin: float = 0.0  # time.monotonic() at the session's start

    def since_start(self, at: float) -> float:
        """A time.monotonic() value as seconds from the session's start."""
        return at - self.origin


class Session:
    def __init__(
        self,
        api: ClusterApi,
        settings: Settings,
        spec: ShadowSpec,
        *,
        session_id: str | None = None,
    ) -> None:
        self.api = api
        self.settings = settings
        self.spec = spec
        self.id = session_id or names.new_session_id()
        self.log = get_logger("ktpy.session", session=self.id, pod=spec.pod_name)
        self.keys = keys.generate_session_keys(self.id)
        self._started = time.monotonic()
        self.timings = Timings(origin=self._started)
        self.lost = threading.Event()  # set when the session cannot go on (reason in lost_reason)
        self.lost_reason = ""
        self.lost_error: type[SessionLost] = SessionLost  # what the command raises for it
        self.objects = ShadowObjects(api, settings, spec, self.id, self.keys, self.log)
        self.link = TunnelLink(api, spec, self.keys, self.log, self.lost)
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        # Called with the API server's now after each heartbeat (a mesh member's mark).
        self.heartbeat_hooks: list[Callable[[], None]] = []

    @property
    def created(self) -> list[Created]:
        return self.objects.created

    # --- start ------------------------------------------------------------------------------

    def start(self) -> None:
        """Create the Secret and the pod, wait until Ready, open the tunnel. On any
        failure, delete what was created and raise."""
        try:
            self.objects.create()
            self.timings.pod_created = time.monotonic() - self._started
            timeout = self.settings.pod_start_timeout.total_seconds()
            self.objects.wait_ready(timeout, self._stop.is_set)
            self.timings.pod_ready = time.monotonic() - self._started
            self.link.connect()
            self.timings.portforward_open = self.timings.since_start(self.link.stream_opened_at)
            self.timings.ssh_up = self.timings.since_start(self.link.ssh_up_at)
            self.timings.tunnel_up = time.monotonic() - self._started
        except BaseException:
            self.close()
            raise
        self._spawn(self._supervise, "tunnel-supervisor")
        self._spawn(self._heartbeat, "heartbeat")

    def _supervise(self) -> None:
        self.link.supervise(self._stop, self.objects.pod_gone, self.lose)

    def meta(self) -> SessionMeta:
        """What every object of this session carries, as of the API server's now."""
        return self.objects.meta(self.api.server_time())

    def adopt(self, kind: Kind, body: Mapping[str, Any]) -> JsonObject:
        """Create an object beside the shadow pod that lives and dies with the session."""
        return self.objects.adopt(kind, body)

    # --- tunnel -----------------------------------------------------------------------------

    def transport(self, wait: float | None = None) -> paramiko.Transport:
        return self.link.transport() if wait is None else self.link.transport(wait)

    def open_flow(self, host: str, port: int) -> paramiko.Channel:
        """A connection to host:port opened by the shadow pod (SSH direct-tcpip)."""
        return ssh.open_channel(self.transport(), host, port)

    def run(self, command: str) -> str:
        """Run a command in the shadow pod over SSH (no pods/exec right needed)."""
        return ssh.run_command(self.transport(), command)

    def add_remote_forward(self, port: int, handler: RemoteHandler) -> None:
        self.link.add_remote_forward(port, handler)

    # --- heartbeat ------------------------------------------------------------------------

    def _heartbeat(self) -> None:
        interval = self.settings.heartbeat_interval.total_seconds()
        while not self._stop.wait(interval):
            try:
                self.objects.refresh_heartbeat(self.api.server_time())
                for hook in list(self.heartbeat_hooks):
                    hook()
            except NotFound:
                if self.objects.pod_gone():
                    self.lose(f"shadow pod {self.spec.pod_name} was deleted by someone else")
                    return
            except (ApiError, KtpyError) as exc:
                self.log.warning("heartbeat failed; will retry", reason=str(exc))

    def lose(self, reason: str, error: type[SessionLost] = SessionLost) -> None:
        """The session cannot go on (a part of it died): the command stops with reason,
        raising error."""
        self.lost_reason = reason
        self.lost_error = error
        self.log.error("session lost", reason=reason)
        self.lost.set()

    # --- teardown -------------------------------------------------------------------------

    def _spawn(self, target: Callable[[], None], name: str) -> None:
        thread = threading.Thread(target=target, name=f"{name}-{self.id}", daemon=True)
        self._threads.append(thread)
        thread.start()

    def close(self, *, hurry: bool = False) -> list[Created]:
        """Stop the tunnel and delete every object this session created (newest first).
        Returns what was deleted, in that order, for the command's last line."""
        self._stop.set()
        self.link.close()
        deleted = list(reversed(self.objects.created))
        self.objects.delete_all(hurry=hurry)
        for thread in self._threads:
            if thread is not threading.current_thread():
                thread.join(timeout=0 if hurry else 2)
        return deleted
