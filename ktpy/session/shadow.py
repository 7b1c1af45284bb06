"""A session's objects in the cluster: its Secret and shadow pod, and whatever a
command adopts beside them (preview's Service). Created in order, watched until
the pod is Ready, their heartbeat refreshed, deleted newest first."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from types import MappingProxyType
from typing import Any

from ktpy import progress
from ktpy.cluster import labels, manifests
from ktpy.cluster.api import (
    AlreadyExists,
    ApiError,
    ClusterApi,
    Conflict,
    Kind,
    NotFound,
    follow,
    wait_gone,
)
from ktpy.cluster.bodies import JsonObject, Pod, Secret
from ktpy.cluster.labels import Role
from ktpy.config import Settings
from ktpy.errors import (
    ImageUnavailable,
    KtpyError,
    NameTaken,
    PodStartFailed,
    PodStartTimeout,
    SessionLost,
)
from ktpy.logs import Logger
from ktpy.session.owner import local_owner_identity
from ktpy.tunnel import keys

IMAGE_PULL_FAILURES = ("ErrImagePull", "ImagePullBackOff", "ErrImageNeverPull", "InvalidImageName")
CONTAINER_FAILURES = ("CreateContainerConfigError", "CreateContainerError", "RunContainerError")
# Frees the Secret from its pod (its owner), so that it outlives the pod.
ORPHAN_PATCH = {"metadata": {"ownerReferences": None}}


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


class ShadowObjects:
    """The objects of one session, in the order they were created."""

    def __init__(
        self,
        api: ClusterApi,
        settings: Settings,
        spec: ShadowSpec,
        session_id: str,
        session_keys: keys.SessionKeys,
        log: Logger,
    ) -> None:
        self.api = api
        self._keys = session_keys
        self.settings = settings
        self.spec = spec
        self.session_id = session_id
        self.log = log
        self.created: list[Created] = []
        # Objects of others whose heartbeat this session refreshes while it lives (a
        # mesh's router and stuntman), never deleted by it.
        self.shared: list[tuple[Kind, str, str]] = []
        self.pod_labels: dict[str, str] = {}  # the shadow pod's, once created

    def meta(self, now: datetime) -> manifests.SessionMeta:
        """What every object of this session carries."""
        return manifests.SessionMeta(
            session_id=self.session_id,
            role=self.spec.role,
            owner=self.settings.owner,
            heartbeat=now,
            pid_start=local_owner_identity(),
            target=self.spec.target,
        )

    def adopt(self, kind: Kind, body: Mapping[str, Any]) -> JsonObject:
        """Create an object that lives and dies with this session: its heartbeat is
        refreshed with the pod's, and it is deleted before the pod (newest first).
        API errors (AlreadyExists...) reach the caller, and nothing is recorded."""
        namespace = str(body["metadata"].get("namespace") or self.spec.namespace)
        created = self.api.create(kind, namespace, body)
        meta = created["metadata"]
        self.created.append(Created(kind, namespace, str(meta["name"]), str(meta["uid"])))
        return created

    def create(self) -> None:
        """The Secret (keys), then the pod that mounts it. A name taken already (a
        mesh shadow's name is the Service's and the value's) is refused in one line."""
        try:
            self._create()
        except AlreadyExists:
            raise NameTaken(
                "shadow pod",
                self.spec.pod_name,
                self.spec.namespace,
                hint="Another session uses this name; 'ktpy status' shows it, and "
                "'ktpy clean' removes it once it is stale.",
            ) from None

    def _create(self) -> None:
        meta = self.meta(self.api.server_time())
        self.adopt(Kind.SECRET, self._secret(meta))
        created = self.adopt(Kind.POD, self._pod(meta))
        self.pod_labels = dict(created["metadata"].get("labels") or {})
        self._own_secret(str(created["metadata"]["uid"]))
        self.log.info("shadow pod created", image=self.spec.image)

    def _secret(self, meta: manifests.SessionMeta) -> Secret:
        spec = self.spec
        return manifests.shadow_secret(
            manifests.ShadowSecretOptions(
                name=spec.pod_name,
                namespace=spec.namespace,
                session=meta,
                authorized_keys=self._keys.authorized_keys,
                host_private_key=self._keys.host.private_openssh,
                host_public_key=self._keys.host.public,
            )
        )

    def _pod(self, meta: manifests.SessionMeta) -> Pod:
        spec = self.spec
        return manifests.shadow_pod(
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

    def _own_secret(self, pod_uid: str) -> None:
        """The Secret goes with its pod even if ktpy never gets to delete it."""
        with contextlib.suppress(ApiError):
            self.api.patch(
                Kind.SECRET,
                self.spec.namespace,
                self.spec.pod_name,
                manifests.secret_owner_patch(self.spec.pod_name, pod_uid),
            )

    def pod_uid(self) -> str:
        return next(o.uid for o in self.created if o.kind is Kind.POD)

    def replace_pod(self, old: Mapping[str, Any], timeout: float, stop: Callable[[], bool]) -> str:
        """A new shadow pod in place of ``old`` (evicted): same name, same labels (a
        Service that selected the old one selects the new one, template labels of a
        scale-mode exchange included), same Secret. Returns the new pod's uid once Ready.

        The Secret is freed from the old pod first, or the garbage collector would
        delete it with its owner; the old pod is then removed at once (it is going
        anyway, and the name must be free), by uid, so nothing else is touched."""
        spec = self.spec
        old_uid = str(old["metadata"]["uid"])
        meta = self.meta(self.api.server_time())
        try:
            self.api.patch(Kind.SECRET, spec.namespace, spec.pod_name, ORPHAN_PATCH)
        except NotFound:
            secret = self.api.create(Kind.SECRET, spec.namespace, self._secret(meta))
            self._record(Kind.SECRET, str(secret["metadata"]["uid"]))
        with contextlib.suppress(Conflict, NotFound):
            self.api.delete(
                Kind.POD, spec.namespace, spec.pod_name, uid=old_uid, grace_period_seconds=0
            )
        wait_gone(self.api, [(Kind.POD, spec.namespace, spec.pod_name, old_uid)], timeout=timeout)
        pod = self._pod(meta)
        fresh = pod["metadata"]["labels"]
        pod["metadata"]["labels"] = {**(old["metadata"].get("labels") or {}), **fresh}
        created = self.api.create(Kind.POD, spec.namespace, pod)
        uid = str(created["metadata"]["uid"])
        self._record(Kind.POD, uid)
        self._own_secret(uid)
        self.log.info("new shadow pod created", replaces=old_uid)
        self.wait_ready(timeout, stop)
        return uid

    def _record(self, kind: Kind, uid: str) -> None:
        """The object of ``kind`` made anew under its name: its new uid recorded."""
        for obj in self.created:
            if obj.kind is kind and obj.name == self.spec.pod_name:
                obj.uid = uid

    def wait_ready(
        self,
        timeout: float,
        stop: Callable[[], bool],
        on_stage: Callable[[str], None] = lambda _stage: None,
    ) -> None:
        """Watch (not poll) the pod until Ready; fail fast on what will not heal.
        ``on_stage`` hears where the pod is, in words, at each change."""
        spec = self.spec
        name = spec.pod_name
        for pods in follow(
            self.api,
            Kind.POD,
            spec.namespace,
            field_selector=f"metadata.name={name}",
            stop=stop,
            deadline=time.monotonic() + timeout,
        ):
            pod = pods.get(name)
            if pod is None:
                raise PodStartFailed(f"shadow pod {name} was deleted while starting")
            if pod_is_ready(pod, spec.image):
                return
            on_stage(pod_stage(pod))
        if stop():
            raise SessionLost("stopped while the shadow pod was starting")
        raise PodStartTimeout(
            f"shadow pod {name} not Ready after {timeout:.0f}s",
            hint="See 'kubectl describe pod' for why; "
            "raise KTPY_POD_START_TIMEOUT for slow clusters.",
        )

    def share(self, kind: Kind, namespace: str, name: str) -> None:
        """Refresh this object's heartbeat with the session's, without owning it."""
        if (kind, namespace, name) not in self.shared:
            self.shared.append((kind, namespace, name))

    def unshare(self, kind: Kind, namespace: str, name: str) -> None:
        with contextlib.suppress(ValueError):
            self.shared.remove((kind, namespace, name))

    def refresh_heartbeat(self, now: datetime) -> None:
        for obj in list(self.created):
            with contextlib.suppress(NotFound):  # a shadow pod being replaced; the keeper judges
                self.api.patch(obj.kind, obj.namespace, obj.name, labels.heartbeat_patch(now))
        for kind, namespace, name in list(self.shared):
            with contextlib.suppress(NotFound):  # gone with its mesh: nothing to keep alive
                self.api.patch(kind, namespace, name, labels.heartbeat_patch(now))

    def delete_all(self, *, hurry: bool) -> None:
        """Delete every object, newest first. Each delete carries the object's uid, so
        a same-named object made by someone else after ours was removed is never
        touched. Unless in a hurry, wait until the pods are gone."""
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
        if not hurry:
            pods = [
                (o.kind, o.namespace, o.name, o.uid) for o in self.created if o.kind is Kind.POD
            ]
            names = ", ".join(name for _, _, name, _ in pods)
            with progress.waiting(f"Deleting pod {names}"):
                wait_gone(self.api, pods)
        self.created.clear()


def pod_stage(pod: Mapping[str, Any]) -> str:
    """Where a starting pod is, in words for a person watching it start."""
    if not (pod.get("spec") or {}).get("nodeName"):
        return "waiting for a node"
    for container in (pod.get("status") or {}).get("containerStatuses") or ():
        state = container.get("state") or {}
        if "running" in state:
            return "started, waiting until Ready"
        reason = (state.get("waiting") or {}).get("reason")
        if reason and reason != "ContainerCreating":
            return str(reason)
    return "pulling the image if needed, creating the container"


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
