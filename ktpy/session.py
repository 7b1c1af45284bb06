"""One shadow pod and its tunnel: start, keep alive, tear down in order.

A session creates its Secret (the client's public key and the host key it will
pin) and its shadow pod, watches the pod until it is Ready (failing within
seconds, with the reason, on an image or admission problem), opens SSH through
a port-forward, keeps both alive (reconnecting with backoff after a drop), and
refreshes its heartbeat. `close()` undoes everything it made, in order.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from types import MappingProxyType
from typing import Any

import paramiko

from ktpy.cluster import labels, manifests, names, ops
from ktpy.cluster.api import (
    ApiError,
    ClusterApi,
    Conflict,
    Kind,
    NotFound,
    WatchEventType,
    watching,
)
from ktpy.cluster.labels import PidStart, Role
from ktpy.config import Settings
from ktpy.errors import (
    ImageUnavailable,
    KtpyError,
    PodStartFailed,
    PodStartTimeout,
    SessionLost,
)
from ktpy.host import procs
from ktpy.logs import get_logger
from ktpy.tunnel import keys, portforward, ssh

IMAGE_PULL_FAILURES = ("ErrImagePull", "ImagePullBackOff", "ErrImageNeverPull", "InvalidImageName")
CONTAINER_FAILURES = ("CreateContainerConfigError", "CreateContainerError", "RunContainerError")
RECONNECT_BACKOFF = (0.5, 1.0, 2.0, 4.0, 8.0)
FLOW_WAIT_SECONDS = 10.0  # how long a new flow waits for a tunnel that is reconnecting

RemoteHandler = Callable[[paramiko.Channel, tuple[str, int], tuple[str, int]], None]


@dataclass(frozen=True)
class ShadowSpec:
    role: Role
    namespace: str
    pod_name: str
    image: str
    target: str | None = None
    ports: tuple[manifests.ShadowPort, ...] = ()
    extra_labels: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    # The shadow's own sshd and dnsmasq: 2222 and 5353 unless `ports` (a Service's
    # target ports) need those numbers, then the next free ones.
    ssh_port: int = field(init=False)
    dns_port: int = field(init=False)

    def __post_init__(self) -> None:
        ssh, dns = manifests.own_ports_avoiding(p.port for p in self.ports)
        object.__setattr__(self, "ssh_port", ssh)
        object.__setattr__(self, "dns_port", dns)


@dataclass
class Created:
    kind: Kind
    namespace: str
    name: str
    uid: str


@dataclass
class Timings:
    """Seconds from the session's start to each step, for the ready line and benchmarks."""

    pod_created: float = 0.0
    pod_ready: float = 0.0
    tunnel_up: float = 0.0


def local_owner_identity() -> PidStart:
    return PidStart(*procs.identity())


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
        self.created: list[Created] = []
        self.timings = Timings()
        self.lost = threading.Event()  # set when the session cannot go on (reason in lost_reason)
        self.lost_reason = ""
        self._stop = threading.Event()
        self._transport: paramiko.Transport | None = None
        self._transport_ready = threading.Condition()
        self._remote_forwards: dict[int, RemoteHandler] = {}
        self._threads: list[threading.Thread] = []
        self._started = time.monotonic()

    # --- start ------------------------------------------------------------------------------

    def start(self) -> None:
        """Create the Secret and the pod, wait until Ready, open the tunnel. On any
        failure, delete what was created and raise."""
        try:
            self._create_objects()
            self._wait_ready()
            self.timings.pod_ready = time.monotonic() - self._started
            self._connect()
            self.timings.tunnel_up = time.monotonic() - self._started
        except BaseException:
            self.close()
            raise
        self._spawn(self._supervise, "tunnel-supervisor")
        self._spawn(self._heartbeat, "heartbeat")

    def _meta(self, now: datetime) -> manifests.SessionMeta:
        return manifests.SessionMeta(
            session_id=self.id,
            role=self.spec.role,
            owner=self.settings.owner,
            heartbeat=now,
            pid_start=local_owner_identity(),
            target=self.spec.target,
        )

    def _create_objects(self) -> None:
        spec = self.spec
        meta = self._meta(self.api.server_time())
        secret = manifests.shadow_secret(
            manifests.ShadowSecretOptions(
                name=spec.pod_name,
                namespace=spec.namespace,
                session=meta,
                authorized_keys=self.keys.authorized_keys,
                host_private_key=self.keys.host.private_openssh,
                host_public_key=self.keys.host.public,
            )
        )
        # Recorded before it exists, so a failure right after the call still cleans it.
        created = self.api.create(Kind.SECRET, spec.namespace, secret)
        self.created.append(Created(Kind.SECRET, spec.namespace, spec.pod_name, _uid(created)))
        pod = manifests.shadow_pod(
            manifests.ShadowPodOptions(
                name=spec.pod_name,
                namespace=spec.namespace,
                image=spec.image,
                session=meta,
                secret_name=spec.pod_name,
                ports=spec.ports,
                extra_labels=spec.extra_labels,
                ssh_port=spec.ssh_port,
                dns_port=spec.dns_port,
            )
        )
        created = self.api.create(Kind.POD, spec.namespace, pod)
        self.created.append(Created(Kind.POD, spec.namespace, spec.pod_name, _uid(created)))
        self._pod_version = str(created["metadata"].get("resourceVersion", ""))
        self.timings.pod_created = time.monotonic() - self._started
        # The Secret goes with its pod even if ktpy never gets to delete it.
        with contextlib.suppress(ApiError):
            self.api.patch(
                Kind.SECRET,
                spec.namespace,
                spec.pod_name,
                manifests.secret_owner_patch(spec.pod_name, _uid(created)),
            )
        self.log.info("shadow pod created", image=spec.image)

    def _wait_ready(self) -> None:
        """Watch (not poll) the pod until Ready; fail fast on what will not heal."""
        spec = self.spec
        timeout = self.settings.pod_start_timeout.total_seconds()
        deadline = time.monotonic() + timeout
        version = self._pod_version
        while time.monotonic() < deadline:
            remaining = max(1, int(deadline - time.monotonic()))
            with watching(
                self.api,
                Kind.POD,
                spec.namespace,
                field_selector=f"metadata.name={spec.pod_name}",
                resource_version=version,
                timeout_seconds=remaining,
            ) as events:
                for event in events:
                    if self._stop.is_set():
                        raise SessionLost("stopped while the shadow pod was starting")
                    version = event.resource_version or version
                    if event.type is WatchEventType.DELETED:
                        raise PodStartFailed(
                            f"shadow pod {spec.pod_name} was deleted while starting"
                        )
                    if pod_is_ready(event.object, self.spec.image):
                        return
        raise PodStartTimeout(
            f"shadow pod {spec.pod_name} not Ready after {timeout:.0f}s",
            hint="See 'kubectl describe pod' for why; "
            "raise KTPY_POD_START_TIMEOUT for slow clusters.",
        )

    # --- tunnel -----------------------------------------------------------------------------

    def _connect(self) -> None:
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

    def _supervise(self) -> None:
        """Reconnect port-forward and SSH after a drop, with backoff; log each event."""
        attempt = 0
        while not self._stop.wait(0.5):
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
            if self._stop.wait(delay):
                return
            try:
                self._connect()
                self.log.info("tunnel reconnected", attempts=attempt)
            except (KtpyError, portforward.PortForwardError, ssh.SshError, OSError) as exc:
                self.log.warning("reconnect failed", attempt=attempt, reason=str(exc))
                if self._pod_gone():
                    self.lose(f"shadow pod {self.spec.pod_name} is gone")
                    return

    def _pod_gone(self) -> bool:
        try:
            pod = self.api.get(Kind.POD, self.spec.namespace, self.spec.pod_name)
        except NotFound:
            return True
        except (ApiError, KtpyError):
            return False
        return pod["metadata"].get("deletionTimestamp") is not None

    def transport(self, wait: float = FLOW_WAIT_SECONDS) -> paramiko.Transport:
        deadline = time.monotonic() + wait
        with self._transport_ready:
            while self._transport is None or not self._transport.is_active():
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self.lost.is_set():
                    raise ConnectionError("the tunnel to the shadow pod is down")
                self._transport_ready.wait(remaining)
            return self._transport

    def open_flow(self, host: str, port: int) -> paramiko.Channel:
        """A connection to host:port opened by the shadow pod (SSH direct-tcpip)."""
        return ssh.open_channel(self.transport(), host, port)

    def run(self, command: str) -> str:
        """Run a command in the shadow pod over SSH (no pods/exec right needed)."""
        return ssh.run_command(self.transport(), command)

    def add_remote_forward(self, port: int, handler: RemoteHandler) -> None:
        """Listen on the pod's port and hand connections to handler; kept across reconnects."""
        self._remote_forwards[port] = handler
        ssh.request_remote_forward(self.transport(), port, handler)

    # --- heartbeat ------------------------------------------------------------------------

    def _heartbeat(self) -> None:
        interval = self.settings.heartbeat_interval.total_seconds()
        while not self._stop.wait(interval):
            try:
                now = self.api.server_time()
                for obj in list(self.created):
                    self.api.patch(obj.kind, obj.namespace, obj.name, labels.heartbeat_patch(now))
            except NotFound:
                if self._pod_gone():
                    self.lose(f"shadow pod {self.spec.pod_name} was deleted by someone else")
                    return
            except (ApiError, KtpyError) as exc:
                self.log.warning("heartbeat failed; will retry", reason=str(exc))

    def lose(self, reason: str) -> None:
        """The session cannot go on (a part of it died): the command stops with reason."""
        self.lost_reason = reason
        self.log.error("session lost", reason=reason)
        self.lost.set()

    # --- teardown -------------------------------------------------------------------------

    def _spawn(self, target: Callable[[], None], name: str) -> None:
        thread = threading.Thread(target=target, name=f"{name}-{self.id}", daemon=True)
        self._threads.append(thread)
        thread.start()

    def close(self, *, hurry: bool = False) -> None:
        """Stop the tunnel and delete every object this session created (newest first).

        Each delete carries the object's uid, so a same-named object made by
        someone else after ours was removed is never touched.
        """
        self._stop.set()
        transport, self._transport = self._transport, None
        if transport is not None:
            with contextlib.suppress(Exception):
                transport.close()
        for obj in reversed(self.created):
            try:
                self.api.delete(
                    obj.kind,
                    obj.namespace,
                    obj.name,
                    uid=obj.uid,
                    grace_period_seconds=0 if hurry else None,
                )
            except (Conflict, NotFound):
                pass
            except (ApiError, KtpyError) as exc:
                self.log.warning(
                    "could not delete", kind=obj.kind.value, name=obj.name, reason=str(exc)
                )
                continue
        if not hurry:
            pods = [
                (o.kind, o.namespace, o.name, o.uid) for o in self.created if o.kind is Kind.POD
            ]
            ops.wait_gone(self.api, pods)
        self.created.clear()
        for thread in self._threads:
            if thread is not threading.current_thread():
                thread.join(timeout=0 if hurry else 2)


def _uid(body: Mapping[str, Any]) -> str:
    return str(body["metadata"]["uid"])


def pod_is_ready(pod: Mapping[str, Any], image: str) -> bool:
    """True once Ready; raises the KtpyError for a start that will not heal."""
    status = pod.get("status") or {}
    for condition in status.get("conditions") or ():
        unschedulable = (condition.get("type"), condition.get("status"), condition.get("reason"))
        if unschedulable == ("PodScheduled", "False", "Unschedulable"):
            detail = condition.get("message", "")
            raise PodStartFailed(
                f"the shadow pod cannot be scheduled: {detail}".rstrip(": "),
                hint="Check node capacity, taints and the namespace's quota.",
            )
        if condition.get("type") == "Ready" and condition.get("status") == "True":
            return True
    for container in status.get("containerStatuses") or ():
        state = container.get("state") or {}
        waiting = state.get("waiting") or {}
        reason = str(waiting.get("reason", ""))
        message = str(waiting.get("message", ""))
        if reason in IMAGE_PULL_FAILURES:
            raise ImageUnavailable(image, f"{reason}: {message}".rstrip(": "))
        if reason in CONTAINER_FAILURES:
            raise PodStartFailed(f"the shadow container cannot start: {reason}: {message}")
        terminated = state.get("terminated") or container.get("lastState", {}).get("terminated")
        if terminated and container.get("restartCount", 0) >= 1:
            raise PodStartFailed(
                "the shadow container exited "
                f"({terminated.get('reason', 'Error')}, code {terminated.get('exitCode')})",
                hint="See 'kubectl logs' of the shadow pod for why.",
            )
    return False
