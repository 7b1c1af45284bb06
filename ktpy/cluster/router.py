"""The mesh router: HAProxy's config and routes, its runtime commands, and the objects that run it.

``ktpy mesh SVC --version-mark KEY:VALUE`` switches SVC to a router shared by
every developer meshing it. The router (HAProxy 2.6 in the shadow image,
``KTPY_ROLE=router``) sends a request whose header KEY (case-insensitive)
holds VALUE to that developer's ``<svc>-kt-mesh-<value>`` Service, and every
other request to ``<svc>-kt-stuntman``, a copy of SVC that still selects the
real pods. Everything here is pure: config text, map text, runtime command
lines and their parsers, and the bodies of the Deployment, Secret and
stuntman Service. docs/design.md ("Mesh router") says why it is built so.

Routes are a HAProxy map, value -> mesh Service ClusterIP, and there is one
mesh backend per port whose server takes the destination of each request
from the map (``set-dst``): HAProxy 2.6 cannot add a backend at run time, and
this way a route is one map line, added or removed over the runtime API
without a reload. The Secret's ``versions.map`` holds the routes a restarted
router starts with; the runtime API changes the running one.
"""

from __future__ import annotations

import base64
import copy
import dataclasses
import ipaddress
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Literal, cast

from ktpy.cluster import labels, manifests, names
from ktpy.cluster.bodies import (
    Container,
    ContainerPort,
    Deployment,
    JsonObject,
    Secret,
    Service,
)
from ktpy.cluster.labels import Role
from ktpy.cluster.ports import ServicePortEntry, service_ports
from ktpy.errors import UnresolvedTargetPort
from ktpy.params import is_dns1123_label

# The runtime API listens on the pod's loopback only; ktpy reaches it through
# the router's sshd (a direct-tcpip channel), never through the pod network.
ADMIN_PORT = 2225
MAP_FILE = "versions.map"
CONFIG_FILE = "haproxy.cfg"
# Where the entrypoint copies the Secret's files (the image's KTPY_RUN_DIR).
RUN_DIR = "/tmp/ktpy"  # noqa: S108 (in the pod, made 0700 by the entrypoint)
DEFAULT_HEADER = "version"
CONTAINER_NAME = "router"
SHOW_INFO = "show info"

# Long enough for WebSocket sessions and gRPC streams that idle for a while.
_STREAM_TIMEOUT = "1h"
_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")  # an HTTP header name (RFC 9110)


class PortProtocol(StrEnum):
    """How the router speaks on one Service port."""

    HTTP1 = "http1"  # HTTP/1.1 (WebSocket included) toward the pods
    H2C = "h2c"  # cleartext HTTP/2 toward the pods (gRPC)
    TCP = "tcp"  # not HTTP: passed to the stuntman unrouted


_APP_PROTOCOLS = {
    "kubernetes.io/h2c": PortProtocol.H2C,
    "grpc": PortProtocol.H2C,
    "h2c": PortProtocol.H2C,
    "http": PortProtocol.HTTP1,
    "kubernetes.io/ws": PortProtocol.HTTP1,
    "tcp": PortProtocol.TCP,
}
_NAME_PREFIXES = (
    ("grpc-", PortProtocol.H2C),
    ("http2-", PortProtocol.H2C),
    ("h2c-", PortProtocol.H2C),
    ("http-", PortProtocol.HTTP1),
    ("tcp-", PortProtocol.TCP),
)


def port_protocol(app_protocol: str | None, name: str | None) -> PortProtocol:
    """A Service port's protocol: its ``appProtocol``, else its name's prefix
    (Istio's convention: ``grpc-``, ``http2-``, ``h2c-``, ``http-``, ``tcp-``),
    else HTTP/1.1."""
    if app_protocol:
        known = _APP_PROTOCOLS.get(app_protocol.lower())
        if known is not None:
            return known
    lowered = (name or "").lower()
    if lowered in ("grpc", "http2", "h2c"):
        return PortProtocol.H2C
    if lowered == "tcp":
        return PortProtocol.TCP
    for prefix, protocol in _NAME_PREFIXES:
        if lowered.startswith(prefix):
            return protocol
    return PortProtocol.HTTP1


@dataclass(frozen=True)
class RouterPort:
    """One Service port the router takes over: it listens on ``target_port``
    (the Service's targetPort, resolved) and sends on to ``service_port`` of
    the stuntman or mesh Service."""

    service_port: int
    target_port: int
    name: str | None
    # The Service's targetPort when it is a name: the router's container port
    # carries that name, so the switched Service resolves it to the router.
    target_name: str | None
    protocol: PortProtocol


def router_ports(
    service: str, entries: Sequence[ServicePortEntry], named: Mapping[str, int]
) -> tuple[RouterPort, ...]:
    """The router's ports for a Service's TCP ports (``named``: container port
    names -> numbers of the backing pods). UDP and SCTP ports are left out:
    HAProxy does not carry them."""
    found: list[RouterPort] = []
    for entry in entries:
        if entry.protocol != "TCP":
            continue
        if isinstance(entry.target, int):
            target, target_name = entry.target, None
        else:
            resolved = named.get(entry.target)
            if resolved is None:
                raise UnresolvedTargetPort(service, entry.target)
            target, target_name = resolved, entry.target
        found.append(
            RouterPort(
                service_port=entry.port,
                target_port=target,
                name=entry.name,
                target_name=target_name,
                protocol=port_protocol(entry.app_protocol, entry.name),
            )
        )
    return tuple(found)


# --- HAProxy's config and map ----------------------------------------------------------------


def map_path(run_dir: str = RUN_DIR) -> str:
    """The map file as the config names it (and as runtime commands must name it)."""
    return f"{run_dir.rstrip('/')}/{MAP_FILE}"


def check_value(value: str) -> str:
    """A version value as the router matches it: the header is lowercased
    before the lookup, and the value names a Service (``<svc>-kt-mesh-<value>``)."""
    if not is_dns1123_label(value):
        raise ValueError(f"version value {value!r} is not a lowercase DNS label")
    return value


def _address(text: str) -> str:
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        raise ValueError(f"{text!r} is not an IP address") from None


def _server_address(ip: str, port: int) -> str:
    address = ipaddress.ip_address(_address(ip))
    return f"[{address}]:{port}" if address.version == 6 else f"{address}:{port}"


def _routed_ports(ports: Sequence[RouterPort], admin_port: int) -> list[RouterPort]:
    """One frontend per target port: Service ports sharing a target port reach
    the same container port, so the first one speaks for all."""
    by_target: dict[int, RouterPort] = {}
    for port in ports:
        for number in (port.service_port, port.target_port):
            if not 1 <= number <= 65535:
                raise ValueError(f"port {number} is out of range 1-65535")
        if port.target_port == admin_port:
            raise ValueError(
                f"target port {port.target_port} is the router's admin port; "
                "give the router another admin_port"
            )
        by_target.setdefault(port.target_port, port)
    if not by_target:
        raise ValueError("the router needs at least one TCP port")
    return list(by_target.values())


def haproxy_config(
    *,
    header: str,
    ports: Sequence[RouterPort],
    stuntman_ip: str,
    run_dir: str = RUN_DIR,
    admin_port: int = ADMIN_PORT,
) -> str:
    """HAProxy 2.6's config for the router: per port, requests whose ``header``
    value is in the map go to that developer's mesh Service, the rest to the
    stuntman. ``tcp`` ports go to the stuntman unrouted."""
    if not _TOKEN.match(header):
        raise ValueError(f"{header!r} is not an HTTP header name")
    key = header.lower()
    routes_map = map_path(run_dir)
    lines = [
        "# Generated by ktpy: the mesh router (docs/design.md, Mesh router).",
        "global",
        # Reached only over the router's sshd (a direct-tcpip channel to loopback).
        f"    stats socket ipv4@127.0.0.1:{admin_port} level admin",
        "    log stderr format raw local0 info",
        # No nbthread: one per CPU the pod may use.
        "",
        "defaults",
        "    mode http",
        "    log global",
        "    option httplog",
        # Only errors and failed requests; a healthy request leaves no line.
        "    option dontlog-normal",
        "    timeout connect 5s",
        f"    timeout client {_STREAM_TIMEOUT}",
        f"    timeout server {_STREAM_TIMEOUT}",
        f"    timeout tunnel {_STREAM_TIMEOUT}",
        "    timeout http-request 30s",
        "    timeout http-keep-alive 5m",
        "    timeout client-fin 30s",
        "    timeout server-fin 30s",
    ]
    for port in _routed_ports(ports, admin_port):
        p = port.service_port
        h2 = " proto h2" if port.protocol is PortProtocol.H2C else ""
        stuntman = f"    server stuntman {_server_address(stuntman_ip, p)}{h2}"
        label = f" ({port.name})" if port.name else ""
        lines.append("")
        if port.protocol is PortProtocol.TCP:
            lines += [
                f"# Service port {p}{label}: not HTTP, always to the stuntman.",
                f"frontend port_{p}",
                "    mode tcp",
                "    option tcplog",
                f"    bind :{port.target_port}",
                f"    default_backend stuntman_{p}",
                "",
                f"backend stuntman_{p}",
                "    mode tcp",
                stuntman,
            ]
            continue
        lines += [
            f"# Service port {p}{label}, {port.protocol.value} toward the pods.",
            f"frontend port_{p}",
            # One plain bind takes HTTP/1.1 and cleartext HTTP/2 (prior knowledge).
            f"    bind :{port.target_port}",
            f"    http-request set-var(txn.mesh) req.hdr({key}),lower,map({routes_map})",
            f"    use_backend mesh_{p} if {{ var(txn.mesh) -m found }}",
            f"    default_backend stuntman_{p}",
            "",
            # One server for every developer: each request's destination is the
            # mesh Service IP the map gave, so a route is a map line, not a backend.
            f"backend mesh_{p}",
            "    http-request set-dst var(txn.mesh)",
            f"    http-request set-dst-port int({p})",
            # A connection opened for one developer must never carry another's requests.
            "    http-reuse never",
            f"    server mesh 0.0.0.0:0{h2}",
            "",
            f"backend stuntman_{p}",
            stuntman,
        ]
    return "\n".join(lines) + "\n"


def versions_map(routes: Mapping[str, str]) -> str:
    """The map file: ``<value> <mesh Service IP>`` per line, sorted."""
    return "".join(
        f"{check_value(value)} {_address(address)}\n" for value, address in sorted(routes.items())
    )


# --- the runtime API -------------------------------------------------------------------------
# One command line per connection (several joined with ";"); HAProxy answers
# and closes. Routes live in memory: the Secret's versions.map is what a
# restarted router starts from, so keep both in step.


def add_route(value: str, address: str, *, run_dir: str = RUN_DIR) -> str:
    """Route ``value`` to ``address``, whether or not it had a route.

    ``add map`` alone would add a second entry for a value that has one, so
    the old entries go first (their ``del`` says "not found" if there were
    none, which is fine). Between the two commands a request with this value
    goes to the stuntman; ktpy adds a value's route once per session, before
    it prints that the mesh is ready.
    """
    path = map_path(run_dir)
    value, address = check_value(value), _address(address)
    return f"del map {path} {value};add map {path} {value} {address}"


def del_route(value: str, *, run_dir: str = RUN_DIR) -> str:
    """Stop routing ``value`` (its requests go to the stuntman again)."""
    return f"del map {map_path(run_dir)} {check_value(value)}"


def show_map(*, run_dir: str = RUN_DIR) -> str:
    return f"show map {map_path(run_dir)}"


def parse_map(text: str) -> dict[str, str]:
    """``show map``'s answer (``<entry id> <value> <address>`` per line) as value -> address."""
    routes: dict[str, str] = {}
    for line in text.splitlines():
        fields = line.split()
        if len(fields) == 3 and fields[0].startswith("0x"):
            routes[fields[1]] = fields[2]
    return routes


def parse_info(text: str) -> dict[str, str]:
    """``show info``'s ``Name: value`` lines (``Pid``, ``Uptime_sec``, ``Version``...)."""
    info: dict[str, str] = {}
    for line in text.splitlines():
        name, sep, value = line.partition(":")
        if sep and name.strip():
            info[name.strip()] = value.strip()
    return info


def runtime_exchange(command: str) -> bytes:
    """What to send on a fresh connection to the admin port: one command line."""
    if "\n" in command or "\r" in command:
        raise ValueError("a runtime command is one line")
    return command.encode("ascii") + b"\n"


# Answers HAProxy gives for a command it refused (2.6's wording).
_REFUSALS = (
    "Unknown command",
    "Permission denied",
    "Unknown map identifier",
    "Missing map identifier",
    "'add map' expects",
    "'del map' expects",
    "Failed to add",
    "Out of memory",
)


class RuntimeRefused(Exception):
    """HAProxy's runtime API refused a command (the text is its answer)."""


def parse_answer(data: bytes) -> str:
    """The text of an answer read to EOF. Raises ``RuntimeRefused`` if
    HAProxy refused the command; "Key not found." (deleting a value with no
    route) is not a refusal: the route is gone either way."""
    text = data.decode("utf-8", errors="replace").rstrip("\n")
    for line in text.splitlines():
        if line.startswith(_REFUSALS):
            raise RuntimeRefused(text)
    return text


# --- the objects -----------------------------------------------------------------------------


@dataclass(frozen=True)
class RouterNames:
    deployment: str
    secret: str
    stuntman: str


def router_names(service: str) -> RouterNames:
    router = names.router_name(service)
    return RouterNames(deployment=router, secret=router, stuntman=names.stuntman_name(service))


def router_selector(service: str) -> dict[str, str]:
    """What the meshed Service selects while it is switched to the router."""
    return {labels.ROLE: Role.ROUTER.value, labels.MESH_OF: service}


def _as_role(meta: manifests.SessionMeta, role: Role) -> manifests.SessionMeta:
    return dataclasses.replace(meta, role=role)


def router_secret(
    name: str,
    namespace: str,
    meta: manifests.SessionMeta,
    *,
    authorized_keys: Sequence[str],
    host_private_key: str,
    host_public_key: str,
    config: str,
    routes: Mapping[str, str],
) -> Secret:
    """The router's Secret: one authorized_keys line per developer session,
    the pinned host key pair, HAProxy's config and the routes a (re)started
    router begins with. Not immutable: sessions come and go."""
    for line in authorized_keys:
        if "PRIVATE KEY" in line or "\n" in line.strip() or not line.startswith("ssh-ed25519 "):
            raise ValueError("authorized_keys takes one ssh-ed25519 public key line per session")
    if "PRIVATE KEY" in host_public_key:
        raise ValueError("a private key was passed where a public key belongs")
    secret = manifests.shadow_secret(
        manifests.ShadowSecretOptions(
            name=name,
            namespace=namespace,
            session=_as_role(meta, Role.ROUTER),
            authorized_keys="".join(line.strip() + "\n" for line in authorized_keys),
            host_private_key=host_private_key,
            host_public_key=host_public_key,
        )
    )
    del secret["immutable"]
    secret["data"][CONFIG_FILE] = manifests.b64(config)
    secret["data"][MAP_FILE] = manifests.b64(versions_map(routes))
    return secret


def _container_ports(ports: Sequence[RouterPort], ssh_port: int) -> list[ContainerPort]:
    declared: list[ContainerPort] = [
        {"name": manifests.SSH_PORT_NAME, "containerPort": ssh_port, "protocol": "TCP"}
    ]
    seen_numbers = {ssh_port}
    seen_names = {manifests.SSH_PORT_NAME}
    for port in ports:
        if port.target_port == ssh_port:
            raise ValueError(f"target port {ssh_port} is the router's ssh port; move ssh_port")
        if port.target_port in seen_numbers:
            continue
        seen_numbers.add(port.target_port)
        name = port.target_name or f"p{port.target_port}"
        if name in seen_names:
            raise ValueError(f"port name {name!r} is reserved or listed twice")
        seen_names.add(name)
        declared.append({"name": name, "containerPort": port.target_port, "protocol": "TCP"})
    return declared


def router_deployment(
    name: str,
    namespace: str,
    *,
    image: str,
    meta: manifests.SessionMeta,
    secret_name: str,
    ports: Sequence[RouterPort],
    mesh_of: str,
    ssh_port: int,
    admin_port: int = ADMIN_PORT,
    image_pull_policy: manifests.PullPolicy = "IfNotPresent",
    image_pull_secrets: Iterable[str] = (),
) -> Deployment:
    """The router: one replica of the shadow image with ``KTPY_ROLE=router``
    (so a deleted pod comes back), restricted-PSS clean like the shadow pod,
    Ready once HAProxy listens on the first port."""
    if not ports:
        raise ValueError("the router needs at least one port")
    if ssh_port == admin_port:
        raise ValueError("ssh_port and admin_port must differ")
    router_meta = _as_role(meta, Role.ROUTER)
    selector = router_selector(mesh_of)
    metadata = manifests.object_meta(name, namespace, router_meta, selector)
    container: Container = {
        "name": CONTAINER_NAME,
        "image": image,
        "imagePullPolicy": image_pull_policy,
        "ports": _container_ports(ports, ssh_port),
        "env": [
            {"name": "KTPY_SSH_PORT", "value": str(ssh_port)},
            {"name": "KTPY_ROLE", "value": Role.ROUTER.value},
        ],
        "volumeMounts": [manifests.secret_mount()],
        "securityContext": manifests.container_security(),
        # HAProxy binds every port at once: one answering means it runs.
        "readinessProbe": manifests.readiness(ports[0].target_port),
    }
    # The pods carry the session's labels (so clean finds them) but not its
    # heartbeat: a template's copy would never be refreshed.
    template_annotations = {
        key: value
        for key, value in metadata.get("annotations", {}).items()
        if key != labels.HEARTBEAT
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": metadata,
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": selector},
            # The next router is Ready before the old one goes: no gap in routing.
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1},
            },
            "revisionHistoryLimit": 1,
            "template": {
                "metadata": {
                    "labels": dict(metadata.get("labels", {})),
                    "annotations": template_annotations,
                },
                "spec": manifests.shadow_pod_spec(
                    container,
                    secret_name=secret_name,
                    image_pull_secrets=tuple(image_pull_secrets),
                ),
            },
        },
    }


def _port_spec(entry: ServicePortEntry) -> manifests.ServicePortSpec:
    if entry.protocol not in ("TCP", "UDP", "SCTP"):
        raise ValueError(f"unknown port protocol {entry.protocol!r}")
    return manifests.ServicePortSpec(
        port=entry.port,
        target_port=entry.target,
        name=entry.name,
        protocol=cast(Literal["TCP", "UDP", "SCTP"], entry.protocol),
        app_protocol=entry.app_protocol,
    )


def stuntman_service(
    name: str,
    namespace: str,
    original: Mapping[str, Any],
    meta: manifests.SessionMeta,
) -> Service:
    """``<svc>-kt-stuntman``: the original Service's selector and ports as a
    ClusterIP Service, so the router's default route still reaches the real pods."""
    selector = (original.get("spec") or {}).get("selector") or {}
    ports = tuple(_port_spec(entry) for entry in service_ports(original))
    return manifests.service_body(name, namespace, _as_role(meta, Role.STUNTMAN), selector, ports)


# --- members ------------------------------------------------------------------------------

# A router pod annotation a joining member sets: any change to the pod makes the kubelet
# sync it at once, and with it the Secret volume (else at its next periodic sync, up to
# about a minute later), so the new member's key works within seconds.
NUDGE = labels.PREFIX + "nudge"


def router_ssh_port(ports: Sequence[RouterPort]) -> int:
    """The router's sshd port: 2222 unless a target port or the admin port has it."""
    ssh, _dns = manifests.own_ports_avoiding([*(p.target_port for p in ports), ADMIN_PORT])
    return ssh


def parse_versions_map(text: str) -> dict[str, str]:
    """The map file (``<value> <address>`` per line) as value -> address."""
    routes: dict[str, str] = {}
    for line in text.splitlines():
        fields = line.split()
        if len(fields) == 2:
            routes[fields[0]] = fields[1]
    return routes


def _decoded(secret: Mapping[str, Any], key: str) -> str:
    raw = (secret.get("data") or {}).get(key) or ""
    return base64.b64decode(raw).decode() if raw else ""


def secret_routes(secret: Mapping[str, Any]) -> dict[str, str]:
    """The routes a router's Secret holds (what a restarted router starts from)."""
    return parse_versions_map(_decoded(secret, MAP_FILE))


def host_public_key(secret: Mapping[str, Any]) -> str:
    """The router's host key, as its Secret holds it (the key to pin)."""
    return _decoded(secret, manifests.HOST_KEY + ".pub").strip()


def secret_with_member(
    secret: Mapping[str, Any],
    *,
    key: str,
    route: tuple[str, str] | None = None,
    remove: str | None = None,
) -> JsonObject:
    """The router's Secret with a member's public key and route added (``route``:
    value, address) or, with ``remove`` (its value), taken out again. Keeps the
    resourceVersion, so the write is conditional."""
    body: JsonObject = copy.deepcopy(dict(secret))
    data = body.setdefault("data", {})
    keys = [line for line in _decoded(secret, manifests.AUTHORIZED_KEYS).splitlines() if line]
    routes = parse_versions_map(_decoded(secret, MAP_FILE))
    line = key.strip()
    if route is not None:
        if line not in keys:
            keys.append(line)
        routes[route[0]] = route[1]
    if remove is not None:
        keys = [k for k in keys if k != line]
        routes.pop(remove, None)
    data[manifests.AUTHORIZED_KEYS] = manifests.b64("".join(k + "\n" for k in keys))
    data[MAP_FILE] = manifests.b64(versions_map(routes))
    return body


def secret_without_member(secret: Mapping[str, Any], *, session: str, value: str) -> JsonObject:
    """The router's Secret without a (dead) member's route and key, the key found by
    its comment (``ktpy-client-<session>``): the member's private key never left
    its laptop, and its public line is all the Secret has."""
    body: JsonObject = copy.deepcopy(dict(secret))
    data = body.setdefault("data", {})
    comment = f"ktpy-client-{session}"
    keys = [
        line
        for line in _decoded(secret, manifests.AUTHORIZED_KEYS).splitlines()
        if line and line.split()[-1] != comment
    ]
    routes = parse_versions_map(_decoded(secret, MAP_FILE))
    routes.pop(value, None)
    data[manifests.AUTHORIZED_KEYS] = manifests.b64("".join(k + "\n" for k in keys))
    data[MAP_FILE] = manifests.b64(versions_map(routes))
    return body
