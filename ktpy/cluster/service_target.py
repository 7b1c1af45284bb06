"""Where a connection to a Service's port goes, decided from the Service body (pure).

`ktpy forward` dials the Service, never a pod: the ClusterIP (kube-proxy picks
a ready endpoint for each new connection, so replaced pods are followed), the
cluster DNS name for a headless Service, the external name for an
ExternalName one.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ktpy.errors import PortNotInService, UsageProblem

PORT_HINT = "REMOTE in SVC LOCAL:REMOTE is a port number or port name of the Service."


@dataclass(frozen=True)
class ServiceRoute:
    """One local port carried to one Service port."""

    service: str
    namespace: str
    port: int  # the Service's port (what callers in the cluster dial)
    port_name: str | None
    host: str  # what the shadow pod connects to
    target_port: int  # the port on host
    local: int

    @property
    def label(self) -> str:
        named = f" ({self.port_name})" if self.port_name else ""
        return f"service {self.service}.{self.namespace} port {self.port}{named}"


def _ports(service: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    return list((service.get("spec") or {}).get("ports") or [])


def _describe(port: Mapping[str, Any]) -> str:
    name = port.get("name")
    return f"{port.get('port')}/{name}" if name else str(port.get("port"))


def find_port(service: Mapping[str, Any], wanted: int | str | None) -> Mapping[str, Any]:
    """The Service port a forward uses: by number or name, else the first TCP one."""
    meta = service.get("metadata") or {}
    name = str(meta.get("name", "?"))
    ports = _ports(service)
    tcp = [p for p in ports if p.get("protocol", "TCP") == "TCP"]
    if wanted is None:
        if not tcp:
            raise PortNotInService(name, "any TCP port", [_describe(p) for p in ports])
        return tcp[0]
    key = "port" if isinstance(wanted, int) else "name"
    for port in ports:
        if port.get(key) == wanted:
            if port.get("protocol", "TCP") != "TCP":
                raise UsageProblem(
                    f"port {_describe(port)} of service {name!r} is {port.get('protocol')}; "
                    "only TCP is forwarded",
                    hint=PORT_HINT,
                )
            return port
    error = PortNotInService(name, wanted, [_describe(p) for p in ports])
    error.hint = PORT_HINT
    raise error


def route(service: Mapping[str, Any], wanted: int | str | None, local: int | None) -> ServiceRoute:
    """Resolve a forward of ``local`` to the Service's port ``wanted`` (default: its first)."""
    meta = service.get("metadata") or {}
    spec = service.get("spec") or {}
    name = str(meta.get("name", ""))
    namespace = str(meta.get("namespace", ""))
    if spec.get("type") == "ExternalName":
        # No ports of its own to speak of: the number is taken as given.
        if not isinstance(wanted, int):
            raise UsageProblem(
                f"service {name!r} is an ExternalName ({spec.get('externalName')}); "
                "give the remote port as a number",
                hint="ktpy forward SVC LOCAL:REMOTE",
            )
        return ServiceRoute(
            name, namespace, wanted, None, str(spec.get("externalName")), wanted, local or wanted
        )
    port = find_port(service, wanted)
    number = int(port["port"])
    cluster_ip = str(spec.get("clusterIP") or "")
    if cluster_ip and cluster_ip != "None":
        host, target = cluster_ip, number
    else:
        # Headless: the name resolves to the pods themselves, which listen on the
        # target port (a named one cannot be resolved here: fall back to the port).
        target_port = port.get("targetPort")
        target = target_port if isinstance(target_port, int) else number
        host = f"{name}.{namespace}.svc"
    port_name = port.get("name")
    return ServiceRoute(
        service=name,
        namespace=namespace,
        port=number,
        port_name=str(port_name) if port_name else None,
        host=host,
        target_port=target,
        local=local if local is not None else number,
    )


def duplicate_local_ports(routes: list[ServiceRoute]) -> list[int]:
    seen: set[int] = set()
    duplicates: list[int] = []
    for r in routes:
        if r.local in seen and r.local not in duplicates:
            duplicates.append(r.local)
        seen.add(r.local)
    return duplicates
