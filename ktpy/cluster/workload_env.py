"""A container's environment and configuration files as the kubelet makes them,
computed from API objects (the pod, its ConfigMaps, Secrets and the Services of
its namespace), never by exec into the pod.

The kubelet's order: the Services' link variables are the base; ``envFrom``
sources, in order, set their keys (with a prefix); ``env`` entries, in order,
set theirs, a literal value expanded (``$(VAR)`` from what is set so far, then
the Services' variables; ``$$`` escapes); service variables the container did
not set come last. Variables baked into the image (its ENV) and those the
runtime adds (HOSTNAME, HOME, PATH) are not visible through the API.
"""

from __future__ import annotations

import base64
import math
import posixpath
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from ktpy.cluster import labels
from ktpy.cluster.api import ClusterApi, Kind, NotFound
from ktpy.cluster.bodies import JsonObject
from ktpy.cluster.waits import serving_pods
from ktpy.errors import Forbidden

SERVICE_ACCOUNT_PATH = "/var/run/secrets/kubernetes.io/serviceaccount"
# Since Kubernetes 1.34 (RelaxedEnvironmentVariableValidation) a name is any printable
# ASCII but "="; the kubelet skips an envFrom key that is not one.
_ENV_NAME = re.compile(r"^[\x20-\x3c\x3e-\x7e]+$")
_SUFFIXES: dict[str, Decimal] = {
    "Ki": Decimal(2**10), "Mi": Decimal(2**20), "Gi": Decimal(2**30), "Ti": Decimal(2**40),
    "Pi": Decimal(2**50), "Ei": Decimal(2**60),
    "n": Decimal("1e-9"), "u": Decimal("1e-6"), "m": Decimal("1e-3"),
    "k": Decimal(10**3), "M": Decimal(10**6), "G": Decimal(10**9), "T": Decimal(10**12),
    "P": Decimal(10**15), "E": Decimal(10**18),
}  # fmt: skip


class EnvProblem(ValueError):
    """A reference the kubelet would refuse too (a missing key that is not optional)."""


@dataclass(frozen=True)
class Sources:
    """What the container's references point at, as read through the API."""

    config_maps: Mapping[str, Mapping[str, bytes]] = field(default_factory=dict)
    secrets: Mapping[str, Mapping[str, bytes]] = field(default_factory=dict)


def config_map_data(body: Mapping[str, Any]) -> dict[str, bytes]:
    data = {k: str(v).encode() for k, v in (body.get("data") or {}).items()}
    for key, value in (body.get("binaryData") or {}).items():
        data[key] = base64.b64decode(value)
    return data


def secret_data(body: Mapping[str, Any]) -> dict[str, bytes]:
    data = {k: base64.b64decode(v) for k, v in (body.get("data") or {}).items()}
    for key, value in (body.get("stringData") or {}).items():
        data[key] = str(value).encode()
    return data


# --- $(VAR) ---------------------------------------------------------------------------------


def expand(text: str, lookup: Callable[[str], str | None]) -> str:
    """Kubernetes' ``$(VAR)`` expansion: a known name is replaced, an unknown one left
    as written, ``$$`` is one ``$``, any other ``$`` stays."""
    out: list[str] = []
    i = 0
    while i < len(text):
        char = text[i]
        if char != "$" or i + 1 >= len(text):
            out.append(char)
            i += 1
            continue
        following = text[i + 1]
        if following == "$":
            out.append("$")
            i += 2
        elif following == "(":
            end = text.find(")", i + 2)
            if end < 0:
                out.append("$(")
                i += 2
                continue
            name = text[i + 2 : end]
            value = lookup(name)
            out.append(value if value is not None else f"$({name})")
            i = end + 1
        else:
            out.append("$" + following)
            i += 2
    return "".join(out)


# --- values from the pod ----------------------------------------------------------------------


_SUBSCRIPT = re.compile(r"^metadata\.(labels|annotations)\['(.+)'\]$")


def field_value(pod: Mapping[str, Any], path: str) -> str:
    """A ``fieldRef``'s value."""
    meta = pod.get("metadata") or {}
    spec = pod.get("spec") or {}
    status = pod.get("status") or {}
    subscript = _SUBSCRIPT.match(path)
    if subscript:
        return str((meta.get(subscript.group(1)) or {}).get(subscript.group(2), ""))
    simple: dict[str, Any] = {
        "metadata.name": meta.get("name"),
        "metadata.namespace": meta.get("namespace"),
        "metadata.uid": meta.get("uid"),
        "spec.nodeName": spec.get("nodeName"),
        "spec.serviceAccountName": spec.get("serviceAccountName"),
        "status.hostIP": status.get("hostIP"),
        "status.podIP": status.get("podIP"),
        "status.hostIPs": ",".join(a["ip"] for a in status.get("hostIPs") or ()),
        "status.podIPs": ",".join(a["ip"] for a in status.get("podIPs") or ()),
    }
    if path in ("metadata.labels", "metadata.annotations"):
        values = meta.get(path.split(".")[1]) or {}
        return "\n".join(f'{k}="{v}"' for k, v in sorted(values.items()))
    if path not in simple:
        raise EnvProblem(f"fieldRef {path!r} is not one ktpy knows")
    return str(simple[path] or "")


def quantity(text: str) -> Decimal:
    """A Kubernetes quantity (``500m``, ``128Mi``, ``1G``, ``2``) as a number."""
    text = str(text).strip()
    for suffix in sorted(_SUFFIXES, key=len, reverse=True):
        if text.endswith(suffix) and text[: -len(suffix)]:
            return Decimal(text[: -len(suffix)]) * _SUFFIXES[suffix]
    try:
        return Decimal(text)
    except InvalidOperation:
        raise EnvProblem(f"{text!r} is not a quantity") from None


def resource_value(container: Mapping[str, Any], resource: str, divisor: str | None) -> str:
    """A ``resourceFieldRef``'s value: the container's own request or limit, divided
    and rounded up as the kubelet does (a limit left out would be the node's
    capacity, which ktpy does not read)."""
    section, _, name = resource.partition(".")
    given = ((container.get("resources") or {}).get(section) or {}).get(name)
    if given is None:
        if section == "requests":
            given = ((container.get("resources") or {}).get("limits") or {}).get(name)
        if given is None:
            if section == "requests":
                return "0"
            raise EnvProblem(
                f"resourceFieldRef {resource} of a container without that limit is the "
                "node's capacity, which ktpy does not read"
            )
    value = quantity(str(given)) / quantity(divisor or "1")
    return str(math.ceil(value))


# --- Services ---------------------------------------------------------------------------------


def _env_name(name: str) -> str:
    return name.upper().replace("-", "_")


def service_link_env(services: Iterable[Mapping[str, Any]]) -> dict[str, str]:
    """The link variables the kubelet gives every container for each Service with a
    cluster IP (docker-links style)."""
    env: dict[str, str] = {}
    for service in services:
        spec = service.get("spec") or {}
        ip = spec.get("clusterIP")
        ports = spec.get("ports") or []
        if not ip or ip == "None" or not ports:
            continue
        name = _env_name(str(service["metadata"]["name"]))
        env[f"{name}_SERVICE_HOST"] = ip
        env[f"{name}_SERVICE_PORT"] = str(ports[0]["port"])
        for port in ports:
            if port.get("name"):
                env[f"{name}_SERVICE_PORT_{_env_name(port['name'])}"] = str(port["port"])
        for i, port in enumerate(ports):
            proto = str(port.get("protocol") or "TCP").lower()
            url = f"{proto}://{ip}:{port['port']}"
            if i == 0:
                env[f"{name}_PORT"] = url
            prefix = f"{name}_PORT_{port['port']}_{proto.upper()}"
            env[prefix] = url
            env[f"{prefix}_PROTO"] = proto
            env[f"{prefix}_PORT"] = str(port["port"])
            env[f"{prefix}_ADDR"] = ip
    return env


def services_at(
    services: Iterable[Mapping[str, Any]], started: datetime | None
) -> list[Mapping[str, Any]]:
    """The Services that existed when the container started (the kubelet read them then)."""
    if started is None:
        return list(services)
    found = []
    for service in services:
        created = (service.get("metadata") or {}).get("creationTimestamp")
        if created is None or labels.parse_time(str(created)) <= started:
            found.append(service)
    return found


# --- the container's environment ------------------------------------------------------------


def container_of(pod: Mapping[str, Any], name: str | None) -> Mapping[str, Any]:
    containers = (pod.get("spec") or {}).get("containers") or []
    if name is None:
        if not containers:
            raise EnvProblem("the pod has no container")
        return dict(containers[0])
    for container in containers:
        if container.get("name") == name:
            return dict(container)
    names = ", ".join(str(c.get("name")) for c in containers)
    raise EnvProblem(f"the pod has no container {name!r} (it has {names})")


def _lookup(
    kind: str, store: Mapping[str, Mapping[str, bytes]], ref: Mapping[str, Any]
) -> str | None:
    """A configMapKeyRef/secretKeyRef's value; None for an optional one that is missing."""
    name, key, optional = (
        str(ref.get("name", "")),
        str(ref.get("key", "")),
        bool(ref.get("optional")),
    )
    data = store.get(name)
    if data is None or key not in data:
        if optional:
            return None
        what = f"{kind} {name!r}" if data is None else f"key {key!r} of {kind} {name!r}"
        raise EnvProblem(f"{what} does not exist (the reference is not optional)")
    return data[key].decode(errors="replace")


def container_env(
    pod: Mapping[str, Any],
    container: Mapping[str, Any],
    sources: Sources,
    service_env: Mapping[str, str],
    skipped: list[str] | None = None,
) -> dict[str, str]:
    """The container's environment as the kubelet computes it (without the image's ENV
    and the runtime's variables), in the kubelet's order. ``skipped`` gets a line for
    each optional reference left out because what it names is missing."""
    env: dict[str, str] = {}
    skipped = skipped if skipped is not None else []

    def lookup(name: str) -> str | None:
        return env.get(name, service_env.get(name))

    for source in container.get("envFrom") or ():
        prefix = str(source.get("prefix") or "")
        if "configMapRef" in source:
            kind, ref, store = "configmap", source["configMapRef"], sources.config_maps
        else:
            kind, ref, store = "secret", source.get("secretRef") or {}, sources.secrets
        data = store.get(str(ref.get("name", "")))
        if data is None:
            if ref.get("optional"):
                skipped.append(f"optional envFrom {kind} {ref.get('name')!r} is missing: left out")
                continue
            raise EnvProblem(f"{kind} {ref.get('name')!r} does not exist (envFrom is not optional)")
        for key, value in data.items():
            if _ENV_NAME.match(prefix + key):  # the kubelet skips invalid names
                env[prefix + key] = value.decode(errors="replace")
    for entry in container.get("env") or ():
        name = str(entry["name"])
        value_from = entry.get("valueFrom")
        if value_from is None:
            env[name] = expand(str(entry.get("value") or ""), lookup)
            continue
        if "fieldRef" in value_from:
            env[name] = field_value(pod, str(value_from["fieldRef"]["fieldPath"]))
        elif "resourceFieldRef" in value_from:
            ref = value_from["resourceFieldRef"]
            owner = container
            if ref.get("containerName"):
                owner = container_of(pod, str(ref["containerName"]))
            env[name] = resource_value(owner, str(ref["resource"]), ref.get("divisor"))
        else:
            if "configMapKeyRef" not in value_from and "secretKeyRef" not in value_from:
                raise EnvProblem(f"{name}: valueFrom {sorted(value_from)} is not one ktpy knows")
            kind, store, ref = (
                ("configmap", sources.config_maps, value_from["configMapKeyRef"])
                if "configMapKeyRef" in value_from
                else ("secret", sources.secrets, value_from.get("secretKeyRef") or {})
            )
            found = _lookup(kind, store, ref)
            if found is None:
                skipped.append(
                    f"{name}: optional key {ref.get('key')!r} of {kind} {ref.get('name')!r} "
                    "is missing, so it is left out (as Kubernetes does)"
                )
            else:
                env[name] = found
    for service_name, service_value in service_env.items():
        env.setdefault(service_name, service_value)
    return env


# --- files --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class VolumeFile:
    path: str  # absolute in the container, e.g. /etc/app/config.yaml
    data: bytes
    mount: str  # the volume's mount path, e.g. /etc/app


def _items(
    data: Mapping[str, bytes], items: Iterable[Mapping[str, Any]] | None
) -> list[tuple[str, bytes]]:
    if not items:
        return sorted(data.items())
    return [(str(i["path"]), data[str(i["key"])]) for i in items if str(i["key"]) in data]


def volume_files(
    pod: Mapping[str, Any], container: Mapping[str, Any], sources: Sources
) -> list[VolumeFile]:
    """The files of the container's ConfigMap, Secret, projected and downward API
    volumes at their mount paths (not the service-account token)."""
    volumes = {str(v["name"]): v for v in (pod.get("spec") or {}).get("volumes") or ()}
    files: list[VolumeFile] = []
    for mount in container.get("volumeMounts") or ():
        volume = volumes.get(str(mount["name"]))
        if volume is None or mount.get("subPath") or mount["mountPath"] == SERVICE_ACCOUNT_PATH:
            continue
        entries: list[tuple[str, bytes]] = []
        if "configMap" in volume:
            ref = volume["configMap"]
            data = sources.config_maps.get(str(ref.get("name")), {})
            entries = _items(data, ref.get("items"))
        elif "secret" in volume:
            ref = volume["secret"]
            data = sources.secrets.get(str(ref.get("secretName")), {})
            entries = _items(data, ref.get("items"))
        elif "projected" in volume:
            for source in volume["projected"].get("sources") or ():
                if "configMap" in source:
                    ref = source["configMap"]
                    entries += _items(
                        sources.config_maps.get(str(ref.get("name")), {}), ref.get("items")
                    )
                elif "secret" in source:
                    ref = source["secret"]
                    entries += _items(
                        sources.secrets.get(str(ref.get("name")), {}), ref.get("items")
                    )
                elif "downwardAPI" in source:
                    entries += _downward(pod, source["downwardAPI"].get("items") or ())
        elif "downwardAPI" in volume:
            entries = _downward(pod, volume["downwardAPI"].get("items") or ())
        base = str(mount["mountPath"])
        files += [VolumeFile(posixpath.join(base, path), data, base) for path, data in entries]
    return files


def _downward(
    pod: Mapping[str, Any], items: Iterable[Mapping[str, Any]]
) -> list[tuple[str, bytes]]:
    return [
        (str(item["path"]), field_value(pod, str(item["fieldRef"]["fieldPath"])).encode())
        for item in items
        if "fieldRef" in item
    ]


def referenced(pod: Mapping[str, Any], container: Mapping[str, Any]) -> tuple[set[str], set[str]]:
    """The ConfigMaps and Secrets the container's env and mounted volumes name."""
    config_maps: set[str] = set()
    secrets: set[str] = set()
    for source in container.get("envFrom") or ():
        if "configMapRef" in source:
            config_maps.add(str(source["configMapRef"].get("name")))
        if "secretRef" in source:
            secrets.add(str(source["secretRef"].get("name")))
    for entry in container.get("env") or ():
        value_from = entry.get("valueFrom") or {}
        if "configMapKeyRef" in value_from:
            config_maps.add(str(value_from["configMapKeyRef"].get("name")))
        if "secretKeyRef" in value_from:
            secrets.add(str(value_from["secretKeyRef"].get("name")))
    mounted = {str(m["name"]) for m in container.get("volumeMounts") or ()}
    for volume in (pod.get("spec") or {}).get("volumes") or ():
        if volume.get("name") not in mounted:
            continue
        if "configMap" in volume:
            config_maps.add(str(volume["configMap"].get("name")))
        if "secret" in volume:
            secrets.add(str(volume["secret"].get("secretName")))
        for source in (volume.get("projected") or {}).get("sources") or ():
            if "configMap" in source:
                config_maps.add(str(source["configMap"].get("name")))
            if "secret" in source:
                secrets.add(str(source["secret"].get("name")))
    return config_maps, secrets


# --- reading it through the API ---------------------------------------------------------------

_TARGET_KINDS = {
    "deploy": Kind.DEPLOYMENT, "deployment": Kind.DEPLOYMENT, "deployments": Kind.DEPLOYMENT,
    "sts": Kind.STATEFUL_SET, "statefulset": Kind.STATEFUL_SET, "statefulsets": Kind.STATEFUL_SET,
    "svc": Kind.SERVICE, "service": Kind.SERVICE, "services": Kind.SERVICE,
    "po": Kind.POD, "pod": Kind.POD, "pods": Kind.POD,
}  # fmt: skip


def parse_target(text: str) -> tuple[Kind, str]:
    """``deploy/x``, ``statefulset/x``, ``pod/x``, ``svc/x`` as kubectl writes them; a
    bare name is a Deployment."""
    kind_text, slash, name = text.partition("/")
    if not slash:
        return Kind.DEPLOYMENT, text
    kind = _TARGET_KINDS.get(kind_text.lower())
    if kind is None or not name:
        raise EnvProblem(f"{text!r}: use deploy/NAME, statefulset/NAME, pod/NAME or svc/NAME")
    return kind, name


@dataclass
class Environment:
    pod: str
    container: str
    env: dict[str, str]
    files: list[VolumeFile]
    notes: list[str]


def read_environment(
    api: ClusterApi, namespace: str, target: str, container_name: str | None
) -> Environment:
    """The environment and files of TARGET's container, from its first ready pod."""
    kind, name = parse_target(target)
    pod = _pod_of(api, namespace, kind, name)
    container = container_of(pod, container_name)
    config_maps, secrets = referenced(pod, container)
    sources = Sources(
        config_maps={
            n: config_map_data(b)
            for n in config_maps
            if (b := _get(api, Kind.CONFIG_MAP, namespace, n))
        },
        secrets={n: secret_data(b) for n in secrets if (b := _get(api, Kind.SECRET, namespace, n))},
    )
    notes: list[str] = []
    services: list[JsonObject] = []
    if (pod.get("spec") or {}).get("enableServiceLinks", True):
        try:
            services += api.list_objects(Kind.SERVICE, namespace).items
        except Forbidden:
            notes.append(
                f"cannot list the Services of {namespace}: their link variables are left out"
            )
    if namespace != "default" or not services:
        try:
            services.append(api.get(Kind.SERVICE, "default", "kubernetes"))
        except (Forbidden, NotFound):
            notes.append("cannot read service/kubernetes in default: KUBERNETES_* are left out")
    started = _started(pod, str(container.get("name")))
    service_env = service_link_env(services_at(services, started))
    skipped: list[str] = []
    env = container_env(pod, container, sources, service_env, skipped)
    notes += skipped
    return Environment(
        pod=str(pod["metadata"]["name"]),
        container=str(container.get("name")),
        env=env,
        files=volume_files(pod, container, sources),
        notes=notes,
    )


def _get(api: ClusterApi, kind: Kind, namespace: str, name: str) -> JsonObject | None:
    try:
        return api.get(kind, namespace, name)
    except NotFound:
        return None


def _started(pod: Mapping[str, Any], container: str) -> datetime | None:
    for status in (pod.get("status") or {}).get("containerStatuses") or ():
        if status.get("name") == container:
            running = (status.get("state") or {}).get("running") or {}
            if running.get("startedAt"):
                return labels.parse_time(str(running["startedAt"]))
    return None


def _pod_of(api: ClusterApi, namespace: str, kind: Kind, name: str) -> JsonObject:
    if kind is Kind.POD:
        try:
            return api.get(Kind.POD, namespace, name)
        except NotFound:
            raise EnvProblem(f"pod {name!r} does not exist in namespace {namespace!r}") from None
    try:
        owner = api.get(kind, namespace, name)
    except NotFound:
        raise EnvProblem(
            f"{kind.value.lower()} {name!r} does not exist in namespace {namespace!r}"
        ) from None
    spec = owner.get("spec") or {}
    selector = spec.get("selector") or {}
    match = selector.get("matchLabels", selector) if kind is not Kind.SERVICE else selector
    if not match:
        raise EnvProblem(f"{kind.value.lower()} {name!r} selects no pods")
    listed = api.list_objects(Kind.POD, namespace, label_selector=labels.format_selector(match))
    pods = {str(p["metadata"]["name"]): p for p in listed.items}
    ready = sorted(serving_pods(pods))
    if not ready:
        raise EnvProblem(f"{kind.value.lower()} {name!r} has no ready pod to read the values of")
    return pods[ready[0]]
