"""Bodies of the objects ktpy creates, built by pure functions from frozen options.

Applying them is a separate step (``ktpy.cluster.api``). The shadow pod
follows the shadow image's contract (shadow-image/):

- runs as uid/gid 10001 (user ``kt``) and passes the restricted Pod Security
  Standard: runAsNonRoot, no privilege escalation, every capability dropped,
  seccomp RuntimeDefault;
- sshd on container port 2222 (``kt-ssh``), dnsmasq on 5353 UDP and TCP
  (``kt-dns``, ``kt-dns-tcp``), both moved when a Service needs these numbers;
  the image reads KTPY_SSH_PORT, KTPY_DNS_PORT and KTPY_ROLE;
- the session Secret mounted read-only at /etc/ktpy/secret with the keys
  ``authorized_keys``, ``ssh_host_ed25519_key``, ``ssh_host_ed25519_key.pub``;
- the safe sysctl ``net.ipv4.ip_unprivileged_port_start=0``, so the non-root
  sshd can bind a Service's low ports for reverse forwards;
- a tcpSocket readiness probe on the ssh port every second, so "Ready" means
  sshd listens and a watch sees it at once.

The Secret is created before the pod (the pod mounts it) and then made owned
by the pod (``secret_owner_patch``), so deleting the pod deletes it too.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from types import MappingProxyType
from typing import Literal

from ktpy.cluster import labels, names
from ktpy.cluster.bodies import (
    Container,
    ContainerPort,
    MetadataPatch,
    ObjectMeta,
    Pod,
    PodSecurityContext,
    PodSpec,
    Probe,
    ResourceRequirements,
    Secret,
    SecurityContext,
    Service,
    ServicePort,
    Volume,
    VolumeMount,
)
from ktpy.cluster.labels import PidStart, Role
from ktpy.params import is_dns1123_label

SHADOW_UID = 10001
SHADOW_GID = 10001
SHADOW_USER = "kt"
CONTAINER_NAME = "shadow"
SSH_PORT = 2222
DNS_PORT = 5353
# Prefixed: a Service being exchanged may name its own target port "ssh" or "dns",
# and the shadow must then declare that name for the Service's port.
SSH_PORT_NAME = "kt-ssh"
DNS_PORT_NAME = "kt-dns"
DNS_TCP_PORT_NAME = "kt-dns-tcp"
SECRET_VOLUME = "session-secret"  # noqa: S105 (a volume name, not a secret)
SECRET_MOUNT_PATH = "/etc/ktpy/secret"  # noqa: S105 (a path)
AUTHORIZED_KEYS = "authorized_keys"
HOST_KEY = "ssh_host_ed25519_key"
HOST_KEY_PUB = "ssh_host_ed25519_key.pub"
# Readable by the pod's fsGroup (10001) only; the image copies the keys to a 0700 dir.
SECRET_FILE_MODE = 0o440
UNPRIVILEGED_PORT_SYSCTL = "net.ipv4.ip_unprivileged_port_start"
DEFAULT_TERMINATION_GRACE_SECONDS = 2
_RESERVED_PORT_NAMES = frozenset({SSH_PORT_NAME, DNS_PORT_NAME, DNS_TCP_PORT_NAME})

PullPolicy = Literal["Always", "IfNotPresent", "Never"]


@dataclass(frozen=True)
class SessionMeta:
    """What every object of one session carries: who, which session, alive when."""

    session_id: str
    role: Role
    owner: str
    heartbeat: datetime
    pid_start: PidStart | None = None
    target: str | None = None


@dataclass(frozen=True)
class ShadowPort:
    """An extra port the shadow listens on (a reverse forward's remote end).

    ``name`` mirrors the named target port of the Service the shadow stands in
    for, so a Service whose targetPort is a name resolves to the shadow too.
    """

    port: int
    name: str | None = None


@dataclass(frozen=True)
class ShadowPodOptions:
    name: str
    namespace: str
    image: str
    session: SessionMeta
    secret_name: str
    ports: tuple[ShadowPort, ...] = ()
    # Labels the shadow needs to be selected by a Service: the Service's
    # selector, or a Deployment's pod template labels in scale mode.
    extra_labels: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    ssh_port: int = SSH_PORT
    dns_port: int = DNS_PORT
    image_pull_policy: PullPolicy = "IfNotPresent"
    image_pull_secrets: tuple[str, ...] = ()
    termination_grace_seconds: int = DEFAULT_TERMINATION_GRACE_SECONDS
    resources: ResourceRequirements | None = None


@dataclass(frozen=True)
class ShadowSecretOptions:
    name: str
    namespace: str
    session: SessionMeta
    authorized_keys: str
    host_private_key: str
    host_public_key: str


@dataclass(frozen=True)
class ServicePortSpec:
    port: int
    target_port: int | str
    name: str | None = None
    protocol: Literal["TCP", "UDP", "SCTP"] = "TCP"
    app_protocol: str | None = None


def object_meta(
    name: str,
    namespace: str,
    session: SessionMeta,
    extra_labels: Mapping[str, str] | None = None,
) -> ObjectMeta:
    """Metadata of an object ktpy creates. ktpy's own labels win over ``extra_labels``."""
    merged = labels.shadow_template_labels(extra_labels or {})
    merged.update(labels.session_labels(session.session_id, session.role))
    return {
        "name": name,
        "namespace": namespace,
        "labels": merged,
        "annotations": labels.session_annotations(
            owner=session.owner,
            heartbeat=session.heartbeat,
            pid_start=session.pid_start,
            target=session.target,
        ),
    }


def own_ports_avoiding(taken: Iterable[int]) -> tuple[int, int]:
    """(ssh, dns) ports for a shadow whose extra ports are `taken`: the usual 2222 and
    5353 unless a Service needs them, then the next free numbers above."""
    used = set(taken)
    ssh = next(port for port in range(SSH_PORT, 65536) if port not in used)
    used.add(ssh)
    dns = next(port for port in range(DNS_PORT, 65536) if port not in used)
    return ssh, dns


def _check_name(name: str) -> None:
    if not is_dns1123_label(name):
        raise ValueError(f"{name!r} is not a valid object name (a DNS-1123 label)")


def _extra_container_ports(options: ShadowPodOptions) -> list[ContainerPort]:
    reserved_numbers = {options.ssh_port, options.dns_port}
    seen_numbers: set[int] = set()
    seen_names: set[str] = set()
    ports: list[ContainerPort] = []
    for extra in options.ports:
        if not 1 <= extra.port <= 65535:
            raise ValueError(f"port {extra.port} is out of range 1-65535")
        if extra.port in reserved_numbers:
            raise ValueError(
                f"port {extra.port} is taken by the shadow's own sshd or dnsmasq; "
                "give the shadow other ssh_port/dns_port"
            )
        if extra.port in seen_numbers:
            raise ValueError(f"port {extra.port} is listed twice")
        seen_numbers.add(extra.port)
        name = extra.name if extra.name is not None else f"p{extra.port}"
        if name in _RESERVED_PORT_NAMES or name in seen_names:
            raise ValueError(f"port name {name!r} is reserved or listed twice")
        seen_names.add(name)
        ports.append({"name": name, "containerPort": extra.port, "protocol": "TCP"})
    return ports


def container_security() -> SecurityContext:
    """A shadow image container's security context (restricted PSS, uid 10001)."""
    return {
        "allowPrivilegeEscalation": False,
        "privileged": False,
        "capabilities": {"drop": ["ALL"]},
        "runAsNonRoot": True,
        "runAsUser": SHADOW_UID,
        "runAsGroup": SHADOW_GID,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def pod_security() -> PodSecurityContext:
    """A shadow image pod's security context: restricted PSS, fsGroup for the
    Secret's files, the sysctl that lets the non-root daemons bind low ports."""
    return {
        "runAsNonRoot": True,
        "runAsUser": SHADOW_UID,
        "runAsGroup": SHADOW_GID,
        "fsGroup": SHADOW_GID,
        "seccompProfile": {"type": "RuntimeDefault"},
        "sysctls": [{"name": UNPRIVILEGED_PORT_SYSCTL, "value": "0"}],
    }


def readiness(port: int | str) -> Probe:
    """Ready as soon as ``port`` takes connections, checked every second."""
    return {
        "tcpSocket": {"port": port},
        "initialDelaySeconds": 0,
        "periodSeconds": 1,
        "timeoutSeconds": 1,
        "successThreshold": 1,
        "failureThreshold": 3,
    }


def secret_volume(secret_name: str) -> Volume:
    return {
        "name": SECRET_VOLUME,
        "secret": {"secretName": secret_name, "defaultMode": SECRET_FILE_MODE},
    }


def secret_mount() -> VolumeMount:
    return {"name": SECRET_VOLUME, "mountPath": SECRET_MOUNT_PATH, "readOnly": True}


def shadow_pod_spec(
    container: Container,
    *,
    secret_name: str,
    termination_grace_seconds: int = DEFAULT_TERMINATION_GRACE_SECONDS,
    image_pull_secrets: tuple[str, ...] = (),
) -> PodSpec:
    """The spec around a shadow image container: its Secret, no service
    account token, no Service links, a short grace period."""
    spec: PodSpec = {
        "containers": [container],
        "volumes": [secret_volume(secret_name)],
        "securityContext": pod_security(),
        "automountServiceAccountToken": False,
        # Thousands of Service env vars slow the start and are never used.
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": termination_grace_seconds,
        "restartPolicy": "Always",
    }
    if image_pull_secrets:
        spec["imagePullSecrets"] = [{"name": s} for s in image_pull_secrets]
    return spec


def shadow_pod(options: ShadowPodOptions) -> Pod:
    """The shadow pod: sshd + dnsmasq, restricted-PSS clean, Ready when sshd listens."""
    _check_name(options.name)
    if options.ssh_port == options.dns_port:
        raise ValueError("ssh_port and dns_port must differ")
    container: Container = {
        "name": CONTAINER_NAME,
        "image": options.image,
        "imagePullPolicy": options.image_pull_policy,
        "ports": [
            {"name": SSH_PORT_NAME, "containerPort": options.ssh_port, "protocol": "TCP"},
            {"name": DNS_PORT_NAME, "containerPort": options.dns_port, "protocol": "UDP"},
            {"name": DNS_TCP_PORT_NAME, "containerPort": options.dns_port, "protocol": "TCP"},
            *_extra_container_ports(options),
        ],
        "env": [
            {"name": "KTPY_SSH_PORT", "value": str(options.ssh_port)},
            {"name": "KTPY_DNS_PORT", "value": str(options.dns_port)},
            {"name": "KTPY_ROLE", "value": options.session.role.value},
        ],
        "volumeMounts": [secret_mount()],
        "securityContext": container_security(),
        "readinessProbe": readiness(SSH_PORT_NAME),
    }
    if options.resources is not None:
        container["resources"] = options.resources
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": object_meta(
            options.name, options.namespace, options.session, options.extra_labels
        ),
        "spec": shadow_pod_spec(
            container,
            secret_name=options.secret_name,
            termination_grace_seconds=options.termination_grace_seconds,
            image_pull_secrets=options.image_pull_secrets,
        ),
    }


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode("ascii")


def shadow_secret(options: ShadowSecretOptions) -> Secret:
    """The session Secret: the client's public key and the pinned host key pair.

    The client's private key is never in it.
    """
    _check_name(options.name)
    if "PRIVATE KEY" in options.authorized_keys or "PRIVATE KEY" in options.host_public_key:
        raise ValueError("a private key was passed where a public key belongs")
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": object_meta(options.name, options.namespace, options.session),
        "type": "Opaque",
        "immutable": True,
        "data": {
            AUTHORIZED_KEYS: b64(options.authorized_keys),
            HOST_KEY: b64(options.host_private_key),
            HOST_KEY_PUB: b64(options.host_public_key),
        },
    }


def secret_owner_patch(pod_name: str, pod_uid: str) -> MetadataPatch:
    """A merge patch making the Secret owned by the pod, once the pod has a uid.

    No ``blockOwnerDeletion``: setting it needs rights on the pod's finalizers
    that a namespace-scoped developer may not have, and nothing waits on it.
    """
    if not pod_uid:
        raise ValueError("the pod has no uid yet")
    return {
        "metadata": {
            "ownerReferences": [
                {"apiVersion": "v1", "kind": "Pod", "name": pod_name, "uid": pod_uid},
            ]
        }
    }


def _service_port(spec: ServicePortSpec) -> ServicePort:
    port: ServicePort = {
        "port": spec.port,
        "targetPort": spec.target_port,
        "protocol": spec.protocol,
    }
    if spec.name is not None:
        port["name"] = spec.name
    if spec.app_protocol is not None:
        port["appProtocol"] = spec.app_protocol
    return port


def service_body(
    name: str,
    namespace: str,
    session: SessionMeta,
    selector: Mapping[str, str],
    ports: tuple[ServicePortSpec, ...],
    service_type: Literal["ClusterIP", "LoadBalancer"] = "ClusterIP",
) -> Service:
    """A Service ktpy creates, carrying the session's labels and annotations."""
    if not names.is_dns1035_label(name):
        raise ValueError(f"{name!r} cannot name a Service")
    if not ports:
        raise ValueError(f"service {name!r} needs at least one port")
    if not selector:
        raise ValueError(f"service {name!r} needs a selector")
    if len(ports) > 1 and any(p.name is None for p in ports):
        raise ValueError(f"service {name!r} has several ports: each needs a name")
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": object_meta(name, namespace, session),
        "spec": {
            "type": service_type,
            "selector": dict(selector),
            "ports": [_service_port(p) for p in ports],
        },
    }


def preview_service(
    name: str,
    namespace: str,
    session: SessionMeta,
    ports: tuple[ShadowPort, ...],
    *,
    external: bool = False,
) -> Service:
    """``ktpy preview NAME``: a Service called NAME in front of the preview shadow.

    Each port is published under its own number (port = targetPort), as kt-connect did;
    ``external`` makes it a LoadBalancer.
    """
    names.check_preview_service_name(name)
    specs = tuple(
        ServicePortSpec(
            port=p.port,
            target_port=p.port,
            name=p.name if p.name is not None else f"p{p.port}",
        )
        for p in ports
    )
    return service_body(
        name,
        namespace,
        session,
        labels.shadow_selector(session.session_id, session.role),
        specs,
        "LoadBalancer" if external else "ClusterIP",
    )


def mesh_service(
    service: str,
    version: str,
    namespace: str,
    session: SessionMeta,
    original_ports: tuple[ServicePortSpec, ...],
) -> Service:
    """Mesh: ``<svc>-kt-mesh-<version>`` reaches this session's mesh shadow.

    Ports copy the original Service's (a named targetPort resolves through the
    shadow's mirrored named container ports).
    """
    return service_body(
        names.mesh_name(service, version),
        namespace,
        session,
        labels.shadow_selector(session.session_id, session.role),
        original_ports,
    )
