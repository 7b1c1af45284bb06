"""One shadow pod and its tunnel: start, keep alive, tear down in order.

A session creates its Secret (the client's public key and the host key it will
pin) and its shadow pod, watches the pod until it is Ready (failing within
seconds, with the reason, on an image or admission problem), opens SSH through
a port-forward, keeps both alive (reconnecting with backoff after a drop; a new
pod in place of an evicted one, ``eviction``), and refreshes its heartbeat.
``close()`` undoes everything it made, in order.

Its parts change for different reasons, so each has a module: ``shadow`` (the
objects in the cluster), ``link`` (the tunnel), ``owner`` (who owns a session
on this machine). ``Session`` composes them.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import paramiko

from ktpy import progress
from ktpy.cluster import names, policies
from ktpy.cluster.api import ApiError, ClusterApi, Kind, follow, for_user
from ktpy.cluster.bodies import JsonObject
from ktpy.cluster.manifests import SessionMeta
from ktpy.config import Settings
from ktpy.durations import format_duration
from ktpy.errors import (
    ApiServerError,
    ApiThrottled,
    ApiTimeout,
    ClusterUnreachable,
    Forbidden,
    KtpyError,
    SessionLost,
)
from ktpy.logs import get_logger
from ktpy.sansio import Action, Event
from ktpy.session import eviction
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


# The heartbeat failures that end a session under their own exit code (others: 10).
UNANSWERED = (ClusterUnreachable, ApiTimeout, ApiServerError, ApiThrottled)


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


def _unanswered(exc: Exception, stale_after: timedelta) -> tuple[str, type[KtpyError]]:
    """Why a session stops whose heartbeat failed for ``stale_after``: from then on
    any ``ktpy clean`` may take it for dead, so going on would be pretending."""
    error = (
        exc if isinstance(exc, KtpyError) else for_user(exc) if isinstance(exc, ApiError) else exc
    )
    kind = type(error) if isinstance(error, UNANSWERED) else ClusterUnreachable
    reason = error.format_message() if isinstance(error, KtpyError) else str(error)
    return (
        f"no heartbeat for {format_duration(stale_after)} (stale-after), so the session's "
        f"objects may be swept as dead: {reason}",
        kind,
    )


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
        self.lost_error: type[KtpyError] = SessionLost  # what the command raises for it
        self.objects = ShadowObjects(api, settings, spec, self.id, self.keys, self.log)
        self.link = TunnelLink(api, spec, self.keys, self.log, self.lost)
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        # Called with the API server's now after each heartbeat (a mesh member's mark).
        self.heartbeat_hooks: list[Callable[[], None]] = []
        # One line each, for the user once the session is up (NetworkPolicies).
        self.warnings: list[str] = []

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
            ports = ((p.port, p.name) for p in self.spec.ports)
            self.check_policies(
                self.spec.pod_name,
                self.objects.pod_labels,
                policies.needs_for(self.spec.role, ports),
            )
            timeout = self.settings.pod_start_timeout.total_seconds()
            with progress.waiting(f"Starting shadow pod {self.spec.pod_name}") as wait:
                self.objects.wait_ready(timeout, self._stop.is_set, wait.update)
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
        self._spawn(self._keep, "shadow-keeper")

    def _supervise(self) -> None:
        try:
            self.link.supervise(self._stop, self.lose)
        except Exception as exc:  # a supervisor gone would leave a dead tunnel unseen
            self.log.exception("tunnel supervisor failed")
            self.lose(f"the tunnel's supervisor failed: {type(exc).__name__}: {exc}")

    # --- the shadow pod's end ---------------------------------------------------------------

    def _keep(self) -> None:
        try:
            self._follow_shadow()
        except Exception as exc:  # a keeper gone would leave the pod's end unseen
            self.log.exception("shadow pod keeper failed")
            self.lose(f"the shadow pod's keeper failed: {type(exc).__name__}: {exc}")

    def _follow_shadow(self) -> None:
        """Follow the shadow pod; an evicted one is replaced, any other end loses the
        session (``eviction.ShadowWatch`` decides). Outlives API outages: a failed
        list or watch is tried again. After a replacement it lists afresh: the events
        that came meanwhile tell of the old pod, not of the new one."""
        name = self.spec.pod_name
        watch = eviction.ShadowWatch(name, self.objects.pod_uid())

        def retry(exc: Exception, failures: int) -> bool:
            self.log.debug("shadow pod watch failed; will list again", reason=str(exc))
            return True

        while not self._stop.is_set():
            followed = follow(
                self.api,
                Kind.POD,
                self.spec.namespace,
                field_selector=f"metadata.name={name}",
                stop=self._stop.is_set,
                retry=retry,
                pause=self._stop.wait,
                watch_seconds=30,
                min_watch_seconds=1.0,
            )
            outcome = None
            with contextlib.closing(followed):
                for pods in followed:
                    outcome = self._carry_out(watch, watch.handle(eviction.PodSeen(pods.get(name))))
                    if outcome is not None:
                        break
            if outcome is not True:  # lost, or stopping
                return

    def _carry_out(self, watch: eviction.ShadowWatch, actions: list[Action]) -> bool | None:
        """Do what the watch answered: None if nothing happened, True once a new pod
        serves, False once the session is lost."""
        for action in actions:
            if isinstance(action, eviction.Lose):
                self.lose(action.reason)
                return False
            if isinstance(action, eviction.Replace):
                then = self._carry_out(watch, watch.handle(self._replace(action)))
                return then is not False
        return None

    def _replace(self, action: eviction.Replace) -> Event:
        """Carry out a Replace: the new pod Ready, the tunnel told to reconnect now."""
        self.log.warning("shadow pod evicted; making a new one", why=action.why)
        started = time.monotonic()
        timeout = self.settings.pod_start_timeout.total_seconds()
        try:
            uid = self.objects.replace_pod(action.old, timeout, self._stop.is_set)
        except (ApiError, KtpyError, OSError) as exc:
            return eviction.ReplaceFailed(str(exc))
        self.link.renew()
        self.log.info("new shadow pod serves", seconds=f"{time.monotonic() - started:.1f}")
        return eviction.Replaced(uid)

    def meta(self) -> SessionMeta:
        """What every object of this session carries, as of the API server's now."""
        return self.objects.meta(self.api.server_time())

    def adopt(self, kind: Kind, body: Mapping[str, Any]) -> JsonObject:
        """Create an object beside the shadow pod that lives and dies with the session."""
        return self.objects.adopt(kind, body)

    def check_policies(
        self, pod: str, labels: Mapping[str, str], needs: Iterable[policies.Need]
    ) -> None:
        """Warn (in ``warnings``) if the namespace's NetworkPolicies block what the pod
        needs. Policies this user may not list are not guessed at: a debug line only."""
        needs = tuple(needs)
        if not needs:
            return  # a pod nobody calls and that calls nobody (doctor's): nothing to ask
        try:
            listed = self.api.list_objects(Kind.NETWORK_POLICY, self.spec.namespace).items
        except Forbidden:
            self.log.debug("may not list NetworkPolicies; their effect is not checked")
            return
        except ApiError as exc:
            self.log.debug("NetworkPolicies not checked", reason=str(exc))
            return
        found = policies.blocked(listed, labels, needs)
        if found is not None:
            self.warnings.append(policies.warning(pod, found))

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
        failing_since: float | None = None
        while not self._stop.wait(interval):
            try:
                self.objects.refresh_heartbeat(self.api.server_time())
                for hook in list(self.heartbeat_hooks):
                    hook()
                failing_since = None
            except (ApiError, KtpyError) as exc:
                self.log.warning("heartbeat failed; will retry", reason=str(exc))
                now = time.monotonic()
                failing_since = now if failing_since is None else failing_since
                if now - failing_since >= self.settings.stale_after.total_seconds():
                    self.lose(*_unanswered(exc, self.settings.stale_after))
                    return

    def lose(self, reason: str, error: type[KtpyError] = SessionLost) -> None:
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
