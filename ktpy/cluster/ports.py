"""A Service's ports mapped to this machine's ports, as pure functions over API bodies.

Which of a Service's ports each ``--expose LOCAL:REMOTE`` means, which port
the shadow pod listens on for it (a named target port is resolved through the
backing pods' containerPort, and the shadow declares the same name), and the
default when ``--expose`` is left out. Used by every command that takes a
Service's traffic (exchange now, mesh next).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ktpy.cluster import manifests
from ktpy.errors import (
    PortNotInService,
    UnresolvedTargetPort,
    UsageProblem,
)
from ktpy.params import PortMapping


@dataclass(frozen=True)
class ServicePortEntry:
    """One entry of a Service's ``spec.ports``."""

    port: int
    target: int | str
    name: str | None = None
    protocol: str = "TCP"
    # What the port speaks (``http``, ``kubernetes.io/h2c``, ``grpc``...), if the Service says.
    app_protocol: str | None = None

    def describe(self) -> str:
        named = f" ({self.name})" if self.name else ""
        return f"{self.port}{named} -> {self.target}"


def service_ports(service: Mapping[str, Any]) -> tuple[ServicePortEntry, ...]:
    entries: list[ServicePortEntry] = []
    for raw in (service.get("spec") or {}).get("ports") or ():
        port = int(raw["port"])
        target = raw.get("targetPort", port)
        entries.append(
            ServicePortEntry(
                port=port,
                # The API server may hand back a numeric target port as a string.
                target=int(target) if isinstance(target, int) or str(target).isdigit() else target,
                name=raw.get("name") or None,
                protocol=str(raw.get("protocol") or "TCP"),
                app_protocol=raw.get("appProtocol") or None,
            )
        )
    return tuple(entries)


def named_container_ports(pod_specs: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    """Container port names -> numbers (TCP) across pod specs, first seen wins.

    ``pod_specs`` are pods' ``spec`` or Deployment templates' ``spec``.
    """
    named: dict[str, int] = {}
    for spec in pod_specs:
        for container in spec.get("containers") or ():
            for port in container.get("ports") or ():
                name = port.get("name")
                if name and str(port.get("protocol") or "TCP") == "TCP":
                    named.setdefault(str(name), int(port["containerPort"]))
    return named


@dataclass(frozen=True)
class Forward:
    """One exposed port: the shadow listens on ``shadow_port`` and hands each
    connection to ``local`` on this machine."""

    local: int
    shadow_port: int
    service_port: int
    service_port_name: str | None = None
    # The Service's named target port: the shadow declares its port under this name.
    target_name: str | None = None

    def describe(self) -> str:
        named = f" ({self.service_port_name})" if self.service_port_name else ""
        target = f"{self.target_name}={self.shadow_port}" if self.target_name else self.shadow_port
        return (
            f"service port {self.service_port}{named} -> shadow port {target} -> local {self.local}"
        )

    @property
    def shadow(self) -> manifests.ShadowPort:
        return manifests.ShadowPort(self.shadow_port, self.target_name)


def _target_number(entry: ServicePortEntry, named: Mapping[str, int]) -> int | None:
    if isinstance(entry.target, int):
        return entry.target
    return named.get(entry.target)


def _pick(
    service: str,
    remote: int | str,
    entries: Sequence[ServicePortEntry],
    named: Mapping[str, int],
) -> ServicePortEntry:
    """The entry REMOTE means. A Service port (number or name) wins over a target port."""
    if isinstance(remote, int):
        by_port = [e for e in entries if e.port == remote]
        by_target = [e for e in entries if _target_number(e, named) == remote]
    else:
        by_port = [e for e in entries if e.name == remote]
        by_target = [e for e in entries if e.target == remote]
    # Within one kind several TCP/UDP twins may share a number: take the TCP one.
    for found in (by_port, by_target):
        tcp = [e for e in found if e.protocol == "TCP"]
        if tcp:
            return tcp[0]
        if found:
            raise UsageProblem(
                f"port {remote} of service {service!r} is {found[0].protocol}; "
                "ktpy exchange carries TCP only",
                hint="Expose a TCP port of the Service.",
            )
    raise PortNotInService(service, remote, [e.describe() for e in entries])


def _forward(
    service: str, entry: ServicePortEntry, local: int, named: Mapping[str, int]
) -> Forward:
    number = _target_number(entry, named)
    if number is None:
        raise UnresolvedTargetPort(service, str(entry.target))
    target_name = entry.target if isinstance(entry.target, str) else None
    return Forward(local, number, entry.port, entry.name, target_name)


def plan_forwards(
    service: str,
    entries: Sequence[ServicePortEntry],
    mappings: Sequence[PortMapping],
    named: Mapping[str, int],
) -> tuple[Forward, ...]:
    """The forwards for ``--expose`` (or, if empty, every TCP target port to the same
    local port number). Raises the error a user should see for a bad request."""
    if not entries:
        raise PortNotInService(service, mappings[0].remote if mappings else "any", [])
    forwards: list[Forward] = []
    if mappings:
        for mapping in mappings:
            entry = _pick(service, mapping.remote, entries, named)
            forwards.append(_forward(service, entry, mapping.local, named))
    else:
        for entry in entries:
            if entry.protocol != "TCP":
                continue
            number = _target_number(entry, named)
            if number is None:
                raise UnresolvedTargetPort(service, str(entry.target))
            forwards.append(_forward(service, entry, number, named))
        if not forwards:
            raise UsageProblem(
                f"service {service!r} has no TCP port; ktpy exchange carries TCP only"
            )
    return _dedupe(service, forwards)


def _dedupe(service: str, forwards: Sequence[Forward]) -> tuple[Forward, ...]:
    """Two Service ports on one target port share the shadow's listener: fine if they go
    to the same local port, a contradiction otherwise."""
    by_shadow: dict[int, Forward] = {}
    for forward in forwards:
        seen = by_shadow.get(forward.shadow_port)
        if seen is None:
            by_shadow[forward.shadow_port] = forward
        elif seen.local != forward.local:
            raise UsageProblem(
                f"service ports {seen.service_port} and {forward.service_port} of {service!r} "
                f"both go to target port {forward.shadow_port}, which cannot be sent to both "
                f"local ports {seen.local} and {forward.local}",
                hint="Expose that target port once.",
            )
    return tuple(by_shadow.values())


def unexposed_ports(
    entries: Sequence[ServicePortEntry], forwards: Sequence[Forward]
) -> list[ServicePortEntry]:
    """Service ports whose callers will find nothing behind the shadow."""
    exposed = {f.service_port for f in forwards}
    shadow_ports = {f.shadow_port for f in forwards}
    return [
        e
        for e in entries
        if e.port not in exposed and not (isinstance(e.target, int) and e.target in shadow_ports)
    ]
